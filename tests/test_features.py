"""The features stage on tiny hand-built tables: each test states one rule of the contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tasks.errors import RecsysError
from tasks.features import build_features, kcore_mask, temporal_cuts
from tasks.io import dir_hashes, write_json, write_parquet
from tasks.params import FeaturesParams
from tasks.schema import INTERACTIONS, ITEMS


def params(**overrides) -> FeaturesParams:
    base = {"min_user_interactions": 1, "min_item_interactions": 1, "max_seq_len": 3}
    return FeaturesParams(**{**base, **overrides})


def write_interim(folder: Path, rows, items=None, users=None) -> Path:
    """rows: (user_id, item_id, timestamp, rating) tuples in source order."""
    folder.mkdir(parents=True, exist_ok=True)
    df = pl.DataFrame(rows, schema=INTERACTIONS, orient="row")
    write_parquet(df, folder / "interactions.parquet")
    if items is not None:
        write_parquet(pl.DataFrame(items, schema=ITEMS, orient="row"), folder / "items.parquet")
    if users is not None:
        write_parquet(users, folder / "users.parquet")
    return folder


def build(tmp_path: Path, rows, name="features", items=None, users=None, **overrides):
    interim = write_interim(tmp_path / "interim", rows, items, users)
    out = tmp_path / name
    summary = build_features(interim, out, params(**overrides), seed=0, validation_dir=None)
    return out, summary


def read(out: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(out / name)


def idx(out: Path, kind: str, ident: str) -> int:
    table = read(out, f"{kind}_map.parquet")
    return table.filter(pl.col(f"{kind}_id") == ident)[f"{kind}_idx"].item()


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


# A user with unique items, one with a time tie, one listed out of time order in the source.
UNIQUE_ROWS = [
    ("a", "i1", 10, 4.0),
    ("a", "i2", 20, 3.0),
    ("b", "i3", 5, None),
    ("a", "i3", 30, 5.0),
    ("b", "i4", 7, 1.0),
    ("a", "i4", 40, 2.0),
    ("b", "i5", 7, 2.0),  # same time as b/i4, later in the source: b's test
    ("c", "i2", 50, 3.0),
    ("c", "i1", 30, 3.0),  # earlier in time than c/i2 although later in the source
    ("c", "i5", 40, 3.0),
    ("a", "i5", 50, 1.0),
    ("a", "i6", 60, 1.0),
]


def test_exact_duplicates_removed_first_kept(tmp_path):
    rows = [
        ("a", "x", 1, None),
        ("a", "x", 1, None),  # duplicate with a null rating
        ("a", "x", 1, 3.0),  # differs in rating: kept
        ("a", "y", 2, 4.0),
        ("a", "y", 2, 4.0),
    ]
    out, summary = build(tmp_path, rows)
    assert summary["duplicates_removed"] == 2
    assert manifest(out)["counts"]["raw_rows"] == 5
    got = read(out, "interactions.parquet")
    assert got["rating"].to_list() == [None, 3.0, 4.0]


def test_kcore_iterates_to_a_fixed_point(tmp_path):
    rows = [("a", "p", 1, 1.0), ("a", "q", 2, 1.0), ("b", "p", 3, 1.0), ("b", "q", 4, 1.0)]
    rows += [("c", "p", 5, 1.0), ("c", "r", 6, 1.0)]  # r is rare; without it c is too short
    out, summary = build(tmp_path, rows, min_user_interactions=2, min_item_interactions=2)
    assert (summary["users"], summary["items"], summary["rows"]) == (2, 2, 4)
    assert manifest(out)["counts"]["kcore_rounds"] == 3
    assert manifest(out)["counts"]["kcore"] == {
        "rows_removed": 2,
        "rows_share": round(2 / 6, 6),
        "users_removed": 1,
        "users_share": round(1 / 3, 6),
        "items_removed": 1,
        "items_share": round(1 / 3, 6),
    }
    assert summary["kcore_dropped"] == (
        "2 rows (33.3%), 1 users (33.3%), 1 items (33.3% of the catalogue)"
    )
    assert set(read(out, "user_map.parquet")["user_id"]) == {"a", "b"}

    users = np.array([0, 0, 1, 1, 2, 2])
    items = np.array([0, 1, 0, 1, 0, 2])
    keep, rounds = kcore_mask(users, items, 2, 2)
    assert keep.tolist() == [True, True, True, True, False, False]
    again, _ = kcore_mask(users[keep], items[keep], 2, 2)
    assert again.all()


def test_kcore_that_removes_everything_is_an_error(tmp_path):
    with pytest.raises(RecsysError, match=r"interactions.parquet: nothing left after the k-core"):
        build(tmp_path, UNIQUE_ROWS, min_user_interactions=50)


def test_id_maps_contiguous_first_appearance_zero_unused(tmp_path):
    rows = [("u9", "z", 1, 1.0), ("u1", "rare", 2, 1.0), ("u1", "z", 3, 1.0)]
    rows += [("u5", "y", 4, 1.0), ("u5", "z", 5, 1.0), ("u9", "y", 6, 1.0), ("u1", "y", 7, 1.0)]
    out, _ = build(tmp_path, rows, min_item_interactions=2)
    users, items = read(out, "user_map.parquet"), read(out, "item_map.parquet")
    assert users.schema == pl.Schema({"user_id": pl.String, "user_idx": pl.Int32})
    assert items.schema == pl.Schema({"item_id": pl.String, "item_idx": pl.Int32})
    assert users.rows() == [("u9", 1), ("u1", 2), ("u5", 3)]
    assert items.rows() == [("z", 1), ("y", 2)]  # "rare" removed; numbering has no gap
    inter = read(out, "interactions.parquet")
    assert inter["user_idx"].min() == 1 and inter["item_idx"].min() == 1
    assert inter.columns == ["user_idx", "item_idx", "timestamp", "rating"]


def test_interactions_sorted_by_user_time_then_source_order(tmp_path):
    out, _ = build(tmp_path, UNIQUE_ROWS)
    inter = read(out, "interactions.parquet")
    b = inter.filter(pl.col("user_idx") == idx(out, "user", "b"))
    assert b["item_idx"].to_list() == [idx(out, "item", i) for i in ("i3", "i4", "i5")]
    assert inter.select("user_idx", "timestamp").rows() == sorted(
        inter.select("user_idx", "timestamp").rows()
    )


def test_leave_one_out_as_defined(tmp_path):
    out, summary = build(tmp_path, UNIQUE_ROWS)
    train, val, test = (read(out, f"loo/{s}.parquet") for s in ("train", "val", "test"))
    assert summary["loo"] == {"train": 6, "val": 3, "test": 3, "users_train_only": 0}
    item = {i: idx(out, "item", i) for i in ("i1", "i2", "i3", "i4", "i5", "i6")}
    expected = {"a": ("i5", "i6"), "b": ("i4", "i5"), "c": ("i5", "i2")}
    for user, (val_item, test_item) in expected.items():
        u = idx(out, "user", user)
        assert val.filter(pl.col("user_idx") == u)["item_idx"].to_list() == [item[val_item]]
        assert test.filter(pl.col("user_idx") == u)["item_idx"].to_list() == [item[test_item]]
        # Items are unique per user here: the test item is nowhere in train or validation.
        history = pl.concat([train, val]).filter(pl.col("user_idx") == u)["item_idx"]
        assert item[test_item] not in history.to_list()
    joined = val.join(test, on="user_idx", suffix="_test")
    assert (joined["timestamp"] <= joined["timestamp_test"]).all()
    last_train = train.group_by("user_idx").agg(pl.col("timestamp").max().alias("last"))
    assert (
        (last_train.join(val, on="user_idx").select(pl.col("last") <= pl.col("timestamp")))
        .to_series()
        .all()
    )
    # The model inputs never hold their own target either.
    for prefix in ("val", "test"):
        inputs = np.load(out / f"loo/{prefix}_input.npy")
        targets = np.load(out / f"loo/{prefix}_target.npy")
        for u in range(1, len(targets)):
            assert targets[u] not in inputs[u]


def test_leave_one_out_with_repeats_splits_rows_not_items(tmp_path):
    # "a" re-consumes x; the test row is the last x, the first x stays in train.
    rows = [("a", "x", 1, 1.0), ("a", "y", 2, 1.0), ("a", "x", 3, 2.0), ("a", "y", 4, 2.0)]
    rows += [("a", "x", 5, 3.0)]
    out, _ = build(tmp_path, rows)
    train, val, test = (read(out, f"loo/{s}.parquet") for s in ("train", "val", "test"))
    assert train["timestamp"].to_list() == [1, 2, 3]
    assert (val["timestamp"].item(), test["timestamp"].item()) == (4, 5)
    everything = pl.concat([train, val, test]).sort("timestamp")
    assert everything.equals(read(out, "interactions.parquet").sort("timestamp"))


@pytest.mark.parametrize("order", [["x", "y", "z"], ["z", "y", "x"]])
def test_time_ties_broken_by_source_order(tmp_path, order):
    rows = [("a", item, 100, 1.0) for item in order]
    out, _ = build(tmp_path, rows)
    name = {idx(out, "item", i): i for i in "xyz"}
    assert [name[i] for i in read(out, "loo/train.parquet")["item_idx"]] == [order[0]]
    assert name[read(out, "loo/val.parquet")["item_idx"].item()] == order[1]
    assert name[read(out, "loo/test.parquet")["item_idx"].item()] == order[2]


def test_users_with_fewer_than_three_go_to_train_only(tmp_path):
    rows = [("a", "x", 1, 1.0), ("a", "y", 2, 1.0), ("b", "x", 1, 1.0)]
    rows += [("c", "x", 1, 1.0), ("c", "y", 2, 1.0), ("c", "z", 3, 1.0)]
    out, summary = build(tmp_path, rows)
    assert summary["loo"] == {"train": 4, "val": 1, "test": 1, "users_train_only": 2}
    for short in ("a", "b"):
        u = idx(out, "user", short)
        assert np.load(out / "loo/val_target.npy")[u] == 0
        assert np.load(out / "loo/test_target.npy")[u] == 0
    assert read(out, "loo/val.parquet")["user_idx"].to_list() == [idx(out, "user", "c")]


def test_temporal_cuts_and_ties():
    assert temporal_cuts(np.arange(1, 11), 0.1, 0.1) == (9, 10)
    # The cut timestamp 9 is shared by three rows: all of them fall on the later side.
    ts = np.array([1, 2, 3, 4, 5, 6, 9, 9, 9, 10])
    assert temporal_cuts(ts, 0.1, 0.1) == (9, 10)
    assert temporal_cuts(ts, 0.0, 0.3) == (9, 9)


def test_temporal_split_files(tmp_path):
    # 20 rows; 16 is replaced by a second 17, so the tie straddles the 80% position.
    rows = [(f"u{k % 3}", f"i{k % 4}", 17 if k == 16 else k, 1.0) for k in range(1, 21)]
    out, summary = build(tmp_path, rows)
    train, val, test = (read(out, f"temporal/{s}.parquet") for s in ("train", "val", "test"))
    cuts = {"val_start": 17, "test_start": 19}
    assert summary["temporal"] == {"train": 15, "val": 3, "test": 2, **cuts}
    assert train["timestamp"].max() == 15
    assert sorted(val["timestamp"]) == [17, 17, 18]
    assert sorted(test["timestamp"]) == [19, 20]
    assert manifest(out)["temporal_cuts"] == cuts
    assert train.columns == ["user_idx", "item_idx", "timestamp", "rating"]


def test_padded_sequences(tmp_path):
    long = [("a", f"i{k}", k, 1.0) for k in range(6)]
    short = [("b", f"i{k}", k, 1.0) for k in (7, 8, 9)]
    out, _ = build(tmp_path, long + short, max_seq_len=3)
    i = {f"i{k}": idx(out, "item", f"i{k}") for k in (0, 1, 2, 3, 4, 5, 7, 8, 9)}
    a, b = idx(out, "user", "a"), idx(out, "user", "b")
    arrays = {
        name: np.load(out / f"loo/{name}.npy", mmap_mode="r")
        for name in ("train_seq", "val_input", "val_target", "test_input", "test_target")
    }
    for name in ("train_seq", "val_input", "test_input"):
        assert arrays[name].dtype == np.int32 and arrays[name].shape == (3, 3)
        assert not arrays[name][0].any()
    assert arrays["val_target"].shape == arrays["test_target"].shape == (3,)
    # a: train i0..i3 (truncated to the last 3), validation i4, test i5.
    assert arrays["train_seq"][a].tolist() == [i["i1"], i["i2"], i["i3"]]
    assert arrays["val_input"][a].tolist() == [i["i1"], i["i2"], i["i3"]]
    assert arrays["val_target"][a] == i["i4"]
    assert arrays["test_input"][a].tolist() == [i["i2"], i["i3"], i["i4"]]
    assert arrays["test_target"][a] == i["i5"]
    # b: one training item, left-padded.
    assert arrays["train_seq"][b].tolist() == [0, 0, i["i7"]]
    assert arrays["test_input"][b].tolist() == [0, i["i7"], i["i8"]]
    assert (arrays["val_target"][b], arrays["test_target"][b]) == (i["i8"], i["i9"])
    assert arrays["val_target"][0] == arrays["test_target"][0] == 0


def test_item_features(tmp_path):
    rows = [("a", "m1", 1, 1.0), ("a", "m2", 2, 1.0), ("a", "m3", 3, 1.0), ("a", "m4", 4, 1.0)]
    rows += [("b", "m1", 1, 1.0), ("b", "m2", 2, 1.0), ("b", "m4", 3, 1.0)]
    items = [
        ("m1", "One", ["Drama", "Comedy"], 1975),
        ("m2", "Two", ["Comedy"], 1995),
        ("m3", "Three", [], None),
        ("m9", "Never seen", ["Horror"], 1900),  # not in interactions: ignored
    ]  # m4 has no metadata at all
    out, _ = build(tmp_path, rows, items=items)
    m = {k: idx(out, "item", k) for k in ("m1", "m2", "m3", "m4")}
    genres = np.load(out / "items/genres.npy")
    vocab = json.loads((out / "items/genres.json").read_text())
    assert vocab == ["Comedy", "Drama"]
    assert genres.shape == (5, 2) and genres.dtype == np.uint8
    assert genres[m["m1"]].tolist() == [1, 1] and genres[m["m2"]].tolist() == [1, 0]
    assert not genres[0].any() and not genres[m["m3"]].any() and not genres[m["m4"]].any()

    years = np.load(out / "items/year_bucket.npy")
    assert years.dtype == np.int64 and years.shape == (5,)
    by_item = [years[m[k]] for k in ("m1", "m2", "m3", "m4")]
    assert by_item == [1, 3, 0, 0] and years[0] == 0  # 1975, 1995, no year, no metadata
    info = json.loads((out / "items/year_buckets.json").read_text())
    assert info["edges"] == [1975, 1985, 1995, 2005] and info["n_buckets"] == 3

    popularity = np.load(out / "items/popularity.npy")
    assert popularity.dtype == np.float32
    # Training rows under leave-one-out: a -> m1, m2; b -> m1.
    assert popularity[m["m1"]] == 2 and popularity[m["m2"]] == 1 and popularity[m["m4"]] == 0

    catalog = read(out, "items/items.parquet")
    assert catalog.columns == ["item_idx", "item_id", "title", "genres", "year"]
    assert catalog["item_idx"].to_list() == [1, 2, 3, 4]
    assert catalog.filter(pl.col("item_id") == "m4")["title"].item() is None
    assert manifest(out)["item_features"]["with_metadata"] == 3


def test_no_items_file_gives_empty_features(tmp_path):
    out, summary = build(tmp_path, UNIQUE_ROWS)
    assert np.load(out / "items/genres.npy").shape == (summary["items"] + 1, 0)
    assert not np.load(out / "items/year_bucket.npy").any()
    assert not (out / "users").exists()


def test_user_features(tmp_path):
    rows = [("a", "x", 1, 1.0), ("b", "x", 2, 1.0), ("c", "x", 3, 1.0)]
    users = pl.DataFrame(
        {
            "user_id": ["a", "b", "z"],
            "age": pl.Series([17, 35, 60], dtype=pl.Int32),
            "gender": ["F", None, "M"],
            "occupation": ["writer", "artist", "doctor"],
        }
    )
    out, _ = build(tmp_path, rows, users=users)
    codes = np.load(out / "users/user_features.npy")
    info = json.loads((out / "users/user_features.json").read_text())
    assert info["columns"] == ["age", "gender", "occupation"]
    assert info["vocabularies"]["gender"] == ["F"]  # from the users that remain only
    assert info["vocabularies"]["occupation"] == ["artist", "writer"]
    assert info["vocabularies"]["age"][0] == "<18"
    assert codes.dtype == np.int64 and codes.shape == (4, 3)
    a, b, c = (idx(out, "user", u) for u in "abc")
    assert codes[a].tolist() == [1, 1, 2]  # <18, F, writer
    assert codes[b].tolist() == [4, 0, 1]  # 35-44, unknown, artist
    assert codes[c].tolist() == [0, 0, 0]  # not in users.parquet
    assert not codes[0].any()


def test_validation_check(tmp_path):
    interim = write_interim(tmp_path / "interim", UNIQUE_ROWS)
    reports = tmp_path / "reports"
    out = tmp_path / "features"

    def run():
        return build_features(interim, out, params(), seed=0, validation_dir=reports)

    with pytest.raises(RecsysError, match=r"validated.json: not found"):
        run()
    record = reports / "validated.json"
    write_json({"verdict": "failed", "input_hashes": dir_hashes(interim)}, record)
    with pytest.raises(RecsysError, match=r"validated.json: validation did not pass"):
        run()
    stale = {"interactions.parquet": "0" * 64}
    write_json({"verdict": "passed", "input_hashes": stale}, record)
    with pytest.raises(RecsysError, match=r"interactions.parquet .* changed after validation"):
        run()
    assert not out.exists()
    # summary.json (times, drift) is not what features reads: only the stable record counts
    write_json({"success": True, "input_hashes": dir_hashes(interim)}, reports / "summary.json")
    with pytest.raises(RecsysError, match=r"interactions.parquet .* changed after validation"):
        run()
    write_json({"verdict": "passed", "input_hashes": dir_hashes(interim)}, record)
    assert run()["rows"] == len(UNIQUE_ROWS)


def test_outputs_byte_identical_on_rerun(tmp_path):
    items = [("i1", "One", ["A", "B"], 1990), ("i2", "Two", ["B"], None)]
    users = pl.DataFrame({"user_id": ["a", "b"], "age": [30, 40], "gender": ["M", "F"]})
    first, _ = build(tmp_path, UNIQUE_ROWS, name="one", items=items, users=users)
    second, _ = build(tmp_path, UNIQUE_ROWS, name="two", items=items, users=users)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    for name in files:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    listed = set(manifest(first)["files"]) | {"manifest.json"}
    assert listed == {p.as_posix() for p in files}


def test_failure_leaves_previous_output_intact(tmp_path):
    out, _ = build(tmp_path, UNIQUE_ROWS)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    interim = tmp_path / "interim"
    with pytest.raises(RecsysError):
        build_features(interim, out, params(min_item_interactions=99), seed=0, validation_dir=None)
    (interim / "users.parquet").write_bytes(b"not parquet")  # fails late, inside the stage
    with pytest.raises(RecsysError, match=r"users.parquet: cannot read"):
        build_features(interim, out, params(), seed=0, validation_dir=None)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_input_is_one_line_error(tmp_path):
    interim = tmp_path / "interim"
    interim.mkdir()
    out = tmp_path / "features"

    def run():
        return build_features(interim, out, params(), seed=0, validation_dir=None)

    with pytest.raises(RecsysError, match=r"interactions.parquet: not found"):
        run()
    write_parquet(
        pl.DataFrame({"user_id": ["a"], "item_id": ["x"]}), interim / "interactions.parquet"
    )
    with pytest.raises(RecsysError, match=r"interactions.parquet: missing column\(s\) timestamp"):
        run()
    write_interim(interim, [])
    with pytest.raises(RecsysError, match=r"interactions.parquet: no rows"):
        run()
    write_interim(interim, [("a", None, 1, 1.0)])
    with pytest.raises(RecsysError, match=r"interactions.parquet: 1 row\(s\) with a null item_id"):
        run()
    with pytest.raises(RecsysError, match=r"params.yaml features: temporal fractions"):
        build_features(
            interim, out, params(temporal_test_fraction=0.0), seed=0, validation_dir=None
        )

"""Your own data: realistic generated logs (power-law activity with many one-interaction users,
ids with spaces and non-ASCII characters, millisecond and ISO timestamps, duplicate events, item
and user tables with missing values) go through ingest -> validate -> features, configured by
params.yaml's ingest section alone; the one-user-per-line benchmark form with its JSON item
attributes too, and the Amazon Beauty files of ../shared/data/beauty in a slow test.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from cli import main as cli
from tasks.errors import RecsysError
from tasks.features import build_features
from tasks.ingest import ColumnMap, ingest
from tasks.params import FeaturesParams, MetadataColumnsParams, MetadataParams, ValidateParams
from tasks.validate import validate

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data/beauty beside the checkout; RECSYS_BEAUTY_DIR points elsewhere (a worktree)
BEAUTY = Path(os.environ.get("RECSYS_BEAUTY_DIR") or ROOT.parent / "shared" / "data" / "beauty")
T0_MS = 1_700_000_000_000
CATEGORIES = ["Skin Care", "Make-up", "Hair", "Fragrance", "Bath & Body", "Nails"]
BRANDS = ["L'Oréal", "Nivea", "Shiseido", "Dove"]


def user_name(u: int) -> str:
    return f"user {u} é" if u % 3 == 0 else f"ü{u}"  # spaces and non-ASCII characters


def item_name(i: int) -> str:
    return f"SKU {i}" if i % 2 else f"产品-{i}"


def power_law_log(seed: int = 0, n_users: int = 300, n_items: int = 60) -> list[tuple]:
    """(user, item, time in ms, stars) rows: Zipf user activity (most users act once) and Zipf
    item popularity, every user's events in time order, a few events sent twice."""
    rng = np.random.default_rng(seed)
    activity = np.minimum(rng.zipf(1.8, n_users), 40)
    rows = []
    for u in range(n_users):
        start = T0_MS + int(rng.integers(0, 10**9))
        for k in range(int(activity[u])):
            item = int(min(rng.zipf(1.5), n_items)) - 1
            rows.append(
                (user_name(u), item_name(item), start + 60_000 * k, int(rng.integers(1, 6)))
            )
    for row in rows[:: len(rows) // 8][:8]:  # duplicate events: the same row sent again
        rows.append(row)
    return rows


def write_log(folder: Path, rows: list[tuple], iso: bool = False) -> Path:
    """A `uid;sku;ts;stars` CSV: times as epoch milliseconds, or ISO 8601 strings."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["uid;sku;ts;stars"]
    for user, item, ms, stars in rows:
        when = datetime.fromtimestamp(ms / 1000, UTC).isoformat() if iso else str(ms)
        lines.append(f"{user};{item};{when};{stars}")
    path = folder / "events.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_items(folder: Path, n_items: int = 60) -> Path:
    """An item table with multi-valued categories, a brand, a price and missing values."""
    lines = ["sku,name,cats,brand,price"]
    for i in range(n_items):
        cats = "|".join(CATEGORIES[(i + k) % len(CATEGORIES)] for k in range(1 + i % 3))
        cats = "" if i % 7 == 0 else cats  # no categories
        brand = "" if i % 5 == 0 else BRANDS[i % len(BRANDS)]
        price = "" if i % 4 == 0 else f"{3 + 1.5 * i:.2f}"
        lines.append(f'{item_name(i)},"Product {i}",{cats},"{brand}",{price}')
    path = folder / "items.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_users(folder: Path, n_users: int = 300) -> Path:
    lines = ["uid\tcountry\tage"]
    for u in range(n_users):
        country = "" if u % 6 == 0 else ["FR", "DE", "JP"][u % 3]
        age = "" if u % 4 == 0 else str(18 + u % 50)
        lines.append(f"{user_name(u)}\t{country}\t{age}")
    path = folder / "users.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


ITEM_META = MetadataParams(
    path=None,
    columns=MetadataColumnsParams(
        id="sku", title="name", categories="cats", categorical=("brand",), numeric=("price",)
    ),
)
USER_META = MetadataParams(
    path=None, columns=MetadataColumnsParams(id="uid", categorical=("country",), numeric=("age",))
)
COLUMNS = ColumnMap(user="uid", item="sku", time="ts", rating="stars", time_unit="ms")


def own_data(tmp_path: Path, iso: bool = False) -> dict:
    raw = tmp_path / "raw"
    log = write_log(raw, power_law_log(), iso=iso)
    items = ITEM_META.__class__(**{**ITEM_META.__dict__, "path": str(write_items(raw))})
    users = USER_META.__class__(**{**USER_META.__dict__, "path": str(write_users(raw))})
    columns = COLUMNS if not iso else ColumnMap(user="uid", item="sku", time="ts", rating="stars")
    return {"log": log, "items": items, "users": users, "columns": columns}


@pytest.mark.parametrize("iso", [False, True], ids=["milliseconds", "iso-8601"])
def test_a_realistic_log_goes_through_ingest_validate_and_features(tmp_path: Path, iso: bool):
    data = own_data(tmp_path, iso)
    interim = tmp_path / "interim"
    summary = ingest(
        "csv", data["log"], interim, data["columns"], sep=";", items=data["items"],
        users=data["users"],
    )  # fmt: skip
    assert summary["item_metadata"] == {
        "rows": 60,
        "columns": ["title", "genres", "year", "brand", "price"],
    }
    log = pl.read_parquet(interim / "interactions.parquet")
    rows = power_law_log()
    assert log.height == len(rows)
    assert log["user_id"][0] == "user 0 é" and "产品-0" in log["item_id"].to_list()
    # milliseconds and ISO strings give the same epoch seconds
    assert log["timestamp"].to_list() == [ms // 1000 for _, _, ms, _ in rows]

    items = pl.read_parquet(interim / "items.parquet")
    assert items.columns == ["item_id", "title", "genres", "year", "brand", "price"]
    first = items.row(1, named=True)  # SKU 1: two categories, a brand, a price
    assert first == {
        "item_id": "SKU 1", "title": "Product 1", "genres": ["Make-up", "Hair"], "year": None,
        "brand": ["Nivea"], "price": 4.5,
    }  # fmt: skip
    blank = items.row(0, named=True)  # 产品-0: no categories, no brand, no price
    assert (blank["genres"], blank["brand"], blank["price"]) == ([], [], None)
    users = pl.read_parquet(interim / "users.parquet")
    assert users.columns == ["user_id", "country", "age"]
    assert users.row(1, named=True) == {"user_id": "ü1", "country": "DE", "age": 19.0}

    report = tmp_path / "report"
    result = validate(interim, report, ValidateParams(), kcore=(2, 2))
    checks = json.loads((report / "summary.json").read_text())
    assert checks["success"] is True  # many one-interaction users and duplicates: warnings only
    singles = sum(1 for n in pl.Series([r[0] for r in rows]).value_counts()["count"] if n == 1)
    assert singles / log["user_id"].n_unique() > 0.4
    warned = {(w["column"], w["check"]): w["count"] for w in checks["warnings"]}
    assert (
        warned["interactions_per_user", "expect_column_values_to_be_between [2, None]"] == singles
    )
    assert result["duplicates"] == 8
    kcore = checks["kcore"]

    out = tmp_path / "features"
    built = build_features(
        interim, out, FeaturesParams(min_user_interactions=2, min_item_interactions=2), 0, report
    )
    manifest = json.loads((out / "manifest.json").read_text())
    # what validate said the filter would drop is what it dropped
    assert {
        k: manifest["counts"]["kcore"][k] for k in kcore if k.endswith(("removed", "share"))
    } == {k: v for k, v in kcore.items() if k.endswith(("removed", "share"))}
    assert built["kcore_dropped"].startswith(f"{kcore['rows_removed']} rows (")
    assert manifest["counts"]["duplicates_removed"] == 8

    # every categorical column is in the item feature tensor, not only the genres
    vocab = json.loads((out / "items" / "genres.json").read_text())
    assert {"Make-up", "brand=L'Oréal", "brand=Nivea", "price=q1", "price=q5"} <= set(vocab)
    assert manifest["item_features"]["columns"] == ["genres", "brand", "price"]
    tensor = np.load(out / "items" / "genres.npy")
    item_map = pl.read_parquet(out / "item_map.parquet")
    idx = dict(zip(item_map["item_id"], item_map["item_idx"], strict=True))
    row = tensor[idx["SKU 1"]]
    assert {vocab[k] for k in np.flatnonzero(row)} == {"Make-up", "Hair", "brand=Nivea", "price=q1"}
    # user features: the country as a category, the age in its bucket
    info = json.loads((out / "users" / "user_features.json").read_text())
    assert info["columns"] == ["country", "age"] and info["vocabularies"]["country"] == [
        "DE",
        "FR",
        "JP",
    ]


def test_own_data_through_the_cli_with_params_yaml_alone(tmp_path: Path, monkeypatch, capsys):
    data = own_data(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"] |= {
        "source": "csv",
        "path": str(data["log"]),
        "sep": ";",
        "columns": {"user": "uid", "item": "sku", "time": "ts", "rating": "stars",
                    "time_unit": "ms"},
        "items": {"path": str(data["items"].path), "sep": None, "list_sep": "|",
                  "columns": {"id": "sku", "title": "name", "categories": "cats",
                              "categorical": ["brand"], "numeric": ["price"]}},
        "users": {"path": str(data["users"].path),
                  "columns": {"id": "uid", "categorical": ["country"], "numeric": ["age"]}},
    }  # fmt: skip
    params["features"] |= {"min_user_interactions": 2, "min_item_interactions": 2}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, allow_unicode=True))
    monkeypatch.chdir(tmp_path)
    for command in ("ingest", "validate", "features"):
        assert cli.main([command]) in (0, None)
    printed = capsys.readouterr().out
    assert "kcore_dropped" in printed and "of the catalogue" in printed
    assert "interactions_per_user expect_column_values_to_be_between [3, None]" in printed
    assert (tmp_path / "data/interim/users.parquet").is_file()
    assert json.loads((tmp_path / "reports/validation/validated.json").read_text())["verdict"] == (
        "passed"
    )


def write_benchmark(folder: Path) -> tuple[Path, Path]:
    """The S3-Rec/FMLP-Rec form: one user per line, then the JSON item attributes."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["1 1 2 3 4 5", "2 6 7 8 9 10 4 11", "3 2 3 1", "4 5 4"]
    seq = folder / "Shop.txt"
    seq.write_text("\n".join(lines) + "\n")
    attributes = {str(i): [i % 3 + 1, 10 + i % 2] for i in range(1, 12)}
    attributes["99"] = [5]  # an item nobody bought: a warning, not an error
    meta = folder / "Shop_item2attributes.json"
    meta.write_text(json.dumps(attributes))
    return seq, meta


def test_one_user_per_line_with_json_item_attributes(tmp_path: Path):
    seq, meta = write_benchmark(tmp_path / "raw")
    interim = tmp_path / "interim"
    ingest("seq", seq, interim, items=MetadataParams(path=str(meta)))
    log = pl.read_parquet(interim / "interactions.parquet")
    assert log.height == 5 + 7 + 3 + 2
    first = log.filter(pl.col("user_id") == "2")
    assert first["item_id"].to_list() == ["6", "7", "8", "9", "10", "4", "11"]
    assert first["timestamp"].is_sorted() and log["timestamp"].n_unique() == log.height
    items = pl.read_parquet(interim / "items.parquet")
    assert items.filter(pl.col("item_id") == "4")["genres"].to_list() == [["2", "10"]]

    report = tmp_path / "report"
    validate(interim, report, ValidateParams(), kcore=(1, 1))
    warnings = json.loads((report / "summary.json").read_text())["warnings"]
    by_table = {w["table"]: w["count"] for w in warnings}
    assert by_table == {"item_table": 1, "interactions_per_user": 1}  # item 99; user 4
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1)
    build_features(interim, tmp_path / "features", params, 0, report)
    vocab = json.loads((tmp_path / "features/items/genres.json").read_text())
    assert vocab == ["1", "10", "11", "2", "3"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            "bad price",
            "items.csv: column 'price' has 1 value(s) that are not numbers, e.g. 'cheap'",
        ),
        (
            "missing column",
            "items.csv: missing column(s) brand; columns found: 'sku', 'name', 'cats', 'price'",
        ),
        ("json list", 'attrs.json: expected an object {"item": [attribute ids]}, got a list'),
    ],
)
def test_bad_metadata_is_one_line_naming_file_and_column(tmp_path: Path, case: str, message: str):
    seq, _ = write_benchmark(tmp_path / "raw")
    meta = ITEM_META
    if case == "json list":
        path = tmp_path / "attrs.json"
        path.write_text("[[1, 2]]")
        meta = MetadataParams()
    else:
        path = tmp_path / "items.csv"
        header = "sku,name,cats,price" if case == "missing column" else "sku,name,cats,brand,price"
        row = "1,One,A|B,2.0" if case == "missing column" else "1,One,A|B,X,cheap"
        path.write_text(f"{header}\n{row}\n")
    meta = MetadataParams(path=str(path), columns=meta.columns)
    out = tmp_path / "interim"
    with pytest.raises(RecsysError) as info:
        ingest("seq", seq, out, items=meta)
    assert str(info.value).endswith(message) and "\n" not in str(info.value)
    assert not out.exists()


def test_metadata_files_do_not_apply_to_movielens(tmp_path: Path):
    with pytest.raises(RecsysError, match=r"ingest.items.path: movielens-100k brings its own"):
        ingest("movielens-100k", tmp_path, tmp_path / "o", items=MetadataParams(path="x.csv"))


@pytest.mark.slow
@pytest.mark.skipif(not (BEAUTY / "Beauty.txt").is_file(), reason="../shared/data/beauty absent")
def test_amazon_beauty_reads_in_place(tmp_path: Path):
    """The public benchmark as its authors ship it, read where it lies (never copied)."""
    interim = tmp_path / "interim"
    meta = MetadataParams(path=str(BEAUTY / "Beauty_item2attributes.json"))
    summary = ingest("seq", BEAUTY / "Beauty.txt", interim, items=meta)
    assert (summary["users"], summary["items"], summary["rows"]) == (22_363, 12_101, 198_502)
    report = tmp_path / "report"
    validate(interim, report, ValidateParams(), kcore=(5, 5))
    checks = json.loads((report / "summary.json").read_text())
    assert checks["success"] is True and checks["errors"] == []
    built = build_features(interim, tmp_path / "features", FeaturesParams(), 0, report)
    manifest = json.loads((tmp_path / "features/manifest.json").read_text())
    assert manifest["counts"]["kcore"] == {
        k: v for k, v in checks["kcore"].items() if not k.startswith("min_")
    }
    assert manifest["item_features"]["with_metadata"] == built["items"]
    assert manifest["item_features"]["genres"] > 100  # the attributes are the item features


def benchmark_features(tmp_path: Path, with_attributes: bool) -> Path:
    seq, meta = write_benchmark(tmp_path / "raw")
    interim, report, out = tmp_path / "interim", tmp_path / "report", tmp_path / "features"
    items = MetadataParams(path=str(meta)) if with_attributes else None
    ingest("seq", seq, interim, items=items)
    validate(interim, report, ValidateParams())
    params = FeaturesParams(min_user_interactions=1, min_item_interactions=1)
    build_features(interim, out, params, 0, report)
    return out


def test_content_based_is_refused_without_item_metadata_and_the_flow_skips_it(tmp_path: Path):
    from flows.pipeline import skipped_models, summary_markdown
    from tasks.params import load_params
    from tasks.train import train

    bare = benchmark_features(tmp_path / "bare", with_attributes=False)
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(RecsysError) as info:
        train("content_based", bare, tmp_path / "models" / "content_based", params)
    assert str(info.value) == (
        "model content_based needs item metadata (genres, categories or other item columns); "
        "the features have none (give an item metadata file in params.yaml ingest.items)"
    )
    assert not (tmp_path / "models" / "content_based").exists()

    reasons = skipped_models(("popularity", "content_based", "two_tower", "rating_mf"), str(bare))
    assert reasons == {
        "content_based": "model content_based needs item metadata (genres, categories or other "
        "item columns); the features have none",
        "rating_mf": "model rating_mf needs ratings on every training row; the features have none",
    }  # two_tower uses metadata where it exists and trains on ids where it does not
    table = summary_markdown({"train": {"content_based": {"skipped": reasons["content_based"]}}})
    assert "| content_based | skipped: model content_based needs item metadata" in table

    # dvc.yaml's stages run every model: --skip-unusable leaves a placeholder saying why,
    # which neither evaluate nor export takes for a trained model
    from tasks import model_store

    folder = tmp_path / "models" / "content_based"
    assert train("content_based", bare, folder, params, skip_unusable=True) == {
        "skipped": str(info.value)
    }
    assert (folder / "weights.pt").read_bytes() == b""
    assert model_store.skipped_reason(folder) == str(info.value)
    assert model_store.trained_models(tmp_path / "models", "loo") == []
    with pytest.raises(RecsysError, match=r"config.json: not trained: model content_based needs"):
        model_store.read_record(folder)

    # with the benchmark's attributes it trains, and reads them
    rich = benchmark_features(tmp_path / "rich", with_attributes=True)
    assert skipped_models(("content_based",), str(rich)) == {}
    metrics = train("content_based", rich, tmp_path / "models" / "cb", params)
    assert "missing_data" not in metrics


def test_the_served_catalogue_lists_every_tag_of_the_item_feature_tensor(tmp_path: Path):
    data = own_data(tmp_path)
    interim, report, out = tmp_path / "interim", tmp_path / "report", tmp_path / "features"
    ingest("csv", data["log"], interim, data["columns"], sep=";", items=data["items"])
    validate(interim, report, ValidateParams())
    build_features(
        interim, out, FeaturesParams(min_user_interactions=1, min_item_interactions=1), 0, report
    )
    catalog = pl.read_parquet(out / "items" / "items.parquet")
    vocab = json.loads((out / "items" / "genres.json").read_text())
    tensor = np.load(out / "items" / "genres.npy")
    for row in catalog.iter_rows(named=True):
        assert sorted(row["genres"]) == sorted(
            vocab[k] for k in np.flatnonzero(tensor[row["item_idx"]])
        )


@pytest.mark.slow
@pytest.mark.skipif(not (BEAUTY / "Beauty.txt").is_file(), reason="../shared/data/beauty absent")
def test_content_based_uses_the_beauty_attributes(tmp_path: Path):
    """The attributes carry signal on Beauty: content-based beats popularity on validation
    (measured: NDCG@10 0.0223 against 0.0078), which it could not without reading them."""
    from tasks.params import load_params
    from tasks.train import train

    interim, report, out = tmp_path / "interim", tmp_path / "report", tmp_path / "features"
    meta = MetadataParams(path=str(BEAUTY / "Beauty_item2attributes.json"))
    ingest("seq", BEAUTY / "Beauty.txt", interim, items=meta)
    validate(interim, report, ValidateParams(), kcore=(5, 5))
    build_features(interim, out, FeaturesParams(), 0, report)
    params = load_params(ROOT / "params.yaml")
    scores = {
        m: train(m, out, tmp_path / "models" / m, params) for m in ("popularity", "content_based")
    }
    assert scores["content_based"]["ndcg@10"] > 2 * scores["popularity"]["ndcg@10"]


def test_without_item_categories_diversity_is_not_available_never_a_constant(tmp_path: Path):
    """Intra-list diversity needs item categories: without them the metric is absent, the
    report says n/a and no guardrail is checked on it; with them it is measured."""
    from tasks.evaluate import evaluate
    from tasks.params import load_params
    from tasks.train import train

    params = load_params(ROOT / "params.yaml", {"evaluate.protocols": ["loo"]})
    for name, attributes in (("bare", False), ("rich", True)):
        features = benchmark_features(tmp_path / name, with_attributes=attributes)
        models, out = tmp_path / name / "models", tmp_path / name / "evaluation"
        for model in ("popularity", "itemknn"):
            train(model, features, models / model, params)
        summary = evaluate(features, models, out, params, dvc_file=tmp_path / "none.dvc")
        beyond = pl.read_csv(out / "metrics.csv").filter(pl.col("protocol") == "loo/beyond")
        guardrails = json.loads((out / "comparison.json").read_text())["challengers"][0]
        if attributes:
            assert all(0.0 < d < 1.0 for d in beyond["diversity@10"])
            assert "diversity@10" in guardrails["guardrails"]
        else:
            assert "diversity@10" not in beyond.columns or beyond["diversity@10"].is_null().all()
            assert "diversity@10" not in guardrails["guardrails"]
            beyond = summary["report"].split("Leave-one-out, beyond accuracy")[1]
            rows = [line for line in beyond.splitlines() if line.startswith("| itemknn")]
            assert rows and rows[0].count("| n/a") == 1


def write_topic_benchmark(folder: Path, seed: int = 5) -> tuple[Path, Path]:
    """A generated set in the S3-Rec form whose item attributes carry the generator's topics:
    one line per user (`user item item ...`, in time order) and `item -> [attribute ids]`."""
    from tasks.synth import synthesize

    synthesize(folder / "synth", n_users=200, n_items=120, n_interactions=5000, seed=seed)
    log = pl.read_parquet(folder / "synth/interactions.parquet").sort(
        "timestamp", maintain_order=True
    )
    lines = log.group_by("user_id", maintain_order=True).agg("item_id")
    seq = folder / "Topics.txt"
    seq.write_text("".join(f"{u} {' '.join(items)}\n" for u, items in lines.iter_rows()))
    genres = pl.read_parquet(folder / "synth/items.parquet").select("item_id", "genres")
    attributes = {
        item: [int(g.removeprefix("genre_")) + 1 for g in names]
        for item, names in genres.iter_rows()
    }
    meta = folder / "Topics_item2attributes.json"
    meta.write_text(json.dumps(attributes))
    return seq, meta


@pytest.mark.slow
def test_one_user_per_line_with_attributes_from_ingest_to_serve(tmp_path: Path):
    """The S3-Rec form with its attribute JSON: content-based and two-tower train on the
    attributes, are exported and served; the service filters by attribute."""
    from tasks import registry
    from tasks.export import export
    from tasks.params import load_params
    from tasks.train import train
    from tests.test_serve import server

    seq, meta = write_topic_benchmark(tmp_path / "raw")
    interim, report, features = tmp_path / "interim", tmp_path / "report", tmp_path / "features"
    ingest("seq", seq, interim, items=MetadataParams(path=str(meta)))
    validate(interim, report, ValidateParams())
    build_features(interim, features, FeaturesParams(), 0, report)
    manifest = json.loads((features / "manifest.json").read_text())
    assert manifest["item_features"]["genres"] > 0  # the attribute ids are the item features
    params = load_params(
        ROOT / "params.yaml", {"features.out": str(features), "train.max_epochs": 3}
    )
    models, artifacts = tmp_path / "models", tmp_path / "artifacts"
    versions = {}
    for name in ("popularity", "content_based", "two_tower"):
        metrics = train(name, features, models / name, params)
        assert "missing_data" not in metrics, (name, metrics["missing_data"])
        versions[name] = export(
            name, models, features, artifacts, parity_users=16, latency_calls=5, data_dvc=None
        )["version"]
    scores = {m: json.loads((models / m / "metrics.json").read_text()) for m in versions}
    # the attributes carry the generator's topics: content-based reads them, popularity cannot
    assert scores["content_based"]["ndcg@10"] > scores["popularity"]["ndcg@10"]

    registry.promote(artifacts, "two_tower", versions["two_tower"], "test")
    user = seq.read_text().split(maxsplit=1)[0]
    with server(artifacts, tmp_path / "serve.log") as client:
        answer = client.get(f"/recommend/{user}", params={"k": 5}).json()
        assert answer["model"] == "two_tower" and not answer["fallback"]
        assert len(answer["items"]) == 5
        tag = answer["items"][0]["genres"][0]
        only = client.get(f"/recommend/{user}", params={"k": 5, "include_genres": tag}).json()
        assert only["items"] and all(tag in item["genres"] for item in only["items"])
        similar = client.get(f"/items/{answer['items'][0]['item_id']}/similar", params={"k": 3})
        assert similar.status_code == 200 and len(similar.json()["items"]) == 3

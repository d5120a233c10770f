"""The validate stage: each kind of bad data fails with a line that names it; good data passes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from cli import main as cli
from tasks.errors import RecsysError, ValidationFailed
from tasks.io import dir_hashes
from tasks.params import ValidateParams
from tasks.schema import INTERACTIONS
from tasks.validate import REFERENCE_FILE, validate

ROOT = Path(__file__).resolve().parents[1]
T0 = 1_600_000_000
ITEMS = [f"i{k}" for k in range(6)]


def interactions(n_users: int = 6, per_user: int = 4, items: list[str] = ITEMS) -> pl.DataFrame:
    """Each user rates `per_user` items, cycling through `items`; no duplicates, all in range."""
    rows = [
        (f"u{u}", items[(u + k) % len(items)], T0 + 100 * u + k, 1.0 + (u + k) % 5)
        for u in range(n_users)
        for k in range(per_user)
    ]
    return pl.DataFrame(rows, schema=INTERACTIONS, orient="row")


def item_table(ids: list[str] = ITEMS) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "item_id": ids,
            "title": [f"title {i}" for i in ids],
            "genres": [["Drama"] for _ in ids],
            "year": pl.Series([1999] * len(ids), dtype=pl.Int32),
        }
    )


def write_interim(folder: Path, df: pl.DataFrame, items: pl.DataFrame | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    df.write_parquet(folder / "interactions.parquet")
    if items is not None:
        items.write_parquet(folder / "items.parquet")
    return folder


def failure_lines(interim: Path, out: Path, params: ValidateParams | None = None) -> list[str]:
    with pytest.raises(ValidationFailed) as info:
        validate(interim, out, params or ValidateParams())
    return info.value.lines


def with_value(df: pl.DataFrame, column: str, rows: dict[int, object]) -> pl.DataFrame:
    """df with the values of `column` at the given row positions replaced."""
    values = df[column].to_list()
    for row, value in rows.items():
        values[row] = value
    return df.with_columns(pl.Series(column, values, dtype=df.schema[column]))


def renamed(df: pl.DataFrame, column: str, old: str, new: str) -> pl.DataFrame:
    """Every row of one id renamed, so only the new id's spelling can fail (no phantom user
    with too few interactions)."""
    return df.with_columns(
        pl.when(pl.col(column) == old).then(pl.lit(new)).otherwise(pl.col(column)).alias(column)
    )


def only_line(lines: list[str]) -> str:
    assert len(lines) == 1, lines
    return lines[0]


def test_clean_data_passes_and_writes_the_report(tmp_path: Path) -> None:
    interim = write_interim(tmp_path / "interim", interactions(), item_table())
    out = tmp_path / "report"
    result = validate(interim, out, ValidateParams())

    assert (result["rows"], result["users"], result["items"], result["duplicates"]) == (24, 6, 6, 0)
    assert result["expectations"].endswith("0 errors, 0 warning(s)")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success"] is True
    assert summary["input_hashes"] == dir_hashes(interim)
    assert summary["drift"] is None
    assert all(e["success"] for e in summary["expectations"])
    assert summary["errors"] == summary["warnings"] == []
    assert json.loads((out / "validated.json").read_text())["verdict"] == "passed"
    assert {"expectation", "column", "success", "unexpected_count", "examples"} <= set(
        summary["expectations"][0]
    )
    assert Path(summary["data_docs"]) == out / "data_docs" / "index.html"
    assert (out / "data_docs" / "index.html").is_file()
    assert (out / REFERENCE_FILE).is_file()


def test_implicit_data_with_null_ratings_passes(tmp_path: Path) -> None:
    df = interactions().with_columns(pl.lit(None, dtype=pl.Float64).alias("rating"))
    validate(write_interim(tmp_path / "interim", df), tmp_path / "report", ValidateParams())


def test_missing_and_corrupt_files_name_the_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RecsysError, match="interactions.parquet: not found"):
        validate(empty, tmp_path / "report", ValidateParams())
    (empty / "interactions.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(RecsysError, match="interactions.parquet: not a readable Parquet file"):
        validate(empty, tmp_path / "report", ValidateParams())


def test_wrong_type_fails(tmp_path: Path) -> None:
    df = interactions().with_columns(pl.col("timestamp").cast(pl.String))
    line = only_line(failure_lines(write_interim(tmp_path / "i", df), tmp_path / "r"))
    assert line == (
        "interactions.parquet: timestamp expect_column_values_to_be_in_set ['Int64']: got String"
    )


def test_missing_and_extra_columns_fail(tmp_path: Path) -> None:
    df = interactions().drop("rating").with_columns(pl.lit(1).alias("extra"))
    line = only_line(failure_lines(write_interim(tmp_path / "i", df), tmp_path / "r"))
    assert line.startswith("interactions.parquet: expect_table_columns_to_match_set")
    assert "missing ['rating']" in line and "unexpected ['extra']" in line


def test_null_ids_fail(tmp_path: Path) -> None:
    df = interactions().with_columns(
        pl.when(pl.int_range(pl.len()) == 5)
        .then(None)
        .otherwise(pl.col("item_id"))
        .alias("item_id")
    )
    line = only_line(failure_lines(write_interim(tmp_path / "i", df), tmp_path / "r"))
    assert (
        line
        == "interactions.parquet: item_id expect_column_values_to_not_be_null: 1 rows, e.g. row 5"
    )


def test_rating_out_of_range_fails(tmp_path: Path) -> None:
    df = interactions()
    df = df.with_columns(pl.Series("rating", [7.0, -1.0] + df["rating"].to_list()[2:]))
    line = only_line(failure_lines(write_interim(tmp_path / "i", df), tmp_path / "r"))
    assert line == (
        "interactions.parquet: rating expect_column_values_to_be_between [0.5, 5]: "
        "2 rows, e.g. 7.0, -1.0"
    )


def test_nan_and_infinite_ratings_fail_with_their_rows(tmp_path: Path) -> None:
    # Nulls are fine (implicit feedback); NaN and +-inf are not, and each is reported once
    # (not also as out of range), by its row in interactions.parquet (counted from 0).
    nan, inf = float("nan"), float("inf")
    df = with_value(interactions(), "rating", {2: None, 3: nan, 7: inf, 10: -inf})
    line = only_line(failure_lines(write_interim(tmp_path / "i", df), tmp_path / "r"))
    assert line == (
        "interactions.parquet: rating_not_finite expect_column_values_to_be_null: "
        "3 rows, e.g. row 3 (NaN), row 7 (inf), row 10 (-inf)"
    )
    failed = [
        e
        for e in json.loads((tmp_path / "r" / "summary.json").read_text())["expectations"]
        if not e["success"]
    ]
    assert [(e["column"], e["unexpected_count"]) for e in failed] == [("rating_not_finite", 3)]


@pytest.mark.parametrize("char", ["\x00", "\n", "\t", "\x1f", "\x7f"])
@pytest.mark.parametrize("column", ["user_id", "item_id"])
def test_control_characters_in_ids_fail(tmp_path: Path, column: str, char: str) -> None:
    old = "u1" if column == "user_id" else "i1"
    bad = f"{old[0]}{char}{old[1]}"
    df = renamed(interactions(), column, old, bad)
    line = only_line(failure_lines(write_interim(tmp_path / "i", df), tmp_path / "r"))
    unit = "users" if column == "user_id" else "items"
    assert line == (
        f"interactions.parquet: {column} expect_column_values_to_not_match_regex "
        f"[\\x00-\\x1f\\x7f]: 1 {unit}, e.g. {bad!r}"
    )
    assert "\n" not in line and "\x00" not in line  # the id is shown escaped, on one line


def test_ids_longer_than_max_id_length_fail(tmp_path: Path) -> None:
    long_id = "u" * 300
    df = renamed(interactions(), "user_id", "u1", long_id)
    interim = write_interim(tmp_path / "i", df)
    line = only_line(failure_lines(interim, tmp_path / "r"))  # the default limit: 256
    assert line == (
        "interactions.parquet: user_id expect_column_value_lengths_to_be_between [1, 256]: "
        f"1 users, e.g. {'u' * 40}... (300 characters)"
    )
    validate(interim, tmp_path / "r", ValidateParams(max_id_length=300))
    short = renamed(interactions(), "item_id", "i1", "item-1")
    line = only_line(
        failure_lines(
            write_interim(tmp_path / "j", short), tmp_path / "r", ValidateParams(max_id_length=5)
        )
    )
    assert line == (
        "interactions.parquet: item_id expect_column_value_lengths_to_be_between [1, 5]: "
        "1 items, e.g. item-1"
    )


def test_empty_ids_fail(tmp_path: Path) -> None:
    df = renamed(interactions(), "item_id", "i1", "")
    line = only_line(failure_lines(write_interim(tmp_path / "i", df), tmp_path / "r"))
    assert line == (
        "interactions.parquet: item_id expect_column_value_lengths_to_be_between [1, 256]: "
        "1 items, e.g. ''"
    )


def test_a_failed_validation_keeps_the_reference_and_reports_the_failure(tmp_path: Path) -> None:
    """What a failure leaves in the report folder: the previous validated profile unchanged
    (the next drift check compares with it), and a summary that says what failed, which the
    features stage refuses to build from."""
    out = validated_once(tmp_path)
    reference = (out / REFERENCE_FILE).read_bytes()
    bad = renamed(
        with_value(interactions(), "rating", {0: float("nan")}), "user_id", "u2", "u\x002"
    )
    lines = failure_lines(write_interim(tmp_path / "v2", bad), out)
    assert [line.split(" ")[1] for line in lines] == ["rating_not_finite", "user_id"]
    assert (out / REFERENCE_FILE).read_bytes() == reference
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success"] is False and summary["input_hashes"] == dir_hashes(tmp_path / "v2")
    assert (out / "data_docs" / "index.html").is_file()


@pytest.mark.parametrize("when", ["negative", "future"])
def test_timestamp_out_of_range_fails(tmp_path: Path, when: str) -> None:
    # computed here, not in the parametrize list: pytest-xdist workers must collect equal ids
    bad = -5 if when == "negative" else int(time.time()) + 10 * 86_400
    df = interactions().with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(bad)
        .otherwise(pl.col("timestamp"))
        .alias("timestamp")
    )
    line = only_line(failure_lines(write_interim(tmp_path / "i", df), tmp_path / "r"))
    assert line.startswith(
        "interactions.parquet: timestamp expect_column_values_to_be_between [0, "
    )
    assert line.endswith(f": 1 rows, e.g. {bad}")


def warnings_of(out: Path) -> list[dict]:
    return json.loads((out / "summary.json").read_text())["warnings"]


def test_too_many_duplicates_are_a_warning_with_their_count(tmp_path: Path) -> None:
    df = interactions()
    df = pl.concat([df, df.head(3)])  # 3 of 27 rows: 0.111 > 0.05
    result = validate(write_interim(tmp_path / "i", df), tmp_path / "r", ValidateParams())
    [warning] = warnings_of(tmp_path / "r")
    assert warning["line"] == (
        "interactions.parquet: duplicate_fraction expect_column_values_to_be_between [0, 0.05]: "
        "got 0.1111 (3 duplicate rows)"
    )
    assert (warning["count"], warning["unit"]) == (3, "duplicate rows")
    assert result["warnings"] == [warning["line"]]
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["duplicates"] == 3


def test_duplicates_under_the_threshold_pass_but_are_counted(tmp_path: Path) -> None:
    df = interactions()
    df = pl.concat([df, df.head(1)])  # 1 of 25 rows: 0.04 <= 0.05
    result = validate(write_interim(tmp_path / "i", df), tmp_path / "r", ValidateParams())
    assert result["duplicates"] == 1 and result["warnings"] == "none"
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["duplicates"] == 1


def test_item_missing_from_item_table_is_a_warning(tmp_path: Path) -> None:
    interim = write_interim(tmp_path / "i", interactions(), item_table(ITEMS[:-1]))
    validate(interim, tmp_path / "r", ValidateParams())
    [warning] = warnings_of(tmp_path / "r")
    assert warning["line"] == (
        "interactions.parquet: in_item_table expect_column_values_to_be_in_set [True]: "
        f"1 items, e.g. {ITEMS[-1]}"
    )


def test_item_table_rows_for_unknown_items_are_a_warning(tmp_path: Path) -> None:
    interim = write_interim(tmp_path / "i", interactions(), item_table([*ITEMS, "never rated"]))
    validate(interim, tmp_path / "r", ValidateParams())
    [warning] = warnings_of(tmp_path / "r")
    assert (warning["table"], warning["count"], warning["unit"]) == ("item_table", 1, "items")
    assert warning["line"].endswith("1 items, e.g. never rated")


@pytest.mark.parametrize("table", ["items", "users"])
def test_a_metadata_table_whose_keys_match_nothing_fails(tmp_path: Path, table: str) -> None:
    interim = write_interim(tmp_path / "i", interactions())
    if table == "items":  # ids in another form: "0" instead of "i0"
        item_table([str(k) for k in range(6)]).write_parquet(interim / "items.parquet")
    else:
        pl.DataFrame({"user_id": ["1", "2"], "age": [20, 30]}).write_parquet(
            interim / "users.parquet"
        )
    key = "item_id" if table == "items" else "user_id"
    line = only_line(failure_lines(interim, tmp_path / "r"))
    assert line == (
        f"{table}.parquet: {key}s_matching expect_column_sum_to_be_between [1, None]: got 0"
    )
    assert not (tmp_path / "r" / "validated.json").exists()


def test_users_without_a_user_row_are_a_warning(tmp_path: Path) -> None:
    interim = write_interim(tmp_path / "i", interactions())
    users = pl.DataFrame({"user_id": ["u0", "u1", "u2", "u3", "u4"], "age": [20] * 5})
    users.write_parquet(interim / "users.parquet")
    validate(interim, tmp_path / "r", ValidateParams())
    [warning] = warnings_of(tmp_path / "r")
    assert warning["line"] == (
        "interactions.parquet: in_user_table expect_column_values_to_be_in_set [True]: "
        "1 users, e.g. u5"
    )


def test_users_below_the_minimum_are_a_warning(tmp_path: Path) -> None:
    df = interactions().filter((pl.col("user_id") != "u2") | (pl.col("timestamp") == T0 + 200))
    result = validate(write_interim(tmp_path / "i", df), tmp_path / "r", ValidateParams())
    assert result["warnings"] == [
        "interactions.parquet: interactions_per_user expect_column_values_to_be_between [3, None]: "
        "1 users, e.g. u2 (1)"
    ]


def sparse_log(n_users: int = 100, n_items: int = 30) -> pl.DataFrame:
    """60% of the users have one interaction, the rest ten; items cycle, so all are popular."""
    rows = []
    for u in range(n_users):
        for k in range(1 if u < 0.6 * n_users else 10):
            rows.append((f"u{u}", f"i{(u * 7 + k) % n_items}", T0 + 1000 * u + k, 4.0))
    return pl.DataFrame(rows, schema=INTERACTIONS, orient="row")


def test_a_log_where_most_users_have_one_interaction_passes_with_warnings(tmp_path: Path) -> None:
    interim = write_interim(tmp_path / "i", sparse_log())
    out = tmp_path / "r"
    result = validate(interim, out, ValidateParams(), kcore=(5, 5))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success"] is True and summary["errors"] == []
    by_check = {(w["column"], w["check"]): w for w in summary["warnings"]}
    below_3 = by_check["interactions_per_user", "expect_column_values_to_be_between [3, None]"]
    below_5 = by_check["interactions_per_user", "expect_column_values_to_be_between [5, None]"]
    assert below_3["count"] == below_5["count"] == 60
    # the k-core filter drops exactly the one-interaction users and their 60 rows
    assert summary["kcore"] == {
        "min_user_interactions": 5,
        "min_item_interactions": 5,
        "rows_removed": 60,
        "rows_share": round(60 / 460, 6),
        "users_removed": 60,
        "users_share": 0.6,
        "items_removed": 0,
        "items_share": 0.0,
    }
    rows_dropped = by_check["kcore_rows_dropped", "expect_column_values_to_be_between [0, 0]"]
    assert (rows_dropped["count"], rows_dropped["unit"]) == (60, "rows")
    assert "kcore_items_dropped" not in {w["column"] for w in summary["warnings"]}
    assert len(result["warnings"]) == len(summary["warnings"]) == 4
    # the Data Docs show the warnings too, marked as such
    docs = "".join(p.read_text() for p in (out / "data_docs").rglob("*.html"))
    assert "Warning only (the run goes on)" in docs


def test_the_prefect_artifact_lists_warnings_apart_from_failures(tmp_path: Path) -> None:
    from flows.artifacts import validation_markdown

    out = tmp_path / "r"
    validate(write_interim(tmp_path / "i", sparse_log()), out, ValidateParams(), kcore=(5, 5))
    text = validation_markdown(out / "summary.json")
    assert text.startswith("# Validation: passed")
    assert "0 failed, 4 warned." in text
    assert "| interactions_per_user | interactions_per_user | " in text
    assert "| users | 60 | 0.6000 |" in text


def test_validated_json_is_stable_and_holds_only_what_the_input_decides(tmp_path: Path) -> None:
    interim = write_interim(tmp_path / "i", sparse_log())
    out = tmp_path / "r"
    validate(interim, out, ValidateParams(), kcore=(5, 5))
    first = (out / "validated.json").read_bytes()
    summary = json.loads((out / "summary.json").read_text())
    validate(interim, out, ValidateParams(), kcore=(5, 5))  # now with a drift reference
    assert json.loads((out / "summary.json").read_text())["drift"] is not None
    assert (out / "validated.json").read_bytes() == first
    record = json.loads(first)
    assert set(record) == {"verdict", "input_hashes", "kcore", "warnings"}
    assert record["verdict"] == "passed" and record["input_hashes"] == dir_hashes(interim)
    assert record["warnings"] == summary["warnings"]


def test_every_failed_error_check_is_named(tmp_path: Path) -> None:
    df = with_value(interactions(), "user_id", {0: None})
    df = with_value(df, "rating", {1: 99.0})
    lines = failure_lines(write_interim(tmp_path / "i", df), tmp_path / "r")
    assert any("user_id expect_column_values_to_not_be_null" in line for line in lines)
    assert any("rating expect_column_values_to_be_between [0.5, 5]" in line for line in lines)
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["errors"] == lines


def validated_once(tmp_path: Path) -> Path:
    """A report folder holding the reference profile of `interactions()`."""
    out = tmp_path / "report"
    validate(write_interim(tmp_path / "v1", interactions()), out, ValidateParams())
    return out


def test_drift_in_row_count_fails(tmp_path: Path) -> None:
    out = validated_once(tmp_path)
    bigger = write_interim(tmp_path / "v2", interactions(n_users=12))  # same popularity, 2x rows
    line = only_line(failure_lines(bigger, out))
    assert line == (
        "interactions.parquet: row_change expect_column_values_to_be_between [0, 0.5]: got 1.0"
    )
    drift = json.loads((out / "summary.json").read_text())["drift"]
    assert drift["reference_rows"] == 24 and drift["rows"] == 48 and drift["success"] is False


def test_drift_in_popularity_fails(tmp_path: Path) -> None:
    out = validated_once(tmp_path)
    other = write_interim(tmp_path / "v2", interactions(items=[f"j{k}" for k in range(6)]))
    line = only_line(failure_lines(other, out))
    assert line == (
        "interactions.parquet: popularity_shift expect_column_values_to_be_between [0, 0.3]: "
        "got 1.0"
    )


def test_drift_within_thresholds_passes(tmp_path: Path) -> None:
    out = validated_once(tmp_path)
    result = validate(
        write_interim(tmp_path / "v2", interactions(n_users=7)), out, ValidateParams()
    )
    drift = json.loads((out / "summary.json").read_text())["drift"]
    assert drift["success"] is True and result["drift"]["success"] is True
    assert drift["row_change"] == pytest.approx(4 / 24)
    assert 0 < drift["popularity_shift"] < 0.3


def test_failed_validation_keeps_the_previous_reference(tmp_path: Path) -> None:
    out = validated_once(tmp_path)
    before = (out / REFERENCE_FILE).read_bytes()
    bad = interactions(n_users=7).with_columns(pl.lit(9.0).alias("rating"))
    failure_lines(write_interim(tmp_path / "v2", bad), out)
    assert (out / REFERENCE_FILE).read_bytes() == before
    summary = json.loads((out / "summary.json").read_text())
    assert summary["success"] is False
    assert (out / "data_docs" / "index.html").is_file()


def test_cli_exits_2_with_the_lines_and_no_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # relative paths, as `recsys validate` gets them from params.yaml
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["validate"]["rating_max"] = 4.0
    Path("params.yaml").write_text(yaml.safe_dump(params))
    write_interim(Path("interim"), interactions())
    args = ["validate", "--interim", "interim", "--out", "report", "--params", "params.yaml"]
    code = cli.main(args)
    err = capsys.readouterr().err
    assert code == 2
    assert "rating expect_column_values_to_be_between [0.5, 4]: " in err
    assert "Traceback" not in err
    assert Path("report/data_docs/index.html").is_file()

"""The benchmark figures of README.md and docs/benchmarks.md are the committed JSON's, rendered
by each script's tables().

No benchmark runs here: bench.tables re-renders the committed bench/results/*.json and compares.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from bench import tables

ROOT = Path(__file__).resolve().parents[1]
GATE_ROW = "| 11 | 0.2% [0.0%, 1.4%] | 11.5% [8.5%, 15.0%] |"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of docs/benchmarks.md (where the tables are) and bench/results/, so regenerating
    writes only under tmp_path."""
    shutil.copy(ROOT / "docs" / "benchmarks.md", tmp_path / "benchmarks.md")
    shutil.copytree(ROOT / "bench" / "results", tmp_path / "bench" / "results")
    return tmp_path


def test_readme_and_results_md_match_the_committed_json() -> None:
    assert tables.differences([ROOT / doc for doc in tables.DOCS], ROOT) == []


def test_every_benchmark_json_has_generated_blocks_in_the_docs() -> None:
    sources = {
        b.source for doc in tables.DOCS for b in tables.find_blocks((ROOT / doc).read_text())
    }
    committed = {f"bench/results/{p.name}" for p in (ROOT / "bench" / "results").glob("*.json")}
    assert committed <= sources


def test_a_hand_edited_figure_fails_the_check_naming_its_block(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = project / "benchmarks.md"
    original = readme.read_text()
    assert original.count(GATE_ROW) == 1
    readme.write_text(original.replace(GATE_ROW, GATE_ROW.replace("0.2%", "0.3%", 1)))

    assert tables.main(["--check", "--readme", str(readme), "--root", str(project)]) == 1
    err = capsys.readouterr().err
    assert "generated block bench/results/gate.json table=false_promotion differs" in err
    assert "table=power" not in err  # only the edited block is named

    assert tables.main(["--readme", str(readme), "--root", str(project)]) == 0
    assert readme.read_text() == original  # the prose is kept, the figure restored


def test_a_changed_json_figure_is_flagged_then_regenerated_into_readme_and_md(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = project / "bench" / "results" / "train.json"
    result = json.loads(path.read_text())
    sasrec = next(r for r in result["rows"] if r["model"] == "sasrec")
    assert f"{sasrec['test']['ndcg@10']:.4f}" == "0.1115"
    sasrec["test"]["ndcg@10"] = 0.11204
    path.write_text(json.dumps(result, indent=2) + "\n")
    readme = project / "benchmarks.md"

    assert tables.main(["--check", "--readme", str(readme), "--root", str(project)]) == 1
    err = capsys.readouterr().err
    assert "bench/results/train.json table=models" in err
    assert "bench/results/train.md differs" in err

    assert tables.main(["--readme", str(readme), "--root", str(project)]) == 0
    assert "| sasrec | 0.1120 | 0.2100 |" in readme.read_text()
    assert "| sasrec | 0.1120 | 0.2100 |" in (project / "bench/results/train.md").read_text()
    assert tables.differences(readme, project) == []


def test_markdown_is_assembled_from_tables_for_every_benchmark() -> None:
    """The .md a script writes contains each of its tables() blocks verbatim."""
    for path in sorted((ROOT / "bench" / "results").glob("*.json")):
        module = tables.script(path.stem)
        result = json.loads(path.read_text())
        md = module.markdown(result)
        for block in module.tables(result).values():
            assert block in md, (path.name, block[:60])


def test_unknown_table_is_a_one_line_error_naming_file_line_and_table(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = project / "benchmarks.md"
    readme.write_text(
        readme.read_text().replace("gate.json table=power -->", "gate.json table=powr -->")
    )
    assert tables.main(["--check", "--readme", str(readme), "--root", str(project)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "benchmarks.md:" in err and "gate.json has no table 'powr'" in err and "power" in err


def test_an_unclosed_block_is_refused(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = project / "benchmarks.md"
    text = readme.read_text()
    head, _, tail = text.partition("<!-- /generated -->\n")  # drop the first closing marker
    readme.write_text(head + tail)
    assert tables.main(["--check", "--readme", str(readme), "--root", str(project)]) == 2
    assert "has no <!-- /generated --> before the next one" in capsys.readouterr().err


def _evaluate_output(folder: Path) -> Path:
    """A two-model `recsys evaluate` output: metrics.csv and decision.json as the stage writes."""
    full = {"ndcg@10": 0.1, "hr@10": 0.2, "mrr": 0.05, "auc": 0.8, "recall@10": 0.2}
    beyond = {
        "coverage@10": 0.5,
        "novelty@10": 2.0,
        "diversity@10": 0.6,
        "popularity_percentile@10": 0.9,
    }
    metrics = {
        "loo": {
            "itemknn": {"full": full, "sampled": {"ndcg@10": 0.3}, "beyond": beyond, "users": 9},
            "sasrec": {
                "full": {**full, "ndcg@10": 0.12341},
                "sampled": {"ndcg@10": 0.4},
                "beyond": beyond,
                "users": 9,
            },
        },
        "temporal": {"itemknn": {"full": full, "users": 3}},
    }
    decision = {
        "data_version": {"features_manifest_sha256": "f" * 64},
        "primary": {"metric": "ndcg@10"},
        "champion": "itemknn",
        "champion_source": "best baseline",
        "evidence": [
            {
                "challenger": "sasrec",
                "users": 9,
                "mean_diff": 0.02341,
                "ci95": [-0.001, 0.05],
                "p_wilcoxon": 0.0000123,
                "p_holm": 0.0000123,
            }
        ],
    }
    rows = [  # metrics.csv: one row per model and protocol card, as tasks/evaluate.py writes
        {"model": model, "protocol": f"{split}/{kind}", "split": split, "users": m["users"]}
        | m[kind]
        for split, models in metrics.items()
        for model, m in models.items()
        for kind in ("full", "sampled", "beyond")
        if kind in m
    ]
    folder.mkdir()
    pl.DataFrame(rows, infer_schema_length=None).write_csv(folder / "metrics.csv")
    (folder / "decision.json").write_text(json.dumps(decision))
    return folder


def test_the_evaluation_table_is_rendered_from_evaluate_outputs(tmp_path: Path) -> None:
    from bench import bench_eval

    figures = bench_eval.evaluation_figures(_evaluate_output(tmp_path / "evaluation"))
    rows = bench_eval.evaluation_table(figures).splitlines()[2:]
    assert rows[0].startswith("| sasrec | 0.1234 | 0.2000 |")  # best NDCG@10 first
    assert rows[0].endswith("| - | - | +0.0234 [-0.0010, +0.0500], p=1.2e-05 |")  # no temporal
    assert rows[1].startswith("| itemknn | 0.1000 |") and rows[1].endswith(" | (champion) |")
    assert "| 0.1000 | 0.2000 | (champion) |" in rows[1]  # its temporal NDCG@10 and Recall@10


def test_recording_evaluation_from_a_folder_without_decision_names_the_file(
    tmp_path: Path,
) -> None:
    from bench import bench_eval

    folder = _evaluate_output(tmp_path / "evaluation")
    (folder / "decision.json").unlink()
    with pytest.raises(SystemExit, match="decision.json: no such file"):
        bench_eval.evaluation_figures(folder)

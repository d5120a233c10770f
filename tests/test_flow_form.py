"""The pipeline flow's run form and what a run reports: typed parameters that the Prefect UI
renders as fields (choices, a multi-select of the registry's models, numbers with limits),
mapped onto params.yaml keys; the table artifacts and the log line of each trained model."""

from __future__ import annotations

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError

from flows import artifacts
from flows.form import DataSource, Training
from flows.pipeline import recsys_pipeline, trained_line, validate_only
from recsys_models.registry import model_names
from tasks.ingest import SOURCES
from tasks.params import PROTOCOLS, TIME_UNITS, load_params


def form(flow) -> dict:
    return parameter_schema(flow.fn).model_dump()


def test_the_run_form_has_typed_fields():
    schema = form(recsys_pipeline)
    top = schema["properties"]
    assert list(top)[:3] == ["training", "data", "release"]  # what a user changes first
    assert top["release"]["type"] == "boolean" and top["release"]["default"] is True
    training = schema["definitions"]["Training"]["properties"]
    assert training["models"]["type"] == "array"
    assert training["models"]["items"]["enum"] == list(model_names())
    assert training["protocols"]["items"]["enum"] == list(PROTOCOLS)
    for field in ("max_epochs", "patience"):  # a number box, 0 keeping params.yaml's
        assert training[field]["type"] == "integer" and training[field]["minimum"] == 0
    data = schema["definitions"]["DataSource"]["properties"]
    assert data["source"]["enum"] == ["params.yaml", *SOURCES]  # one drop-down, no free text
    assert data["source"]["default"] == "params.yaml"
    assert data["time_unit"]["enum"] == ["params.yaml", *TIME_UNITS]
    for field in ("path", "user_column", "item_column", "time_column", "rating_column", "sep"):
        assert data[field]["type"] == "string" and data[field]["default"] == ""
    assert all(field.get("description") for field in (*training.values(), *data.values()))
    # the validate-only deployment offers the same source choice
    assert "DataSource" in form(validate_only)["definitions"]


def test_filled_fields_become_params_overrides_and_empty_ones_keep_params_yaml(tmp_path):
    training = Training(models=["itemknn", "popularity", "itemknn"], protocols=["temporal"])
    training = training.model_copy(update={"max_epochs": 3})
    data = DataSource(source="csv", path="logs.csv", user_column="uid", time_unit="ms", sep=";")
    chosen = data.overrides() | training.overrides()
    params = load_params(tmp_path / "absent.yaml", chosen)
    assert params.train.models == ("itemknn", "popularity")
    assert params.evaluate.protocols == ("loo", "temporal")  # the primary one is always there
    assert params.train.max_epochs == 3
    assert (params.ingest.source, params.ingest.path, params.ingest.sep) == ("csv", "logs.csv", ";")
    assert (params.ingest.columns.user, params.ingest.columns.time_unit) == ("uid", "ms")
    defaults = load_params(tmp_path / "absent.yaml")
    assert params.train.patience == defaults.train.patience
    assert Training().overrides() == {} and DataSource().overrides() == {}


@pytest.mark.parametrize(
    "bad",
    [{"models": ["no-such-model"]}, {"max_epochs": -1}, {"protocols": ["random"]}, {"epochs": 3}],
)
def test_a_bad_form_value_is_refused(bad: dict):
    with pytest.raises(ValidationError):
        Training(**bad)


def test_the_metrics_table_ranks_models_with_4_decimals():
    models = {
        "popularity": {"ndcg@10": 0.123456789, "hr@10": 0.3, "mrr": 0.1},
        "itemknn": {"ndcg@10": 0.2, "hr@10": 0.41234567, "mrr": 0.15},
    }
    rows = artifacts.metrics_rows(models, "ndcg@10")
    assert [(r["rank"], r["model"]) for r in rows] == [(1, "itemknn"), (2, "popularity")]
    assert rows[1]["ndcg@10"] == 0.1235 and rows[0]["hr@10"] == 0.4123


def test_the_decision_table_puts_the_best_challenger_first_in_words():
    evidence = [
        {"challenger": "bpr_mf", "mean_diff": -0.01, "ci95": [-0.02, 0.0], "p_wilcoxon": 0.3,
         "p_holm": 0.6, "guardrails_breached": [], "eligible": False},
        {"challenger": "itemknn", "mean_diff": 0.05, "ci95": [0.03, 0.07],
         "decision_interval": [0.02, 0.08], "p_wilcoxon": 5e-06, "p_holm": 1e-05,
         "guardrails_breached": [], "eligible": True},
    ]  # fmt: skip
    decision = {
        "champion": "popularity",
        "primary": {"metric": "ndcg@10"},
        "verdict": {"promote": True, "model": "itemknn"},
        "evidence": evidence,
    }
    rows = artifacts.decision_rows(decision)
    assert [r["challenger"] for r in rows] == ["itemknn", "bpr_mf"]
    best = rows[0]
    assert best["mean diff (ndcg@10)"] == 0.05 and best["95% CI"] == "[0.0300, 0.0700]"
    assert (best["p (Wilcoxon)"], best["eligible"], best["promoted"]) == ("5.0e-06", "yes", "yes")
    assert (rows[1]["eligible"], rows[1]["promoted"], rows[1]["decision CI"]) == ("no", "no", "-")
    alone = artifacts.decision_rows(decision | {"evidence": []})
    assert alone == [{"challenger": "none (one model evaluated)", "champion": "popularity"}]


def test_each_trained_model_logs_its_validation_figures():
    metrics = {"ndcg@10": 0.123456, "hr@10": 0.25, "mrr": 0.1, "epochs": 4, "best_epoch": 3,
               "train_seconds": 12.345}  # fmt: skip
    line = trained_line("sasrec", "loo", "models/sasrec", metrics)
    assert line == (
        "sasrec (loo): validation NDCG@10 0.1235, HR@10 0.2500, MRR 0.1000; 4 epochs (best 3), "
        "12.3 s; wrote models/sasrec"
    )
    closed = trained_line("ease", "temporal", "models/ease/temporal", metrics | {"epochs": 0})
    assert "closed form" in closed

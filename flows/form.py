"""The typed parameters of the pipeline flow: what the Prefect UI's run form shows.

Prefect renders a flow's parameters from their JSON schema, so typed pydantic models give the
form real fields: a choice of source, the column map of a csv/parquet log, the models of the
registry as a multi-select, the protocols, epochs and patience. A field left at its default
(empty, 0, or the choice "params.yaml") keeps params.yaml's value; a filled one becomes a
dotted-key override (as `dvc exp run -S`), so params.yaml stays the one source of defaults.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from recsys_models.registry import model_names
from tasks.ingest import SOURCES
from tasks.params import PROTOCOLS, TIME_UNITS

KEEP = "params.yaml"  # the choice that keeps params.yaml's value
ModelName = Literal[model_names()]
SourceName = Literal[(KEEP, *SOURCES)]
Protocol = Literal[PROTOCOLS]
TimeUnit = Literal[(KEEP, *TIME_UNITS)]


class Form(BaseModel):
    """A section of the run form: unknown fields are refused, never silently ignored."""

    model_config = ConfigDict(extra="forbid")

    # field name -> params.yaml dotted key
    KEYS: ClassVar[dict[str, str]] = {}

    def overrides(self) -> dict[str, Any]:
        """The filled fields as dotted-key overrides (the defaults keep params.yaml's)."""
        found = {key: getattr(self, name) for name, key in self.KEYS.items()}
        return {key: value for key, value in found.items() if value not in (None, [], "", 0, KEEP)}


class DataSource(Form):
    """Where the interactions come from; empty fields: params.yaml `ingest`."""

    source: SourceName = Field(
        KEEP,
        title="Source",
        description="MovieLens layouts, csv or parquet with the column map below, or seq "
        "(`user item` per line); params.yaml: its ingest.source.",
    )
    path: str = Field("", title="Raw file or folder", description="Empty: params.yaml ingest.path.")
    user_column: str = Field("", title="User column", description="csv/parquet; empty: params.yaml")
    item_column: str = Field("", title="Item column", description="csv/parquet; empty: params.yaml")
    time_column: str = Field("", title="Time column", description="csv/parquet; empty: params.yaml")
    rating_column: str = Field(
        "", title="Rating column", description="csv/parquet, optional; empty: params.yaml"
    )
    time_unit: TimeUnit = Field(
        KEEP, title="Unit of integer timestamps", description="csv/parquet; s, ms, us or ns"
    )
    sep: str = Field("", title="CSV delimiter", description="csv only; empty: params.yaml")

    KEYS = {
        "source": "ingest.source",
        "path": "ingest.path",
        "user_column": "ingest.columns.user",
        "item_column": "ingest.columns.item",
        "time_column": "ingest.columns.time",
        "rating_column": "ingest.columns.rating",
        "time_unit": "ingest.columns.time_unit",
        "sep": "ingest.sep",
    }


class Training(Form):
    """What to train and how long; empty fields: params.yaml `train` and `evaluate`."""

    models: list[ModelName] = Field(
        default_factory=list,
        title="Models",
        description="The models to train and compare with the champion. "
        "Empty: params.yaml train.models.",
    )
    protocols: list[Protocol] = Field(
        default_factory=list,
        title="Protocols",
        description="loo (leave-one-out by time, the primary one, always included) and "
        "temporal (a global time cut). Empty: params.yaml evaluate.protocols.",
    )
    max_epochs: int = Field(
        0, ge=0, title="Epochs (at most)", description="0: params.yaml train.max_epochs."
    )
    patience: int = Field(
        0,
        ge=0,
        title="Patience",
        description="Epochs without a better validation NDCG@10 before training stops. "
        "0: params.yaml train.patience.",
    )

    KEYS = {
        "models": "train.models",
        "protocols": "evaluate.protocols",
        "max_epochs": "train.max_epochs",
        "patience": "train.patience",
    }

    @field_validator("protocols")
    @classmethod
    def _primary_included(cls, protocols: list[str]) -> list[str]:
        """The decision is taken on loo: a run without it could not decide."""
        return ["loo", *[p for p in protocols if p != "loo"]] if protocols else protocols

    @field_validator("models")
    @classmethod
    def _once_each(cls, models: list[str]) -> list[str]:
        return list(dict.fromkeys(models))

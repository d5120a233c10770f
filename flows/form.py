"""The typed parameters of the pipeline flow: what the Prefect UI's run form shows.

Prefect renders a flow's parameters from their JSON schema, so typed pydantic models give the
form real fields: a choice of source, the column map of a csv/parquet log, the models of the
registry as a multi-select, the protocols, epochs and patience. Every field left empty keeps
params.yaml's value; a filled one becomes a dotted-key override (as `dvc exp run -S`), so
params.yaml stays the one source of every default.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from recsys_models.registry import model_names
from tasks.ingest import SOURCES
from tasks.params import PROTOCOLS, TIME_UNITS

ModelName = Literal[model_names()]
SourceName = Literal[SOURCES]
Protocol = Literal[PROTOCOLS]
TimeUnit = Literal[TIME_UNITS]


class Form(BaseModel):
    """A section of the run form: unknown fields are refused, never silently ignored."""

    model_config = ConfigDict(extra="forbid")

    # field name -> params.yaml dotted key
    KEYS: ClassVar[dict[str, str]] = {}

    def overrides(self) -> dict[str, Any]:
        """The filled fields as dotted-key overrides (empty ones keep params.yaml's value)."""
        found = {key: getattr(self, name) for name, key in self.KEYS.items()}
        return {key: value for key, value in found.items() if value not in (None, [], "")}


class DataSource(Form):
    """Where the interactions come from; empty fields: params.yaml `ingest`."""

    source: SourceName | None = Field(
        None,
        title="Source",
        description="MovieLens layouts, csv or parquet with the column map below, or seq "
        "(`user item` per line). Empty: params.yaml ingest.source.",
    )
    path: str | None = Field(
        None, title="Raw file or folder", description="Empty: params.yaml ingest.path."
    )
    user_column: str | None = Field(None, title="User column", description="csv/parquet only")
    item_column: str | None = Field(None, title="Item column", description="csv/parquet only")
    time_column: str | None = Field(None, title="Time column", description="csv/parquet only")
    rating_column: str | None = Field(
        None, title="Rating column", description="csv/parquet only; optional"
    )
    time_unit: TimeUnit | None = Field(
        None, title="Unit of integer timestamps", description="csv/parquet only"
    )
    sep: str | None = Field(None, title="CSV delimiter", description="csv only; empty: ,")

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
    max_epochs: int | None = Field(
        None, ge=1, title="Epochs (at most)", description="Empty: params.yaml train.max_epochs."
    )
    patience: int | None = Field(
        None,
        ge=1,
        title="Patience",
        description="Epochs without a better validation NDCG@10 before training stops. "
        "Empty: params.yaml train.patience.",
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

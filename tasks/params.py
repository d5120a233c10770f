"""params.yaml read into typed config objects: the one source of parameters.

Unknown or mistyped keys are errors, so a typo in params.yaml never silently falls back to a
default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recsys_models.registry import model_names
from tasks.errors import RecsysError


@dataclass(frozen=True)
class IngestParams:
    source: str = "movielens-100k"
    path: str = "data/raw/ml-100k"
    out: str = "data/interim"


@dataclass(frozen=True)
class DriftParams:
    max_row_change: float = 0.5
    max_popularity_shift: float = 0.3


@dataclass(frozen=True)
class ValidateParams:
    out: str = "reports/validation"
    rating_min: float = 0.5
    rating_max: float = 5.0
    timestamp_min: int = 0
    timestamp_max_future_days: int = 1
    min_interactions_per_user: int = 3
    max_duplicate_fraction: float = 0.05
    drift: DriftParams = field(default_factory=DriftParams)


@dataclass(frozen=True)
class FeaturesParams:
    out: str = "data/features"
    min_user_interactions: int = 5
    min_item_interactions: int = 5
    max_seq_len: int = 50
    temporal_val_fraction: float = 0.1
    temporal_test_fraction: float = 0.1
    year_bucket_size: int = 10


# What the Prefect flow trains when params.yaml does not say; every name is in the registry.
DEMO_MODELS = ("popularity", "itemknn", "bpr_mf", "sasrec", "two_tower")


@dataclass(frozen=True)
class TrainParams:
    """Trainer settings shared by every model, and one section of hyper-parameters per model.

    params.yaml's `train.<name>` for a registered model (recsys_models/registry.py) lands in
    `sections`, kept as a plain mapping: the train stage checks it against that model's own
    `Config`, so reading params.yaml never has to import torch.
    """

    out: str = "models"
    models: tuple[str, ...] = DEMO_MODELS
    max_epochs: int = 200
    patience: int = 10
    eval_batch_size: int = 512
    accelerator: str = "auto"
    devices: int = 1  # > 1 with strategy ddp: data-parallel processes (CPU: gloo)
    strategy: str = "auto"  # Lightning: auto|ddp|ddp_spawn|...
    parallel: str = "none"  # the Prefect flow trains models side by side: none|threads|dask
    workers: int = 2  # models trained at once when parallel
    dask_address: str = ""  # an existing Dask scheduler (tcp://host:8786); empty: local cluster
    precision: str = "auto"  # "auto": bf16-mixed on a GPU, 32-true on CPU; or any Lightning value
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    def section(self, name: str) -> dict[str, Any]:
        """params.yaml `train.<name>`: the model's Config fields ({} where none are set)."""
        return dict(self.sections.get(name) or {})


@dataclass(frozen=True)
class GuardrailParams:
    """How far a challenger may fall behind the champion on beyond-accuracy metrics (at K=10)
    and still be promoted; each is compared with the champion's value on the same users."""

    max_coverage_drop: float = 0.2  # relative: challenger >= champion * (1 - this)
    max_diversity_drop: float = 0.1  # relative, on intra-list diversity
    max_popularity_bias_increase: float = 0.05  # absolute, on the mean popularity percentile


@dataclass(frozen=True)
class SegmentParams:
    cold_history_max: int = 30  # users with at most this many interactions before the target
    heavy_history_min: int = 200  # users with at least this many
    head_item_fraction: float = 0.2  # the most popular items, by training count: the head


@dataclass(frozen=True)
class EvaluateParams:
    out: str = "reports/evaluation"
    artifacts: str = "artifacts"  # the registry: artifacts/champion.json names the champion
    protocols: tuple[str, ...] = ("loo", "temporal")  # loo is the primary protocol
    primary_metric: str = "ndcg@10"
    baselines: tuple[str, ...] = ("popularity", "itemknn", "bpr_mf")  # first champion: the best
    sampled_negatives: int = 100
    alpha: float = 0.05  # significance level of the paired test
    bootstrap_samples: int = 2000
    memory_budget_mb: int = 512  # score matrix per batch of users: sets the batch size
    guardrails: GuardrailParams = field(default_factory=GuardrailParams)
    segments: SegmentParams = field(default_factory=SegmentParams)


@dataclass(frozen=True)
class Params:
    seed: int = 42
    ingest: IngestParams = field(default_factory=IngestParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    features: FeaturesParams = field(default_factory=FeaturesParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)


def _build(cls: type, data: Any, where: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise RecsysError(f"{source}: {where or 'top level'} must be a mapping, got {data!r}")
    if cls is TrainParams:
        data = _with_sections(data, where, source)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecsysError(f"{source}: unknown key {where + '.' if where else ''}{unknown[0]}")
    values = {}
    for name, value in data.items():
        key = f"{where}.{name}" if where else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, key, source)
        else:
            values[name] = _coerce(hint, value, key, source)
    return cls(**values)


def _with_sections(data: dict[str, Any], where: str, source: str) -> dict[str, Any]:
    """train: the registered models' sections gathered under `sections`; every name in
    train.models must be a registered model."""
    names = model_names()
    sections = {}
    for name in [key for key in data if key in names]:
        if not isinstance(data[name] or {}, dict):
            raise RecsysError(f"{source}: {where}.{name} must be a mapping, got {data[name]!r}")
        sections[name] = dict(data[name] or {})
    for name in data.get("models") or ():
        if name not in names:
            raise RecsysError(
                f"{source}: {where}.models: unknown model {name!r}; choose from {', '.join(names)}"
            )
    rest = {key: value for key, value in data.items() if key not in names}
    return rest | ({"sections": sections} if sections else {})


def build_config(cls: type, data: Any, where: str, source: str = "params.yaml") -> Any:
    """A typed config from a mapping, with params.yaml's rules (unknown keys are errors)."""
    return _build(cls, data, where, source)


def _coerce(hint: Any, value: Any, key: str, source: str) -> Any:
    if isinstance(hint, types.UnionType) and value is None:
        return None
    base = typing.get_args(hint)[0] if isinstance(hint, types.UnionType) else hint
    origin = typing.get_origin(base)
    if origin is tuple:  # tuple[X, ...]: a YAML list of X
        item = typing.get_args(base)[0]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, item) for v in value):
            raise RecsysError(f"{source}: {key} must be a list of {item.__name__}, got {value!r}")
        return tuple(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise RecsysError(f"{source}: {key} must be a mapping, got {value!r}")
        return dict(value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, base) or (base is int and isinstance(value, bool)):
        raise RecsysError(f"{source}: {key} must be {base.__name__}, got {value!r}")
    return value


def load_params(
    path: str | Path = "params.yaml", overrides: dict[str, Any] | None = None
) -> Params:
    """Read params.yaml (defaults when it is missing) and apply dotted-key overrides.

    Overrides use the same dotted names as `dvc exp run -S`, e.g. {"features.max_seq_len": 100},
    so a Prefect run and a DVC experiment change parameters the same way.
    """
    p = Path(path)
    data: dict[str, Any] = {}
    if p.exists():
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RecsysError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecsysError(f"override {key}: {part} is not a section")
        node[leaf] = value
    return _build(Params, data, "", str(p))


def as_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)

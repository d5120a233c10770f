"""params.yaml read into typed config objects: the one source of parameters.

Unknown or mistyped keys are errors, so a typo in params.yaml never silently falls back to a
default. Values are checked for range and consistency when the file is loaded (each section's
`check`), so a bad number stops the run before any stage starts, instead of training without
bound, replacing a good report or failing deep inside a stage with a library error.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recsys_models.registry import model_names
from tasks.errors import RecsysError

# Closed sets of choices. Lightning's own lists (lightning 2.x): accelerators it registers plus
# its "gpu" and "auto" aliases; precisions its connector accepts as text. Unknown values would
# otherwise surface as a Lightning traceback at the start of training.
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = (
    "auto",
    "32-true",
    "16-mixed",
    "bf16-mixed",
    "16-true",
    "bf16-true",
    "64-true",
    "transformer-engine",
    "transformer-engine-float16",
    "16",
    "bf16",
    "32",
    "64",
)
PARALLEL = ("none", "threads", "dask")
TIME_UNITS = ("s", "ms", "us", "ns")  # of integer epochs; each 1000 times the one before
# The evaluation protocols (tasks/protocol.py); loo, leave-one-out by time, is the primary one.
PROTOCOLS = ("loo", "temporal")
# SASRec's attention holds batch x heads x max_seq_len^2 float scores per layer: at 4096 a batch
# of 128 already needs 8 GiB per layer, and the features stage writes (users + 1) x
# max_seq_len int32 arrays (2.7 GB each for MovieLens-25M's 162k users). No model here reads a
# history that long; the features stage also checks its arrays against the memory available.
MAX_SEQ_LEN = 4096
MAX_SEED = 2**32 - 1  # numpy and Lightning seeds are unsigned 32-bit


def _check(ok: bool, source: str, key: str, rule: str, value: Any) -> None:
    """One line naming the file, the key, the rule it breaks and the value it has."""
    if not ok:
        raise RecsysError(f"{source}: {key} must be {rule}, got {value!r}")


def _check_paths(section: Any, names: tuple[str, ...], where: str, source: str) -> None:
    """An empty path is the current folder: a stage would replace the whole working folder."""
    for name in names:
        value = getattr(section, name)
        _check(bool(value.strip()), source, f"{where}.{name}", "a non-empty path", value)


def _check_choice(value: str, choices: tuple[str, ...], key: str, source: str) -> None:
    _check(value in choices, source, key, f"one of {', '.join(choices)}", value)


@dataclass(frozen=True)
class ColumnsParams:
    """csv/parquet sources: the source's column names (null: the canonical user_id, item_id,
    timestamp, rating) and the unit of integer epochs in the time column."""

    user: str | None = None
    item: str | None = None
    time: str | None = None
    rating: str | None = None
    time_unit: str = "s"  # s|ms|us|ns; dates and datetimes need none

    def check(self, where: str, source: str) -> None:
        for name in ("user", "item", "time", "rating"):
            value = getattr(self, name)
            ok = value is None or bool(value.strip())
            _check(ok, source, f"{where}.{name}", "a column name or null", value)
        _check_choice(self.time_unit, TIME_UNITS, f"{where}.time_unit", source)


@dataclass(frozen=True)
class MetadataColumnsParams:
    """An item or user metadata file's columns. `id` null: item_id (items) or user_id (users).

    Items: `title` a text column, `categories` a multi-valued column (values joined by the
    file's `list_sep`) that becomes items.parquet's genres, `year` an integer column. Both:
    `categorical` further columns kept by name (multi-valued where they hold `list_sep`),
    `numeric` number columns. The features stage turns every categorical and numeric column
    into the item or user feature tensors, so models use whatever metadata the file has.
    """

    id: str | None = None
    title: str | None = None
    categories: str | None = None
    year: str | None = None
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()

    def named(self) -> list[str]:
        """Every column named, in order (for the missing-column check and duplicates)."""
        single = [self.id, self.title, self.categories, self.year]
        return [c for c in single if c is not None] + [*self.categorical, *self.numeric]

    def check(self, where: str, source: str) -> None:
        for name in ("id", "title", "categories", "year"):
            value = getattr(self, name)
            ok = value is None or bool(value.strip())
            _check(ok, source, f"{where}.{name}", "a column name or null", value)
        names = self.named()
        twice = sorted({c for c in names if names.count(c) > 1})
        _check(not twice, source, where, "free of a column named twice", twice)


@dataclass(frozen=True)
class MetadataParams:
    """An optional item or user metadata file for csv, parquet and seq sources (MovieLens
    sources bring their own). path null: none. Formats by suffix: .csv/.tsv/.txt (sep),
    .parquet, or .json holding {"item": [attribute ids]} as the S3-Rec/FMLP-Rec benchmarks
    ship it (items only; the attributes become the item's categories)."""

    path: str | None = None
    sep: str | None = None  # delimited text: the field delimiter (null: "," or tab for .tsv)
    list_sep: str = "|"  # inside a multi-valued column
    columns: MetadataColumnsParams = field(default_factory=MetadataColumnsParams)

    def check(self, where: str, source: str) -> None:
        if self.path is not None:
            _check(bool(self.path.strip()), source, f"{where}.path", "a path or null", self.path)
        _check(bool(self.list_sep), source, f"{where}.list_sep", "non-empty text", self.list_sep)
        self.columns.check(f"{where}.columns", source)


@dataclass(frozen=True)
class IngestParams:
    """The whole source description: what DVC, the Prefect flows and `recsys ingest` read (the
    CLI's flags override it)."""

    source: str = "movielens-100k"
    path: str = "data/raw/ml-100k"
    out: str = "data/interim"
    # Append-only parts of interactions that arrived later (tasks/incoming.py): ingest reads
    # the source, then every part in name order; the source files are never rewritten.
    appended: str = "data/raw/appended"
    sep: str | None = None  # csv only: the field delimiter (null: ",")
    columns: ColumnsParams = field(default_factory=ColumnsParams)
    items: MetadataParams = field(default_factory=MetadataParams)
    users: MetadataParams = field(default_factory=MetadataParams)

    def check(self, where: str, source: str) -> None:
        # source is checked by the ingest stage, which owns the list of sources
        _check_paths(self, ("path", "out", "appended"), where, source)
        _check(self.sep is None or len(self.sep) >= 1, source, f"{where}.sep", "text", self.sep)
        self.columns.check(f"{where}.columns", source)
        self.items.check(f"{where}.items", source)
        self.users.check(f"{where}.users", source)
        for name in ("title", "categories", "year"):
            value = getattr(self.users.columns, name)
            _check(
                value is None, source, f"{where}.users.columns.{name}", "null (items only)", value
            )


@dataclass(frozen=True)
class DriftParams:
    max_row_change: float = 0.5
    max_popularity_shift: float = 0.3

    def check(self, where: str, source: str) -> None:
        key = f"{where}.max_row_change"
        _check(self.max_row_change >= 0, source, key, ">= 0", self.max_row_change)
        key = f"{where}.max_popularity_shift"
        shift = self.max_popularity_shift
        _check(0 <= shift <= 1, source, key, "in [0, 1] (a total variation distance)", shift)


@dataclass(frozen=True)
class ValidateParams:
    out: str = "reports/validation"
    rating_min: float = 0.5
    rating_max: float = 5.0
    timestamp_min: int = 0
    timestamp_max_future_days: int = 1
    min_interactions_per_user: int = 3
    max_duplicate_fraction: float = 0.05
    max_id_length: int = 256  # characters; longer user or item ids fail validation
    drift: DriftParams = field(default_factory=DriftParams)

    def check(self, where: str, source: str) -> None:
        _check_paths(self, ("out",), where, source)
        low, high = self.rating_min, self.rating_max
        _check(math.isfinite(low), source, f"{where}.rating_min", "a finite number", low)
        _check(math.isfinite(high), source, f"{where}.rating_max", "a finite number", high)
        _check(low < high, source, f"{where}.rating_min", f"< rating_max ({high})", low)
        days = self.timestamp_max_future_days
        _check(days >= 0, source, f"{where}.timestamp_max_future_days", ">= 0", days)
        least = self.min_interactions_per_user
        _check(least >= 1, source, f"{where}.min_interactions_per_user", ">= 1", least)
        share = self.max_duplicate_fraction
        _check(0 <= share <= 1, source, f"{where}.max_duplicate_fraction", "in [0, 1]", share)
        length = self.max_id_length
        _check(length >= 1, source, f"{where}.max_id_length", ">= 1", length)
        self.drift.check(f"{where}.drift", source)


@dataclass(frozen=True)
class TextParams:
    """Item text embeddings from the pretrained encoder (tasks/text_features.py)."""

    # auto: when the `text` extra is installed; true: required; false: off. params.yaml says
    # auto; the default is off so a run without a params file (tests, one-offs) encodes nothing.
    enabled: str = "false"
    cache: str = "data/text_cache"  # embeddings by the text's sha256, kept across runs
    batch_size: int = 64  # texts per encoder forward pass

    def check(self, where: str, source: str) -> None:
        _check_choice(self.enabled, TEXT_SWITCH, f"{where}.enabled", source)
        _check_paths(self, ("cache",), where, source)
        _check(self.batch_size >= 1, source, f"{where}.batch_size", ">= 1", self.batch_size)


TEXT_SWITCH = ("auto", "true", "false")


@dataclass(frozen=True)
class FeaturesParams:
    out: str = "data/features"
    min_user_interactions: int = 5
    min_item_interactions: int = 5
    max_seq_len: int = 50
    temporal_val_fraction: float = 0.1
    temporal_test_fraction: float = 0.1
    year_bucket_size: int = 10
    text: TextParams = field(default_factory=TextParams)

    def check(self, where: str, source: str) -> None:
        _check_paths(self, ("out",), where, source)
        self.text.check(f"{where}.text", source)
        for name in ("min_user_interactions", "min_item_interactions", "year_bucket_size"):
            value = getattr(self, name)
            _check(value >= 1, source, f"{where}.{name}", ">= 1", value)
        length = self.max_seq_len
        rule = f"between 1 and {MAX_SEQ_LEN} (see MAX_SEQ_LEN in tasks/params.py)"
        _check(1 <= length <= MAX_SEQ_LEN, source, f"{where}.max_seq_len", rule, length)
        val, test = self.temporal_val_fraction, self.temporal_test_fraction
        _check(0 < test < 1, source, f"{where}.temporal_test_fraction", "in (0, 1)", test)
        _check(0 <= val < 1, source, f"{where}.temporal_val_fraction", "in [0, 1)", val)
        rule = f"< 1 - temporal_test_fraction ({test}), so some time is left to train on"
        _check(val + test < 1, source, f"{where}.temporal_val_fraction", rule, val)


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
    validation_users: int = 0  # 0: every user with a validation target; N: a seeded sample of N
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

    def check(self, where: str, source: str) -> None:
        """The trainer's settings; each model's section is checked by its own Config."""
        _check_paths(self, ("out",), where, source)
        _check(bool(self.models), source, f"{where}.models", "a non-empty list", list(self.models))
        _check(self.max_epochs >= 1, source, f"{where}.max_epochs", ">= 1", self.max_epochs)
        _check(self.patience >= 0, source, f"{where}.patience", ">= 0", self.patience)
        for name in ("eval_batch_size", "devices", "workers"):
            value = getattr(self, name)
            _check(value >= 1, source, f"{where}.{name}", ">= 1", value)
        users = self.validation_users
        _check(users >= 0, source, f"{where}.validation_users", ">= 0", users)
        _check_choice(self.accelerator, ACCELERATORS, f"{where}.accelerator", source)
        _check_choice(self.parallel, PARALLEL, f"{where}.parallel", source)
        _check_choice(self.precision, PRECISIONS, f"{where}.precision", source)
        # strategy is open-ended (Lightning's registry, plugins): Lightning checks it


@dataclass(frozen=True)
class GuardrailParams:
    """How far a challenger may fall behind the champion on beyond-accuracy metrics (at K=10)
    and still be promoted; each is compared with the champion's value on the same users."""

    max_coverage_drop: float = 0.2  # relative: challenger >= champion * (1 - this)
    max_diversity_drop: float = 0.1  # relative, on intra-list diversity
    max_popularity_bias_increase: float = 0.05  # absolute, on the mean popularity percentile

    def check(self, where: str, source: str) -> None:
        # Each is a share (relative drop) or a difference of percentiles: within [0, 1].
        for name in ("max_coverage_drop", "max_diversity_drop", "max_popularity_bias_increase"):
            value = getattr(self, name)
            _check(0 <= value <= 1, source, f"{where}.{name}", "in [0, 1]", value)


@dataclass(frozen=True)
class SegmentParams:
    cold_history_max: int = 30  # users with at most this many interactions before the target
    heavy_history_min: int = 200  # users with at least this many
    head_item_fraction: float = 0.2  # the most popular items, by training count: the head

    def check(self, where: str, source: str) -> None:
        cold, heavy = self.cold_history_max, self.heavy_history_min
        _check(cold >= 0, source, f"{where}.cold_history_max", ">= 0", cold)
        rule = f"> cold_history_max ({cold})"
        _check(heavy > cold, source, f"{where}.heavy_history_min", rule, heavy)
        head = self.head_item_fraction
        _check(0 < head < 1, source, f"{where}.head_item_fraction", "in (0, 1)", head)


@dataclass(frozen=True)
class EvaluateParams:
    out: str = "reports/evaluation"
    artifacts: str = "artifacts"  # the registry: artifacts/champion.json names the champion
    protocols: tuple[str, ...] = ("loo", "temporal")  # loo is the primary protocol
    primary_metric: str = "ndcg@10"
    baselines: tuple[str, ...] = (
        "popularity",
        "recent_popularity",
        "itemknn",
        "bpr_mf",
    )  # first champion: the best
    sampled_negatives: int = 100
    alpha: float = 0.05  # significance level of the paired test
    bootstrap_samples: int = 2000
    memory_budget_mb: int = 512  # score matrix per batch of users: sets the batch size
    shard_users: int = 100_000  # test users per shard (the unit one process or worker scores)
    parallel: str = "none"  # shards side by side: none (one process) | dask (train's cluster)
    guardrails: GuardrailParams = field(default_factory=GuardrailParams)
    segments: SegmentParams = field(default_factory=SegmentParams)

    def check(self, where: str, source: str) -> None:
        """The primary metric is checked by the evaluate stage (its list lives with torch)."""
        _check_paths(self, ("out", "artifacts"), where, source)
        protocols = list(self.protocols)
        rule = f"a list of {', '.join(PROTOCOLS)} that includes loo (the primary protocol)"
        ok = "loo" in protocols and set(protocols) <= set(PROTOCOLS)
        _check(ok, source, f"{where}.protocols", rule, protocols)
        names = model_names()
        for name in self.baselines:
            _check(name in names, source, f"{where}.baselines", "registered models", name)
        _check_choice(self.parallel, ("none", "dask"), f"{where}.parallel", source)
        for name in ("sampled_negatives", "bootstrap_samples", "memory_budget_mb", "shard_users"):
            value = getattr(self, name)
            _check(value >= 1, source, f"{where}.{name}", ">= 1", value)
        _check(0 < self.alpha < 1, source, f"{where}.alpha", "in (0, 1)", self.alpha)
        self.guardrails.check(f"{where}.guardrails", source)
        self.segments.check(f"{where}.segments", source)


@dataclass(frozen=True)
class AnnParams:
    """The HNSW index export builds for dot-product scorers (tasks/ann.py)."""

    min_items: int = 100_000  # smaller catalogues are scored exactly, with no index
    connectivity: int = 32  # HNSW M: links per node
    expansion_add: int = 128  # efConstruction
    expansion_search: int = 256  # ef at query time
    pool: int = 200  # candidates per request, re-scored exactly (plus the items it excludes)
    recall_queries: int = 500  # held-out users the recall@10 in the manifest is measured on
    threads: int = 0  # index build threads; 0: every core

    def check(self, where: str, source: str) -> None:
        for name in ("min_items", "connectivity", "expansion_add", "expansion_search", "pool"):
            value = getattr(self, name)
            _check(value >= 1, source, f"{where}.{name}", ">= 1", value)
        _check(self.pool >= 10, source, f"{where}.pool", ">= 10 (recall@10)", self.pool)
        _check(
            self.recall_queries >= 1, source, f"{where}.recall_queries", ">= 1", self.recall_queries
        )
        _check(self.threads >= 0, source, f"{where}.threads", ">= 0", self.threads)


@dataclass(frozen=True)
class ExportParams:
    ann: AnnParams = field(default_factory=AnnParams)

    def check(self, where: str, source: str) -> None:
        self.ann.check(f"{where}.ann", source)


PRUNERS = ("percentile", "none")


@dataclass(frozen=True)
class TuneParams:
    """`recsys tune`: the hyper-parameter search on the validation split (tasks/tune.py).

    storage: a path is an SQLite file; a URL (postgresql://..., mysql://...) is an Optuna RDB
    storage that several machines share, each running trials of the same study.
    """

    out: str = "reports/tune"  # <out>/<model>/: best.json, trials.json, trials.md
    storage: str = "reports/tune-studies.db"
    trials: int = 20  # the study's total: a rerun on the same storage tops it up to this
    max_epochs: int = 50  # per trial (gradient models); early stopping ends most sooner
    patience: int = 5
    pruner: str = "percentile"  # stop a trial whose val NDCG@10 trails at the same epoch; none
    prune_percentile: float = 50.0  # pruned below this percentile of earlier trials (50: median)
    prune_startup_trials: int = 3  # trials that finish before any is pruned
    prune_warmup_epochs: int = 2  # epochs of each trial never pruned

    def check(self, where: str, source: str) -> None:
        _check_paths(self, ("out", "storage"), where, source)
        for name in ("trials", "max_epochs"):
            value = getattr(self, name)
            _check(value >= 1, source, f"{where}.{name}", ">= 1", value)
        for name in ("patience", "prune_startup_trials", "prune_warmup_epochs"):
            value = getattr(self, name)
            _check(value >= 0, source, f"{where}.{name}", ">= 0", value)
        _check_choice(self.pruner, PRUNERS, f"{where}.pruner", source)
        pct = self.prune_percentile
        _check(0 < pct < 100, source, f"{where}.prune_percentile", "in (0, 100)", pct)


@dataclass(frozen=True)
class Params:
    seed: int = 42
    ingest: IngestParams = field(default_factory=IngestParams)
    validate: ValidateParams = field(default_factory=ValidateParams)
    features: FeaturesParams = field(default_factory=FeaturesParams)
    train: TrainParams = field(default_factory=TrainParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    export: ExportParams = field(default_factory=ExportParams)
    tune: TuneParams = field(default_factory=TuneParams)

    def check(self, source: str) -> None:
        """Every section's ranges and consistency; the first problem is the error."""
        _check(0 <= self.seed <= MAX_SEED, source, "seed", f"in [0, {MAX_SEED}]", self.seed)
        for name in ("ingest", "validate", "features", "train", "evaluate", "export", "tune"):
            getattr(self, name).check(name, source)


# The top-level keys every params file must have: seed, ingest, validate, features, train,
# evaluate, export, tune.
SECTIONS = tuple(f.name for f in dataclasses.fields(Params))


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
    train.models must be a registered model ("all": every registered model)."""
    names = model_names()
    sections = {}
    for name in [key for key in data if key in names]:
        if not isinstance(data[name] or {}, dict):
            raise RecsysError(f"{source}: {where}.{name} must be a mapping, got {data[name]!r}")
        sections[name] = dict(data[name] or {})
    if data.get("models") == "all":
        data = data | {"models": list(names)}
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
    if base is str and isinstance(value, bool):  # YAML reads a switch's true/false as booleans
        value = str(value).lower()
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
    """Read params.yaml, apply dotted-key overrides and check every value's range.

    A params file that is absent gives the defaults (the tests and one-off runs pass a path
    that does not exist and set what they need by overrides). A file that exists must be a
    complete params file: empty, or without one of the top-level sections (SECTIONS), is an
    error naming the section, so a truncated or mistaken file is never quietly completed with
    defaults. Inside a section, keys that are not written keep their defaults, so a new
    parameter does not break older params files.

    Overrides use the same dotted names as `dvc exp run -S`, e.g. {"features.max_seq_len": 100},
    so a Prefect run and a DVC experiment change parameters the same way.
    """
    p = Path(path)
    data = _read_file(p) if p.exists() else {}
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise RecsysError(f"override {key}: {part} is not a section")
        node[leaf] = value
    params = _build(Params, data, "", str(p))
    params.check(str(p))
    return params


def _read_file(p: Path) -> dict[str, Any]:
    """The file's mapping, with every top-level section present."""
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise RecsysError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RecsysError(f"{p}: cannot read ({exc})") from exc
    if data is None:
        raise RecsysError(f"{p}: is empty; a params file needs the sections {', '.join(SECTIONS)}")
    if not isinstance(data, dict):
        kind = type(data).__name__
        raise RecsysError(f"{p}: top level must be a mapping of sections, got a {kind}")
    missing = [name for name in SECTIONS if name not in data]
    if missing:
        raise RecsysError(
            f"{p}: missing section {missing[0]} (a params file needs {', '.join(SECTIONS)})"
        )
    return data


def as_dict(params: Any) -> dict[str, Any]:
    return dataclasses.asdict(params)

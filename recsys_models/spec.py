"""What the platform needs to know about a model, declared once at the bottom of its own file.

Every model module ends with `SPEC = ModelSpec(...)`; recsys_models/registry.py finds those
files and is the only list of models there is. Training, export, evaluation, the CLI's choices,
params.yaml's sections and dvc.yaml's stage lists are derived from it or checked against it
(tests/test_structure.py), so adding a model means its file plus its params.yaml section.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CLOSED_FORM = "closed_form"  # fit(data, config, seed) -> nn.Module, no epochs
GRADIENT = "gradient"  # build(data, config, seed) -> (LightningModule, LightningDataModule)
KINDS = (CLOSED_FORM, GRADIENT)

# What a model reads from the features beside the interactions; training refuses it otherwise.
RATINGS = "ratings"
ITEM_FEATURES = "item_features"
USER_FEATURES = "user_features"
NEEDS = (RATINGS, ITEM_FEATURES, USER_FEATURES)
# How a missing need is named in the one-line refusal and the flow's skip reason.
NEED_TEXT = {
    RATINGS: "ratings on every training row",
    ITEM_FEATURES: "item metadata (genres, categories or other item columns)",
    USER_FEATURES: "user metadata",
}

# How the export stage turns the model into what the server runs (tasks/export.py):
SCORE_VECTOR = "score_vector"  # the same scores for everyone: a stored vector, no graph
HISTORY_GRAPH = "history_graph"  # history -> scores, and history -> user vector . item vectors
EMBEDDINGS = "embeddings"  # a user-tower graph; scores = user vector . stored item vectors
SCORE_GRAPH = "score_graph"  # score(users, history) as one graph
NEIGHBOURS = "neighbours"  # top-k item neighbours, scored from the history
EXPORT_FORMS = (SCORE_VECTOR, HISTORY_GRAPH, EMBEDDINGS, SCORE_GRAPH, NEIGHBOURS)


@dataclass(frozen=True)
class Range:
    """A numeric hyper-parameter's search range for `recsys tune` (bounds included); log for
    scale parameters such as learning rates, integer for counts and widths."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def __post_init__(self):
        if not self.low < self.high or (self.log and self.low <= 0):
            raise ValueError(f"Range({self.low}, {self.high}): need low < high (> 0 when log)")


@dataclass(frozen=True)
class Choice:
    """A hyper-parameter searched over a fixed list of values (for `recsys tune`)."""

    values: tuple[Any, ...]

    def __post_init__(self):
        if len(self.values) < 2:
            raise ValueError(f"Choice{self.values!r}: needs at least two values")


@dataclass(frozen=True)
class ModelSpec:
    """A model as the platform sees it.

    restore(data, config) builds the nn.Module with every buffer and parameter at its trained
    shape but untrained values, so saved weights load into it without refitting or building
    training data. uses_history False: the scores depend on the user id alone (a bare history
    from an unknown user cannot be served). item_vectors: the state-dict key of item vectors
    the server may use for similar items, where the model has them. dot_vectors: user and item
    vectors whose dot product is the score, for a model scored by the user id alone (matrix
    factorisation), so the server can retrieve through an ANN index.
    """

    name: str
    kind: str
    config: type
    restore: Callable[[Any, Any], Any]
    export: str
    fit: Callable[[Any, Any, int], Any] | None = None
    build: Callable[[Any, Any, int], Any] | None = None
    needs: frozenset[str] = field(default_factory=frozenset)
    # The needs it cannot do without: training is refused (the flow skips the model) when the
    # features lack one. A need not in `requires` is used where present, missed otherwise
    # (two_tower without metadata still has its id embeddings; content_based has nothing).
    requires: frozenset[str] = field(default_factory=frozenset)
    uses_history: bool = True
    item_vectors: str | None = None
    # (module) -> (user vectors [U+1, d], item vectors [I+1, d]) whose dot product is the score:
    # for a model scored by user id alone, what export builds the ANN index from.
    dot_vectors: Callable[[Any], tuple[Any, Any]] | None = None
    # Config field -> Range or Choice: what `recsys tune` searches (tasks/tune.py); declared
    # here beside the Config it ranges over, so a renamed field fails at import, not mid-study.
    search_space: dict[str, Range | Choice] = field(default_factory=dict)

    def required(self) -> frozenset[str]:
        """What training refuses to go without: `requires`, and ratings wherever they are
        needed (a rating model has nothing to fit without them)."""
        return frozenset(self.requires) | (frozenset(self.needs) & {RATINGS})

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"model {self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == CLOSED_FORM) != (self.fit is not None) or (self.kind == GRADIENT) != (
            self.build is not None
        ):
            raise ValueError(f"model {self.name}: closed_form needs fit, gradient needs build")
        if self.export not in EXPORT_FORMS:
            raise ValueError(f"model {self.name}: export must be one of {EXPORT_FORMS}")
        unknown = set(self.needs) - set(NEEDS)
        if unknown:
            raise ValueError(f"model {self.name}: unknown needs {sorted(unknown)}")
        if not set(self.requires) <= set(self.needs):
            raise ValueError(f"model {self.name}: requires must be a subset of needs")
        fields = getattr(self.config, "__dataclass_fields__", {})
        strange = sorted(set(self.search_space) - set(fields))
        if strange:
            raise ValueError(f"model {self.name}: search_space names no Config field {strange}")

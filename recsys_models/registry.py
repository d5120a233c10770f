"""The one list of models: every module of this package that declares `SPEC = ModelSpec(...)`.

Names are found by reading the files (ast), not importing them, so params.yaml and the CLI can
list the models without loading torch; a model's module is imported only when it is used.
"""

from __future__ import annotations

import ast
import functools
import importlib
from pathlib import Path

from recsys_models.spec import ModelSpec

PACKAGE = Path(__file__).resolve().parent


def _declares_spec(path: Path) -> bool:
    tree = ast.parse(path.read_text(), filename=str(path))
    return any(
        isinstance(node, ast.Assign | ast.AnnAssign)
        and any(
            isinstance(t, ast.Name) and t.id == "SPEC"
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
        )
        for node in tree.body
    )


@functools.cache
def model_names() -> tuple[str, ...]:
    """Every registered model, sorted by name."""
    return tuple(sorted(p.stem for p in PACKAGE.glob("*.py") if _declares_spec(p)))


def model_spec(name: str) -> ModelSpec:
    """The model's SPEC; ValueError (naming the choices) for a name that is not registered."""
    if name not in model_names():
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(model_names())}")
    spec = importlib.import_module(f"{__package__}.{name}").SPEC
    if spec.name != name:
        raise ValueError(f"recsys_models/{name}.py declares SPEC.name {spec.name!r}")
    return spec

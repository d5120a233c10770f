"""The model store: the one way any stage finds, reads and writes trained models.

Layout of models/<name>/ (models/<name>/temporal/ for the global temporal protocol):
- weights.pt    the nn.Module's state_dict (torch.save), nothing else
- config.json   model name, Config, trainer settings, the features manifest's sha256 and the
                weights' sha256, so a weights file from another run is refused, not scored
- metrics.json  validation metrics of the best model (full ranking), epochs, seconds
- dvclive/, checkpoints/   training curves, and Lightning's checkpoints for a resume

A model is restored from its weights through its registry entry (ModelSpec.restore): nothing is
refitted or retrained to learn its shapes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from recsys_models.registry import model_names, model_spec
from recsys_models.spec import ModelSpec
from tasks.errors import RecsysError
from tasks.io import atomic_path, file_sha256, write_json
from tasks.params import build_config

WEIGHTS = "weights.pt"
CONFIG = "config.json"
METRICS = "metrics.json"


def model_dir(models_root: str | Path, name: str, protocol: str = "loo") -> Path:
    """Where the train stage writes a model: models/<name>/, or models/<name>/temporal/."""
    root = Path(models_root) / name
    return root if protocol == "loo" else root / protocol


def spec(name: str) -> ModelSpec:
    """The registry's entry for `name`, as a one-line RecsysError when there is none."""
    try:
        return model_spec(name)
    except ImportError as exc:
        raise RecsysError(f"model {name}: cannot import recsys_models.{name} ({exc})") from exc
    except ValueError as exc:
        raise RecsysError(str(exc)) from exc


def model_config(name: str, fields: dict[str, Any], where: str, source: str = "params.yaml") -> Any:
    """The model's typed Config from a mapping; unknown keys and bad values are one line."""
    try:
        return build_config(spec(name).config, fields, where, source)
    except (ValueError, TypeError) as exc:
        raise RecsysError(f"{source}: {where}: {exc}") from exc


def trained_models(models_root: str | Path, protocol: str) -> list[str]:
    """The registry's models that have a complete training output for this protocol."""
    return [
        name
        for name in model_names()
        if (model_dir(models_root, name, protocol) / CONFIG).is_file()
        and (model_dir(models_root, name, protocol) / WEIGHTS).is_file()
    ]


def read_record(folder: Path) -> dict[str, Any]:
    """config.json of a trained model: what it is and what it was trained on."""
    path = Path(folder) / CONFIG
    try:
        record = json.loads(path.read_text())
        record["model"], record["config"], record["data"]  # noqa: B018 - must exist
    except FileNotFoundError as exc:
        raise RecsysError(f"{path}: missing (train the model first: recsys train)") from exc
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RecsysError(f"{path}: not a model config ({exc!r})") from exc
    return record


def staleness(folder: Path, manifest_sha: str, protocol: str) -> str | None:
    """Why a trained model cannot be used with these features (None: it can). A model
    trained on other features would score the wrong users and items."""
    recorded = read_record(folder)["data"]
    if recorded.get("manifest_sha256") != manifest_sha:
        return "trained on other features"
    if recorded.get("protocol", "loo") != protocol:
        return f"trained on the {recorded.get('protocol')} protocol"
    return None


def save_model(net: Any, folder: Path, record: dict[str, Any], metrics: dict[str, Any]) -> None:
    """weights.pt, then config.json naming its sha256, then metrics.json, each atomically."""
    import torch

    folder = Path(folder)
    with atomic_path(folder / WEIGHTS) as tmp:
        torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp)
    write_json(record | {"weights_sha256": file_sha256(folder / WEIGHTS)}, folder / CONFIG)
    write_json(metrics, folder / METRICS)


def load_model(folder: str | Path, data: Any) -> Any:
    """The trained nn.Module of a model folder, restored from config.json and weights.pt.

    The weights' sha256 must match the one config.json recorded, so a weights file from another
    run is refused rather than silently scored.
    """
    import torch

    folder = Path(folder)
    record = read_record(folder)
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise RecsysError(f"{weights}: missing (train the model first: recsys train)")
    if file_sha256(weights) != record.get("weights_sha256"):
        raise RecsysError(f"{weights}: sha256 differs from the one {folder / CONFIG} records")
    name = record["model"]
    config = model_config(name, record["config"], "config", str(folder / CONFIG))
    net = spec(name).restore(data, config)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except (RuntimeError, ValueError, OSError) as exc:
        raise RecsysError(f"{weights}: does not fit {name}'s shapes ({exc})") from exc
    return net.eval()

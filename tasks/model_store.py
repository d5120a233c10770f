"""The model store: the one way any stage finds, reads and writes trained models.

Layout of models/<name>/ (models/<name>/temporal/ for the global temporal protocol):
- weights.pt    the nn.Module's state_dict (torch.save), nothing else
- config.json   model name, Config, trainer settings, the features manifest's sha256 and the
                weights' sha256, so a weights file from another run is refused, not scored
- metrics.json  validation metrics of the best model (full ranking) and its epochs: a pure
                function of data, config and seed, so DVC sees the same file on every run
- timing.json   how long the training took (wall seconds): kept apart from metrics.json
                because it differs on every run (.dvcignore keeps it out of DVC's hashes)
- dvclive/, checkpoints/   training curves, and Lightning's checkpoints for a resume
                (dvclive/plots/metrics/val/ndcg@10.tsv: validation NDCG@10 after each epoch)

A model is restored from its weights through its registry entry (ModelSpec.restore): nothing is
refitted or retrained to learn its shapes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from recsys_models.registry import model_names, model_spec
from recsys_models.spec import ModelSpec
from tasks.errors import RecsysError
from tasks.io import atomic_path, crash_point, file_sha256, write_json
from tasks.params import build_config

WEIGHTS = "weights.pt"
PREVIOUS = ".weights.pt.previous"  # the old weights while save_model swaps in new ones
CONFIG = "config.json"
SKIPPED = "skipped"  # config.json's key for a model the features could not train
METRICS = "metrics.json"
TIMING = "timing.json"
TIMING_KEYS = ("train_seconds", "validation_seconds")
VALIDATION_CURVE = Path("dvclive/plots/metrics/val/ndcg@10.tsv")  # DVCLive's step, ndcg@10


def _recorded_weights(folder: Path, record: dict[str, Any]) -> Path:
    """The weights file config.json names: weights.pt, or the previous weights when a save
    was killed between its two renames (see save_model)."""
    for path in (folder / WEIGHTS, folder / PREVIOUS):
        if path.is_file() and file_sha256(path) == record.get("weights_sha256"):
            return path
    if not (folder / WEIGHTS).is_file():
        raise RecsysError(f"{folder / WEIGHTS}: missing (train the model first: recsys train)")
    raise RecsysError(f"{folder / WEIGHTS}: sha256 differs from the one {folder / CONFIG} records")


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
    """The registry's models that have a complete training output for this protocol (a
    skipped model's placeholder, see save_skipped, is none)."""
    return [
        name
        for name in model_names()
        if (model_dir(models_root, name, protocol) / CONFIG).is_file()
        and (model_dir(models_root, name, protocol) / WEIGHTS).is_file()
        and skipped_reason(model_dir(models_root, name, protocol)) is None
    ]


def save_skipped(folder: Path, reason: str, manifest_sha: str) -> None:
    """What `recsys train --skip-unusable` (dvc.yaml's train stages) leaves for a model these
    features cannot train (content_based without item metadata): config.json and metrics.json
    saying why, and an empty weights.pt, because DVC requires every output a stage declares.
    trained_models and read_record never take it for a model."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoints").mkdir(exist_ok=True)
    (folder / "dvclive" / "plots" / "metrics").mkdir(parents=True, exist_ok=True)  # no curve
    with atomic_path(folder / WEIGHTS) as new_weights:
        new_weights.write_bytes(b"")
    record = {SKIPPED: reason, "data": {"manifest_sha256": manifest_sha}}
    write_json(record, folder / CONFIG)
    write_json({SKIPPED: reason}, folder / METRICS)


def skipped_reason(folder: Path) -> str | None:
    """The reason a model folder holds a skipped placeholder, None for anything else."""
    try:
        record = json.loads((Path(folder) / CONFIG).read_text())
    except (OSError, ValueError):
        return None
    return str(record[SKIPPED]) if isinstance(record, dict) and SKIPPED in record else None


def read_record(folder: Path) -> dict[str, Any]:
    """config.json of a trained model: what it is and what it was trained on."""
    path = Path(folder) / CONFIG
    try:
        record = json.loads(path.read_text())
        record["model"], record["config"], record["data"]  # noqa: B018 - must exist
    except FileNotFoundError as exc:
        raise RecsysError(f"{path}: missing (train the model first: recsys train)") from exc
    except KeyError as exc:
        if isinstance(record, dict) and SKIPPED in record:
            raise RecsysError(f"{path}: not trained: {record[SKIPPED]}") from exc
        raise RecsysError(f"{path}: not a model config ({exc!r})") from exc
    except (OSError, ValueError, TypeError) as exc:
        raise RecsysError(f"{path}: not a model config ({exc!r})") from exc
    return record


def staleness(folder: Path, manifest_sha: str, protocol: str) -> str | None:
    """Why a trained model cannot be used with these features (None: it can). A model
    trained on other features would score the wrong users and items."""
    recorded = read_record(folder)["data"]
    trained_on = str(recorded.get("manifest_sha256"))
    if trained_on != manifest_sha:
        return f"trained on features {trained_on[:12]}, not these ({manifest_sha[:12]})"
    if recorded.get("protocol", "loo") != protocol:
        return f"trained on the {recorded.get('protocol')} protocol"
    return None


def save_model(net: Any, folder: Path, record: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write weights.pt and config.json as one unit, then metrics.json and timing.json (the
    TIMING_KEYS of `metrics`).

    Both files are written in full under temporary names first. The old weights stay linked
    as .weights.pt.previous until the new config.json is in place, so a process killed
    between the two renames leaves a folder whose config.json still names weights that exist
    (load_model falls back to them): the previous model stays loadable at every instant.
    """
    import torch

    folder = Path(folder)
    weights, config, previous = folder / WEIGHTS, folder / CONFIG, folder / PREVIOUS
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(config) as new_config:
        with atomic_path(weights) as new_weights:  # renamed onto weights.pt on leaving
            torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, new_weights)
            record = record | {"weights_sha256": file_sha256(new_weights)}
            new_config.write_text(json.dumps(record, indent=2, default=str) + "\n")
            if weights.exists():
                previous.unlink(missing_ok=True)
                os.link(weights, previous)
        crash_point("save_model:between-weights-and-config")
    previous.unlink(missing_ok=True)
    write_json({k: v for k, v in metrics.items() if k not in TIMING_KEYS}, folder / METRICS)
    write_json({k: metrics[k] for k in TIMING_KEYS if k in metrics}, folder / TIMING)


def read_metrics(folder: str | Path) -> dict[str, Any]:
    """A trained model's validation figures with its training time (metrics.json and
    timing.json together), as train returned them."""
    folder = Path(folder)
    metrics = json.loads((folder / METRICS).read_text())
    timing = folder / TIMING
    return metrics | (json.loads(timing.read_text()) if timing.is_file() else {})


def load_model(folder: str | Path, data: Any) -> Any:
    """The trained nn.Module of a model folder, restored from config.json and weights.pt.

    The weights' sha256 must match the one config.json recorded, so a weights file from another
    run is refused rather than silently scored.
    """
    import torch

    folder = Path(folder)
    record = read_record(folder)
    weights = _recorded_weights(folder, record)
    name = record["model"]
    config = model_config(name, record["config"], "config", str(folder / CONFIG))
    net = spec(name).restore(data, config)
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except (RuntimeError, ValueError, OSError) as exc:
        raise RecsysError(f"{weights}: does not fit {name}'s shapes ({exc})") from exc
    return net.eval()


def validation_curve(folder: str | Path) -> list[float]:
    """Validation NDCG@10 after each epoch, in order, as DVCLive recorded it while the model
    trained (one row per validation, and validation runs once per epoch); [] when the model
    has no curve (trained without DVCLive). The report draws it; readers never parse DVCLive's
    files themselves, so its layout is known in this one place."""
    path = Path(folder) / VALIDATION_CURVE
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    try:
        column = lines[0].split("\t").index("ndcg@10")
        return [float(line.split("\t")[column]) for line in lines[1:] if line.strip()]
    except (IndexError, ValueError) as exc:
        problem = f"not a DVCLive metric file with an ndcg@10 column ({exc})"
        raise RecsysError(f"{path}: {problem}") from exc

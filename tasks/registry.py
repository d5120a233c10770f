"""The model registry: artifacts/<name>/<version>/ folders and the champion pointer.

artifacts/champion.json names the version the server serves:
    {"model": NAME, "version": VERSION, "promoted_at": ISO time, "reason": text,
     "manifest_sha256": sha256 of that version's manifest.json}
It is only ever replaced whole (tasks.io.write_json: temporary file, then rename), so a reader
sees the old pointer or the new one, never half of one. The manifest's hash is recorded so the
server can tell a manifest edited after promotion from the one that was checked.

No torch here: the server (deploy/service.py) verifies artifacts with these same functions.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from tasks.errors import RecsysError
from tasks.io import file_sha256, write_json

CHAMPION = "champion.json"
MANIFEST = "manifest.json"
MANIFEST_KEYS = ("name", "version", "scorer", "files", "parity", "n_items", "max_seq_len")


def list_versions(artifacts_dir: str | Path, name: str | None = None) -> list[dict[str, str]]:
    """Every exported version ({"model", "version", "path"}), oldest first within a model.

    Only folders with a manifest.json count; temporary folders (a leading dot) never do.
    """
    root = Path(artifacts_dir)
    models = [root / name] if name else sorted(p for p in root.glob("*") if p.is_dir())
    found = []
    for model in models:
        if model.name.startswith(".") or not model.is_dir():
            continue
        for version in sorted(model.iterdir()):
            if not version.name.startswith(".") and (version / MANIFEST).is_file():
                found.append({"model": model.name, "version": version.name, "path": str(version)})
    return found


def verify_version(folder: str | Path) -> dict[str, Any]:
    """The manifest of an artifact folder, after checking that every file it names is there
    with the recorded sha256 and that it passed parity; RecsysError names what is wrong."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise RecsysError(f"{folder}: no such artifact version")
    try:
        manifest = json.loads(path.read_text())
    except OSError as exc:
        raise RecsysError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise RecsysError(f"{path}: not valid JSON ({exc})") from exc
    missing = [
        key for key in MANIFEST_KEYS if not isinstance(manifest, dict) or key not in manifest
    ]
    if missing:
        raise RecsysError(f"{path}: not an artifact manifest (missing {', '.join(missing)})")
    files = manifest["files"]
    if not isinstance(files, dict) or not files:
        raise RecsysError(f"{path}: 'files' must map file names to sha256")
    for rel, recorded in files.items():
        file = folder / rel
        if not file.is_file():
            raise RecsysError(f"{file}: listed in {MANIFEST} but missing")
        if file_sha256(file) != recorded:
            raise RecsysError(f"{file}: sha256 differs from {MANIFEST} (corrupted or edited)")
    if not (manifest.get("parity") or {}).get("passed"):
        raise RecsysError(f"{path}: the export did not pass its parity check")
    return manifest


def read_champion(artifacts_dir: str | Path) -> dict[str, Any] | None:
    """The champion pointer, or None when nothing was promoted yet.

    A pointer that exists but cannot be read is an error, not None: silently serving no model
    (or the fallback) because of a damaged file would hide the problem.
    """
    path = Path(artifacts_dir) / CHAMPION
    if not path.is_file():
        return None
    try:
        champion = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RecsysError(f"{path}: unreadable champion pointer ({exc})") from exc
    if not isinstance(champion, dict) or not {"model", "version"} <= set(champion):
        raise RecsysError(f"{path}: a champion pointer needs 'model' and 'version'")
    return champion


def champion_folder(artifacts_dir: str | Path, champion: dict[str, Any]) -> Path:
    """The artifact folder a pointer names (names may not climb out of artifacts/)."""
    model, version = str(champion["model"]), str(champion["version"])
    for part in (model, version):
        if not part or part.startswith(".") or "/" in part or "\\" in part:
            raise RecsysError(f"champion pointer: bad name {part!r}")
    return Path(artifacts_dir) / model / version


def promote(
    artifacts_dir: str | Path,
    name: str,
    version: str,
    reason: str = "",
    features_sha256: str | None = None,
) -> dict[str, Any]:
    """Make artifacts/<name>/<version> the champion; return the new pointer.

    The version must exist and its manifest must be intact (every sha256 matches, parity
    passed); with `features_sha256`, it must also have been exported from those features (the
    ones the promotion decision was made on). Only then is champion.json replaced, atomically.
    """
    root = Path(artifacts_dir)
    folder = champion_folder(root, {"model": name, "version": version})
    if not folder.is_dir():
        known = ", ".join(v["version"] for v in list_versions(root, name)) if name else ""
        hint = f" (versions of {name}: {known})" if known else ""
        raise RecsysError(f"promote: {folder} does not exist{hint}")
    manifest = verify_version(folder)
    if manifest["name"] != name or manifest["version"] != version:
        raise RecsysError(
            f"promote: {folder / MANIFEST} describes {manifest['name']}/{manifest['version']}"
        )
    exported_from = (manifest.get("data") or {}).get("features_manifest_sha256")
    if features_sha256 is not None and exported_from != features_sha256:
        raise RecsysError(
            f"promote: {folder} was exported from features {str(exported_from)[:12]}, "
            f"not {features_sha256[:12]} (the features this decision was made on)"
        )
    pointer = {
        "model": name,
        "version": version,
        "promoted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "reason": reason,
        "manifest_sha256": file_sha256(folder / MANIFEST),
    }
    write_json(pointer, root / CHAMPION)
    return pointer

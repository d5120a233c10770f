"""The export stage: models/<name>/ + data/features/ -> artifacts/<name>/<version>/.

An artifact is everything the server needs and nothing it must not need: ONNX graphs (or plain
.npy scores), the id maps, each known user's history, item metadata for filters, and a
manifest.json that names every file with its sha256. The server never imports torch.

What a model exports follows its registry entry's export form (recsys_models/spec.py; the
manifest's "scorer" says how the server turns a request into scores):
- history_graph ("onnx_scores"): model.onnx, a left-padded int64 `history` [batch, seq] (both
  axes dynamic, seq <= max_seq_len) -> `scores` [batch, n_items+1]; user_embedding.onnx
  (history -> user vector) and item_embeddings.npy, whose dot product is the same score.
- embeddings ("dot"): user_embedding.onnx (history, user) -> user vector; item_embeddings.npy
  from the item tower; scores = user vector @ item_embeddings.T. `user` is the user_idx whose
  features the graph looks up (0 = unknown user: no features).
- score_vector ("static"): scores.npy, the same scores for everyone.
- score_graph and neighbours ("onnx_scores"): model.onnx (history, user) -> scores; the model's
  item vectors too where its entry names them (for similar items). neighbours (item-kNN) also
  stores its top-k lists, neighbours.npy [I+1, k] and sims.npy: the graph holds those lists, not
  an item x item matrix, and the server reads them for similar items and sparse scoring.

VERSION is `YYYYMMDDTHHMMSSZ-<first 8 hex of the weights' sha256>` (UTC): it sorts by export
time as a string, and says which weights it holds. The version folder is built under a
temporary name and renamed in, so it appears complete or not at all; a failed parity check
raises RecsysError and leaves nothing behind.

Parity: the ONNX path is compared with torch eager on held-out users (the leave-one-out test
inputs) in several shapes: as stored (left-padded), length 1 ([batch, 1]), all padding but the
last item, a short crop, and batch 1. The export fails unless the largest absolute difference
is <= PARITY_ATOL and >= PARITY_TOP10 of the rows have the same ordered top-10.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from recsys_models.spec import (
    EMBEDDINGS,
    HISTORY_GRAPH,
    NEIGHBOURS,
    SCORE_VECTOR,
    ModelSpec,
)
from tasks import ann, model_store
from tasks.artifact_store import TEXT_VECTORS
from tasks.errors import RecsysError
from tasks.feature_store import (
    full_histories,
    load_features,
    manifest_sha256,
    raw_md5,
    serving_files,
)
from tasks.io import file_sha256, staged_dir
from tasks.params import AnnParams

FORMAT_VERSION = 1
OPSET = 17
PARITY_ATOL = 1e-4
PARITY_TOP10 = 0.999
Scorer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (history, users) -> scores


def export(
    name: str,
    models_dir: Path,
    features_dir: Path,
    artifacts_dir: Path,
    parity_users: int = 512,
    latency_calls: int = 300,
    seed: int = 0,
    data_dvc: Path | None = Path("data.dvc"),
    ann_params: AnnParams | None = None,
) -> dict[str, Any]:
    """Export models/<name>/ into artifacts/<name>/<version>/; return its manifest.

    A dot-product model over a catalogue of at least ann_params.min_items also gets an HNSW
    index (tasks/ann.py) and the manifest's "ann" entry; smaller catalogues are scored exactly.
    """
    ann_params = ann_params or AnnParams()
    model_dir = model_store.model_dir(models_dir, name)
    features_dir, artifacts_dir = Path(features_dir), Path(artifacts_dir)
    config = model_store.read_record(model_dir)
    features_sha = manifest_sha256(features_dir)
    trained_on = config["data"].get("manifest_sha256")
    if trained_on != features_sha or config["data"].get("protocol", "loo") != "loo":
        raise RecsysError(
            f"export {name}: {model_dir} was trained on features {str(trained_on)[:12]}, "
            f"{features_dir} holds {features_sha[:12]} (or another protocol); retrain first"
        )
    data = load_features(features_dir)
    net = model_store.load_model(model_dir, data)
    family = config["model"]
    spec = model_store.spec(family)
    version = make_version(config["weights_sha256"])
    out = artifacts_dir / name / version
    if out.exists():
        raise RecsysError(f"{out}: already exists; export again in a second")

    try:
        with staged_dir(out, [model_dir, features_dir]) as tmp, torch.no_grad():
            graphs, scorer = _write_graphs(spec, net, data, tmp)
            users, rows = held_out_rows(data.test_input, data.test_target, parity_users, seed)
            parity = check_parity(_eager_scorer(net), scorer, rows, users)
            if not parity["passed"]:
                raise RecsysError(
                    f"export {name}: ONNX differs from torch eager (max abs diff "
                    f"{parity['max_abs_diff']:.3g}, limit {PARITY_ATOL}; same top-10 for "
                    f"{parity['top10_agreement']:.4f} of rows, need {PARITY_TOP10}); "
                    "nothing written"
                )
            latency = measure_latency(scorer, rows[:1], users[:1], latency_calls)
            if graphs["scorer"] == "static":
                latency["runtime"] = "numpy (a stored score vector, no graph)"
            queries = rows[: ann_params.recall_queries], users
            index = _write_index(tmp, spec, net, data, ann_params, *queries)
            _copy_features(features_dir, tmp, data)
            text = _write_text(features_dir, tmp, data)
            manifest = {
                "format_version": FORMAT_VERSION,
                "name": name,
                "family": family,
                "version": version,
                "created_at": _utc_now(),
                "scorer": graphs.pop("scorer"),
                "uses_history": spec.uses_history,
                "max_seq_len": int(data.max_seq_len),
                "n_users": int(data.n_users),
                "n_items": int(data.n_items),
                "opset": OPSET,
                "graphs": graphs,
                "runtime": _versions(),
                "metrics": model_store.read_metrics(model_dir),
                "params": config,
                "data": {
                    "features_manifest_sha256": features_sha,
                    "data_dvc_md5": raw_md5(data_dvc) if data_dvc else None,
                },
                "git_commit": git_commit(),
                "parity": parity,
                "latency": latency,
                **({"ann": index} if index else {}),
                **({"text": text} if text else {}),
                "files": {
                    str(p.relative_to(tmp)): file_sha256(p)
                    for p in sorted(tmp.rglob("*"))
                    if p.is_file()
                },
            }
            (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    except BaseException:
        _remove_if_empty(out.parent)
        raise
    return manifest


def _write_index(
    out: Path,
    spec: ModelSpec,
    net: Any,
    data: Any,
    params: AnnParams,
    rows: np.ndarray,
    users: np.ndarray,
) -> dict[str, Any] | None:
    """The manifest's "ann" entry for a catalogue of at least params.min_items: the HNSW index
    of a dot-product artifact (a user-vector graph beside item vectors), measured on the
    held-out users' vectors; item-kNN's neighbour lists (exact); else None (exact scoring)."""
    graph, items = out / "user_embedding.onnx", out / "item_embeddings.npy"
    if data.n_items < params.min_items:
        return None
    if (out / "neighbours.npy").is_file():  # item-kNN: the lists are an exact candidate pool
        return {"kind": "neighbours", "items": int(data.n_items), "recall@10": 1.0}
    if spec.dot_vectors is not None:  # matrix factorisation: query by a user id's vector
        graph, items = out / "user_vectors.npy", out / "ann_items.npy"
        user_vectors, item_vectors = (t.detach().float().numpy() for t in spec.dot_vectors(net))
        np.save(graph, np.ascontiguousarray(user_vectors))
        np.save(items, np.ascontiguousarray(item_vectors))
        queries = user_vectors[users[: len(rows)]]
    elif graph.is_file() and items.is_file():
        queries = run(ort_session(graph), rows, users[: len(rows)])
    else:
        return None
    entry = ann.write(out, np.load(items), queries, params)
    return entry | {"query": graph.name, "items": items.name}


def make_version(weights_sha256: str, now: dt.datetime | None = None) -> str:
    """Sortable as a string: UTC export time, then the weights' short hash."""
    now = now or dt.datetime.now(dt.UTC)
    return f"{now:%Y%m%dT%H%M%SZ}-{weights_sha256[:8]}"


# --- graphs -----------------------------------------------------------------------------------


def _write_graphs(spec: ModelSpec, net: Any, data: Any, out: Path) -> tuple[dict[str, Any], Scorer]:
    """Write the model's graphs and arrays (by its export form); return their description and
    the onnxruntime scorer parity is checked on."""
    n_scores = data.n_items + 1
    example = torch.as_tensor(data.test_input[1:3], dtype=torch.long)
    example_users = torch.tensor([1, 2], dtype=torch.long)
    history = _io("history", "int64", ["batch", "seq"])
    user = _io("user", "int64", ["batch"])
    scores = _io("scores", "float32", ["batch", n_scores])

    if spec.export == SCORE_VECTOR:
        static = net.score(example_users[:1], example[:1])[0].numpy().astype(np.float32)
        np.save(out / "scores.npy", static)
        graphs = {"scorer": "static", "scores.npy": {"shape": [n_scores]}}
        return graphs, lambda h, u: np.broadcast_to(static, (len(h), n_scores)).copy()

    if spec.export == HISTORY_GRAPH:
        items = net.item_embeddings()
        dim = int(items.shape[1])
        vector = _io("user_embedding", "float32", ["batch", dim])
        onnx_export(_Scores(net, False), (example,), out / "model.onnx", [history], [scores])
        onnx_export(_LastState(net), (example,), out / "user_embedding.onnx", [history], [vector])
        _save_items(out, items)
        session = ort_session(out / "model.onnx")
        graphs = {
            "scorer": "onnx_scores",
            "model.onnx": {"inputs": [history], "outputs": [scores]},
            "user_embedding.onnx": {"inputs": [history], "outputs": [vector]},
            "item_embeddings.npy": {"shape": [n_scores, dim]},
        }
        return graphs, lambda h, u: session.run(None, {"history": h})[0]

    if spec.export == EMBEDDINGS:
        items = net.item_embeddings()
        dim = int(items.shape[1])
        vector = _io("user_embedding", "float32", ["batch", dim])
        onnx_export(
            _UserTower(net),
            (example, example_users),
            out / "user_embedding.onnx",
            [history, user],
            [vector],
        )
        item_matrix = _save_items(out, items)
        session = ort_session(out / "user_embedding.onnx")
        graphs = {
            "scorer": "dot",
            "user_embedding.onnx": {"inputs": used(session, [history, user]), "outputs": [vector]},
            "item_embeddings.npy": {"shape": [n_scores, dim]},
        }
        return graphs, lambda h, u: run(session, h, u) @ item_matrix.T

    onnx_export(
        _Scores(net, True), (example, example_users), out / "model.onnx", [history, user], [scores]
    )
    session = ort_session(out / "model.onnx")
    graphs = {
        "scorer": "onnx_scores",
        "model.onnx": {"inputs": used(session, [history, user]), "outputs": [scores]},
    }
    if spec.item_vectors:
        vectors = net.state_dict()[spec.item_vectors]
        _save_items(out, vectors)
        graphs["item_embeddings.npy"] = {"shape": list(vectors.shape)}
    if spec.export == NEIGHBOURS:  # the lists themselves: similar items, sparse scoring
        np.save(out / "neighbours.npy", net.neighbours.numpy().astype(np.int64))
        np.save(out / "sims.npy", net.sims.numpy().astype(np.float32))
        graphs["neighbours.npy"] = {"shape": list(net.neighbours.shape), "decay": net.decay}
        graphs["sims.npy"] = {"shape": list(net.sims.shape)}
    return graphs, lambda h, u: run(session, h, u)


def used(session: Any, specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The specs of the inputs the graph kept: the exporter drops an input the model ignores
    (e.g. `user` for a two-tower trained without user features)."""
    names = {i.name for i in session.get_inputs()}
    return [spec for spec in specs if spec["name"] in names]


def run(session: Any, history: np.ndarray, users: np.ndarray) -> np.ndarray:
    """The first output of a graph, fed whichever of history/user it takes."""
    feeds = {"history": history, "user": users}
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0]


def _io(name: str, dtype: str, shape: list[Any]) -> dict[str, Any]:
    return {"name": name, "dtype": dtype, "shape": shape}


def _save_items(out: Path, vectors: Any) -> np.ndarray:
    matrix = np.ascontiguousarray(vectors.detach().cpu().numpy(), dtype=np.float32)
    np.save(out / "item_embeddings.npy", matrix)
    return matrix


def onnx_export(
    module: Any, args: tuple, path: Path, inputs: list[dict], outputs: list[dict]
) -> None:
    """TorchScript exporter (dynamo=False: torch 2.13's dynamo exporter fails on the attention
    blocks in strict mode), every "batch"/"seq" axis dynamic.

    The wrapper is put in eval mode first: export restores the module's previous mode
    afterwards, and a fresh wrapper is in training mode, which would switch dropout back on in
    the eager model that parity compares against.
    """
    module.eval()
    dynamic = {
        spec["name"]: {
            axis: label for axis, label in enumerate(spec["shape"]) if isinstance(label, str)
        }
        for spec in inputs + outputs
    }
    try:
        with warnings.catch_warnings():
            # Tracer and legacy-exporter warnings (a GRU's batch size, shape checks turned
            # into constants): the parity check is what says whether the graph is right.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                dynamo=False,
                opset_version=OPSET,
                input_names=[spec["name"] for spec in inputs],
                output_names=[spec["name"] for spec in outputs],
                dynamic_axes=dynamic,
            )
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; one message
        raise RecsysError(f"export: {path.name}: ONNX export failed ({exc})") from exc
    module.eval()


def ort_session(path: Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session, single-threaded by default (as the server runs it)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class _Scores(nn.Module):
    """history (and user, for families that use it) -> scores over the catalogue."""

    def __init__(self, net: nn.Module, uses_user: bool):
        super().__init__()
        self.net, self.uses_user = net, uses_user

    def forward(self, history: torch.Tensor, user: torch.Tensor | None = None) -> torch.Tensor:
        users = user if self.uses_user else history[:, -1] * 0  # ignored by the model
        return self.net.score(users, history)


class _LastState(nn.Module):
    """A sequence model's hidden state after the last position: its user vector."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        return self.net(history)[:, -1]


class _UserTower(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, history: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        return self.net.user_embeddings(user, history)


def _eager_scorer(net: Any) -> Scorer:
    def score(history: np.ndarray, users: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = net.eval().score(torch.from_numpy(users), torch.from_numpy(history))
        return out.float().numpy()

    return score


# --- parity and latency -----------------------------------------------------------------------


def held_out_rows(
    inputs: np.ndarray, targets: np.ndarray, limit: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(user_idx, left-padded int64 history) of up to `limit` users with a test target."""
    users = np.flatnonzero(targets > 0)
    if len(users) > limit:
        users = np.sort(np.random.default_rng(seed).choice(users, limit, replace=False))
    return users.astype(np.int64), np.ascontiguousarray(inputs[users], dtype=np.int64)


def parity_cases(rows: np.ndarray) -> dict[str, np.ndarray]:
    """The shapes a server will feed: as stored, [B, 1], padding but one item, a crop."""
    last_only = np.zeros_like(rows)
    last_only[:, -1] = rows[:, -1]
    return {
        "padded": rows,
        "length_1": rows[:, -1:].copy(),
        "padded_but_one": last_only,
        "crop_7": rows[:, -min(7, rows.shape[1]) :].copy(),
    }


def check_parity(eager: Scorer, onnx: Scorer, rows: np.ndarray, users: np.ndarray) -> dict:
    """Largest |eager - onnx| and the share of rows with the same ordered top-10 (column 0,
    the padding id, excluded), per case and overall; batch 1 is checked on a few rows."""
    cases: dict[str, dict[str, Any]] = {}
    worst, same, total = 0.0, 0, 0
    items = dict(parity_cases(rows))
    for name, history in items.items():
        want, got = eager(history, users), onnx(history, users)
        diff, agree = _compare(want, got)
        cases[name] = {"rows": len(history), "shape": list(history.shape), "max_abs_diff": diff}
        worst, same, total = max(worst, diff), same + agree, total + len(history)
    singles = [(rows[i : i + 1], users[i : i + 1]) for i in range(min(8, len(rows)))]
    diffs = []
    for history, user in singles:
        diff, agree = _compare(eager(history, user), onnx(history, user))
        diffs.append(diff)
        worst, same, total = max(worst, diff), same + agree, total + 1
    cases["batch_1"] = {
        "rows": len(singles),
        "shape": [1, rows.shape[1]],
        "max_abs_diff": max(diffs),
    }
    agreement = same / total
    return {
        "users": len(users),
        "rows": total,
        "max_abs_diff": worst,
        "top10_agreement": agreement,
        "atol": PARITY_ATOL,
        "min_top10_agreement": PARITY_TOP10,
        "passed": bool(worst <= PARITY_ATOL and agreement >= PARITY_TOP10),
        "cases": cases,
    }


def _compare(want: np.ndarray, got: np.ndarray) -> tuple[float, int]:
    """Largest |want - got| and the rows whose top-10 agree, position by position, up to ties:
    where two items' eager scores are within PARITY_ATOL, either order is the same ranking
    (items with equal vectors, such as those never trained on, tie exactly in eager and by
    1e-7 in ONNX, which must not count as a disagreement)."""
    if want.shape != got.shape or not np.isfinite(got).all():
        return float("inf"), 0
    diff = float(np.abs(want - got).max())
    scores = want[:, 1:]
    wanted, gotten = top_ten(scores), top_ten(got[:, 1:])
    tied = np.abs(np.take_along_axis(scores, gotten, 1) - np.take_along_axis(scores, wanted, 1))
    return diff, int(((wanted == gotten) | (tied <= PARITY_ATOL)).all(axis=1).sum())


def top_ten(scores: np.ndarray, k: int = 10) -> np.ndarray:
    """Each row's k best columns, by score then column: what a stable argsort's first k are,
    without sorting the whole row (at a million items a full sort per row took minutes)."""
    scores = np.where(np.isnan(scores), -np.inf, scores)
    k = min(k, scores.shape[1])
    if k == 0:
        return np.zeros((len(scores), 0), dtype=np.int64)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # each row's k-th best value
    out = np.empty((len(scores), k), dtype=np.int64)
    for row, (values, cut) in enumerate(zip(scores, kth[:, 0], strict=True)):
        columns = np.flatnonzero(values >= cut)  # ties at the cut included, in column order
        out[row] = columns[np.lexsort((columns, -values[columns]))[:k]]
    return out


def measure_latency(scorer: Scorer, history: np.ndarray, users: np.ndarray, calls: int) -> dict:
    """Batch-1 latency of the ONNX path (ms), after a short warm-up."""
    for _ in range(min(20, calls)):
        scorer(history, users)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        scorer(history, users)
        times.append((time.perf_counter() - start) * 1000)
    return {
        "runtime": "onnxruntime CPU, 1 intra-op thread",
        "batch": 1,
        "calls": calls,
        "p50_ms": round(float(np.percentile(times, 50)), 4),
        "p99_ms": round(float(np.percentile(times, 99)), 4),
        "mean_ms": round(float(np.mean(times)), 4),
    }


# --- data that travels with the artifact ------------------------------------------------------


def _copy_features(features_dir: Path, out: Path, data: Any) -> None:
    for source, name in serving_files(features_dir, data.user_features is not None).items():
        shutil.copyfile(source, out / name)
    indptr, items = full_histories(features_dir, data.n_users)
    np.save(out / "seen_indptr.npy", indptr)
    np.save(out / "seen_items.npy", items)
    np.save(out / "histories.npy", last_items(indptr, items, data.max_seq_len))


def _write_text(features_dir: Path, out: Path, data: Any) -> dict[str, Any] | None:
    """item_text.npy: the features' item text embeddings (unit rows, zero where an item has no
    text) as float16, so the service finds items similar in text, for items no model has seen
    too (`recsys embed-items`), without torch or the encoder. The manifest's "text" entry names
    the encoder whose space they are in."""
    if data.item_text is None:
        return None
    np.save(out / TEXT_VECTORS, np.ascontiguousarray(data.item_text, dtype=np.float16))
    recorded = json.loads((features_dir / "manifest.json").read_text())["text_features"]
    keep = ("encoder", "package", "weights_sha256", "dim", "columns", "items_with_text")
    return {key: recorded[key] for key in keep} | {"file": TEXT_VECTORS}


def last_items(indptr: np.ndarray, items: np.ndarray, length: int) -> np.ndarray:
    """[U+1, length] each user's last `length` items, left-padded with 0."""
    index = indptr[1:, None] - length + np.arange(length)[None, :]
    inside = index >= indptr[:-1, None]
    return np.where(inside, items[np.clip(index, 0, max(len(items) - 1, 0))], 0).astype(np.int64)


# --- provenance -------------------------------------------------------------------------------


def git_commit() -> str | None:
    """HEAD of the code's repository, or None outside git."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: other versions live there
        folder.rmdir()

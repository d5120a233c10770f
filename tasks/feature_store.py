"""The feature store: the one way any stage reads data/features/ (the features stage's output).

The features stage writes the folder; training, evaluation and export read it only through
here. Every file read is checked against the sha256 the features stage recorded in
manifest.json, so no model is trained or scored on a half-copied or hand-edited folder, and
each problem is one RecsysError line naming the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

from recsys_models import spec
from recsys_models.data import FeatureData
from tasks.errors import RecsysError
from tasks.io import file_sha256, recover
from tasks.params import PROTOCOLS
from tasks.sequences import csr, padded_tail

MANIFEST = "manifest.json"
ITEM_MAP = "item_map.parquet"
USER_MAP = "user_map.parquet"
# Files an exported artifact carries for the server: features path -> name in the artifact.
SERVING_FILES = {
    ITEM_MAP: "item_map.parquet",
    USER_MAP: "user_map.parquet",
    "items/items.parquet": "items.parquet",
    "items/genres.json": "genres.json",
    "items/popularity.npy": "popularity.npy",
}
USER_FEATURES = "users/user_features.npy"


def manifest_sha256(features_dir: str | Path) -> str:
    """The features' identity: what a trained model records and every hand-off compares."""
    path = Path(features_dir) / MANIFEST
    if not path.is_file():
        raise RecsysError(f"{path}: not found; run `recsys features` first")
    return file_sha256(path)


def data_version(features_dir: Path, dvc_file: Path = Path("data.dvc")) -> dict[str, Any]:
    """What identifies the data: the features manifest's sha256 and the raw data's DVC hash."""
    return {
        "features_manifest_sha256": manifest_sha256(features_dir),
        "raw_md5": raw_md5(dvc_file) if Path(dvc_file).is_file() else None,
    }


def raw_md5(dvc_file: Path) -> str | None:
    """The md5 DVC recorded for the raw data (data.dvc), or None when it cannot be read."""
    try:
        outs = (yaml.safe_load(Path(dvc_file).read_text()) or {}).get("outs") or [{}]
        return outs[0].get("md5")
    except (OSError, yaml.YAMLError, AttributeError, IndexError, TypeError):
        return None


def available_data(features_dir: str | Path) -> frozenset[str]:
    """Which of the models' needs (recsys_models/spec.py) the features hold, from the manifest
    and one column of the training split, so the flow can skip a model that requires what is
    absent without loading any array."""
    folder = Path(features_dir)
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
        ratings = pl.scan_parquet(folder / "loo" / "train.parquet").select(
            pl.len(), pl.col("rating").null_count()
        )
        rows, null_ratings = ratings.collect().row(0)
    except (OSError, ValueError, pl.exceptions.PolarsError) as exc:
        raise RecsysError(f"{path}: cannot read the features ({exc})") from exc
    have = set()
    items = manifest.get("item_features") or {}
    if items.get("genres") or items.get("year_buckets"):
        have.add(spec.ITEM_FEATURES)
    if (manifest.get("user_features") or {}).get("columns"):
        have.add(spec.USER_FEATURES)
    if rows and not null_ratings:
        have.add(spec.RATINGS)
    return frozenset(have)


class WithheldSplit:
    """Stands in for the test split's arrays where a caller must not read them (tuning): any
    use of it is a one-line error, so a leak of test data into model selection cannot pass
    silently."""

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise RecsysError("the test split is withheld here (hyper-parameter search reads val only)")

    __getitem__ = __len__ = __iter__ = __array__ = __bool__ = _refuse

    def __getattr__(self, name: str) -> Any:
        self._refuse()


def load_features(
    features_dir: str | Path, protocol: str = "loo", with_test: bool = True
) -> FeatureData:
    """FeatureData of data/features under one protocol; a bad file is a one-line RecsysError.

    protocol "loo" is leave-one-out by time; "temporal" is the global temporal
    split: training rows are those before the validation cut, validation asks for each user's
    first item after it, and the test targets are every item a user consumed after the test
    cut, with everything before that cut as history (what a model deployed at the cut faces).

    with_test False never opens the test split's files (tuning): the test fields hold a
    WithheldSplit, which refuses any use.
    """
    if protocol not in PROTOCOLS:
        raise RecsysError(f"protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    store = _Checked(Path(features_dir))
    common = store.common()
    if protocol == "temporal":
        splits = {name: store.table(f"temporal/{name}.parquet") for name in ("train", "val")}
        test = store.table("temporal/test.parquet") if with_test else splits["val"].clear()
        data = _temporal_data(common, **splits, test=test)
        return data if with_test else _withhold_test(data)
    n_users = common["n_users"]
    rows, seq = (n_users + 1,), (n_users + 1, common["max_seq_len"])
    frame = store.table("loo/train.parquet")
    if not with_test:
        withheld = WithheldSplit()
        test_input, test_target = withheld, withheld
    else:
        test_input = store.array("loo/test_input.npy", seq)
        test_target = store.array("loo/test_target.npy", rows)
    data = FeatureData(
        **common,
        train_users=frame["user_idx"].to_numpy().astype(np.int64),
        train_items=frame["item_idx"].to_numpy().astype(np.int64),
        val_input=store.array("loo/val_input.npy", seq),
        val_target=store.array("loo/val_target.npy", rows),
        test_input=test_input,
        test_target=test_target,
        item_popularity=store.array("items/popularity.npy", (common["n_items"] + 1,)),
        train_ratings=_ratings(frame),
        train_times=frame["timestamp"].to_numpy().astype(np.int64),
    )
    return data if with_test else _withhold_test(data)


def _withhold_test(data: FeatureData) -> FeatureData:
    withheld = WithheldSplit()
    data.test_input = data.test_target = withheld
    data.test_seen = data.test_target_sets = withheld
    return data


class _Checked:
    """Reads the folder's files, each checked against the manifest's sha256 and shape."""

    def __init__(self, folder: Path):
        self.folder = folder
        if not folder.exists():
            recover(folder)  # a features run killed between its two renames left it aside
        path = folder / MANIFEST
        if not path.is_file():
            raise RecsysError(f"{path}: not found; run `recsys features` first")
        try:
            self.manifest = json.loads(path.read_text())
            self.recorded = self.manifest["files"]
            counts = self.manifest["counts"]
            self.n_users, self.n_items = int(counts["users"]), int(counts["items"])
            self.max_len = int(self.manifest["max_seq_len"])
            self.user_columns = self.manifest["user_features"]["columns"]
            text = self.manifest.get("text_features") or {}
            self.text_dim = int(text["dim"]) if text.get("enabled") else 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RecsysError(f"{path}: not a features manifest ({exc!r})") from exc

    def path(self, name: str) -> Path:
        p = self.folder / name
        if not p.is_file():
            raise RecsysError(f"{p}: not found; rerun `recsys features`")
        if self.recorded.get(name) != file_sha256(p):
            raise RecsysError(f"{p}: does not match manifest.json; rerun `recsys features`")
        return p

    def array(self, name: str, shape: tuple[int | None, ...]) -> np.ndarray:
        p = self.path(name)
        try:
            a = np.load(p, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise RecsysError(f"{p}: not a readable .npy file ({exc})") from exc
        expected = all(want in (None, got) for want, got in zip(shape, a.shape, strict=False))
        if a.ndim != len(shape) or not expected:
            raise RecsysError(f"{p}: shape {a.shape}, expected {shape} (None: any)")
        return a

    def table(self, name: str) -> pl.DataFrame:
        """A split's rows sorted by user, then time (ties keep the file's order)."""
        p = self.path(name)
        try:
            columns = pl.read_parquet_schema(p)
            keep = [c for c in ("user_idx", "item_idx", "timestamp", "rating") if c in columns]
            frame = pl.read_parquet(p, columns=keep)
        except (OSError, pl.exceptions.PolarsError) as exc:
            raise RecsysError(f"{p}: cannot read ({str(exc).splitlines()[0]})") from exc
        order = ["user_idx", "timestamp"] if "timestamp" in frame.columns else ["user_idx"]
        return frame.sort(order, maintain_order=True)

    def common(self) -> dict[str, Any]:
        """The fields every protocol shares: sizes and the item and user feature tensors."""
        n_users, n_items = self.n_users, self.n_items
        users = None
        if self.user_columns:
            users = self.array(USER_FEATURES, (n_users + 1, len(self.user_columns)))
        return {
            "n_users": n_users,
            "n_items": n_items,
            "max_seq_len": self.max_len,
            "item_genres": self.array("items/genres.npy", (n_items + 1, None)),
            "item_year_bucket": self.array("items/year_bucket.npy", (n_items + 1,)),
            "user_features": users,
            **self.text(),
        }

    def text(self) -> dict[str, Any]:
        """The item text embeddings and their mask, when the features have them."""
        if not self.text_dim:
            return {}
        rows = self.n_items + 1
        return {
            "item_text": self.array("items/text_embeddings.npy", (rows, self.text_dim)),
            "item_text_mask": self.array("items/text_mask.npy", (rows,)).astype(bool),
        }


def _temporal_data(
    common: dict[str, Any], train: pl.DataFrame, val: pl.DataFrame, test: pl.DataFrame
) -> FeatureData:
    """FeatureData of the global temporal split (see load_features). Users with no history
    before a cut have nothing to predict from there and get no target for it."""
    n_users, n_items, max_len = common["n_users"], common["n_items"], common["max_seq_len"]

    def ids(frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return frame["user_idx"].to_numpy().astype(np.int64), frame["item_idx"].to_numpy()

    def first_after(frame: pl.DataFrame, has_history: np.ndarray) -> np.ndarray:
        users, items = ids(frame.unique("user_idx", keep="first", maintain_order=True))
        out = np.zeros(n_users + 1, dtype=np.int64)
        keep = has_history[users]
        out[users[keep]] = items[keep]
        return out

    train_users, train_items = ids(train)
    before_test = pl.concat([train, val]).sort(["user_idx", "timestamp"], maintain_order=True)
    before_users, before_items = ids(before_test)
    has_train = np.bincount(train_users, minlength=n_users + 1) > 0
    has_before = np.bincount(before_users, minlength=n_users + 1) > 0
    # Every item consumed after the test cut, once, by users with a history before it.
    targets = test.filter(pl.Series(has_before[test["user_idx"].to_numpy()]))
    targets = targets.unique(["user_idx", "item_idx"], keep="first", maintain_order=True)
    return FeatureData(
        **common,
        train_users=train_users,
        train_items=train_items.astype(np.int64),
        val_input=padded_tail(train_users, train_items, n_users, max_len),
        val_target=first_after(val, has_train),
        test_input=padded_tail(before_users, before_items, n_users, max_len),
        test_target=first_after(test, has_before),
        item_popularity=np.bincount(train_items, minlength=n_items + 1).astype(np.float32),
        train_ratings=_ratings(train),
        train_times=train["timestamp"].to_numpy().astype(np.int64),
        test_seen=csr(before_users, before_items, n_users),
        test_target_sets=csr(*ids(targets), n_users),
    )


def _ratings(frame: pl.DataFrame) -> np.ndarray | None:
    """The training rows' ratings as float32, or None when any is missing (rating models only)."""
    if "rating" not in frame.columns or frame["rating"].null_count() > 0:
        return None
    return frame["rating"].to_numpy().astype(np.float32)


def full_histories(features_dir: Path, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """CSR (indptr, items) of every user's whole leave-one-out history in time order:
    training rows, then the validation item, then the test item (what a live user has done)."""
    store = _Checked(Path(features_dir))
    frames = [
        pl.read_parquet(store.path(f"loo/{split}.parquet"), columns=["user_idx", "item_idx"])
        .with_row_index("row")
        .with_columns(pl.lit(part).alias("part"))
        for part, split in enumerate(("train", "val", "test"))
    ]
    rows = pl.concat(frames).sort(["user_idx", "part", "row"])
    return csr(rows["user_idx"].to_numpy().astype(np.int64), rows["item_idx"].to_numpy(), n_users)


def item_ids(features_dir: Path) -> np.ndarray:
    """[I+1] object array: the source's item id of each item_idx (index 0, padding: None)."""
    return _ids(features_dir, ITEM_MAP, "item")


def user_ids(features_dir: Path) -> np.ndarray:
    """[U+1] object array: the source's user id of each user_idx (index 0, padding: None)."""
    return _ids(features_dir, USER_MAP, "user")


def _ids(features_dir: Path, name: str, kind: str) -> np.ndarray:
    table = pl.read_parquet(_Checked(Path(features_dir)).path(name))
    ids = np.empty(int(table[f"{kind}_idx"].max()) + 1, dtype=object)
    ids[table[f"{kind}_idx"].to_numpy()] = table[f"{kind}_id"].cast(pl.String).to_list()
    return ids


def serving_files(features_dir: Path, has_user_features: bool) -> dict[Path, str]:
    """The checked feature files an artifact carries, each with its name in the artifact."""
    store = _Checked(Path(features_dir))
    files = {store.path(source): name for source, name in SERVING_FILES.items()}
    if has_user_features:
        files[store.path(USER_FEATURES)] = "user_features.npy"
    return files

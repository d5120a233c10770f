"""The peers of bench/bench_classic.py: `implicit`'s ALS and scikit-surprise's SVD.

Runs inside its own venv (`make .venv-peers`: implicit 0.7.3, scikit-surprise 1.1.5, numpy<2, no
torch) and imports nothing from the project. bench_classic.py writes the inputs as .npy files
and scores or compares the outputs with the project's own code, so both sides are measured on
the same matrix, the same folds and the same metric code.

    python bench/peer_classic.py als --data DIR --out DIR [--factors 64 --reg 0.01 ...]
    python bench/peer_classic.py svd --data DIR --out DIR

als: DIR holds users.npy, items.npy (the training interactions) and shape.npy ([U+1, I+1]);
writes user_factors.npy, item_factors.npy and result.json (fit seconds).
svd: DIR holds fold_<k>_train.npy and fold_<k>_test.npy ([N, 3] user, item, rating);
writes fold_<k>_pred.npy and result.json (fit seconds per fold).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def run_als(args: argparse.Namespace) -> dict:
    import scipy.sparse as sp
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    users, items = np.load(args.data / "users.npy"), np.load(args.data / "items.npy")
    shape = tuple(int(n) for n in np.load(args.data / "shape.npy"))
    matrix = sp.csr_matrix((np.ones(len(users), np.float32), (users, items)), shape=shape)
    matrix.data[:] = 1.0  # binary, as in recsys_models.als
    model = AlternatingLeastSquares(
        factors=args.factors,
        regularization=args.reg,
        alpha=args.alpha,
        iterations=args.iterations,
        random_state=args.seed,
        num_threads=args.threads,
    )
    # implicit's own BLAS calls are single-threaded by its recommendation; its solver is
    # parallel over users with num_threads.
    with threadpool_limits(1, "blas"):
        start = time.perf_counter()
        model.fit(matrix, show_progress=False)
        seconds = time.perf_counter() - start
    np.save(args.out / "user_factors.npy", np.asarray(model.user_factors, np.float32))
    np.save(args.out / "item_factors.npy", np.asarray(model.item_factors, np.float32))
    return {"fit_seconds": round(seconds, 3), "threads": args.threads, "library": "implicit 0.7.3"}


def run_svd(args: argparse.Namespace) -> dict:
    from surprise import SVD, Dataset, Reader

    folds = sorted(args.data.glob("fold_*_train.npy"))
    seconds = []
    for train_file in folds:
        k = train_file.name.split("_")[1]
        train = np.load(train_file)
        test = np.load(args.data / f"fold_{k}_test.npy")
        tsv = args.out / f"fold_{k}_train.tsv"
        np.savetxt(tsv, train, fmt="%d\t%d\t%g")
        reader = Reader(line_format="user item rating", sep="\t", rating_scale=(1, 5))
        trainset = Dataset.load_from_file(str(tsv), reader).build_full_trainset()
        algo = SVD(random_state=args.seed)  # surprise's defaults: 100 factors, 20 epochs
        start = time.perf_counter()
        algo.fit(trainset)
        seconds.append(round(time.perf_counter() - start, 3))
        predicted = [algo.predict(str(int(u)), str(int(i))).est for u, i in test[:, :2]]
        np.save(args.out / f"fold_{k}_pred.npy", np.asarray(predicted, np.float64))
        os.remove(tsv)
    return {"fit_seconds": seconds, "library": "scikit-surprise 1.1.5 SVD (defaults)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("which", choices=["als", "svd"])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--reg", type=float, default=0.01)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = run_als(args) if args.which == "als" else run_svd(args)
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""RecBole 1.2.1's SASRec on our leave-one-out split, for bench/bench_train.py.

Runs inside its own venv (`make .venv-recbole`: torch 2.13.0, recbole 1.2.1, numpy<2), never in
the project's: it imports nothing from the project. bench_train.py writes our features'
sequences as a RecBole atomic file (timestamps are the position in the user's sequence, so
RecBole's time-ordered leave-one-out picks exactly our validation and test targets), this script
trains RecBole's SASRec with RecBole's own defaults (only the validation metric is set to ours,
NDCG@10, and CE needs no sampled negatives), then scores every item for the validation and test
inputs of our features, so bench_train.py ranks them with the project's own metric code (seen
items removed; RecBole's full-sort evaluator for sequential models does not remove them).

    python bench/recbole_sasrec.py --data DIR --out DIR [--epochs 300]

An interrupted run resumes from --out/resume.pt when started again with the same --out.

DIR (data) holds ours/ours.inter, val_input.npy and test_input.npy ([U+1, L] left-padded item
indices, 0 = padding). Writes result.json, val_scores.npy and test_scores.npy ([U+1, I+1],
column 0 = -inf) under --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=300, help="RecBole's default: 300")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.model.sequential_recommender import SASRec
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    config = Config(
        model="SASRec",
        dataset="ours",
        config_dict={
            "data_path": str(args.data),
            "checkpoint_dir": str(args.out / "saved"),
            "USER_ID_FIELD": "user_id",
            "ITEM_ID_FIELD": "item_id",
            "TIME_FIELD": "timestamp",
            "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
            "train_neg_sample_args": None,  # CE over the catalogue: no sampled negatives
            "eval_args": {
                "split": {"LS": "valid_and_test"},
                "order": "TO",
                "mode": "full",
                "group_by": "user",
            },
            "metrics": ["Hit", "NDCG", "MRR"],
            "topk": [10],
            "valid_metric": "NDCG@10",
            "epochs": args.epochs,
            "seed": args.seed,
            "show_progress": False,
            "use_gpu": False,
        },
    )
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = SASRec(config, train_data.dataset)
    trainer = Trainer(config, model)

    # The best epoch's weights are kept in memory rather than in RecBole's checkpoint file:
    # RecBole reloads that file with a plain torch.load, which torch >= 2.6 refuses. After
    # every epoch the whole training state goes to resume.pt (plain tensors and numbers), so a
    # run that is interrupted (RecBole needs hours on a 2-core CPU) goes on from its last epoch
    # with the same shuffling and dropout draws; the seconds add up over the pieces.
    resume_file = args.out / "resume.pt"
    curve: list[dict] = []
    best = {"score": float("-inf"), "state": None}
    done_seconds = 0.0
    if resume_file.is_file():
        saved_state = torch.load(resume_file, weights_only=True)
        model.load_state_dict(saved_state["model"])
        trainer.optimizer.load_state_dict(saved_state["optimizer"])
        trainer.start_epoch = saved_state["next_epoch"]
        trainer.cur_step = saved_state["cur_step"]
        trainer.best_valid_score = saved_state["best_valid_score"]
        train_data.generator.set_state(saved_state["loader_rng"])
        torch.set_rng_state(saved_state["torch_rng"])
        curve, best = saved_state["curve"], saved_state["best"]
        done_seconds = saved_state["seconds"]
        if trainer.cur_step >= trainer.stopping_step:  # it had stopped early: nothing to train
            trainer.start_epoch = trainer.epochs
        print(f"resuming at epoch {trainer.start_epoch + 1} ({done_seconds:.0f} s done)")
    start = time.perf_counter()

    def after_epoch(epoch: int, valid_score: float) -> None:
        elapsed = done_seconds + time.perf_counter() - start
        curve.append({"epoch": epoch + 1, "val_ndcg@10": float(valid_score), "elapsed_s": elapsed})
        print(f"epoch {epoch + 1}: val NDCG@10 {valid_score:.4f} at {elapsed:.0f} s", flush=True)
        if valid_score > best["score"]:
            best["score"] = float(valid_score)
            best["state"] = copy.deepcopy(model.state_dict())
        state = {
            "model": model.state_dict(),
            "optimizer": trainer.optimizer.state_dict(),
            "next_epoch": epoch + 1,
            "cur_step": trainer.cur_step,
            "best_valid_score": float(trainer.best_valid_score),
            "loader_rng": train_data.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "curve": curve,
            "best": best,
            "seconds": elapsed,
        }
        args.out.mkdir(parents=True, exist_ok=True)
        torch.save(state, args.out / "resume.tmp")
        (args.out / "resume.tmp").replace(resume_file)

    trainer.fit(train_data, valid_data, saved=False, show_progress=False, callback_fn=after_epoch)
    train_seconds = done_seconds + time.perf_counter() - start
    model.load_state_dict(best["state"])
    own_test = trainer.evaluate(test_data, load_best_model=False, show_progress=False)

    model.eval()
    item_tokens = dataset.field2id_token["item_id"]  # internal id -> our item index (a string)
    ours_of_internal = np.array([int(t) if t != "[PAD]" else 0 for t in item_tokens])
    args.out.mkdir(parents=True, exist_ok=True)
    for split in ("val", "test"):
        inputs = np.load(args.data / f"{split}_input.npy")
        scores = score_all(model, inputs, ours_of_internal, dataset, config)
        np.save(args.out / f"{split}_scores.npy", scores)

    best_epoch = max(curve, key=lambda row: row["val_ndcg@10"])["epoch"] if curve else 0
    result = {
        "epochs": len(curve),
        "best_epoch": best_epoch,
        "max_epochs": args.epochs,
        "stopped_early": len(curve) < args.epochs,
        "train_seconds": round(train_seconds, 1),
        "best_val_ndcg@10_recbole": float(best["score"]),
        "test_recbole_evaluator": {k: float(v) for k, v in own_test.items()},
        "config": {
            key: config[key]
            for key in (
                "train_batch_size",
                "learning_rate",
                "hidden_size",
                "n_layers",
                "n_heads",
                "inner_size",
                "hidden_dropout_prob",
                "attn_dropout_prob",
                "loss_type",
                "MAX_ITEM_LIST_LENGTH",
                "stopping_step",
                "epochs",
            )
        },
        "training_instances": len(train_data.dataset),
        "torch_threads": torch.get_num_threads(),
        "curve": curve,
    }
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")


@torch.no_grad()
def score_all(model, inputs: np.ndarray, ours_of_internal: np.ndarray, dataset, config):
    """[U+1, I+1] scores in our item indices for left-padded inputs in our item indices."""
    n_ours = int(ours_of_internal.max()) + 1
    internal_of_ours = np.zeros(n_ours, dtype=np.int64)
    internal_of_ours[ours_of_internal] = np.arange(len(ours_of_internal))
    internal_of_ours[0] = 0
    max_len = config["MAX_ITEM_LIST_LENGTH"]
    out = np.full((len(inputs), n_ours), -np.inf, dtype=np.float32)
    for start in range(0, len(inputs), 512):
        block = inputs[start : start + 512, -max_len:]
        lengths = (block > 0).sum(axis=1)
        # RecBole's sequences are right-padded: the newest item sits at position length - 1.
        seq = np.zeros_like(block)
        for row, (items, n) in enumerate(zip(block, lengths, strict=True)):
            seq[row, :n] = internal_of_ours[items[items > 0]]
        keep = lengths > 0
        if not keep.any():
            continue
        item_seq = torch.from_numpy(seq[keep]).long()
        item_len = torch.from_numpy(lengths[keep]).long()
        hidden = model.forward(item_seq, item_len)
        scores = (hidden @ model.item_embedding.weight.T).numpy()  # internal ids, 0 = [PAD]
        rows = np.flatnonzero(keep) + start
        out[np.ix_(rows, ours_of_internal[1:])] = scores[:, 1:]
    return out


if __name__ == "__main__":
    main()

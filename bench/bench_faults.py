"""Fault benchmark: random kills of the features, train and export stages, then a check that
every output is still loadable.

Each round starts one real `recsys` command (features; train of item-kNN or BPR-MF with a new
seed; export of item-kNN) in its own process and sends it SIGKILL at a random moment of its
usual run time (measured untouched first), the way a power cut or the OOM killer would. Then,
in this process, it checks the outputs the way the next stage reads them: the features load
with every file matching the manifest, each model restores from weights whose sha256 its
config names, and every artifact version folder verifies. A failed check counts as corrupt,
a missing output as lost. Writes bench/results/faults.json and bench/results/faults.md.

    python bench/bench_faults.py                 # 24 kills, seed 0
    python bench/bench_faults.py --kills 40 --seed 1
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results"
from bench.common import machine, write_results  # noqa: E402
from tasks import registry  # noqa: E402
from tasks.errors import RecsysError  # noqa: E402
from tasks.feature_store import load_features  # noqa: E402
from tasks.model_store import load_model  # noqa: E402

MODELS = ("itemknn", "bpr_mf")


def commands(work: Path, seed: int) -> dict[str, list[str]]:
    """The stage commands a round may kill, all writing into `work`."""
    recsys = [sys.executable, "-m", "cli.main"]
    common = ["--params", str(work / "absent.yaml"), "--set", "train.accelerator=cpu"]
    common += ["--set", "train.max_epochs=3", "--set", f"seed={seed}"]
    train = ["train", "--features", "features", *common]
    return {
        "features": [*recsys, "features", "--interim", "interim", "--out", "features"]
        + ["--skip-validation-check", *common],
        "train itemknn": [*recsys, *train, "--model", "itemknn", "--out", "models/itemknn"],
        "train bpr_mf": [*recsys, *train, "--model", "bpr_mf", "--out", "models/bpr_mf"],
        "export itemknn": [*recsys, "export", "--model", "itemknn", "--models-dir", "models"]
        + ["--features", "features", "--out", "artifacts", *common],
    }


def run(cmd: list[str], work: Path, kill_after: float | None = None) -> tuple[str, float]:
    """Run a command; SIGKILL it after `kill_after` seconds. Returns (outcome, seconds)."""
    env = os.environ | {"PYTHONPATH": str(ROOT), "RECSYS_LOCK_FILE": str(work / "lock")}
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return "killed", time.perf_counter() - start
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed untouched:\n{err[-2000:]}")
    return "finished before the kill", seconds


def check(work: Path) -> dict[str, list[str]]:
    """What the next stage would find: problems, by kind (corrupt or lost)."""
    found: dict[str, list[str]] = {"corrupt": [], "lost": []}
    if not (work / "features").is_dir():
        found["lost"].append("features")
        return found
    try:
        data = load_features(work / "features")
    except RecsysError as exc:
        found["corrupt"].append(f"features: {exc}")
        return found
    for name in MODELS:
        folder = work / "models" / name
        if not (folder / "config.json").is_file():
            found["lost"].append(f"models/{name}")
            continue
        try:
            load_model(folder, data)
        except RecsysError as exc:
            found["corrupt"].append(f"models/{name}: {exc}")
    for version in registry.list_versions(work / "artifacts", "itemknn"):
        try:
            registry.verify_version(work / "artifacts" / "itemknn" / version["version"])
        except RecsysError as exc:
            found["corrupt"].append(f"artifacts/itemknn/{version['version']}: {exc}")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [sys.executable, "-m", "cli.main", "synth", "--users", "600", "--items", "300"]
            + ["--interactions", "30000", "--out", str(work / "interim")],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=work,
            env=os.environ | {"PYTHONPATH": str(ROOT), "RECSYS_LOCK_FILE": str(work / "lock")},
        )
        usual = {}
        for stage, cmd in commands(work, 0).items():  # untouched: the outputs to protect
            usual[stage] = run(cmd, work)[1]
        problems = check(work)
        if problems["corrupt"] or problems["lost"]:
            raise SystemExit(f"the untouched run left problems: {problems}")

        rounds = []
        for i in range(args.kills):
            stage = rng.choice(sorted(usual))
            at = rng.uniform(0.0, usual[stage])
            outcome, seconds = run(commands(work, i + 1)[stage], work, kill_after=at)
            problems = check(work)
            rounds.append(
                {"stage": stage, "kill_at_s": round(at, 2), "outcome": outcome}
                | {"seconds": round(seconds, 2)}
                | problems
            )
            print(f"{i + 1:>3} {stage:<15} at {at:5.2f} s: {outcome}; {problems}")
        leftovers = sorted(str(p.relative_to(work)) for p in work.rglob(".*") if ".tmp-" in p.name)

    killed = [r for r in rounds if r["outcome"] == "killed"]
    result = {
        "machine": machine(),
        "seed": args.seed,
        "usual_seconds": {k: round(v, 2) for k, v in usual.items()},
        "rounds": rounds,
        "kills": len(killed),
        "finished_before_kill": len(rounds) - len(killed),
        "corrupt": sum(len(r["corrupt"]) for r in rounds),
        "lost": sum(len(r["lost"]) for r in rounds),
        "temporary_leftovers_at_end": leftovers,
    }
    write_results(args.out, "faults", result, markdown(result))
    print(markdown(result))


def tables(result: dict) -> dict[str, str]:
    """The markdown blocks of bench/results/faults.json, keyed by id: the .md and the README's
    generated blocks (bench/tables.py) come from this one function, so they cannot drift."""
    lines = [
        "| stage | usual s | rounds | killed | corrupt | lost |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for stage, seconds in result["usual_seconds"].items():
        mine = [r for r in result["rounds"] if r["stage"] == stage]
        lines.append(
            f"| {stage} | {seconds:.1f} | {len(mine)} | "
            f"{sum(r['outcome'] == 'killed' for r in mine)} | "
            f"{sum(len(r['corrupt']) for r in mine)} | {sum(len(r['lost']) for r in mine)} |"
        )
    return {
        "machine": f"Machine: {result['machine']}. Seed {result['seed']}. Command: "
        "`python bench/bench_faults.py`.",
        "stages": "\n".join(lines),
        "summary": f"{result['kills']} kills, {result['finished_before_kill']} runs finished "
        f"before their kill; {result['corrupt']} corrupt and {result['lost']} lost outputs.",
    }


def markdown(result: dict) -> str:
    t = tables(result)
    title = "# Fault benchmark: random SIGKILLs, then every output checked"
    return f"{title}\n\n{t['machine']}\n\n{t['stages']}\n\n{t['summary']}\n"


if __name__ == "__main__":
    main()

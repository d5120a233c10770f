"""`recsys tune`: a hyper-parameter search with Optuna on the validation split, never the test.

The search space is the model's own (`SEARCH_SPACE` beside its Config, `SPEC.search_space`);
every field it does not name keeps params.yaml's `train.<model>` value. Each trial trains the
model as the train stage does (early stopping on val NDCG@10, the best epoch counts) and
reports val NDCG@10 after every epoch, so the pruner stops a trial that trails the earlier
ones at the same epoch (gradient models; closed-form models just run their trials).

The study lives in an Optuna storage (an SQLite file by default, or an RDB URL that several
machines share), named after the model and the features it was tuned on: a rerun continues it
up to the total trial count, and another data version starts a study of its own. The features
are read with the test split withheld (tasks/feature_store.WithheldSplit), so no choice made
here can depend on it. Results: <out>/<model>/ best.json, trials.json, trials.md, written as
one unit; apply_best() writes the best values into params.yaml's `train.<model>` section.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning
import optuna
import torch
import yaml
from lightning.pytorch.callbacks import EarlyStopping

from recsys_models.data import FeatureData, eval_loader
from recsys_models.metrics import evaluate
from recsys_models.spec import CLOSED_FORM, Choice, ModelSpec, Range
from tasks import model_store
from tasks.errors import RecsysError
from tasks.feature_store import load_features, manifest_sha256
from tasks.io import atomic_path, check_output, staged_dir, write_json
from tasks.params import Params, load_params

MONITOR = "val_ndcg@10"
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
OWNED = "trials.json"
HEARTBEAT_S, GRACE_S = 60, 300  # a running trial's heartbeat; silent this long: failed


def tune(
    model: str,
    features_dir: Path,
    out_dir: Path,
    params: Params,
    trials: int | None = None,
    storage: str | None = None,
    protocol: str = "loo",
) -> dict[str, Any]:
    """Run the study of `model` up to `trials` finished trials in all, write out_dir (best.json,
    trials.json, trials.md) and return the best trial's summary."""
    t = params.tune
    total = trials if trials is not None else t.trials
    if total < 1:
        raise RecsysError(f"--trials must be >= 1, got {total}")
    check_output(out_dir, [features_dir], OWNED)  # refused now, not after hours of trials
    spec = model_store.spec(model)
    if not spec.search_space:
        raise RecsysError(
            f"model {model}: no search space (SEARCH_SPACE in recsys_models/{model}.py)"
        )
    base = params.train.section(model)
    current = model_store.model_config(model, base, f"train.{model}")  # fails before trial 1
    data = load_features(features_dir, protocol, with_test=False)
    url = storage_url(storage or t.storage)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=study_name(model, protocol, features_dir),
        storage=open_storage(url),
        direction="maximize",
        pruner=_pruner(params),
        load_if_exists=True,
    )
    # Seeded, so a run is repeatable, but offset by the trials already there: a resumed study
    # (or another machine joining it) must not draw the first trials' values again.
    study.sampler = optuna.samplers.TPESampler(seed=(params.seed + len(study.trials)) % 2**32)
    start_point = {name: getattr(current, name) for name in spec.search_space}
    if not study.trials and within(start_point, spec.search_space):
        # The first trial is params.yaml's values: the best found is never worse than them.
        study.enqueue_trial(start_point)
    objective = _Objective(spec, data, base, params)
    remaining = total - _finished(study)
    if remaining > 0:
        study.optimize(
            objective,
            n_trials=remaining,
            # Other machines on a shared storage finish trials too: stop at the total.
            callbacks=[optuna.study.MaxTrialsCallback(total, states=FINISHED)],
            catch=(RecsysError,),
        )
    summary = write_results(study, model, out_dir, _shown(url), start_point)
    return summary


def study_name(model: str, protocol: str, features_dir: Path) -> str:
    """One study per model, protocol and data version (the features manifest's hash)."""
    return f"{model}-{protocol}-{manifest_sha256(features_dir)[:12]}"


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """The study's storage with a heartbeat: a trial whose process died (killed, machine lost)
    stops beating and is marked failed after GRACE_S by the next trial started on the study,
    so a resumed or shared study never keeps a dead trial "running" for ever."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=min(HEARTBEAT_S, GRACE_S), grace_period=GRACE_S
        )


def storage_url(storage: str) -> str:
    """A path is an SQLite file (its folder is made); anything with :// is used as given."""
    if "://" in storage:
        return storage
    path = Path(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def _shown(url: str) -> str:
    """The storage URL as the outputs record it: without a password."""
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def _pruner(params: Params) -> optuna.pruners.BasePruner:
    t = params.tune
    if t.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.PercentilePruner(
        t.prune_percentile,
        n_startup_trials=t.prune_startup_trials,
        n_warmup_steps=t.prune_warmup_epochs,
    )


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def suggest(trial: optuna.Trial, space: dict[str, Range | Choice]) -> dict[str, Any]:
    """One value per searched field, drawn by the study's sampler."""
    values = {}
    for name, dist in space.items():
        if isinstance(dist, Choice):
            values[name] = trial.suggest_categorical(name, list(dist.values))
        elif dist.integer:
            values[name] = trial.suggest_int(name, int(dist.low), int(dist.high), log=dist.log)
        else:
            values[name] = trial.suggest_float(name, dist.low, dist.high, log=dist.log)
    return values


def within(values: dict[str, Any], space: dict[str, Range | Choice]) -> bool:
    """Whether every value lies in its field's range or list."""
    for name, dist in space.items():
        value = values[name]
        if isinstance(dist, Choice):
            if value not in dist.values:
                return False
        elif not dist.low <= value <= dist.high or (dist.integer and value != int(value)):
            return False
    return True


class _Objective:
    """One trial: the model trained with the suggested fields, scored by val NDCG@10."""

    def __init__(self, spec: ModelSpec, data: FeatureData, base: dict[str, Any], params: Params):
        self.spec, self.data, self.base, self.params = spec, data, base, params

    def __call__(self, trial: optuna.Trial) -> float:
        chosen = suggest(trial, self.spec.search_space)
        where = f"trial {trial.number} of {self.spec.name}"
        config = model_store.model_config(self.spec.name, self.base | chosen, where, "tune")
        lightning.seed_everything(self.params.seed, workers=True, verbose=False)
        start = time.perf_counter()
        try:
            if self.spec.kind == CLOSED_FORM:
                value = self._closed_form(config)
            else:
                value = self._gradient(config, trial)
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        return value

    def _closed_form(self, config: Any) -> float:
        try:
            net = self.spec.fit(self.data, config, self.params.seed)
        except ValueError as exc:
            raise RecsysError(f"model {self.spec.name}: {exc}") from exc
        return validation_ndcg(net, self.data, self.params.train.eval_batch_size)

    def _gradient(self, config: Any, trial: optuna.Trial) -> float:
        try:
            lit, datamodule = self.spec.build(self.data, config, self.params.seed)
        except ValueError as exc:
            raise RecsysError(f"model {self.spec.name}: {exc}") from exc
        t, train = self.params.tune, self.params.train
        reporter = PruningCallback(trial)
        with _quiet_lightning():  # its banners (devices, tips), once per trial, are noise
            trainer = lightning.Trainer(
                max_epochs=t.max_epochs,
                accelerator=train.accelerator,
                devices=1,  # trials run side by side on machines, not one trial across devices
                precision=_precision(train.precision, train.accelerator),
                callbacks=[
                    EarlyStopping(monitor=MONITOR, mode="max", patience=t.patience),
                    reporter,
                ],
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                num_sanity_val_steps=0,
            )
            trainer.fit(lit, datamodule=datamodule)
        if reporter.pruned:
            raise optuna.TrialPruned(f"val NDCG@10 {reporter.last:.4f} at epoch {reporter.epoch}")
        if reporter.best is None:
            raise RecsysError(f"model {self.spec.name}: no validation epoch ran")
        trial.set_user_attr("epochs", reporter.epoch + 1)
        return reporter.best


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Lightning's info messages off (warnings stay) for the block."""
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


class PruningCallback(lightning.Callback):
    """Reports val NDCG@10 to the trial after each epoch and stops training when the pruner
    says the trial trails; the trial is then marked pruned (not failed) by the objective."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial
        self.best: float | None = None
        self.last, self.epoch, self.pruned = math.nan, -1, False

    def on_validation_end(self, trainer: lightning.Trainer, pl_module: Any) -> None:
        value = trainer.callback_metrics.get(MONITOR)
        if trainer.sanity_checking or value is None:
            return
        self.last, self.epoch = float(value), trainer.current_epoch
        self.best = self.last if self.best is None else max(self.best, self.last)
        self.trial.report(self.last, self.epoch)
        if self.trial.should_prune():
            self.pruned = True
            trainer.should_stop = True


def _precision(precision: str, accelerator: str) -> str:
    """The train stage's rule: "auto" is bf16 mixed precision on a GPU, fp32 on CPU."""
    if precision != "auto":
        return precision
    gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if gpu else "32-true"


def validation_ndcg(net: Any, data: FeatureData, batch_size: int) -> float:
    """Full-ranking val NDCG@10 (seen items removed), the figure every trial is judged by."""
    net = net.eval()
    return float(evaluate(net.score, eval_loader(data, "val", batch_size))["ndcg@10"])


# --- results ----------------------------------------------------------------------------------


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """The study's table: trial, params, val NDCG@10 (the best epoch's; the last reported one
    for a pruned trial), state and seconds."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        value = trial.value
        if value is None and trial.intermediate_values:
            value = trial.intermediate_values[max(trial.intermediate_values)]
        rows.append(
            {
                "trial": trial.number,
                "params": dict(trial.params),
                "val_ndcg@10": None if value is None else round(float(value), 6),
                "state": trial.state.name.lower(),
                "seconds": trial.user_attrs.get("seconds"),
            }
        )
    return rows


def write_results(
    study: optuna.Study, model: str, out_dir: Path, storage: str, current: dict[str, Any]
) -> dict[str, Any]:
    """best.json, trials.json and trials.md under out_dir, swapped in as one folder;
    `current`: the searched fields' values in params.yaml now, shown beside the best."""
    rows = trial_rows(study)
    complete = [r for r in rows if r["state"] == "complete"]
    if not complete:
        raise RecsysError(f"study {study.study_name}: no trial completed (see {storage})")
    best = study.best_trial
    summary = {
        "model": model,
        "study": study.study_name,
        "storage": storage,
        "split": "val",
        "metric": "ndcg@10 (full ranking, seen items removed)",
        "best_trial": best.number,
        "best_val_ndcg@10": round(float(best.value), 6),
        "best_params": dict(best.params),
        "params_now": {k: current.get(k) for k in best.params},
        "trials": {state: sum(r["state"] == state for r in rows) for state in _states(rows)},
    }
    with staged_dir(out_dir, owned=OWNED) as tmp:
        write_json(summary, tmp / "best.json")
        write_json(rows, tmp / OWNED)
        (tmp / "trials.md").write_text(trials_markdown(summary, rows))
    return summary


def _states(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({r["state"] for r in rows})


def trials_markdown(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        f"# Tuning {summary['model']}: study {summary['study']}",
        "",
        f"Best: trial {summary['best_trial']}, val NDCG@10 {summary['best_val_ndcg@10']:.4f}, "
        f"{json.dumps(summary['best_params'])}. Validation split only; the test split was "
        "withheld.",
        "",
        "| trial | params | val NDCG@10 | state | seconds |",
        "| ---: | --- | ---: | --- | ---: |",
    ]
    for r in rows:
        value = "" if r["val_ndcg@10"] is None else f"{r['val_ndcg@10']:.4f}"
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
        params = ", ".join(f"{k}={_short(v)}" for k, v in r["params"].items())
        lines.append(f"| {r['trial']} | {params} | {value} | {r['state']} | {seconds} |")
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# --- apply ------------------------------------------------------------------------------------


def apply_best(params_file: Path, model: str, values: dict[str, Any]) -> list[str]:
    """Write `values` into params.yaml's `train.<model>` section and return the changed keys.

    The file is edited as text, line by line, so comments and layout stay: an existing key's
    value is replaced in place (its comment kept), a missing key is added at the end of the
    section. The result must parse to the old file with exactly those values changed and pass
    load_params, or nothing is written; the write is atomic.
    """
    params_file = Path(params_file)
    if not values:
        return []
    text = params_file.read_text()
    before = yaml.safe_load(text)
    lines = text.splitlines(keepends=True)
    start, end, indent = _section(lines, model, params_file)
    changed = []
    for key, value in values.items():
        rendered = _yaml_scalar(value)
        pattern = re.compile(rf"^( {{{indent}}}){re.escape(key)}:(\s*)(\S.*?|)(\s+#.*)?(\n?)$")
        found, m = None, None
        for i in range(start + 1, end):
            m = pattern.match(lines[i])
            if m:
                found = i
                break
        if found is None:
            lines.insert(end, f"{' ' * indent}{key}: {rendered}\n")
            end += 1
        else:
            lead, gap, _old, comment, newline = m.groups()
            new = f"{lead}{key}:{gap or ' '}{rendered}"
            if comment:  # the comment stays in its column where the new value leaves room
                column = m.start(4) + len(comment) - len(comment.lstrip())
                new = new.ljust(max(column, len(new) + 2)) + comment.lstrip()
            lines[found] = new + (newline or "\n")
        changed.append(key)
    new_text = "".join(lines)
    expected = json.loads(json.dumps(before))
    section = expected["train"].get(model) or {}
    expected["train"][model] = section | values
    if yaml.safe_load(new_text) != expected:
        raise RecsysError(f"{params_file}: could not edit train.{model} in place; edit it by hand")
    with atomic_path(params_file) as tmp:
        tmp.write_text(new_text)
        section = load_params(tmp).train.section(model)  # the whole file still checks
        model_store.model_config(model, section, f"train.{model}", str(params_file))
    return changed


def _section(lines: list[str], model: str, source: Path) -> tuple[int, int, int]:
    """(line of `  <model>:`, first line after its block, indentation of its keys) inside
    the top-level `train:`; a flow-style `{}` section is opened into block form first."""
    train = next((i for i, line in enumerate(lines) if re.match(r"^train:\s*(#.*)?$", line)), None)
    if train is None:
        raise RecsysError(f"{source}: no top-level train: section")
    head = None
    for i in range(train + 1, len(lines)):
        if re.match(r"^\S", lines[i]):
            break
        m = re.match(rf"^(\s+){re.escape(model)}:\s*(\{{\s*\}})?\s*(#.*)?$", lines[i])
        if m:
            head = i
            if m.group(2):  # `model: {}`: an empty flow mapping becomes `model:`
                comment = f"  {m.group(3)}" if m.group(3) else ""
                lines[i] = f"{m.group(1)}{model}:{comment}\n"
            break
    if head is None:
        raise RecsysError(f"{source}: train.{model} is not a block section; edit it by hand")
    outer = len(lines[head]) - len(lines[head].lstrip())
    end, indent = head + 1, None
    for i in range(head + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped:
            continue
        depth = len(lines[i]) - len(lines[i].lstrip())
        if depth <= outer:
            break
        if indent is None and not stripped.startswith("#"):
            indent = depth  # the first key's indentation is the section's
        end = i + 1  # comment lines deeper than the header belong to the section
    return head, end, outer + 2 if indent is None else indent


def _yaml_scalar(value: Any) -> str:
    """A scalar YAML reads back as the same value: floats keep a dot (PyYAML reads 1e-05 as a
    string), strings are quoted."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent}"
        return text
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))

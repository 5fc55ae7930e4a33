"""Per-row hyperparameter search before the reported runs: one Optuna study per row.

A hand-set learning rate per row makes a comparison of strategies a comparison of
how well each rate was guessed. With ``[search] enabled = true`` (``petl bench
--search``) every row first gets the same number of trials (``[search] trials``),
each an isolated worker process like the reported runs, over

* its learning rate, log-uniform in ``[lr / f, lr * f]`` around the row's own (``f`` =
  ``learning_rate_factor``), and
* the options its strategy declares in ``search_space`` (a class attribute:
  ``{"r": (4, 8, 16)}`` is a choice, ``range(4, 33, 4)`` an integer range), those named
  in ``[search] options`` (all declared ones by default).

Trials train on the training set minus a seeded validation split
(``validation_fraction``) and are scored on that split by the task metric at its best
evaluation (the checkpoint a user would pick); the user's evaluation set is not even
read. The chosen setting of each row is then trained once per seed on the whole
training set and evaluated on the evaluation set, once, for the reported numbers.

Sampler. A handful of trials is almost all exploration: TPE models nothing before its
startup trials (10 by default) are done, and random draws clump. The default is a
scrambled, seeded Sobol sequence (``QMCSampler``), which spreads any number of trials
evenly over the log learning rate and the options; trial 0 is the row's own settings
(enqueued), so a search never scores below the hand-set row on the validation split.
``"tpe"`` (with ``trials // 2`` startup trials) and ``"random"`` are there for longer
studies.

Seeds per trial. With ``trial_seeds = k`` a trial trains ``k`` times (seeds ``seed`` to
``seed + k - 1``, the same validation split) and scores the mean. One seed can rank a
learning rate that learns well on that seed and stalls on another above a steadier
one; on SST-2 the searched LoRA rate did exactly that (benchmarks/results/sst2_minilm_tuned/).

Pruning. Each trial evaluates ``evaluations`` times on the validation split; at each
point it reports its validation loss (negated when the task metric improves upwards,
so that "better" points the way the study optimises) and ``MedianPruner`` stops it
when it is worse than the median of the earlier trials at that point, once two trials
have completed. The loss, not the accuracy, because it moves smoothly on a small split.

Several processes or machines. ``jobs`` trials run at once (threads of ``optimize``,
each waiting on its own worker process). The study lives in an Optuna storage: by
default a journal file in the run folder; ``storage = "journal:///shared/study.log"``
or an RDB URL lets several machines run ``petl bench --search`` on one study, which
stops at ``trials`` finished trials per row whoever ran them.

Resuming. A study's name ends in a digest of everything its trials depend on (the task,
metric, model, data, training budget, the row and the search settings other than
``trials``, ``jobs`` and ``storage``), so a rerun of the same config in the same folder
picks up its finished trials, raising ``trials`` adds to them, and a changed row or data
set starts a fresh study instead of reusing trials of settings that are no longer there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from petl.bench.config import BenchConfig
from petl.bench.schema import StrategySpec
from petl.errors import ConfigError

__all__ = ["apply_choice", "carve_validation", "make_storage", "search_data", "search_row", "study_name", "trial_job"]

logger = logging.getLogger(__name__)

Spawn = Callable[[dict[str, Any], str], dict[str, Any]]
"""Runs a worker job in a fresh process under a name and returns its result (the runner's ``_spawn``)."""

JOURNAL = "journal://"


def make_storage(url: str) -> Any:
    """An Optuna storage for ``url``: ``journal:///path`` as a ``JournalStorage`` over a file, else an RDB URL."""
    import optuna

    if url.startswith(JOURNAL):
        path = url[len(JOURNAL):]
        if not path:
            raise ConfigError(f"storage {url!r} names no file. Write journal:///absolute/path/study.log.")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(path))
    return optuna.storages.RDBStorage(url)


def _sampler(config: BenchConfig) -> Any:
    import optuna

    search = config.search
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=max(1, search.trials // 2), seed=search.seed)
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    with warnings.catch_warnings():  # "experimental" since Optuna 3.0; the interface used here is stable
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=search.seed,
                                          warn_independent_sampling=False, warn_asynchronous_seeding=False)


def _pruner(config: BenchConfig) -> Any:
    import optuna

    if config.search.pruner == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)


def _direction(metric: str) -> str:
    from petl.training.evaluation import lower_is_better

    return "minimize" if lower_is_better(metric) else "maximize"


def _base_rate(config: BenchConfig, row: StrategySpec) -> float:
    from petl.training.config import default_learning_rate

    rate = config.resolved(row)["learning_rate"]
    return float(rate) if rate is not None else default_learning_rate(not row.is_full)


def _space(config: BenchConfig, row: StrategySpec) -> dict[str, Any]:
    """The row's declared options that this search covers."""
    wanted = config.search.options
    return {name: space for name, space in row.search_space.items() if wanted is None or name in wanted}


def _suggest(trial: Any, config: BenchConfig, row: StrategySpec) -> dict[str, Any]:
    rate, factor = _base_rate(config, row), config.search.learning_rate_factor
    params: dict[str, Any] = {"learning_rate": trial.suggest_float("learning_rate", rate / factor, rate * factor,
                                                                   log=True)}
    for name, space in _space(config, row).items():
        if isinstance(space, range):
            params[name] = trial.suggest_int(name, space.start, space[-1], step=space.step)
        else:
            params[name] = trial.suggest_categorical(name, list(space))
    return params


def apply_choice(row: StrategySpec, params: dict[str, Any]) -> StrategySpec:
    """``row`` with a trial's (or the chosen) learning rate and options."""
    options = {**row.options, **{k: v for k, v in params.items() if k != "learning_rate"}}
    return dataclasses.replace(row, learning_rate=params["learning_rate"], options=options)


def _with_row(config: BenchConfig, row: StrategySpec) -> BenchConfig:
    return config.replace(strategies=tuple(row if r.display == row.display else r for r in config.strategies))


def study_name(config: BenchConfig, row: StrategySpec) -> str:
    """The study of ``row``: ``<benchmark>-<row>-<digest>``, the digest over what its trials depend on.

    The same config gives the same name on every machine (several machines join one study);
    any change to the row, the data, the model, the training budget or the search space gives
    another, so finished trials are reused only for the settings they were run with.
    """
    whole = config.to_dict()
    search = {k: v for k, v in whole["search"].items() if k not in ("enabled", "trials", "jobs", "storage")}
    if search.get("trial_seeds") == 1:  # the default keeps the names studies had before the option existed
        del search["trial_seeds"]
    own = next(r for r, spec in zip(whole["strategies"], config.strategies, strict=True) if spec.display == row.display)
    keyed = {"task": whole["task"], "metric": whole["metric"], "model": whole["model"], "data": whole["data"],
             "train": whole["train"], "search": search, "row": own}
    digest = hashlib.sha256(json.dumps(keyed, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{config.name}-{row.display}-{digest}"


def search_row(config: BenchConfig, row: StrategySpec, spawn: Spawn, *, storage: str) -> dict[str, Any]:
    """Run (or join) the study of ``row`` and return what it found.

    Args:
        config: The benchmark; its ``[search]`` table sets trials, sampler, pruner and jobs.
        row: The row to tune.
        spawn: Runs a worker job in a fresh process (the runner's).
        storage: The Optuna storage URL the study lives in.

    Returns:
        A JSON-ready record: the chosen ``params`` (learning rate and options), its
        validation ``score``, and every trial's number, state, params, score and
        intermediate validation losses.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search, metric = config.search, config.metric_name
    name = study_name(config, row)
    study = optuna.create_study(study_name=name, storage=make_storage(storage), sampler=_sampler(config),
                                pruner=_pruner(config), direction=_direction(metric), load_if_exists=True)
    if not study.trials:  # trial 0: the row as configured, where its values are among the choices
        own = {"learning_rate": _base_rate(config, row)}
        own.update({k: row.options[k] for k, space in _space(config, row).items() if row.options.get(k) in space})
        study.enqueue_trial(own)

    def objective(trial: Any) -> float:
        params = _suggest(trial, config, row)
        trial_config = _with_row(config, apply_choice(row, params))
        job = {"mode": "trial", "config": trial_config.to_dict(), "label": row.display, "seed": search.seed,
               "storage": storage, "study_name": name, "trial_id": trial._trial_id}
        result = spawn(job, f"trial-{row.display}-{trial.number}")
        for key in ("validation_examples", "train_examples", "global_step", "wall_time_s", "seed_scores"):
            if key in result:
                trial.set_user_attr(key, result[key])
        if "error" in result:
            trial.set_user_attr("error", result["error"].splitlines()[0])
            logger.warning("%s trial %d failed: %s", row.display, trial.number, result["error"].splitlines()[0])
            return float("nan")  # Optuna records a failed trial and goes on
        if result.get("pruned"):
            raise optuna.TrialPruned(f"pruned at evaluation {result.get('evaluation')}")
        return float(result["score"])

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    left = search.trials - sum(t.state in finished for t in study.trials)
    if left > 0:
        study.optimize(objective, n_trials=left, n_jobs=search.jobs,
                       callbacks=[optuna.study.MaxTrialsCallback(search.trials, states=finished)])
    return _record(study, config, row, storage)


def _record(study: Any, config: BenchConfig, row: StrategySpec, storage: str) -> dict[str, Any]:
    import optuna

    trials = [{
        "number": t.number, "state": t.state.name, "params": dict(t.params),
        "score": t.value if t.state == optuna.trial.TrialState.COMPLETE else None,  # a pruned one's is its last loss
        "intermediate": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
        **{k: t.user_attrs[k] for k in sorted(t.user_attrs)},
    } for t in sorted(study.trials, key=lambda t: t.number)]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = study.best_trial if complete else None
    params = dict(best.params) if best is not None else {"learning_rate": _base_rate(config, row)}
    return {
        "study_name": study.study_name, "storage": storage, "metric": config.metric_name,
        "direction": _direction(config.metric_name), "sampler": config.search.sampler,
        "pruner": config.search.pruner, "trials_requested": config.search.trials,
        "validation_fraction": config.search.validation_fraction, "trial_seeds": config.search.trial_seeds,
        "params": params, "score": best.value if best is not None else None,
        "chosen_trial": best.number if best is not None else None,
        "note": None if best is not None else "no trial completed: the row's own settings are kept",
        "trials": trials,
    }


# -- inside a trial's worker process ----------------------------------------------------------


def carve_validation(data: Any, fraction: float, seed: int) -> Any:
    """``data`` (a ``TaskData``) with a seeded share of its training examples as the evaluation split.

    Raises:
        ConfigError: Too few training examples to carve a validation split from.
    """
    size = len(data.train)
    count = max(1, round(size * fraction))
    if size - count < 1:
        raise ConfigError(f"[search] validation_fraction = {fraction} leaves no training examples out of {size}. "
                          "Use more training data or a smaller fraction.")
    order = list(range(size))
    random.Random(seed).shuffle(order)
    held, kept = sorted(order[:count]), sorted(order[count:])
    return dataclasses.replace(data, train=_subset(data.train, kept), eval=_subset(data.train, held))


def _subset(dataset: Any, indices: list[int]) -> Any:
    if hasattr(dataset, "select"):
        return dataset.select(indices)
    import torch

    return torch.utils.data.Subset(dataset, indices)


def search_data(config: BenchConfig, tokenizer: Any) -> Any:
    """The tokenised training data with a carved validation split; the evaluation set is not read
    (for file data, ``[data] eval`` is pointed at the training file; synthetic data drops its held-out split)."""
    from petl.bench.loading import load_data

    if not config.data.synthetic:
        config = config.replace(data=dataclasses.replace(config.data, eval=config.data.train, eval_examples=1))
    data = load_data(config, tokenizer)
    return carve_validation(dataclasses.replace(data, eval=None), config.search.validation_fraction,
                            config.search.seed)


class _PruningEvaluator:
    """The task's evaluator, which also reports the validation loss to the trial and prunes it."""

    def __init__(self, inner: Any, task: str, trial: Any, sign: float, counter: list[int], last: int) -> None:
        self.inner, self.task, self.trial, self.sign, self.counter, self.last = inner, task, trial, sign, counter, last
        self.loss_sum, self.count = 0.0, 0.0

    def add_batch(self, *, logits: Any, labels: Any) -> None:
        from petl.training.evaluation import example_losses

        self.inner.add_batch(logits=logits, labels=labels)
        sums, counts = example_losses(self.task, logits, labels)
        self.loss_sum += float(sums.double().sum())
        self.count += float(counts.double().sum())

    def compute(self) -> dict[str, float]:
        import optuna

        metrics = self.inner.compute()
        step = self.counter[0]
        self.counter[0] += 1
        loss = self.loss_sum / self.count if self.count else math.nan
        if math.isfinite(loss):
            self.trial.report(self.sign * loss, step)
            if step < self.last and self.trial.should_prune():
                raise optuna.TrialPruned(f"evaluation {step}: validation loss {loss:.4f}")
        return metrics


def trial_job(job: dict[str, Any]) -> dict[str, Any]:
    """One trial in a worker process: train on the carved split once per trial seed, report, return
    the mean validation score (and each seed's)."""
    import optuna

    from petl.bench.loading import build_row_model, load_tokenizer
    from petl.metrics import evaluator_for
    from petl.training import TrainConfig, train

    config = BenchConfig.from_dict(job["config"])
    row, first = config.row(job["label"]), int(job["seed"])
    settings, metric = config.resolved(row), config.metric_name
    tokenizer = load_tokenizer(config)
    data = search_data(config, tokenizer)
    epochs = config.search.epochs or config.train.epochs
    max_steps = None if config.search.epochs else config.train.max_steps
    total = max_steps or epochs * math.ceil(len(data.train) / config.train.batch_size)
    every = max(1, math.ceil(total / config.search.evaluations))
    evaluations = math.ceil(total / every)
    runs = config.search.trial_seeds
    study = optuna.load_study(study_name=job["study_name"], storage=make_storage(job["storage"]),
                              pruner=_pruner(config))
    trial = optuna.trial.Trial(study, int(job["trial_id"]))
    sign = -1.0 if _direction(metric) == "maximize" else 1.0
    # One step counter over all seeds: seed k reports at steps k * evaluations ..., so the pruner
    # compares each seed's evaluations with the same seed's of earlier trials.
    counter = [0]
    facts = {"validation_examples": len(data.eval), "train_examples": len(data.train)}
    scores: list[float] = []
    history: list[Any] = []
    result = None
    for seed in range(first, first + runs):
        model = build_row_model(config, row, data, tokenizer, seed)
        factory = None
        if config.task != "question-answering":  # QA scores windows of whole contexts: no loss-only pruning there
            def factory() -> Any:
                return _PruningEvaluator(evaluator_for(config.task, data.label_names), config.task, trial, sign,
                                         counter, runs * evaluations - 1)
        train_config = TrainConfig(
            epochs=epochs, max_steps=max_steps, batch_size=config.train.batch_size,
            learning_rate=settings["learning_rate"], mixed_precision=settings["mixed_precision"],
            optimizer=settings["optimizer"], seed=seed, metric_for_best=metric, eval_steps=every,
            group_by_length=config.train.group_by_length,
            load_best_at_end=False, progress_bar=bool(job.get("progress", False)), logging_steps=10_000,
        )
        try:
            result = train(model, data, config=train_config, evaluator=factory)
        except optuna.TrialPruned:
            return {"pruned": True, "evaluation": counter[0] - 1, "seed_scores": scores, **facts}
        counter[0] = (seed - first + 1) * evaluations  # the next seed starts at its own block of steps
        scores.append(float(result.best_metric))
        history.append(result.eval_history)
        del model
    assert result is not None
    extra = {"seed_scores": scores} if runs > 1 else {}
    return {"score": sum(scores) / len(scores), "best_step": result.best_step,
            "metric_for_best": result.metric_for_best, "global_step": result.global_step,
            "history": history[0] if runs == 1 else history, **extra, **facts}

"""``[search]``: a study per row on a tiny model, pruning, the carved validation split that keeps
the evaluation set out of the search, worker processes and a shared journal storage, the CLI flags."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest

import petl.data
from petl.bench import loading as worker_loading
from petl.bench import runner, worker
from petl.bench.config import BenchConfig
from petl.bench.defaults import default_config
from petl.bench.schema import SearchSpec, StrategySpec
from petl.bench.search import carve_validation, search_data, search_row, study_name
from petl.errors import ConfigError

from .bench_tiny import tiny_config


def _in_process(job: dict[str, Any], work: Path, name: str, device: str) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(worker.run_job(job)))
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _spawn_here(work: Path) -> Any:
    return lambda job, name: _in_process(job, work, name, "cpu")


def _searched(model_dir: Path, **search: Any) -> BenchConfig:
    options = {"trials": 3, "pruner": "none", "evaluations": 2, **search}
    return tiny_config(model_dir, StrategySpec(name="lora", options={"r": 4}, learning_rate=1e-3),
                       search=SearchSpec(enabled=True, **options))


def test_a_study_of_three_trials(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner, "_spawn", _in_process)
    config = tiny_config(tiny_model_dir, StrategySpec(name="full", learning_rate=1e-4),
                         StrategySpec(name="lora", options={"r": 4}, learning_rate=1e-3),
                         search=SearchSpec(enabled=True, trials=3, pruner="none", evaluations=2, options=("r",)))
    result = runner.run_benchmark(config, tmp_path / "run", progress=False)
    lora = result.row("lora")
    record = lora.search
    assert record is not None and len(record["trials"]) == 3
    assert [t["state"] for t in record["trials"]] == ["COMPLETE"] * 3
    # trial 0 is the row as configured; every trial searched the learning rate and r within the declared space
    assert record["trials"][0]["params"] == {"learning_rate": pytest.approx(1e-3), "r": 4}
    for trial in record["trials"]:
        assert 1e-3 / 4 <= trial["params"]["learning_rate"] <= 1e-3 * 4 and trial["params"]["r"] in (4, 8, 16)
        assert 0.0 <= trial["score"] <= 1.0 and trial["validation_examples"] == round(24 * 0.1)
    best = max(record["trials"], key=lambda t: t["score"])
    assert record["chosen_trial"] == best["number"] and record["params"] == best["params"]
    # the reported row trains with the chosen settings
    assert lora.learning_rate == pytest.approx(best["params"]["learning_rate"])
    assert lora.options["r"] == best["params"]["r"]
    full = result.row("full").search
    assert full is not None and set(full["trials"][0]["params"]) == {"learning_rate"}  # full declares no options
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["results"][1]["search"]["trials"][2]["params"] == record["trials"][2]["params"]
    markdown = (tmp_path / "run" / "results.md").read_text()
    assert "## Search" in markdown and "## Uncertainty" in markdown and (tmp_path / "run" / "pareto.png").is_file()
    assert (tmp_path / "run" / "search.journal").is_file()


def test_a_hopeless_trial_is_pruned(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = _searched(tiny_model_dir, pruner="median", sampler="random")
    row = config.strategies[0]
    storage = f"journal://{tmp_path / 'study.log'}"
    from petl.bench.search import make_storage

    study = optuna.create_study(study_name=study_name(config, row), storage=make_storage(storage),
                                direction="maximize")
    for _ in range(2):  # two finished trials with a validation loss of 0 at every point: nothing beats them
        study.add_trial(optuna.trial.create_trial(value=1.0, intermediate_values={0: -0.0, 1: -0.0}))
    record = search_row(config, row, _spawn_here(tmp_path), storage=storage)
    third = record["trials"][2]
    assert third["state"] == "PRUNED" and third["intermediate"] == [pytest.approx(third["intermediate"][0])]
    assert third["intermediate"][0] < 0  # the negated validation loss of its first evaluation
    assert record["chosen_trial"] in (0, 1)


def test_the_search_never_reads_the_evaluation_set(tiny_model_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ["sentence\tlabel"] + [f"film number {i} was {'good' if i % 2 else 'bad'}\t{i % 2}" for i in range(40)]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "eval.tsv").write_text("sentence\tlabel\nsentinel\t1\n")
    config = dataclasses.replace(_searched(tiny_model_dir, trials=2), data=dataclasses.replace(
        _searched(tiny_model_dir).data, train=str(tmp_path / "train.tsv"), eval=str(tmp_path / "eval.tsv"),
        train_examples=None, eval_examples=None))
    read = []
    original = petl.data.read_dataset

    def spy(source: Any, *args: Any, **kwargs: Any) -> Any:
        read.append(str(source))
        assert "eval.tsv" not in str(source), "the search read the evaluation set"
        return original(source, *args, **kwargs)

    monkeypatch.setattr(petl.data, "read_dataset", spy)
    from petl.bench.loading import load_tokenizer

    data = search_data(config, load_tokenizer(config))
    assert len(data.train) == 36 and len(data.eval) == 4
    train_rows = {tuple(e["input_ids"]) for e in data.train}
    assert all(tuple(e["input_ids"]) not in train_rows for e in data.eval)  # disjoint (the sentences differ)
    record = search_row(config, config.strategies[0], _spawn_here(tmp_path), storage=f"journal://{tmp_path / 's.log'}")
    assert [t["state"] for t in record["trials"]] == ["COMPLETE", "COMPLETE"]
    assert any(path.endswith("train.tsv") for path in read) and not any("eval.tsv" in path for path in read)


def test_carving_is_seeded_and_disjoint() -> None:
    @dataclasses.dataclass
    class Data:
        train: list[int]
        eval: Any = None

    class Rows(list):
        def select(self, indices: list[int]) -> Rows:
            return Rows(self[i] for i in indices)

    data = Data(train=Rows(range(50)))
    a, b, c = (carve_validation(data, 0.2, seed) for seed in (3, 3, 4))
    assert list(a.eval) == list(b.eval) and list(a.eval) != list(c.eval)
    assert len(a.eval) == 10 and sorted([*a.train, *a.eval]) == list(range(50))
    with pytest.raises(ConfigError, match="leaves no training examples"):
        carve_validation(Data(train=Rows([1])), 0.5, 0)


def test_two_jobs_share_a_journal_in_worker_processes(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = _searched(tiny_model_dir, trials=2, jobs=2, options=())
    storage = f"journal://{tmp_path / 'shared' / 'study.log'}"
    work = tmp_path / "work"
    work.mkdir()
    spawn = lambda job, name: runner._spawn({**job, "device": "cpu"}, work, name, "cpu")  # noqa: E731
    record = search_row(config, config.strategies[0], spawn, storage=storage)
    assert [t["state"] for t in record["trials"]] == ["COMPLETE", "COMPLETE"], record["trials"]
    assert all(set(t["params"]) == {"learning_rate"} for t in record["trials"])
    # a second machine joining the finished study runs nothing more: the study holds its trials
    again = search_row(config, config.strategies[0], lambda job, name: pytest.fail("ran a trial"), storage=storage)
    assert [t["number"] for t in again["trials"]] == [0, 1]
    assert all(len(t["intermediate"]) == 2 and all(math.isfinite(v) for v in t["intermediate"])
               for t in record["trials"])


def test_a_study_is_resumed_only_for_the_settings_it_was_run_with(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = _searched(tiny_model_dir, trials=1, options=())
    row = config.strategies[0]
    storage = f"journal://{tmp_path / 'study.log'}"
    from petl.bench.search import make_storage

    old = optuna.create_study(study_name=study_name(config, row), storage=make_storage(storage), direction="maximize")
    old.add_trial(optuna.trial.create_trial(params={"learning_rate": 1e-3}, value=0.9, distributions={
        "learning_rate": optuna.distributions.FloatDistribution(2.5e-4, 4e-3, log=True)}))
    ran: list[dict[str, Any]] = []

    def spawn(job: dict[str, Any], name: str) -> dict[str, Any]:
        ran.append(job)
        return {"score": 0.5}

    # the same config (more trials, other jobs, or another machine) joins the finished trial
    assert study_name(dataclasses.replace(config, search=dataclasses.replace(config.search, trials=5, jobs=2)),
                      row) == study_name(config, row)
    assert search_row(config, row, spawn, storage=storage)["params"] == {"learning_rate": 1e-3} and not ran
    # a changed row (here its learning rate, hence its search range) does not inherit that trial
    moved = dataclasses.replace(row, learning_rate=2e-3)
    changed = config.replace(strategies=(moved,))
    assert study_name(changed, moved) != study_name(config, row)
    record = search_row(changed, moved, spawn, storage=storage)
    assert len(ran) == 1 and record["trials"][0]["params"] == {"learning_rate": pytest.approx(2e-3)}
    assert record["score"] == 0.5 and record["study_name"] == study_name(changed, moved)
    # so does a change of the data
    other = dataclasses.replace(config, data=dataclasses.replace(config.data, max_length=config.data.max_length + 8))
    assert study_name(other, row) != study_name(config, row)


def test_trial_seeds_score_each_trial_by_the_mean_of_its_seeded_runs(tiny_model_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    config = _searched(tiny_model_dir, trials=1, options=(), trial_seeds=2)
    row = config.strategies[0]
    assert study_name(config, row) != study_name(_searched(tiny_model_dir, trials=1, options=()), row)
    seeds: list[int] = []
    original = worker_loading.build_row_model

    def spy(config: Any, row: Any, data: Any, tokenizer: Any, seed: int) -> Any:
        seeds.append(seed)
        return original(config, row, data, tokenizer, seed)

    monkeypatch.setattr(worker_loading, "build_row_model", spy)
    record = search_row(config, row, _spawn_here(tmp_path), storage=f"journal://{tmp_path / 's.log'}")
    trial = record["trials"][0]
    assert seeds == [0, 1] and trial["state"] == "COMPLETE"
    assert len(trial["seed_scores"]) == 2 and trial["score"] == pytest.approx(sum(trial["seed_scores"]) / 2)
    # each seed reports its evaluations on its own block of steps: 2 evaluations x 2 seeds
    assert len(trial["intermediate"]) == 4 and record["trial_seeds"] == 2
    with pytest.raises(ConfigError, match="trial_seeds"):
        SearchSpec(trial_seeds=0)


def test_cli_flags_and_defaults(tmp_path: Path) -> None:
    from petl.cli import bench as cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    path = tmp_path / "b.toml"
    path.write_text('name = "b"\n[[strategies]]\nname = "lora"\n[search]\nvalidation_fraction = 0.2\n')
    args = parser.parse_args([str(path), "--search", "--trials", "3", "--jobs", "2", "--storage",
                              "journal:///tmp/x.log", "--epochs", "1"])
    config = cli._bench_config(args)
    assert config.search == SearchSpec(enabled=True, trials=3, jobs=2, storage="journal:///tmp/x.log",
                                       validation_fraction=0.2)
    assert config.train.epochs == 1 and config.seeds == (0, 1, 2)  # config files default to three seeds
    assert not cli._bench_config(parser.parse_args([str(path)])).search.enabled
    with pytest.raises(ConfigError, match="jobs"):
        cli._bench_config(parser.parse_args([str(path), "--jobs", "0"]))
    assert not default_config().search.enabled and default_config().seeds == (0,)  # the 10-minute default


def test_search_table_is_checked() -> None:
    rows = [{"name": "lora"}]
    with pytest.raises(ConfigError, match="Did you mean 'r'"):
        BenchConfig.from_dict({"strategies": rows, "search": {"options": ["rr"]}})
    with pytest.raises(ConfigError, match="trials"):
        BenchConfig.from_dict({"strategies": rows, "search": {"trails": 3}})
    with pytest.raises(ConfigError, match="storage"):
        SearchSpec(storage="study.log")
    config = BenchConfig.from_dict({"strategies": rows, "search": {"enabled": True, "options": []}})
    assert BenchConfig.from_dict(config.to_dict()) == config

"""The benchmark config: TOML / JSON loading, validation errors, the shipped configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from petl.bench.config import BenchConfig, check_runnable, load_config
from petl.bench.defaults import default_config
from petl.bench.schema import StrategySpec
from petl.errors import ConfigError, ConfigFileError, DataFileError, DeviceError, PetlError, UnknownStrategyError

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "benchmarks"

MINIMAL = """
name = "mini"
[data]
train = "synthetic"
[[strategies]]
name = "full"
[[strategies]]
name = "lora"
label = "lora-r4"
learning_rate = 1e-3
options = { r = 4 }
"""


def _write(tmp_path: Path, text: str, name: str = "bench.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_and_json_give_the_same_config(tmp_path: Path) -> None:
    from_toml = load_config(_write(tmp_path, MINIMAL))
    assert [r.display for r in from_toml.strategies] == ["full", "lora-r4"]
    assert from_toml.row("lora-r4").options == {"r": 4}
    assert from_toml.resolved(from_toml.row("lora-r4"))["learning_rate"] == 1e-3
    assert from_toml.resolved(from_toml.row("full"))["learning_rate"] is None
    from_json = load_config(_write(tmp_path, json.dumps(from_toml.to_dict()), "bench.json"))
    assert from_json == from_toml


def test_to_dict_round_trips_every_field() -> None:
    config = default_config()
    again = BenchConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('nmae = "x"\n' + MINIMAL, r"'nmae' is not a key of \[top level\]\. Did you mean 'name'\?"),
        (MINIMAL + "[data]\nmax_lenght = 3\n", None),  # a table given twice: a TOML error, below
        (MINIMAL.replace('train = "synthetic"', 'train = "synthetic"\nmax_lenght = 3'),
         r"'max_lenght' is not a key of \[data\]\. Did you mean 'max_length'\?"),
        (MINIMAL + "[train]\nepoch = 2\n", r"'epoch' is not a key of \[train\]\. Did you mean 'epochs'\?"),
        (MINIMAL + "[timing]\nwarmup = 2\n", r"'warmup' is not a key of \[timing\]\. Did you mean 'warmup_steps'\?"),
        (MINIMAL + "[model]\nload_in_8bits = true\n", r"Did you mean 'load_in_8bit'\?"),
        (MINIMAL.replace('label = "lora-r4"', 'lable = "lora-r4"'),
         r"'lable' is not a key of the \[\[strategies\]\] row 'lora'\. Did you mean 'label'\?"),
        (MINIMAL.replace("options = { r = 4 }", "r = 4"), r"options = \{ r = \.\.\. \}"),
        (MINIMAL.replace("options = { r = 4 }", "options = { rank = 4 }"), r"'rank' is not an option of the 'lora'"),
    ],
)
def test_unknown_keys_name_the_nearest_valid_key(tmp_path: Path, text: str, match: str | None) -> None:
    path = _write(tmp_path, text)
    if match is None:
        with pytest.raises(ConfigFileError, match="not valid TOML"):
            load_config(path)
        return
    with pytest.raises(ConfigError, match=match) as info:
        load_config(path)
    assert isinstance(info.value, PetlError)


def test_unknown_strategy_names_suggest_the_nearest_including_full(tmp_path: Path) -> None:
    with pytest.raises(UnknownStrategyError, match=r"'lorra'.*Did you mean 'lora'\?.*Available: full, "):
        load_config(_write(tmp_path, MINIMAL.replace('name = "lora"', 'name = "lorra"')))
    with pytest.raises(UnknownStrategyError, match=r"Did you mean 'full'\?"):
        StrategySpec(name="ful")


def test_missing_data_file_is_a_data_file_error(tmp_path: Path) -> None:
    text = MINIMAL.replace('train = "synthetic"', 'train = "data/train.tsv"\neval = "data/dev.tsv"')
    with pytest.raises(DataFileError, match=r"The train data file 'data/train.tsv' does not exist") as info:
        load_config(_write(tmp_path, text))
    assert isinstance(info.value, PetlError)


def test_relative_data_paths_are_found_next_to_the_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "data" / name).write_text("sentence\tlabel\ngood\t1\n", encoding="utf-8")
    text = MINIMAL.replace('train = "synthetic"', 'train = "data/train.tsv"\neval = "data/dev.tsv"')
    monkeypatch.chdir(ROOT)  # not the config's folder
    config = load_config(_write(tmp_path, text))
    assert config.data.train == str((tmp_path / "data" / "train.tsv").resolve())
    assert config.data.eval == str((tmp_path / "data" / "dev.tsv").resolve())


def test_hub_names_pass_through_unchanged(tmp_path: Path) -> None:
    text = MINIMAL.replace('train = "synthetic"', 'train = "imdb"\neval = "imdb"')
    assert load_config(_write(tmp_path, text)).data.train == "imdb"


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"name": "full", "options": {"r": 8}}, ConfigError, "Full fine-tuning takes no options"),
        ({"name": "full", "load_in_8bit": True}, ConfigError, "cannot train 8-bit weights"),
        ({"name": "lora", "mixed_precision": "bf61"}, ConfigError, r"Did you mean 'bf16'\?"),
        ({"name": "lora", "optimizer": "adam"}, ConfigError, r"Did you mean 'adamw'\?"),
        ({"name": "lora", "learning_rate": 3}, ConfigError, r"learning_rate of lora must be a number in \(0, 1\)"),
        ({"name": "lora", "options": {"r": -1}}, ConfigError, "r must be a positive integer"),
    ],
)
def test_invalid_rows(change: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        StrategySpec.from_dict(change)


def test_whole_config_checks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no \\[\\[strategies\\]\\] rows"):
        load_config(_write(tmp_path, 'name = "x"\n'))
    with pytest.raises(ConfigError, match=r"Row labels must be unique, got \['lora'\]"):
        BenchConfig(strategies=(StrategySpec(name="lora"), StrategySpec(name="lora", options={"r": 2})))
    with pytest.raises(ConfigError, match="Synthetic data exists for sequence-classification and causal-lm"):
        BenchConfig(task="token-classification", strategies=(StrategySpec(name="lora"),))
    with pytest.raises(ConfigError, match=r"task must be one of .*Did you mean 'causal-lm'\?"):
        BenchConfig(task="causal_lm", strategies=(StrategySpec(name="lora"),))
    with pytest.raises(ConfigError, match="seeds must not repeat"):
        BenchConfig(seeds=(1, 1), strategies=(StrategySpec(name="lora"),))
    with pytest.raises(ConfigError, match="no eval set"):
        load_config(_write(tmp_path, MINIMAL.replace('train = "synthetic"', 'train = "imdb"')))
    with pytest.raises(ConfigFileError, match="No benchmark config at"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigFileError, match="neither .toml nor .json"):
        load_config(_write(tmp_path, MINIMAL, "bench.yaml"))


def test_metric_defaults_per_task_and_takes_an_eval_prefix() -> None:
    rows = (StrategySpec(name="lora"),)
    assert BenchConfig(strategies=rows).metric_name == "eval_accuracy"
    assert BenchConfig(task="causal-lm", strategies=rows).metric_name == "eval_perplexity"
    assert BenchConfig(metric="f1", strategies=rows).metric_name == "eval_f1"


def test_select_quick_and_seeds() -> None:
    config = default_config()
    picked = config.select(["lora", "full"])
    assert [r.display for r in picked.strategies] == ["full", "lora"]  # the config's order
    with pytest.raises(ConfigError, match=r"'lroa'.*Did you mean 'lora'\?"):
        config.select(["lroa"])
    # Names that are no row: registered strategies and full fine-tuning join at their defaults.
    lora_only = config.select(["lora"])
    added = lora_only.select(["full", "lora", "loha"])
    assert [(r.name, r.options, r.learning_rate) for r in added.strategies] == [
        ("lora", {"r": 8}, 2e-3), ("full", {}, None), ("loha", {}, None)]
    quick = config.quick()
    assert quick.train.max_steps == 4 and quick.data.train_examples == 64 and quick.data.eval_examples == 32
    assert quick.timing.steps == 3 and quick.seeds == config.seeds[:1]
    assert quick.strategies == config.strategies


def test_default_config_compares_every_builtin_with_full() -> None:
    config = default_config()
    assert [r.name for r in config.strategies] == ["full", "lora", "adalora", "prefix", "bottleneck"]
    assert config.model.name == "minilm" and config.data.synthetic
    assert check_runnable(config) in ("cpu", "cuda")


def test_shipped_configs_load(shared_data: Path) -> None:
    if not shared_data.is_dir():
        pytest.skip(f"needs the shared data at {shared_data}")
    sst2 = load_config(BENCHMARKS / "sst2_minilm.toml")
    assert (sst2.data.max_length, sst2.train.epochs, sst2.train.batch_size) == (64, 3, 32)
    assert sst2.resolved(sst2.row("lora"))["learning_rate"] == 1.5e-3
    assert sst2.row("lora").options == {"r": 8, "target_modules": ["query", "key", "value", "attention.output.dense"]}
    assert sst2.resolved(sst2.row("full"))["learning_rate"] == 5e-5
    assert Path(sst2.data.train) == (shared_data / "sst2" / "train.tsv").resolve()
    conll = load_config(BENCHMARKS / "conll2003_minilm.toml")
    assert conll.task == "token-classification" and conll.data.train_examples == 2000
    assert conll.metric_name == "eval_f1"
    causal = load_config(BENCHMARKS / "smollm2_causal.toml")
    assert (causal.task, causal.model.name, causal.data.train) == ("causal-lm", "smollm2", "synthetic")


def test_gpu_config_rows_and_its_error_without_cuda(shared_data: Path) -> None:
    if not shared_data.is_dir():
        pytest.skip(f"needs the shared data at {shared_data}")
    config = load_config(BENCHMARKS / "gpu_bf16_8bit.toml")
    settings = {row.display: config.resolved(row) for row in config.strategies}
    assert settings["full-fp32"] == {"learning_rate": 5e-5, "mixed_precision": "no", "optimizer": "adamw",
                                     "load_in_8bit": False}
    assert settings["full-bf16"]["mixed_precision"] == "bf16" and not settings["full-bf16"]["load_in_8bit"]
    assert settings["lora-bf16"] == {"learning_rate": 1e-3, "mixed_precision": "bf16", "optimizer": "adamw",
                                     "load_in_8bit": False}
    assert settings["lora-8bit"] == {"learning_rate": 1e-3, "mixed_precision": "bf16", "optimizer": "adamw",
                                     "load_in_8bit": True}
    assert settings["lora-8bit-adamw8bit"] == {"learning_rate": 1e-3, "mixed_precision": "bf16",
                                               "optimizer": "adamw8bit", "load_in_8bit": True}
    assert settings["bottleneck-8bit"]["load_in_8bit"] and config.device == "cuda"
    if torch.cuda.is_available():
        assert check_runnable(config) == "cuda"
    else:
        with pytest.raises(DeviceError, match=r'sets device = "cuda", but torch sees no CUDA device') as info:
            check_runnable(config)
        assert isinstance(info.value, PetlError)


def test_fp16_rows_need_a_gpu() -> None:
    config = BenchConfig(device="cpu", strategies=(StrategySpec(name="lora", mixed_precision="fp16"),))
    with pytest.raises(DeviceError, match=r"Row 'lora' uses mixed_precision = \"fp16\""):
        check_runnable(config)

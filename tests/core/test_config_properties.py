"""Property-based checks of every option of every built-in strategy and of the trainer.

For any single option set to any value, a config either builds and round-trips exactly
through ``to_dict`` / ``from_dict`` (and JSON, as ``petl.save`` writes it), or is refused
with a :class:`ConfigError`: never another exception. Wrapping a tiny model with an
accepted value either works, with finite outputs, or raises a :class:`PetlError`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re
from typing import Any

import pytest
import tiny_models as T
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import petl
from petl.bench import schema
from petl.bench.estimate import estimate
from petl.core import registry
from petl.core.validators import check_state_dict
from petl.errors import CheckpointError, ConfigError, PetlError, TargetNotFoundError
from petl.training.config import TrainConfig

BUILTINS = sorted(n for n in registry.available() if registry.get(n).__module__.startswith("petl.strategies"))
FIELDS = [(name, f.name) for name in BUILTINS for f in dataclasses.fields(registry.get(name).config_class)]
TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
SCHEMA_FIELDS = [
    (cls, f.name)
    for cls in (schema.ModelSpec, schema.DataSpec, schema.TrainSpec, schema.TimingSpec)
    for f in dataclasses.fields(cls)
]

# Names the options recognise, so that strings sometimes hit a valid choice or a real module.
WORDS = [
    "", " ", "yes", "none", "all", "lora_only", "all-linear", "query", "value", "dense", "LayerNorm", "classifier",
    "c_attn", "q", ".*", "houlsby", "pfeiffer", "parallel", "relu", "gelu", "swish", "linear", "cosine", "adamw",
    "adamw8bit", "bf16", "fp16", "no", "tensorboard", "eval_loss", "accuracy", "synthetic", "minilm", "out",
]
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1e-300, 1e38, 3.5e38, 1e308]
SPECIAL_INTS = [0, -1, 1, 2, 3, 2**31, 2**63, 10**20, 10**400]
PATHS = {"blocks": "bert.encoder.layer", "ffn_output": "output.dense", "attention_output": "attention.output.dense"}


def _values(ints: st.SearchStrategy[int], floats: st.SearchStrategy[float]) -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(), st.booleans(), ints, floats, st.sampled_from(WORDS), st.text(max_size=6),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.lists(inner, max_size=4).map(tuple),
            st.dictionaries(st.one_of(st.sampled_from([*PATHS, *WORDS]), st.text(max_size=4)), inner, max_size=3),
            st.just(PATHS),
        ),
        max_leaves=6,
    )


BROAD = _values(
    st.one_of(st.integers(), st.sampled_from(SPECIAL_INTS)),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(SPECIAL_FLOATS)),
)
# Small enough to wrap a tiny model in milliseconds: ranks, widths and token counts stay small.
BOUNDED = _values(
    st.integers(min_value=-2, max_value=40),
    st.one_of(st.floats(min_value=-3, max_value=5), st.sampled_from(SPECIAL_FLOATS)),
)
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _edges(*values: Any, **fixed: Any) -> Any:
    """Try each of ``values`` on every parametrised case, besides the generated ones."""

    def decorate(test: Any) -> Any:
        for value in reversed(values):
            test = example(value=value, **fixed)(test)
        return test

    return decorate


BROAD_EDGES = _edges(math.nan, math.inf, -math.inf, -0.0, True, False, "yes", None, 0, -1, 10**400, 1e39, [], {},
                     ["LayerNorm"], {"a": 1})


def _exact(data: dict[str, Any]) -> str:
    """The JSON text of a config: tells 1 from 1.0 and True, and -0.0 from 0.0; NaN fails."""
    return json.dumps(data, sort_keys=True, allow_nan=False)


def _accepted(build: Any, options: dict[str, Any]) -> Any:
    """The config built from ``options``, or ``None`` when it is refused with a ConfigError."""
    try:
        return build(options)
    except ConfigError as exc:
        assert str(exc), "a ConfigError needs a message"
        return None


def _round_trips(cls: Any, config: Any) -> None:
    data = config.to_dict()
    text = _exact(data)
    again = cls.from_dict(data)
    assert again == config and _exact(again.to_dict()) == text
    from_json = cls.from_dict(json.loads(text))
    assert from_json == config and _exact(from_json.to_dict()) == text


@pytest.mark.parametrize("strategy,field", FIELDS)
@PROPERTY
@given(value=BROAD)
@BROAD_EDGES
def test_any_strategy_option_is_accepted_and_round_trips_or_is_a_config_error(
    strategy: str, field: str, value: Any
) -> None:
    cls = registry.get(strategy).config_class
    config = _accepted(cls.from_dict, {field: value})
    if config is not None:
        _round_trips(cls, config)


@pytest.mark.parametrize("field", TRAIN_FIELDS)
@PROPERTY
@given(value=BROAD)
@BROAD_EDGES
def test_any_training_option_is_accepted_and_round_trips_or_is_a_config_error(field: str, value: Any) -> None:
    options = {field: value}
    if field in ("resume", "log_with"):
        options["output_dir"] = "out"  # these need a folder; without one they are refused, which is tested too
    config = _accepted(TrainConfig.from_dict, options)
    if config is not None:
        _round_trips(TrainConfig, config)


@pytest.mark.parametrize("table,field", SCHEMA_FIELDS, ids=[f"{c.__name__}.{f}" for c, f in SCHEMA_FIELDS])
@PROPERTY
@given(value=BROAD)
@BROAD_EDGES
def test_any_benchmark_table_value_is_accepted_or_a_config_error(table: type, field: str, value: Any) -> None:
    options = {field: value}
    if table is schema.DataSpec and field == "train":
        options["eval"] = "eval.csv"  # real files need an eval set next to them
    _accepted(lambda o: table(**o), options)


@PROPERTY
@given(field=st.sampled_from(FIELDS), value=BROAD)
def test_any_option_of_a_benchmark_row_is_accepted_or_a_config_error(field: tuple[str, str], value: Any) -> None:
    strategy, name = field
    _accepted(schema.StrategySpec.from_dict, {"name": strategy, "options": {name: value}})


# -- wrapping a tiny model with an accepted value ------------------------------------------------

MODELS = [("bert", "seq-cls"), ("gpt2", "causal-lm"), ("t5", "seq2seq-lm")]
_TEMPLATES: dict[tuple[str, str], torch.nn.Module] = {}


def _fresh(arch: str, head: str) -> torch.nn.Module:
    if (arch, head) not in _TEMPLATES:
        _TEMPLATES[arch, head] = T.build(arch, head)
    return copy.deepcopy(_TEMPLATES[arch, head])


@pytest.mark.filterwarnings("ignore::UserWarning")  # e.g. modules_to_save leaving out the task head
@pytest.mark.parametrize("strategy,field", FIELDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=BOUNDED, case=st.sampled_from(MODELS))
@_edges(math.nan, 1e308, 3.5e38, 3.4e38, -0.0, True, 0, 1, 40, "LayerNorm", ["LayerNorm"], "all-linear", [0, 1],
        {"value", "query"}, None, case=MODELS[0])
def test_an_accepted_option_wraps_with_finite_outputs_or_raises_a_petl_error(
    strategy: str, field: str, value: Any, case: tuple[str, str]
) -> None:
    cls = registry.get(strategy).config_class
    config = _accepted(cls.from_dict, {field: value})
    if config is None:
        return
    arch, head = case
    model = _fresh(arch, head)
    try:
        petl.wrap(model, config)
    except PetlError:
        return
    batch = T.inputs(arch, head)
    assert torch.isfinite(T.logits(model, batch)).all(), f"{strategy} {field}={value!r} gives non-finite outputs"
    petl.unwrap(model)


# -- the regressions these properties found or guard ----------------------------------------------


@pytest.mark.parametrize(
    "strategy,options,message",
    [
        ("lora", {"r": True}, "r must be a positive integer, got True."),
        ("lora", {"use_rslora": "yes"}, "use_rslora must be True or False, got 'yes'."),
        ("lora", {"alpha": math.inf}, "alpha must be a finite positive number, got inf."),
        ("lora", {"alpha": 1e39}, "alpha must be at most 3.40282e+38 in magnitude (the largest float32), got 1e+39: "
                                  "the model multiplies by it in its own dtype, where a larger value becomes infinity "
                                  "and its outputs NaN."),
        ("lora", {"dropout": math.nan}, "dropout must be a finite number in [0, 1), got nan."),
        ("lora", {"modules_to_save": {"classifier": 1}},
         "modules_to_save must be a module name or a list of module names, got dict {'classifier': 1}."),
        ("adalora", {"target_r": True}, "target_r must be a positive integer, got True."),
        ("adalora", {"beta1": 5}, "beta1 must be a number in (0, 1), got 5."),
        ("adalora", {"beta2": 0}, "beta2 must be a number in (0, 1), got 0."),
        ("adalora", {"beta1": "0.5"}, "beta1 must be a number in (0, 1), got '0.5'."),
        ("adalora", {"total_step": True}, "total_step must be a positive integer, got True."),
        ("adalora", {"orth_reg_weight": math.inf}, "orth_reg_weight must be a finite number >= 0, got inf."),
        ("adalora", {"tinit": 1.0}, "tinit must be a non-negative integer, got 1.0."),
        ("bottleneck", {"scaling": math.nan}, "scaling must be a finite number or None, got nan."),
        ("bottleneck", {"scaling": -1e39}, "scaling must be at most 3.40282e+38 in magnitude (the largest float32), "
                                           "got -1e+39: the model multiplies by it in its own dtype, where a larger "
                                           "value becomes infinity and its outputs NaN."),
        ("bottleneck", {"reduction_factor": math.inf}, "reduction_factor must be a finite positive number or None, "
                                                       "got inf."),
        ("bottleneck", {"dropout": -math.inf}, "dropout must be a finite number in [0, 1), got -inf."),
        ("bottleneck", {"cross_attention": "yes"}, "cross_attention must be True or False, got 'yes'."),
        ("bottleneck", {"layers": {0: 1}}, "layers must be a list of block indices, got dict {0: 1}."),
        ("prefix", {"init_token_ids": [True, 3]}, "init_token_ids must contain non-negative integers, got [True, 3]."),
        ("prefix", {"num_virtual_tokens": False}, "num_virtual_tokens must be a positive integer, got False."),
    ],
)
def test_regressions_bad_values_are_config_errors_before_the_model_changes(
    strategy: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        registry.get(strategy).config_class.from_dict(options)
    assert str(info.value) == message
    model = T.build("bert", "seq-cls")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError):
        petl.wrap(model, strategy, **options)
    assert not hasattr(model, "peft_config") and model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("strategy", ["lora", "adalora"])
def test_a_target_peft_cannot_adapt_is_a_target_error_listing_the_linear_layers(strategy: str) -> None:
    # peft raised a bare ValueError: "Target module LayerNorm(...) is not supported. Currently, only ..."
    model = T.build("bert", "seq-cls")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TargetNotFoundError) as info:
        petl.wrap(model, strategy, target_modules=["LayerNorm"])
    assert str(info.value) == (
        f"target_modules=('LayerNorm',) names a LayerNorm, which {strategy} cannot adapt: it adapts linear layers "
        "(and embeddings and convolutions). Linear layers it has: query, key, value, dense, classifier. Pass some "
        'of these names, or target_modules="all-linear".'
    )
    assert not hasattr(model, "peft_config") and model.state_dict().keys() == before.keys()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_target_r_equal_to_init_r_is_refused_with_the_reason() -> None:
    # peft 0.x fails at the first allocation: RuntimeError: kthvalue(): selected number k out of range.
    with pytest.raises(ConfigError, match=r"^target_r must be below init_r, got target_r=4 and init_r=4: .*prune") as e:
        petl.AdaLoraConfig(init_r=4, target_r=4)
    assert "'lora' strategy with r=4" in str(e.value)
    with pytest.raises(ConfigError, match="target_r must be below init_r"):
        petl.AdaLoraConfig(init_r=8)  # the default target_r is 8


def test_a_sets_order_does_not_depend_on_the_run() -> None:
    assert petl.LoraConfig(target_modules={"value", "query", "key"}).target_modules == ("key", "query", "value")
    assert petl.BottleneckConfig(layers={3, 1, 2}).layers == (1, 2, 3)
    with pytest.raises(ConfigError, match="init_token_ids must be a list of token ids, got set"):
        petl.PrefixConfig(init_token_ids={5, 4})  # the order of the tokens matters


def test_from_dict_turns_every_construction_error_into_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"options of the 'lora' strategy must be a mapping"):
        petl.LoraConfig.from_dict([("r", 4)])  # type: ignore[arg-type]

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Fussy(petl.StrategyConfig):
        size: Any = 1

        def __post_init__(self) -> None:
            super().__post_init__()
            int(self.size)  # a ValueError or TypeError, as a careless third-party check raises

    for bad in ("x", [1], math.inf):  # ValueError, TypeError, OverflowError
        with pytest.raises(ConfigError, match=r"^Invalid options for the '' strategy: .* \(got \{'size'"):
            Fussy.from_dict({"size": bad})


@pytest.mark.parametrize(
    "options,message",
    [
        ({"greater_is_better": "yes"}, "greater_is_better must be True, False or None, got 'yes'."),
        ({"progress_bar": 1}, "progress_bar must be True or False, got 1."),
        ({"learning_rate": math.nan}, "learning_rate must be a finite number in (0, 1) or None, got nan."),
        ({"max_grad_norm": math.inf}, "max_grad_norm must be a finite positive number or None, got inf."),
        ({"epochs": True}, "epochs must be a positive integer, got True."),
    ],
)
def test_regressions_training_options(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig.from_dict(options)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: schema.ModelSpec(load_in_8bit="yes"), "[model] load_in_8bit must be True or False, got 'yes'."),
        (lambda: schema.TrainSpec(learning_rate=math.inf),
         "[train] learning_rate must be a finite number in (0, 1) or None, got inf."),
        (lambda: schema.StrategySpec(name="lora", load_in_8bit=1),
         "load_in_8bit of lora must be true or false, got 1."),
        (lambda: schema.StrategySpec(name="lora", learning_rate=math.nan),
         "learning_rate of lora must be a finite number in (0, 1) or None, got nan."),
        (lambda: schema.StrategySpec(name="bottleneck", options={"scaling": math.nan}),
         "scaling must be a finite number or None, got nan."),
    ],
)
def test_regressions_benchmark_tables(build: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        build()
    assert str(info.value) == message


# -- values that reach petl outside a config: adapter tensors and `petl estimate` ----------------


def test_a_tensor_of_another_dtype_kind_does_not_fit_but_another_float_width_does() -> None:
    expected = {"a": torch.zeros(2, 3), "mask": torch.zeros(4, dtype=torch.bool), "ids": torch.zeros(2).long()}
    check_state_dict(expected, {"a": torch.ones(2, 3, dtype=torch.bfloat16), "mask": torch.ones(4, dtype=torch.bool),
                                "ids": torch.ones(2, dtype=torch.int32)}, source="S", fix="F")
    found = {"a": torch.ones(2, 3, dtype=torch.int64), "mask": torch.ones(4), "ids": torch.ones(2).long()}
    with pytest.raises(CheckpointError) as info:
        check_state_dict(expected, found, source="The adapter in out/", fix="Load it onto the same base model.")
    assert str(info.value) == (
        "The adapter in out/ does not fit this model (dtype mismatches (values of another kind): "
        "['a: file int64, model float32', 'mask: file float32, model bool']). Load it onto the same base model."
    )


def test_an_adapter_saved_with_integer_weights_is_refused_and_the_model_left_plain(tmp_path: Any) -> None:
    from safetensors.torch import load_file, save_file

    from petl.core.io import WEIGHTS_NAME
    from petl.core.wrapping import is_wrapped

    petl.save(petl.wrap(T.build("bert", "seq-cls"), "lora", r=2), tmp_path)
    weights = load_file(tmp_path / WEIGHTS_NAME)
    key = next(k for k in weights if "lora_A" in k)
    save_file({**weights, key: weights[key].round().long()}, tmp_path / WEIGHTS_NAME, metadata={"format": "pt"})
    model = T.build("bert", "seq-cls")
    with pytest.raises(CheckpointError, match=rf"dtype mismatches .*{re.escape(key)}: file int64, model float32"):
        petl.load(model, tmp_path)
    assert not is_wrapped(model) and not hasattr(model, "peft_config")


def _model_folder(tmp_path: Any, **changes: Any) -> str:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**T.config("bert").to_dict(), **changes}), encoding="utf-8")
    return str(folder)


@pytest.mark.parametrize("labels", [0, -2, True, 2.0])
def test_estimate_refuses_a_bad_num_labels_before_reading_the_model(labels: Any) -> None:
    with pytest.raises(ConfigError, match=rf"^num_labels must be a positive integer, got {labels!r}\.$"):
        estimate("/no/such/model", num_labels=labels)


@pytest.mark.parametrize(
    "changes,problem",
    [
        ({"hidden_size": -4}, "RuntimeError: Trying to create tensor with negative dimension -4"),
        ({"num_attention_heads": 0}, "ZeroDivisionError"),
        ({"hidden_size": 30}, "not a multiple of the number of attention heads"),
        ({"hidden_size": 10**12}, "overflow"),
    ],
)
def test_estimate_names_the_folder_and_the_problem_of_a_config_that_builds_no_model(
    tmp_path: Any, changes: dict[str, Any], problem: str
) -> None:
    folder = _model_folder(tmp_path, **changes)
    with pytest.raises(PetlError) as info:
        estimate(folder, [("lora", "lora", {})])
    message = str(info.value)
    assert message.startswith(f"Cannot build the sequence-classification model (AutoModelForSequenceClassification) "
                              f"that the config of {folder} describes: ")
    assert problem in message and "Fix the value in its config.json" in message


def test_estimate_names_the_folder_of_a_config_with_a_value_of_the_wrong_type(tmp_path: Any) -> None:
    folder = _model_folder(tmp_path, num_hidden_layers="two")
    with pytest.raises(PetlError, match=rf"^The model config of {re.escape(repr(folder))} holds an invalid value: "
                                        r".*num_hidden_layers.*'two'.*Fix that value in its config\.json\.$"):
        estimate(folder)


def test_petl_estimate_reports_bad_input_as_one_line_and_exit_code_2(tmp_path: Any, capsys: Any) -> None:
    from petl.cli import main

    assert main(["estimate", "/no/such/model", "--num-labels", "0"]) == 2
    assert capsys.readouterr().err.strip() == "petl estimate: error: --num-labels must be a positive integer, got 0."
    assert main(["estimate", _model_folder(tmp_path, num_attention_heads=0), "--strategy", "lora"]) == 2
    err = capsys.readouterr().err
    assert "Cannot build the sequence-classification model" in err and "Traceback" not in err

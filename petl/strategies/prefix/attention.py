"""The attention-interface mechanics behind the ``prefix`` strategy.

transformers routes every attention layer of the supported families through
``ALL_ATTENTION_FUNCTIONS[config._attn_implementation]``. petl registers two
functions there, ``petl_prefix_eager`` and ``petl_prefix_sdpa``, each wrapping the
implementation the model was configured with, and points the model's configs at
them. Each function finds the prefix of the attention module it is called with
through :data:`SLOT_ATTR`, an attribute that ``inject`` sets on that module (so
several wrapped models in one process never see each other's prefix, and a
``copy.deepcopy`` of a wrapped model carries its own), prepends the prefix keys and
values and widens the mask.

The same names are registered in ``AttentionMaskInterface`` with a mask builder
that always materialises causal masks: transformers otherwise hands sdpa no mask
and relies on ``is_causal``, which aligns the causal triangle to the top-left
corner and would hide the prefix from every query but the first.

:func:`probe` runs the model once with a recording function to list the modules
that reach the interface, in model order, with the keys and values they compute.
"""

from __future__ import annotations

import contextvars
import functools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface

from petl.errors import UnsupportedModelError
from petl.modeling.configs import model_configs

__all__ = [
    "NAMES",
    "SLOT_ATTR",
    "PrefixSlot",
    "Record",
    "probe",
    "restore_attention",
    "switch_attention",
    "widen_mask",
]

NAMES: dict[str, str] = {"eager": "petl_prefix_eager", "sdpa": "petl_prefix_sdpa"}
"""The implementation a model was configured with -> the petl function wrapping it."""
SLOT_ATTR = "_petl_prefix_slot"


class PrefixSource(Protocol):
    """What an attention function needs from the prefix parameters."""

    def key_value(self, index: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(1, heads, num_virtual_tokens, head_dim)`` of attention module ``index``."""


@dataclass(frozen=True)
class PrefixSlot:
    """Set on an attention module: where its prefix comes from."""

    source: PrefixSource
    index: int


@dataclass
class Record:
    """One attention module seen by :func:`probe`."""

    name: str
    module: nn.Module
    key: torch.Tensor
    value: torch.Tensor


@dataclass
class _Recorder:
    seen: dict[int, tuple[nn.Module, torch.Tensor, torch.Tensor]] = field(default_factory=dict)


_RECORDER: contextvars.ContextVar[_Recorder | None] = contextvars.ContextVar("petl_prefix_recorder", default=None)


@functools.cache
def _eager_function(module_class: type) -> Callable[..., Any]:
    """The eager attention function of the file that defines ``module_class``."""
    function = getattr(sys.modules.get(module_class.__module__), "eager_attention_forward", None)
    if function is None:
        raise UnsupportedModelError(
            f"{module_class.__name__} has no module-level `eager_attention_forward` for petl's prefix attention "
            "to wrap. Load the model with attn_implementation='sdpa' and wrap it again."
        )
    return function


def _base_function(base: str, module: nn.Module) -> Callable[..., Any]:
    return ALL_ATTENTION_FUNCTIONS["sdpa"] if base == "sdpa" else _eager_function(type(module))


def widen_mask(
    mask: torch.Tensor | None,
    query: torch.Tensor,
    key_length: int,
    num_prefix: int,
    causal: bool,
    additive: bool,
) -> torch.Tensor | None:
    """The attention mask with ``num_prefix`` visible columns in front.

    Args:
        mask: ``None``, a boolean mask (``True`` = attend) or an additive float mask,
            of shape ``(batch, 1 or heads, queries, keys)``.
        query: The queries ``(batch, heads, queries, head_dim)``.
        key_length: Keys before the prefix (cached plus current tokens).
        num_prefix: Prefix positions to put in front, visible to every query.
        causal: Whether a missing mask stands for causal attention.
        additive: Return an additive float mask (eager attention adds the mask to the scores).
    """
    query_length = query.shape[2]
    if mask is None:
        if not (causal and query_length > 1):
            return None  # every query sees every key: the prefix needs no mask either
        # The queries are the last ``query_length`` of ``key_length`` positions (a cache holds the rest).
        query_pos = torch.arange(query_length, device=query.device) + (key_length - query_length)
        mask = (torch.arange(key_length, device=query.device)[None, :] <= query_pos[:, None])[None, None]
    if mask.dtype == torch.bool:
        wide = torch.cat([mask.new_ones(*mask.shape[:-1], num_prefix), mask], dim=-1)
        return _additive(wide, query.dtype) if additive else wide
    return torch.cat([mask.new_zeros(*mask.shape[:-1], num_prefix), mask], dim=-1)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (``True`` = attend) as the additive float mask eager attention expects."""
    return torch.where(mask, torch.zeros((), dtype=dtype, device=mask.device), torch.finfo(dtype).min)


def _prefix_attention(
    base: str,
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    function = _base_function(base, module)
    slot = module.__dict__.get(SLOT_ATTR)
    if slot is not None and not getattr(slot.source, "active", True):  # switched off: plain attention
        slot = None
    if slot is None:
        recorder = _RECORDER.get()
        if recorder is not None and id(module) not in recorder.seen:
            recorder.seen[id(module)] = (module, key.detach(), value.detach())
        # petl's mask builder hands out boolean masks; eager attention adds its mask to the scores.
        if base == "eager" and attention_mask is not None and attention_mask.dtype == torch.bool:
            attention_mask = _additive(attention_mask, query.dtype)
        return function(module, query, key, value, attention_mask, **kwargs)
    prefix_key, prefix_value = slot.source.key_value(slot.index, key)
    num_prefix = prefix_key.shape[2]
    is_causal = kwargs.pop("is_causal", None)
    causal = bool(getattr(module, "is_causal", False) if is_causal is None else is_causal)
    mask = widen_mask(attention_mask, query, key.shape[2], num_prefix, causal, additive=base == "eager")
    position_bias = kwargs.get("position_bias")
    if position_bias is not None:  # T5's relative bias: the prefix has no position, so no bias
        kwargs["position_bias"] = F.pad(position_bias, (num_prefix, 0))
    batch = key.shape[0]
    key = torch.cat([prefix_key.expand(batch, -1, -1, -1), key], dim=2)
    value = torch.cat([prefix_value.expand(batch, -1, -1, -1), value], dim=2)
    # The mask now says everything; ``is_causal`` would make sdpa drop it and mis-align the triangle.
    return function(module, query, key, value, mask, is_causal=False, **kwargs)


def _prefix_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


@functools.cache
def _register() -> None:
    """Add petl's names to transformers' attention and mask interfaces (once per process)."""
    for base, name in NAMES.items():
        AttentionInterface.register(name, functools.partial(_prefix_attention, base))
        AttentionMaskInterface.register(name, _prefix_mask)


def switch_attention(model: nn.Module) -> list[tuple[PretrainedConfig, str | None]]:
    """Point every config of ``model`` at petl's prefix attention.

    Returns:
        Each config with its original implementation, for :func:`restore_attention`.

    Raises:
        UnsupportedModelError: The model has no transformers config, or one of its
            configs uses an implementation other than ``eager`` or ``sdpa``.
    """
    _register()
    configs = model_configs(model)
    if not configs:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no transformers config, so its attention does not go through "
            "transformers' AttentionInterface, which prefix-tuning needs. Pass a Hugging Face PreTrainedModel."
        )
    originals = [(config, config._attn_implementation) for config in configs]
    for _, implementation in originals:
        if implementation in NAMES.values():
            raise UnsupportedModelError(
                f"{type(model).__name__} already runs petl's prefix attention ({implementation!r}): it is wrapped "
                "with prefix-tuning (perhaps a copy of a wrapped model). Wrap the original base model instead."
            )
        if (implementation or "eager") not in NAMES:
            raise UnsupportedModelError(
                f"Prefix-tuning wraps the 'eager' or 'sdpa' attention implementation; this {type(model).__name__} "
                f"uses {implementation!r}. Load it with attn_implementation='sdpa' (or call "
                "model.set_attn_implementation('sdpa')) and wrap it again."
            )
    for config, implementation in originals:
        config._attn_implementation_internal = NAMES[implementation or "eager"]
    return originals


def restore_attention(originals: list[tuple[PretrainedConfig, str | None]]) -> None:
    """Undo :func:`switch_attention`."""
    for config, implementation in originals:
        config._attn_implementation_internal = implementation


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training


def probe(model: nn.Module, input_ids: torch.Tensor) -> list[Record]:
    """Run ``model`` once on ``input_ids`` and list the attention modules that reach the interface.

    The model must already be switched to petl's attention (:func:`switch_attention`);
    modules that carry a prefix slot are not recorded. Runs in eval mode without grad.

    Returns:
        One record per attention module, in ``named_modules`` order, with the keys and
        values it computed (batch 1).

    Raises:
        UnsupportedModelError: The forward pass fails.
    """
    body = getattr(model, "base_model", model)  # without the task head: a classifier may reject dummy ids
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    inputs = {"input_ids": input_ids.to(device)}
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = inputs["input_ids"]
    recorder = _Recorder()
    token = _RECORDER.set(recorder)
    try:
        with torch.no_grad(), _eval_mode(model):
            body(**inputs)
    except Exception as exc:
        raise UnsupportedModelError(
            f"Prefix-tuning runs {type(body).__name__} once on {tuple(input_ids.shape)} token ids to find its "
            f"attention layers, and that failed: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        _RECORDER.reset(token)
    return [
        Record(name, module, *recorder.seen[id(module)][1:])
        for name, module in model.named_modules()
        if id(module) in recorder.seen
    ]

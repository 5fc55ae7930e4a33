"""Prefix-tuning (Li & Liang 2021, "Prefix-Tuning: Optimizing Continuous Prompts for
Generation", section 4; P-tuning v2, Liu et al. 2022, for understanding tasks),
implemented natively on transformers' attention interface.

Every attention layer ``l`` learns ``p = num_virtual_tokens`` key and value vectors
per key/value head, ``K^l_P, V^l_P in R^{p x d}``, that every query attends to::

    head = softmax( Q [K^l_P ; K]^T / sqrt(d) + [0 ; M] ) [V^l_P ; V]

``Q, K, V`` are the model's own queries, keys and values after its projections and
rotary embedding; the prefix has no position (no rotation, and zero T5 relative
bias). ``M`` is the model's mask (causal, padding, sliding window); the zero block
makes every prefix position visible to every query, so under causal masking a
query sees all ``p`` prefix positions and no future token, and padding masks only
the padded tokens. With grouped-query attention the prefix has the number of
key/value heads, and is shared by the query heads of its group like ``K``.
Encoder-decoders get a prefix on encoder self-attention, decoder self-attention
and cross-attention, as in the paper.

Parametrisation (section 4.3). Flat (``projection=None``): one matrix
``E in R^{p x sum_l 2 h_l d}``, whose row ``i`` holds, layer after layer, the
keys then the values of virtual token ``i`` (peft's non-projected layout, so its
weights copy over unchanged). Projected: ``[K_P ; V_P] = W_2 tanh(W_1 E' + b_1) + b_2``
with ``E' in R^{p x hidden}`` and an MLP of hidden size ``projection``, which the
paper found to stabilise training; the MLP is kept at inference (no merge).

Initialisation: flat ``E`` and ``E'`` start ``N(0, 1)`` (as in peft). With
``init_token_ids`` the prefix starts from real tokens instead (the paper's
initialisation with real words): the flat form takes the keys and values the
model itself computes for those tokens at every layer; the projected form takes
their input embeddings as ``E'``. The ids are repeated or cut to ``p`` tokens.
``init="vocab"`` does the same with ``p`` random vocabulary tokens.

The prefix never enters the KV cache: it is added inside the attention function
at every call, so cached generation and gradient checkpointing work unchanged.
``petl.unwrap`` gives the model back its original attention implementation; do not
call ``set_attn_implementation`` on a wrapped model, which would drop the prefix.
Tokens keep positions ``0..n-1``. peft feeds the prefix as a cache instead, which
moves the tokens to positions ``p..p+n-1``; passing ``position_ids = p + arange(n)``
reproduces peft's outputs exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PretrainedConfig

from petl.core.config import StrategyConfig
from petl.core.registry import register
from petl.core.validators import check_choice, check_positive_int, set_field
from petl.errors import ConfigError, PetlError, UnsupportedModelError
from petl.strategies.hooks import OneModuleStrategy
from petl.strategies.prefix.attention import (
    SLOT_ATTR,
    PrefixSlot,
    Record,
    probe,
    restore_attention,
    switch_attention,
)
from petl.strategies.tokens import check_token_ids, input_embeddings, plain_token, random_tokens

__all__ = ["PrefixConfig", "PrefixEncoder", "PrefixStrategy"]

MODULE_NAME = "petl_prefix"
"""Where the prefix parameters live in a wrapped model (``model.petl_prefix``)."""
PROBE_LENGTH = 2
INITS = ("vocab", "normal")


@dataclass(frozen=True, kw_only=True)
class PrefixConfig(StrategyConfig):
    """Options of the ``prefix`` strategy."""

    num_virtual_tokens: int = 20
    """Prefix positions per attention layer. Each costs ``2 * kv_heads * head_dim`` parameters
    per layer (flat form) and one extra key per query in every attention."""
    projection: int | None = None
    """Hidden size of the reparametrisation MLP (the paper used 512), or ``None`` to learn the
    keys and values directly. The MLP makes training more stable at a higher parameter count."""
    init_token_ids: tuple[int, ...] | None = None
    """Token ids to start the prefix from, e.g. ``tokenizer("Classify the sentiment:",
    add_special_tokens=False).input_ids``; repeated or cut to ``num_virtual_tokens``. ``None``
    starts as ``init`` says."""
    init: str = "normal"
    """The start without ``init_token_ids``: ``"vocab"``, the activations of ``num_virtual_tokens``
    random vocabulary tokens (drawn from torch's generator, so ``torch.manual_seed`` fixes them),
    which keeps every key and value on the scale the model's attention expects; or ``"normal"``,
    ``N(0, 1)`` entries as in peft."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("num_virtual_tokens", self.num_virtual_tokens)
        check_positive_int("projection", self.projection, allow_none=True)
        check_choice("init", self.init, INITS)
        if self.init_token_ids is not None:
            set_field(self, "init_token_ids", check_token_ids(self.init_token_ids))


class PrefixEncoder(nn.Module):
    """The prefix parameters of every attention module of one model.

    Args:
        num_virtual_tokens: ``p``, prefix positions per attention module.
        shapes: ``(kv_heads, key_dim, value_dim)`` of each attention module, in order.
        embed_dim: Width of ``E'`` (projected form only), the model's embedding size.
        projection: Hidden size of the MLP, or ``None`` for the flat form.
    """

    def __init__(
        self,
        num_virtual_tokens: int,
        shapes: list[tuple[int, int, int]],
        embed_dim: int,
        projection: int | None,
        *,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_virtual_tokens = num_virtual_tokens
        self.shapes = list(shapes)
        widths = [heads * (key_dim + value_dim) for heads, key_dim, value_dim in self.shapes]
        self.widths = widths
        self.offsets = [sum(widths[:i]) for i in range(len(widths) + 1)]
        total = self.offsets[-1]
        self.projection = projection
        factory = {"device": device, "dtype": dtype}
        if projection is None:
            self.embedding = nn.Embedding(num_virtual_tokens, total, **factory)
        else:
            self.embedding = nn.Embedding(num_virtual_tokens, embed_dim, **factory)
            self.hidden = nn.Linear(embed_dim, projection, **factory)
            # The output layer is kept in one block of rows per attention module: each module computes
            # only its own rows, and a block's gradient is not padded to the whole layer's size.
            out = nn.Linear(projection, total, **factory)
            self.out_weight = nn.ParameterList(w.detach().clone() for w in out.weight.split(widths))
            self.out_bias = nn.ParameterList(b.detach().clone() for b in out.bias.split(widths))

    def key_value(self, index: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``(1, kv_heads, p, dim)`` of module ``index``, in ``like``'s dtype and device."""
        if self.projection is None:
            rows = self.embedding.weight[:, self.offsets[index] : self.offsets[index + 1]]
        else:
            # Recomputed per module (p x projection, cheap) rather than cached per forward pass: nothing
            # outlives a call, so gradient checkpointing and repeated forwards need no bookkeeping.
            hidden = torch.tanh(self.hidden(self.embedding.weight))
            rows = F.linear(hidden, self.out_weight[index], self.out_bias[index])
        heads, key_dim, value_dim = self.shapes[index]
        rows = rows.to(device=like.device, dtype=like.dtype)
        key = rows[:, : heads * key_dim].view(-1, heads, key_dim).transpose(0, 1)
        value = rows[:, heads * key_dim :].view(-1, heads, value_dim).transpose(0, 1)
        return key.unsqueeze(0), value.unsqueeze(0)

    def load_peft_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Copy the weights of a peft prefix encoder (``peft_model.prompt_encoder["default"].state_dict()``).

        Raises:
            PetlError: The tensors do not fit (another model, another number of virtual
                tokens, or peft's projected form on a grouped-query model, whose embedding
                width differs from petl's).
        """
        theirs = dict(state_dict)
        pairs = [(self.embedding.weight, theirs.pop("embedding.weight", None))]
        if self.projection is not None:
            pairs += [(self.hidden.weight, theirs.pop("transform.0.weight", None))]
            pairs += [(self.hidden.bias, theirs.pop("transform.0.bias", None))]
            for blocks, key in ((self.out_weight, "transform.2.weight"), (self.out_bias, "transform.2.bias")):
                whole = theirs.pop(key, None)
                if whole is None or whole.shape[0] != self.offsets[-1]:
                    pairs.append((blocks[0], None))
                else:
                    pairs += zip(blocks, whole.split(self.widths), strict=True)
        if theirs or any(t is None or t.shape != p.shape for p, t in pairs):
            raise PetlError(
                f"The peft prefix weights ({', '.join(f'{k} {tuple(v.shape)}' for k, v in state_dict.items())}) "
                f"do not fit this prefix. Use the same base model, num_virtual_tokens and projection as the "
                "peft model; peft's projected form on a grouped-query model has another embedding width."
            )
        with torch.no_grad():
            for param, tensor in pairs:
                param.copy_(tensor)

    def extra_repr(self) -> str:
        return f"num_virtual_tokens={self.num_virtual_tokens}, modules={len(self.shapes)}, projection={self.projection}"


@register("prefix")
class PrefixStrategy(OneModuleStrategy):
    """Prefix-tuning: trained key/value prefixes in every attention layer (Li & Liang 2021), native.

    Injected in place through transformers' attention interface."""

    config_class: ClassVar[type[StrategyConfig]] = PrefixConfig
    module_name: ClassVar[str] = MODULE_NAME
    noun: ClassVar[str] = "prefix"
    search_space: ClassVar[dict[str, tuple[int, ...]]] = {"num_virtual_tokens": (8, 16, 32)}  # petl bench --search
    handles_heads: ClassVar[bool] = False
    identity_at_init: ClassVar[bool] = False
    """The prefix changes every attention from the first step, so outputs differ at init."""
    merge_refusal: ClassVar[str] = "its prefix adds key/value positions to every attention: no weight change does that"

    config: PrefixConfig

    def __init__(self, config: PrefixConfig) -> None:
        super().__init__(config)
        self.originals: list[tuple[PretrainedConfig, str | None]] = []
        """Each config of the model with the attention implementation it had before ``inject``."""
        self.modules: list[nn.Module] = []
        self.module_names: list[str] = []

    def _token_ids(self, model: nn.Module) -> torch.Tensor:
        ids = self.config.init_token_ids
        if ids is None and self.config.init == "vocab":
            ids = random_tokens(model, _input_embeddings(model).num_embeddings, self.config.num_virtual_tokens)
        if ids is None:
            return torch.full((1, PROBE_LENGTH), plain_token(model), dtype=torch.long)
        vocab = _input_embeddings(model).num_embeddings
        too_large = [i for i in ids if i >= vocab]
        if too_large:
            raise ConfigError(
                f"init_token_ids contains ids {too_large[:5]} outside this model's vocabulary of {vocab} tokens. "
                "Tokenize the text with the model's own tokenizer."
            )
        repeats = -(-self.config.num_virtual_tokens // len(ids))
        return torch.tensor((ids * repeats)[: self.config.num_virtual_tokens]).unsqueeze(0)

    def inject(self, model: nn.Module) -> None:
        if hasattr(model, MODULE_NAME):
            raise PetlError(
                f"This {type(model).__name__} already has a `{MODULE_NAME}` attribute. "
                "Pass a model without one (petl.unwrap removes it from a wrapped model)."
            )
        token_ids = self._token_ids(model)  # before anything changes: a bad id leaves the model untouched
        self.originals = switch_attention(model)
        try:
            records = probe(model, token_ids)
            if not records:
                raise UnsupportedModelError(
                    f"No attention layer of this {type(model).__name__} goes through transformers' "
                    "AttentionInterface, which prefix-tuning hooks into. This architecture is not supported."
                )
            encoder = self._build(model, records, token_ids)
            model.add_module(MODULE_NAME, encoder)
            for index, record in enumerate(records):
                setattr(record.module, SLOT_ATTR, PrefixSlot(encoder, index))
            self.modules = [r.module for r in records]
            self.module_names = [r.name for r in records]
        except BaseException:
            self._detach(model)
            raise

    def _build(self, model: nn.Module, records: list[Record], token_ids: torch.Tensor) -> PrefixEncoder:
        first = records[0].key
        # Keep the prefix in float32 on half-precision models: it is what the optimizer updates.
        dtype = torch.promote_types(first.dtype, torch.float32)
        shapes = [(r.key.shape[1], r.key.shape[-1], r.value.shape[-1]) for r in records]
        projection = self.config.projection
        embed_dim = _input_embeddings(model).embedding_dim if projection is not None else 0
        encoder = PrefixEncoder(
            self.config.num_virtual_tokens, shapes, embed_dim, projection, device=first.device, dtype=dtype
        )
        if self.config.init_token_ids is not None or self.config.init == "vocab":
            with torch.no_grad():
                if projection is None:
                    encoder.embedding.weight.copy_(_activations(records, self.config.num_virtual_tokens))
                else:
                    ids = token_ids.to(_input_embeddings(model).weight.device)
                    encoder.embedding.weight.copy_(_input_embeddings(model)(ids)[0])
        return encoder

    def _detach(self, model: nn.Module) -> None:
        for module in model.modules():
            if SLOT_ATTR in vars(module):
                delattr(module, SLOT_ATTR)
        if MODULE_NAME in model._modules:
            delattr(model, MODULE_NAME)
        restore_attention(self.originals)
        self.originals, self.modules, self.module_names = [], [], []

    def encoder(self, model: nn.Module) -> PrefixEncoder:
        """The prefix parameters of a wrapped model."""
        return model.get_submodule(MODULE_NAME)

    def remove(self, model: nn.Module) -> nn.Module:
        self._detach(model)
        return model


def _input_embeddings(model: nn.Module) -> nn.Embedding:
    return input_embeddings(model, "the projected prefix and init_token_ids need. Use projection=None and "
                            "init_token_ids=None.")


def _activations(records: list[Record], num_virtual_tokens: int) -> torch.Tensor:
    """The flat prefix ``(p, sum_l 2 h_l d)`` holding the keys and values each module computed."""
    rows = []
    for record in records:
        for tensor in (record.key, record.value):
            if tensor.shape[2] != num_virtual_tokens:
                raise UnsupportedModelError(
                    f"{record.name} computed {tensor.shape[2]} keys for {num_virtual_tokens} tokens, so its prefix "
                    "cannot start from their activations. Pass init_token_ids=None."
                )
            rows.append(tensor[0].transpose(0, 1).reshape(num_virtual_tokens, -1))
    return torch.cat(rows, dim=1)

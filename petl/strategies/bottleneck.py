"""Bottleneck adapters: Houlsby, Pfeiffer and parallel, for any Hugging Face model.

An adapter maps a hidden state ``h`` of width ``d`` through a bottleneck of width
``m = d / reduction_factor``:

    f(h) = sigma(dropout(h) W_down + b_down) W_up + b_up,   W_down in R^{d x m},  W_up in R^{m x d}

and adds ``2 d m + d + m`` trainable parameters. ``W_up`` and ``b_up`` start at zero,
so ``f = 0`` and a freshly wrapped model computes exactly what the base model did.

Variants
--------
* ``houlsby`` (Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP",
  section 2.1): a sequential adapter ``h <- h + s f(h)`` on the output of the
  attention sub-layer and on the output of the feed-forward sub-layer of every block.
* ``pfeiffer`` (Pfeiffer et al. 2021, "AdapterFusion"): one sequential adapter, on the
  feed-forward output only; half the parameters and nearly Houlsby's accuracy.
* ``parallel`` (He et al. 2022, "Towards a Unified View of Parameter-Efficient Transfer
  Learning", section 3, the scaled parallel adapter): the adapter reads the
  feed-forward sub-layer's *input* ``x`` and its scaled output is added to the
  sub-layer's output, ``FFN(x) + s f(x)``, beside the FFN rather than after it.

``s`` is :attr:`BottleneckConfig.scaling`: 1 for the sequential variants (the
papers' plain residual) and 4 for ``parallel`` (He et al.'s best setting) unless set.

Placement
---------
petl hooks the *output projection* of each sub-layer (``attention.output.dense``,
``o_proj``, ``c_proj``, ``wo``, ``fc2``; see :mod:`petl.modeling.blocks`) with a forward
hook that returns the adapted output, so no model class is swapped and no model code
is copied. In a post-LN model such as BERT that projection is followed, inside
``BertSelfOutput`` / ``BertOutput``, by dropout, the residual connection and LayerNorm:
``LN(x + dropout(adapter(dense(z))))``. The adapter thus sits after the projection back
to ``d`` and before the skip connection and the layer norm, where Houlsby et al.'s
Figure 2 puts it. In a pre-LN model (GPT-2, Llama, T5) it sits in the same place,
between the projection and the residual addition, and the block's norm then applies
to the next sub-layer's input. AdapterHub's Pfeiffer configuration (``original_ln``)
instead reads the block's normalised output and re-applies the block's LayerNorm:
with ``s = x + FFN(x)`` the block returns ``LN(s + f(LN(s)))``; petl hooks the post-FFN
LayerNorm for it (BERT family, DistilBERT), and keeps the plain placement in blocks
without one (pre-LN models, whose next norm follows anyway). The parallel adapter reads the
input of the FFN's first projection (``intermediate.dense``, ``gate_proj``, ``fc1``),
i.e. the FFN's input after any pre-LN norm, captured by a forward pre-hook.

Each adapter is a child module named ``petl_adapter`` of the projection it follows,
created on that projection's device and dtype (for an 8-bit bitsandbytes layer: the
floating-point dtype of the surrounding block), so ``.to()``, state dicts, Accelerate
and DDP see it. The parallel variant keeps the FFN input between two hooks of one
forward pass, so ``nn.DataParallel`` (threads over module replicas) is not supported
for it; DDP is. A nonlinear adapter cannot be folded into the weights: ``merge`` refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from petl.core.config import StrategyConfig
from petl.core.params import copy_checked
from petl.core.registry import register
from petl.core.strategy import StrategyBase
from petl.core.validators import (
    check,
    check_bool,
    check_choice,
    check_float32,
    check_number,
    check_positive_int,
    int_tuple,
    set_field,
)
from petl.errors import AlreadyWrappedError, ConfigError, UnsupportedModelError
from petl.modeling import BlockInfo, find_blocks, linear_dims, parse_module_paths
from petl.strategies.hooks import HookedChild, children_named, map_first, placement

__all__ = ["ADAPTER_NAME", "BottleneckAdapter", "BottleneckConfig", "BottleneckStrategy"]

logger = logging.getLogger(__name__)

ADAPTER_NAME = "petl_adapter"
VARIANTS = ("houlsby", "pfeiffer", "parallel")
DEFAULT_REDUCTION_FACTOR = 16
DEFAULT_SCALING = {"houlsby": 1.0, "pfeiffer": 1.0, "parallel": 4.0}

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
}


@dataclass(frozen=True, kw_only=True)
class BottleneckConfig(StrategyConfig):
    """Options of the ``bottleneck`` strategy."""

    variant: str = "pfeiffer"
    """``"houlsby"`` (after attention and FFN), ``"pfeiffer"`` (after the FFN) or
    ``"parallel"`` (beside the FFN, scaled)."""
    reduction_factor: float | None = None
    """Bottleneck width ``m = d // reduction_factor``; 16 when neither this nor
    ``bottleneck_size`` is given. Pass one of the two, not both."""
    bottleneck_size: int | None = None
    """Bottleneck width ``m`` directly, the same for every block."""
    non_linearity: str = "relu"
    """The nonlinearity ``sigma`` between the projections: relu, gelu, gelu_tanh, silu
    (or swish), tanh, sigmoid or leaky_relu."""
    scaling: float | None = None
    """Multiplier ``s`` of the adapter's output; ``None`` means 1.0 for the sequential
    variants and 4.0 for ``parallel`` (He et al. 2022)."""
    dropout: float = 0.0
    """Dropout on the adapter's input during training, a regulariser for small data."""
    layers: tuple[int, ...] | None = None
    """Indices of the blocks to adapt (encoder blocks first in an encoder-decoder);
    ``None`` adapts every block."""
    original_ln: bool = False
    """``pfeiffer`` only: AdapterHub's arrangement in post-LN blocks, ``LN(s + f(LN(s)))`` with
    ``s = x + FFN(x)`` (see Placement); ``False``: ``LN(s + f(FFN(x)))``."""
    cross_attention: bool = False
    """Also put a sequential adapter after the cross-attention output of decoder blocks
    of encoder-decoder models (sequential variants only)."""
    module_paths: tuple[dict[str, str], ...] | dict[str, str] | None = None
    """Where the blocks and projections are, for a family petl does not know, e.g.
    ``{"blocks": "model.layers", "attention_output": "self_attn.o_proj",
    "ffn_input": "mlp.up_proj", "ffn_output": "mlp.down_proj"}`` (paths inside a block),
    or a list of such dicts, one per stack. ``None`` finds them automatically."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("variant", self.variant, VARIANTS)
        if self.reduction_factor is not None and self.bottleneck_size is not None:
            raise ConfigError(
                f"Got reduction_factor={self.reduction_factor!r} and bottleneck_size={self.bottleneck_size!r}; "
                "they both set the bottleneck width, so pass one, not both."
            )
        check_number("reduction_factor", self.reduction_factor, low=0, low_open=True, allow_none=True)
        check_positive_int("bottleneck_size", self.bottleneck_size, allow_none=True)
        check_choice("non_linearity", self.non_linearity, tuple(_ACTIVATIONS))
        check_number("scaling", self.scaling, allow_none=True)
        check_float32("scaling", self.scaling)  # the adapter's output is multiplied by it in the model's dtype
        check_number("dropout", self.dropout, low=0, high=1)
        if self.layers is not None:
            set_field(self, "layers", int_tuple("layers", self.layers, what="block indices"))
        check_bool("cross_attention", self.cross_attention)
        check_bool("original_ln", self.original_ln)
        check(not self.original_ln or self.variant == "pfeiffer", "original_ln=True is AdapterHub's Pfeiffer "
              f"arrangement; use it with variant='pfeiffer', not {self.variant!r}.")
        check(
            not (self.cross_attention and self.variant == "parallel"),
            "cross_attention=True adds sequential adapters; use it with variant='houlsby' or 'pfeiffer'.",
        )
        if self.module_paths is not None:
            stacks = parse_module_paths(self.module_paths)
            set_field(self, "module_paths",
                      tuple({k: v for k, v in vars(s).items() if v is not None} for s in stacks))

    @property
    def effective_scaling(self) -> float:
        """``scaling``, or the variant's default when it is ``None``."""
        return float(self.scaling) if self.scaling is not None else DEFAULT_SCALING[self.variant]

    def bottleneck_for(self, hidden_size: int) -> int:
        """The bottleneck width ``m`` for blocks of width ``hidden_size``.

        Raises:
            ConfigError: ``reduction_factor`` leaves no unit (it exceeds ``hidden_size``).
        """
        if self.bottleneck_size is not None:
            return self.bottleneck_size
        factor = self.reduction_factor if self.reduction_factor is not None else DEFAULT_REDUCTION_FACTOR
        width = int(hidden_size // factor)
        if width < 1:
            raise ConfigError(
                f"reduction_factor={factor!r} is larger than the hidden size {hidden_size}, which leaves a "
                f"bottleneck of width 0. Use a reduction_factor of at most {hidden_size}, or pass bottleneck_size."
            )
        return width


class BottleneckAdapter(nn.Module):
    """``s * (sigma(dropout(x) W_down + b_down) W_up + b_up)``, with ``W_up``, ``b_up`` zero at start."""

    def __init__(
        self,
        hidden_size: int,
        bottleneck_size: int,
        *,
        non_linearity: str = "relu",
        scaling: float = 1.0,
        dropout: float = 0.0,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.down = nn.Linear(hidden_size, bottleneck_size, device=device, dtype=dtype)
        self.act = _ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck_size, hidden_size, device=device, dtype=dtype)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.scaling = scaling

    def add_to(self, base: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``base + s * f(x)``, computed in the adapter's dtype and returned in ``base``'s."""
        dtype = self.down.weight.dtype
        z = self.up(self.act(self.down(self.dropout(x if x.dtype == dtype else x.to(dtype)))))
        if z.dtype != base.dtype:
            z = z.to(base.dtype)
        return torch.add(base, z, alpha=self.scaling)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """The sequential adapter with its residual: ``h + s * f(h)``."""
        return self.add_to(h, h)

    def extra_repr(self) -> str:
        return f"scaling={self.scaling}"


def _sequential_hook(module: nn.Module, args: Any, output: Any) -> Any:
    adapter = module._modules[ADAPTER_NAME]
    if not getattr(adapter, "active", True):  # switched off (petl.set_active, petl.disabled): output unchanged
        return None
    return map_first(output, adapter)


def _post_ffn_norm(model: nn.Module, block: BlockInfo) -> str | None:
    """The layer norm of ``x + FFN(x)`` in a post-LN block (BERT family, DistilBERT), if there is one."""
    for path in (f"{(block.ffn_output or '').rpartition('.')[0]}.LayerNorm", f"{block.path}.output_layer_norm"):
        if isinstance(dict(model.named_modules()).get(path), nn.LayerNorm):
            return path
    return None


def _original_ln_hook(module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor | None:
    """AdapterHub's Pfeiffer arrangement on the post-FFN layer norm: ``LN(s + f(LN(s)))``."""
    adapter = module._modules[ADAPTER_NAME]
    if not getattr(adapter, "active", True):  # switched off: output unchanged
        return None
    total = adapter.add_to(args[0], output)
    return nn.functional.layer_norm(total, module.normalized_shape, module.weight, module.bias, module.eps)


class _ParallelLink:
    """Carries the FFN input from the pre-hook on its first projection to the hook on its output."""

    __slots__ = ("x",)

    def __init__(self) -> None:
        self.x: torch.Tensor | None = None

    def capture(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self.x = args[0]

    def add(self, module: nn.Module, args: Any, output: Any) -> Any:
        x, self.x = self.x, None  # release the activation as soon as it is used
        if x is None:
            raise UnsupportedModelError(
                f"The parallel adapter on {type(module).__name__} ran before the FFN input projection it reads; "
                "pass module_paths with an 'ffn_input' that runs before 'ffn_output'."
            )
        adapter = module._modules[ADAPTER_NAME]
        if not getattr(adapter, "active", True):
            return None
        return map_first(output, lambda out: adapter.add_to(out, x))


@dataclass(frozen=True)
class _Plan:
    """One adapter to add, fully checked before the model is touched."""

    path: str
    """The projection whose output the adapter changes."""
    ffn_input: str | None
    """For a parallel adapter, the projection whose input it reads."""
    block: str
    hidden_size: int
    bottleneck_size: int


@register("bottleneck")
class BottleneckStrategy(StrategyBase):
    """Bottleneck adapters: Houlsby, Pfeiffer or parallel (Houlsby et al. 2019; Pfeiffer et al. 2021), native.

    Placed with forward hooks; see the module docstring."""

    config_class: ClassVar[type[StrategyConfig]] = BottleneckConfig
    search_space: ClassVar[dict[str, tuple[int, ...]]] = {"reduction_factor": (8, 16, 32)}  # petl bench --search
    merge_refusal: ClassVar[str] = (
        "a bottleneck adapter applies a nonlinearity between its two projections, "
        "so no change of the existing linear weights reproduces it"
    )

    config: BottleneckConfig

    def __init__(self, config: BottleneckConfig) -> None:
        super().__init__(config)
        self._injected: list[HookedChild] = []

    def _plan(self, model: nn.Module) -> list[_Plan]:
        """Every adapter to add; raises before anything is changed when one cannot be."""
        c = self.config
        paths = parse_module_paths(c.module_paths) if c.module_paths is not None else None
        blocks = find_blocks(model, paths)
        if c.layers is not None:
            bad = [i for i in c.layers if i >= len(blocks)]
            if bad:
                ranges: dict[str, list[int]] = {}
                for b in blocks:
                    ranges.setdefault(b.stack, []).append(b.index)
                spans = ", ".join(f"{stack}: {ids[0]}-{ids[-1]}" for stack, ids in ranges.items())
                raise ConfigError(
                    f"layers={list(c.layers)} names block(s) {bad}, but this {type(model).__name__} has "
                    f"{len(blocks)} blocks, indexed 0-{len(blocks) - 1} ({spans})."
                )
            blocks = [blocks[i] for i in sorted(c.layers)]
        wanted = {"houlsby": ("attention_output", "ffn_output"), "pfeiffer": ("ffn_output",),
                  "parallel": ("ffn_output",)}[c.variant]
        targets: list[tuple[str, str | None, BlockInfo]] = []  # (projection, FFN input for parallel, block)
        for block in blocks:
            needs = [*wanted, "ffn_input"] if c.variant == "parallel" else list(wanted)
            missing = [key for key in needs if getattr(block, key) is None]
            if missing:
                raise UnsupportedModelError(
                    f"The {c.variant!r} variant needs the {' and '.join(k.replace('_', ' ') for k in missing)} "
                    f"projection of every block, which block {block.path!r} of this {type(model).__name__} lacks. "
                    "Pass module_paths={'blocks': ..., " + ", ".join(f"'{k}': ..." for k in needs) + "}."
                )
            for key in wanted:
                path = getattr(block, key)
                norm = _post_ffn_norm(model, block) if c.original_ln and key == "ffn_output" else None
                targets.append((norm or path, block.ffn_input if c.variant == "parallel" else None, block))
            if c.cross_attention and block.cross_attention_output is not None:
                targets.append((block.cross_attention_output, None, block))
        if c.cross_attention and not any(b.cross_attention_output for b in blocks):
            raise UnsupportedModelError(
                f"cross_attention=True, but no adapted block of this {type(model).__name__} has a cross-attention; "
                "it applies to the decoder of encoder-decoder models. Remove the option."
            )
        plans: list[_Plan] = []
        seen: set[int] = set()
        for path, ffn_input, block in targets:
            module = model.get_submodule(path)
            if id(module) in seen:
                raise UnsupportedModelError(
                    f"{path!r} is the same module object as another adapted projection (shared weights across "
                    "blocks); one hook would run one adapter for several blocks. Pass layers=[...] to adapt "
                    "each shared module once."
                )
            seen.add(id(module))
            dims = linear_dims(module)
            if isinstance(module, nn.LayerNorm):
                dims = (0, module.normalized_shape[-1])
            hidden = dims[1] if dims is not None else block.hidden_size
            plans.append(_Plan(path, ffn_input, block.path, hidden, c.bottleneck_for(hidden)))
        return plans

    def inject(self, model: nn.Module) -> None:
        existing = children_named(model, ADAPTER_NAME)
        if self._injected or existing:
            raise AlreadyWrappedError(
                f"This {type(model).__name__} already carries bottleneck adapters "
                f"({(existing or [r.path for r in self._injected])[0]}...). Call petl.unwrap(model) first."
            )
        plans = self._plan(model)
        try:
            for plan in plans:
                self._add(model, plan)
        except BaseException:
            self.remove(model)
            raise
        logger.info("Added %d %s adapters to %s.", len(self._injected), self.config.variant, type(model).__name__)

    def _add(self, model: nn.Module, plan: _Plan) -> None:
        c = self.config
        target = model.get_submodule(plan.path)
        device, dtype = placement(target, model.get_submodule(plan.block))
        adapter = BottleneckAdapter(
            plan.hidden_size, plan.bottleneck_size, non_linearity=c.non_linearity, scaling=c.effective_scaling,
            dropout=c.dropout, device=device, dtype=dtype,
        )
        if plan.ffn_input is not None:
            link = _ParallelLink()
            record = HookedChild.attach(model, plan.path, ADAPTER_NAME, adapter, forward_hook=link.add,
                                        pre_hooks={plan.ffn_input: link.capture})
        else:
            hook = _original_ln_hook if isinstance(target, nn.LayerNorm) else _sequential_hook
            record = HookedChild.attach(model, plan.path, ADAPTER_NAME, adapter, forward_hook=hook)
        self._injected.append(record)

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        state: dict[str, torch.Tensor] = {}
        for record in self._injected:
            for name, param in record.module(model).named_parameters():
                state[f"{record.path}.{ADAPTER_NAME}.{name}"] = param.detach()
        return state

    def load_adapter_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        copy_checked(self.adapter_state_dict(model), state_dict, source="The bottleneck adapter tensors",
                     fix="Load them onto a model wrapped with the same options.")

    def set_active(self, model: nn.Module, active: bool, trainable: bool) -> None:
        for record in self._injected:  # an inactive adapter's hook leaves its projection's output as it is
            record.module(model).active = active
            record.module(model).requires_grad_(active and trainable)

    def remove(self, model: nn.Module) -> nn.Module:
        for record in reversed(self._injected):
            record.remove(model)
        self._injected.clear()
        return model

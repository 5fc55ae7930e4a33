"""AdaLoRA: adaptive budget allocation for LoRA (Zhang et al. 2023, "AdaLoRA: Adaptive
Budget Allocation for Parameter-Efficient Fine-Tuning", sections 3.1-3.3), built on peft.

Each adapted layer learns an SVD-shaped update

    h = W0 x + (alpha / r) * P diag(lambda) Q x,    P in R^{d_out x r},  Q in R^{r x d_in}

starting from ``init_r`` triplets per layer. During training the total budget of
triplets shrinks on a cubic schedule from ``init_r`` per layer to ``target_r`` per
layer on average: every ``deltaT`` steps between ``tinit`` and ``total_step - tfinal``
the triplets of lowest importance (a smoothed sensitivity score, eq. 7-9) are
masked by zeroing their ``lambda``. An orthogonality penalty (eq. 4, in peft's form)
``||P^T P - I||_F + ||Q Q^T - I||_F`` keeps ``P`` and ``Q`` close to singular vectors; it is
off by default (``orth_reg_weight=0``), see that field.

Both need the training loop's help: ``petl.train`` calls :meth:`AdaLoraStrategy.on_train_begin`
with the planned number of steps, adds :meth:`~AdaLoraStrategy.regularization_loss`
to the loss and calls :meth:`~AdaLoraStrategy.on_step_end` after every optimizer step.
(peft users who forget ``update_and_allocate`` silently train plain LoRA.)

Saved adapters keep ``init_r`` triplets per layer with the pruned ones zeroed,
which is exactly the trained model's state, so peft and petl load them without
resizing; :meth:`AdaLoraStrategy.effective_ranks` reports the ranks in use. peft's own
``save_pretrained`` drops the pruned triplets after allocation (its ``rank_pattern``
says which survive); :meth:`AdaLoraStrategy.tensors_from_peft` puts them back as zeros.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import peft
import torch
from peft.tuners.adalora import layer as peft_adalora
from torch import nn

from petl.core.config import StrategyConfig
from petl.core.registry import register
from petl.core.validators import check, check_non_negative_int, check_number, check_positive_int
from petl.errors import CheckpointError, ConfigError, PetlError
from petl.strategies.lora import ADAPTER_NAME, PEFT_PREFIX, LoraConfig, LoraStrategy

__all__ = ["AdaLoraConfig", "AdaLoraStrategy"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class AdaLoraConfig(LoraConfig):
    """Options of the ``adalora`` strategy (``r`` is unused: see ``init_r`` and ``target_r``)."""

    init_r: int = 12
    """Triplets per adapted layer at the start; the budget shrinks from here."""
    target_r: int = 8
    """Average triplets per adapted layer once the budget has been allocated; below ``init_r``."""
    total_step: int | None = None
    """Optimizer steps of the whole run. ``petl.train`` sets it from its plan; give it
    when you write your own training loop."""
    tinit: int = 0
    """Warm-up steps before any triplet is pruned."""
    tfinal: int = 0
    """Final steps trained with the allocation frozen."""
    deltaT: int = 1
    """Steps between two budget allocations."""
    beta1: float = 0.85
    """Smoothing of the sensitivity (importance) estimate, in (0, 1)."""
    beta2: float = 0.85
    """Smoothing of its uncertainty, in (0, 1)."""
    orth_reg_weight: float = 0.0
    """Weight of the orthogonality penalty added to the loss (peft's default is 0.5). Off by default:
    the penalty's gradient on ``P`` and ``Q`` has norm about 1 however close they are to orthonormal,
    while the task's is proportional to ``lambda``, which starts at zero, so with Adam the penalty
    alone steers ``P`` and ``Q`` and the update stays in random directions (MiniLM, petl's synthetic
    data: 60.3% at 0.5, 71.3% at 0.1, 86.7% at 0, as LoRA; ``benchmarks/results/weak_strategies.md``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_int("init_r", self.init_r)
        check_positive_int("target_r", self.target_r)
        # peft's allocator masks the init_r - target_r least important triplets per layer on average;
        # with none to mask its threshold search (kthvalue with k = 0) fails at the first allocation.
        check(
            self.target_r < self.init_r,
            f"target_r must be below init_r, got target_r={self.target_r} and init_r={self.init_r}: AdaLoRA "
            "prunes each layer from init_r triplets down to target_r on average, so it needs at least one to "
            f"prune. Lower target_r or raise init_r; for a fixed rank use the 'lora' strategy with r={self.init_r}.",
        )
        check_non_negative_int("tinit", self.tinit)
        check_non_negative_int("tfinal", self.tfinal)
        check_positive_int("deltaT", self.deltaT)
        # peft's rank allocator asserts 0 < beta < 1: the smoothing needs some memory and some update.
        check_number("beta1", self.beta1, low=0, high=1, low_open=True)
        check_number("beta2", self.beta2, low=0, high=1, low_open=True)
        check_number("orth_reg_weight", self.orth_reg_weight, low=0)
        if self.total_step is not None:
            check_schedule(self.total_step, self.tinit, self.tfinal)


def _plain_pattern(pattern: dict[str, Any] | None) -> dict[str, list[bool]] | None:
    if pattern is None:
        return None
    return {k: [bool(x) for x in (v.view(-1).tolist() if torch.is_tensor(v) else v)] for k, v in pattern.items()}


def check_schedule(total_step: int, tinit: int, tfinal: int) -> None:
    """Raise a :class:`ConfigError` unless the schedule leaves steps for budget allocation."""
    check_positive_int("total_step", total_step)
    check(
        tinit < total_step - tfinal,
        f"AdaLoRA needs steps to allocate its budget: tinit ({tinit}) must be below "
        f"total_step - tfinal ({total_step} - {tfinal}). Lower tinit/tfinal or train for more steps.",
    )


@register("adalora")
class AdaLoraStrategy(LoraStrategy):
    """AdaLoRA: SVD-shaped updates whose rank budget is reallocated in training (Zhang et al. 2023), on peft.

    peft's ``AdaLoraModel`` layers are injected in place."""

    config_class: ClassVar[type[StrategyConfig]] = AdaLoraConfig
    search_space: ClassVar[dict[str, tuple[int, ...]]] = {"init_r": (12, 16, 24)}  # petl bench --search
    tuner_class: ClassVar[type] = peft.AdaLoraModel
    peft_type: ClassVar[str | None] = "ADALORA"
    peft_config_class: ClassVar[type] = peft.AdaLoraConfig
    peft_options: ClassVar[dict[str, str]] = {
        **{k: v for k, v in LoraStrategy.peft_options.items() if k != "r"},
        **{name: name for name in ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2",
                                   "orth_reg_weight", "total_step")},
    }
    # peft's AdaLoRA ignores ``r``; ``rank_pattern`` is read by tensors_from_peft.
    peft_read: ClassVar[frozenset[str]] = LoraStrategy.peft_read | {"r", "rank_pattern"}
    # Merged for inference like LoRA: W0 + scaling / (r_k + 1e-5) * P (Lambda Q), pruned triplets adding zero.
    mergeable_layers: ClassVar[tuple[type, ...]] = (peft_adalora.SVDLinear, peft_adalora.SVDConv2d)

    config: AdaLoraConfig

    def __init__(self, config: AdaLoraConfig) -> None:
        super().__init__(config)
        self._schedule_known = config.total_step is not None
        self._hooked = False
        self._guard: Any = None

    def inject(self, model: nn.Module) -> None:
        super().inject(model)
        # A training loop that never calls the hooks trains fixed-rank LoRA without a word; say so once.
        self._guard = model.register_forward_pre_hook(self._warn_if_unhooked)

    def _warn_if_unhooked(self, module: nn.Module, args: Any) -> None:
        if self._hooked or not module.training or not torch.is_grad_enabled():
            return
        self._hooked = True
        logger.warning(
            "AdaLoRA is training in a loop that does not call petl's strategy hooks, so its rank budget is never "
            "reallocated and it trains as fixed-rank LoRA without the orthogonality penalty. Train with petl.train, "
            "call petl.attach(trainer) on a transformers or TRL Trainer, or in your own loop call "
            "strategy.on_train_begin(model, total_steps) first, add strategy.regularization_loss(model) to the "
            "loss and call strategy.on_step_end(model, step) after each optimizer step "
            "(strategy = petl.core.wrapping.state_of(model).strategy)."
        )

    @property
    def peft_name(self) -> str:
        """Always peft's ``"default"``: AdaLoRA shares no layer with another peft adapter (see ``check_stack``)."""
        return ADAPTER_NAME

    def check_stack(self, model: nn.Module, others: Sequence[Any]) -> None:
        """Refuse other LoRA-family adapters: peft's ``AdaLoraModel`` trains one adapter and shares no layer."""
        super().check_stack(model, [other for other in others if not isinstance(other, LoraStrategy)])
        peers = [other for other in others if isinstance(other, LoraStrategy)]
        if peers:
            raise PetlError(
                f"peft's AdaLoraModel holds a single adapter, so an AdaLoRA adapter cannot stack with the "
                f"{peers[0].config.strategy!r} adapter {peers[0].adapter_name!r}. Delete that one first "
                "(petl.delete_adapter)."
            )

    def _drop_guard(self) -> None:
        if self._guard is not None:
            self._guard.remove()
            self._guard = None

    def remove(self, model: nn.Module) -> nn.Module:
        self._drop_guard()
        return super().remove(model)

    def merge(self, model: nn.Module) -> nn.Module:
        merged = super().merge(model)
        self._drop_guard()
        return merged

    def peft_config(self, model: nn.Module) -> peft.PeftConfig:
        c = self.config
        # peft insists on a schedule length up front; a provisional one is replaced by on_train_begin.
        total = c.total_step if c.total_step is not None else c.tinit + c.tfinal + 1
        return peft.AdaLoraConfig(
            init_r=c.init_r,
            target_r=c.target_r,
            tinit=c.tinit,
            tfinal=c.tfinal,
            deltaT=c.deltaT,
            beta1=c.beta1,
            beta2=c.beta2,
            orth_reg_weight=c.orth_reg_weight,
            total_step=total,
            **self._peft_options(model),
        )

    @property
    def _peft(self) -> Any:
        return self.tuner.peft_config[ADAPTER_NAME]

    def on_train_begin(self, model: nn.Module, total_steps: int) -> None:
        if self.config.total_step is not None and self.config.total_step != total_steps:
            raise ConfigError(
                f"AdaLoRA was configured with total_step={self.config.total_step}, but the training run plans "
                f"{total_steps} optimizer steps. Leave total_step unset to let the trainer fill it in."
            )
        check_schedule(total_steps, self.config.tinit, self.config.tfinal)
        self._peft.total_step = total_steps  # the rank allocator reads the same config object
        self._schedule_known = True
        self._hooked = True

    def on_step_end(self, model: nn.Module, step: int) -> None:
        if self.config.total_step is None and not self._schedule_known:
            raise ConfigError(
                "AdaLoRA does not know how many steps the run has, so it cannot schedule its rank budget. "
                "Train with petl.train (which sets it), or pass total_step=... to petl.wrap."
            )
        self.tuner.update_and_allocate(step)

    def regularization_loss(self, model: nn.Module) -> torch.Tensor | None:
        weight = self.config.orth_reg_weight
        if weight == 0:
            return None
        terms = []
        for name, param in model.named_parameters():
            if f".{ADAPTER_NAME}" not in name or not param.requires_grad:
                continue
            if ".lora_A." in name:  # Q: r x d_in, rows should be orthonormal
                gram = param @ param.T
            elif ".lora_B." in name:  # P: d_out x r, columns should be orthonormal
                gram = param.T @ param
            else:
                continue
            eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
            terms.append(torch.linalg.matrix_norm(gram - eye, ord="fro"))
        if not terms:
            return None
        return weight * torch.stack(terms).mean()

    def training_state(self, model: nn.Module) -> dict[str, Any]:
        """The rank allocator's smoothed importance scores and the rank pattern, for
        checkpoints: without them a resumed run would allocate its budget differently."""
        allocator = self.tuner.rankallocator
        return {
            "total_step": int(self._peft.total_step),
            "schedule_known": self._schedule_known,
            "rank_pattern": _plain_pattern(self._peft.rank_pattern),
            "ipt": {k: v.detach().cpu() for k, v in allocator.ipt.items()},
            "exp_avg_ipt": {k: v.detach().cpu() for k, v in allocator.exp_avg_ipt.items()},
            "exp_avg_unc": {k: v.detach().cpu() for k, v in allocator.exp_avg_unc.items()},
        }

    def load_training_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Restore what :meth:`training_state` saved."""
        allocator = self.tuner.rankallocator
        device = next(p.device for p in model.parameters())
        self._peft.total_step = state["total_step"]
        self._schedule_known = state["schedule_known"]
        self._peft.rank_pattern = state["rank_pattern"]
        for name in ("ipt", "exp_avg_ipt", "exp_avg_unc"):
            setattr(allocator, name, {k: v.to(device) for k, v in state[name].items()})

    def effective_ranks(self, model: nn.Module) -> dict[str, int]:
        """Triplets in use per adapted layer: ``init_r`` until the first allocation, then
        what peft's rank pattern keeps (pruned triplets have their ``lambda`` at zero)."""
        pattern = self._peft.rank_pattern or {}
        kept = {key.split(".lora_E")[0]: int(sum(bool(v) for v in mask)) for key, mask in pattern.items()}
        ranks: dict[str, int] = {}
        for name, module in model.named_modules():
            lora_e = getattr(module, "lora_E", None)
            if isinstance(lora_e, nn.ParameterDict) and ADAPTER_NAME in lora_e:
                ranks[name] = kept.get(name, lora_e[ADAPTER_NAME].shape[0])
        return ranks

    def adapter_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        # peft resizes by rank pattern only through a PeftModel; petl keeps the full shape with pruned
        # triplets at zero, which loads anywhere without resizing and reproduces outputs exactly.
        saved, self._peft.rank_pattern = self._peft.rank_pattern, None
        try:
            return super().adapter_state_dict(model)
        finally:
            self._peft.rank_pattern = saved

    def load_adapter_state_dict(self, model: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        # With a rank pattern, peft would first shrink the layers to it; petl's tensors are at init_r.
        saved, self._peft.rank_pattern = self._peft.rank_pattern, None
        try:
            super().load_adapter_state_dict(model, state_dict)
        finally:
            self._peft.rank_pattern = saved

    def adapter_config(self, model: nn.Module) -> dict[str, Any]:
        config = super().adapter_config(model)
        config["rank_pattern"] = None  # tensors are saved at init_r; see adapter_state_dict
        return config

    @classmethod
    def tensors_from_peft(cls, adapter_config: dict[str, Any],
                          tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Put back, as zeros, the triplets peft's ``save_pretrained`` dropped by ``rank_pattern``.

        A pruned triplet has ``lambda = 0``, so it adds nothing either way, and peft keeps the
        layer's scale (``ranknum``) at ``init_r`` when it shrinks a layer; the padded adapter
        computes what peft's shrunk one does.
        """
        pattern = adapter_config.get("rank_pattern")
        if not pattern:
            return tensors
        init_r = adapter_config.get("init_r", 12)
        if not isinstance(pattern, dict):
            raise CheckpointError(f"adapter_config.json has rank_pattern={pattern!r}, not an object.")
        padded = dict(tensors)
        for name, mask in pattern.items():
            if not (isinstance(mask, list) and len(mask) == init_r and all(isinstance(x, bool) for x in mask)):
                raise CheckpointError(
                    f"adapter_config.json's rank_pattern for {name!r} is {mask!r}, not {init_r} (init_r) "
                    "true/false values. Save the adapter again with peft or petl."
                )
            layer = name.split(".lora_E", 1)[0]
            keep = torch.tensor(mask).nonzero().flatten()
            for part, dim in (("lora_E", 0), ("lora_A", 0), ("lora_B", 1)):
                tensor = padded.get(f"{PEFT_PREFIX}{layer}.{part}")
                # Anything else (a missing layer, another width) is for the shape check to report.
                if tensor is not None and tensor.dim() == 2 and tensor.shape[dim] == len(keep) < init_r:
                    shape = list(tensor.shape)
                    shape[dim] = init_r
                    padded[f"{PEFT_PREFIX}{layer}.{part}"] = tensor.new_zeros(shape).index_copy_(dim, keep, tensor)
        return padded

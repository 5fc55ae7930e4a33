"""Activation memory of one training step, traced on fake tensors: no storage, no arithmetic.

Method. The (wrapped) model :mod:`petl.bench.estimate` built on the meta device is moved
onto *fake* CPU tensors (``torch._subclasses.FakeTensorMode``: shapes, dtypes and a
device, but no storage), and one training step runs on a fake batch of ``batch_size``
sequences of ``seq_len`` tokens as petl's trainer takes it (:mod:`petl.training.step`):
the forward pass and task loss (plus the strategy's regulariser) in train mode (dropout
on), backward, gradient clipping, AdamW's step, ``zero_grad``. A ``TorchDispatchMode``
under the fake mode sees every aten op of the forward, the backward and any
recomputation, and keeps a ledger of the storages the step creates: a storage enters
when an op returns it and leaves when it is freed (a weak reference to it fires). At
every op the ledger therefore holds what a real run holds at that moment: tensors saved
for backward, temporaries, gradients of activations, parameter gradients (tagged when
autograd accumulates them) and optimizer states. Fake *CPU* tensors rather than meta
ones, because kernels are chosen per device: on the meta device scaled-dot-product
attention takes its math path and saves the ``L x L`` attention probabilities, on the
CPU (as with flash attention on CUDA) it saves only the output and a log-sum-exp.

From the ledger, in bytes:

    A    = max over forward + backward of (ledger - parameter gradients)     "activations"
    FB   = max over forward + backward of ledger          (activations + gradients alive then)
    S    = max over the optimizer step of ledger - traced optimizer states
    peak = W + O + max(FB, S)  (+ one dequantized weight for int8 / int4)

with ``W``, ``G``, ``O`` the weights, gradients and optimizer states of
:mod:`petl.bench.estimate`. ``O`` is added to ``FB`` because from the second step on the
optimizer states exist during the forward and backward pass (AdamW creates them in the
first step): ``peak`` is the steady state, and ``peak <= W + G + O + A`` since the
activations peak when few gradients exist yet.

What the trace shows (and a per-family factor would not): a frozen linear layer saves
nothing of its own for backward (its input is needed only for a weight gradient), so a
frozen base with LoRA keeps the inputs of the adapted layers (LoRA's ``A`` saves its
input, ``B`` the rank-``r`` intermediate) and the tensors of nonlinear ops (norms,
activation functions, attention, dropout masks), while full fine-tuning keeps every
linear layer's input. With gradient checkpointing (transformers'
``gradient_checkpointing_enable``, non-reentrant, as the trainer enables it) the
recomputation runs under the ledger too: the trace keeps each layer's input, then one
layer's recomputed activations and backward at a time, which is what it measures rather
than models.

Precision: ``fp32`` traces in fp32; ``bf16`` casts the base to bf16 (trainable weights
stay fp32, except under full fine-tuning) and runs the forward under CPU autocast; ``int8``
and ``int4`` trace the quantized linear layers as frozen fp32 layers (bitsandbytes'
layers also save nothing new for backward) and add one fp32 copy of the largest
quantized weight, which bitsandbytes dequantizes in each pass (modelled, not traced).

Not seen: memory a kernel allocates and frees before returning (matmul workspaces, the
attention kernel's scratch), allocator rounding and fragmentation, the CUDA context.
The step is CPU's per-tensor AdamW; on CUDA torch's default multi-tensor AdamW holds
about one more copy of the trainable parameters during the step (it matters only when the
step is the peak). ``adamw8bit`` is traced as AdamW and its states counted at their own
size; a strategy's ``on_step_end`` hook (AdaLoRA's rank budget) is not traced.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn

__all__ = ["StepTrace", "peak_bytes", "trace_step"]


@dataclass(frozen=True)
class StepTrace:
    """What one traced training step holds on top of the weights, in bytes."""

    activation_bytes: int
    """``A``: the most saved activations and temporaries alive at once in forward and backward."""
    forward_backward_bytes: int
    """``FB``: the most activations, temporaries and parameter gradients alive at once then."""
    step_bytes: int
    """``S``: the most gradients and temporaries alive at once during clipping and the optimizer step."""
    gradient_bytes: int
    """Parameter gradients the backward pass produced."""
    optimizer_bytes: int
    """Optimizer states the step created."""


def peak_bytes(trace: StepTrace, weights: int, optimizer: int, extra: int = 0) -> int:
    """The steady-state peak of a training step: ``W + O + max(FB, S) + extra`` (module docstring).

    Args:
        trace: The traced step.
        weights: ``W``, the bytes of all parameters.
        optimizer: ``O``, the bytes of the optimizer states (their analytic size, so that
            8-bit states replace the traced fp32 ones).
        extra: Temporaries outside the trace (a dequantized weight).
    """
    return weights + optimizer + max(trace.forward_backward_bytes, trace.step_bytes) + extra


class _Ledger(torch.utils._python_dispatch.TorchDispatchMode):
    """Bytes of the storages ops create, as they are created and freed."""

    def __init__(self, known: list[torch.Tensor]) -> None:
        super().__init__()
        # Storages that exist before the step (weights, buffers, the batch) are not counted,
        # even when an in-place op returns them; held here so their ids stay theirs.
        self._known_storages = [t.untyped_storage() for t in known]
        self._known = {id(s) for s in self._known_storages}
        self._entries: dict[int, list[Any]] = {}  # id(storage) -> [bytes, is a gradient, weakref]
        self.live = self.gradients = 0
        self.step_phase = False
        self.activations_peak = self.forward_backward_peak = self.step_peak = 0

    def _freed(self, key: int, _ref: Any) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.live -= entry[0]
            if entry[1]:
                self.gradients -= entry[0]

    def mark_gradient(self, param: torch.Tensor) -> None:
        """Count the storage of ``param.grad`` as a parameter gradient (a post-accumulate-grad hook)."""
        entry = None if param.grad is None else self._entries.get(id(param.grad.untyped_storage()))
        if entry is not None and not entry[1]:
            entry[1] = True
            self.gradients += entry[0]

    def total(self, tensors: list[torch.Tensor]) -> int:
        """Bytes of the counted storages among ``tensors``'s (each storage once)."""
        keys = {id(t.untyped_storage()) for t in tensors}
        return sum(self._entries[k][0] for k in keys if k in self._entries)

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self._entries and key not in self._known:
                    size = storage.nbytes()
                    self._entries[key] = [size, False, weakref.ref(storage, partial(self._freed, key))]
                    self.live += size
        if self.step_phase:
            self.step_peak = max(self.step_peak, self.live)
        else:
            self.forward_backward_peak = max(self.forward_backward_peak, self.live)
            self.activations_peak = max(self.activations_peak, self.live - self.gradients)
        return out


def _to_fake(model: nn.Module, bf16: bool, full: bool) -> Any:
    """Replace each parameter and buffer of ``model`` by a fake CPU tensor (a tied weight by
    the same one), keeping ``requires_grad``; returns the fake mode.

    Floating tensors become fp32, or under ``bf16`` a bf16 base with fp32 trainable
    weights (bf16 ones under full fine-tuning, whose weights are the bf16 model itself).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    # allow_non_fake_inputs: a strategy may hold a real tensor outside its module's registers
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    cpu = torch.device("cpu")
    done: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id -> (original, fake); holding both keeps ids unique

    def fake(tensor: torch.Tensor, is_param: bool) -> torch.Tensor:
        if id(tensor) not in done:
            plain = tensor.detach()
            if plain.is_floating_point():
                keep_fp32 = not bf16 or (is_param and tensor.requires_grad and not full)
                plain = plain.to(torch.float32 if keep_fp32 else torch.bfloat16)
            copy = (mode.fake_tensor_converter.from_meta_and_device(mode, plain, cpu) if plain.device.type == "meta"
                    else mode.from_tensor(plain))
            done[id(tensor)] = (tensor, nn.Parameter(copy, requires_grad=tensor.requires_grad) if is_param else copy)
        return done[id(tensor)][1]

    for module in model.modules():
        for registry, is_param in ((module._parameters, True), (module._buffers, False)):
            for name, tensor in registry.items():
                if tensor is not None:
                    registry[name] = fake(tensor, is_param)
    return mode


def _batch(task: str, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
    """A batch of the task's inputs (token ids, a mask, labels); their values do not matter."""
    shape = (batch_size, seq_len)
    batch = {"input_ids": torch.full(shape, 3, dtype=torch.long), "attention_mask": torch.ones(shape, dtype=torch.long)}
    if task == "sequence-classification":
        batch["labels"] = torch.zeros(batch_size, dtype=torch.long)
    else:  # token labels; an encoder-decoder's targets are as long as its inputs
        batch["labels"] = torch.full(shape, 3, dtype=torch.long)
    return batch


def _enable_checkpointing(model: nn.Module, wrapped: bool) -> None:
    """Gradient checkpointing as :func:`petl.training.setup.prepare_run` enables it."""
    from petl.errors import ConfigError

    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{type(model).__name__} does not support gradient checkpointing; "
                          "estimate without --gradient-checkpointing.")
    if not getattr(model, "is_gradient_checkpointing", False):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if wrapped and embeddings is not None and not any(p.requires_grad for p in embeddings.parameters()):
        model.enable_input_require_grads()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """transformers' deprecation and checkpointing notices are about the trace, not the user's run."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(level)


def trace_step(model: nn.Module, task: str, *, batch_size: int, seq_len: int, full: bool, bf16: bool = False,
               gradient_checkpointing: bool = False) -> StepTrace:
    """Trace one training step of ``model`` on fake tensors (see the module docstring).

    ``model`` itself is left as it is: the step runs on a copy.

    Args:
        model: A model built on the meta device (or a small real one), wrapped with a
            strategy or, for full fine-tuning, plain with every parameter trainable.
        task: One of :data:`petl.tasks.TASKS`; decides the labels.
        batch_size: Sequences per batch.
        seq_len: Tokens per sequence.
        full: Full fine-tuning (the dtype of the trainable weights under bf16).
        bf16: Trace in bf16 (a bf16 base under autocast) instead of fp32.
        gradient_checkpointing: Recompute each layer in the backward pass.

    Raises:
        ConfigError: Gradient checkpointing is asked of a model that does not support it.
        Exception: Whatever the model's forward raises on fake tensors (a strategy or model
            that reads tensor values, say); :mod:`petl.bench.estimate` reports it per row.
    """
    from petl.core.wrapping import is_wrapped, state_of
    from petl.training.config import TrainConfig
    from petl.training.step import build_optimizer, training_loss

    # On the meta device a copy costs no memory (a materialised model is small: see estimate.py).
    model = copy.deepcopy(model)
    wrapped = is_wrapped(model)
    strategy = state_of(model).strategy if wrapped else None
    mode = _to_fake(model, bf16, full)
    config = getattr(model, "config", None)
    if config is not None:
        config.use_cache = False  # no key/value cache in training
        if task == "sequence-classification" and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = 0  # a decoder's classifier finds each row's last token by it
    with _quiet():
        if gradient_checkpointing:
            _enable_checkpointing(model, wrapped)
        model.train()
        with mode:
            batch = _batch(task, batch_size, seq_len)
        trainable = [p for p in model.parameters() if p.requires_grad]
        known = [*model.parameters(), *model.buffers(), *batch.values()]
        ledger = _Ledger(known)
        hooks = [p.register_post_accumulate_grad_hook(ledger.mark_gradient) for p in trainable]
        autocast: Callable[[], Any] = (partial(torch.autocast, device_type="cpu", dtype=torch.bfloat16) if bf16
                                       else contextlib.nullcontext)
        defaults = TrainConfig()  # the trainer's optimizer and clipping
        try:
            with mode:
                optimizer = build_optimizer(model, defaults, 1e-3)
                if strategy is not None:
                    strategy.on_train_begin(model, 1)
                with ledger:  # as petl.training.step.StepRunner takes a step, without reading the loss back
                    with autocast():
                        loss = training_loss(model, batch, strategy, model)
                    loss.backward()
                    del loss
                    gradients = ledger.total([p.grad for p in trainable if p.grad is not None])
                    ledger.step_phase = True
                    if defaults.max_grad_norm is not None:
                        nn.utils.clip_grad_norm_(trainable, defaults.max_grad_norm)
                    optimizer.step()
                    states = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
                    optimizer_bytes = ledger.total(states)
                    optimizer.zero_grad(set_to_none=True)
        finally:
            for hook in hooks:
                hook.remove()
    return StepTrace(activation_bytes=ledger.activations_peak, forward_backward_bytes=ledger.forward_backward_peak,
                     step_bytes=ledger.step_peak - optimizer_bytes, gradient_bytes=gradients,
                     optimizer_bytes=optimizer_bytes)


"""Setting up a training run: checking the inputs, building the Accelerate objects,
and putting the model back as it was afterwards.

Everything here runs before the first step, so bad input (no trainable parameters,
labels beyond the model's head, an unwritable output folder, checked by
:func:`petl.training.output_dir.check_output_dir`) fails fast, and
:meth:`Run.close` undoes what the setup changed on the user's model (the
mixed-precision forward wrapper, gradient checkpointing, every attribute Accelerate
or transformers set on it or its submodules, each module's train/eval mode), also
when the setup itself fails. Nothing is written to the output folder until the loop
calls :meth:`Run.open_outputs`, once a resumed run's checkpoint has passed its checks.
Launches that Accelerate silently narrows (one process where several were asked for,
FSDP without an accelerator) are warned about here, see :mod:`petl.training.launch`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from petl.core.distributed import is_sharded
from petl.core.wrapping import is_wrapped, state_of
from petl.errors import ConfigError, PetlError
from petl.files import atomic_write_json, replace_dir
from petl.tasks import CLASSIFICATION_TASKS, LM_TASKS, REPORTED_METRICS
from petl.threads import warn_once_if_oversubscribed
from petl.training.config import TrainConfig, default_learning_rate
from petl.training.data import CheckedCollator, EpochOrder, is_stream
from petl.training.evaluation import EvaluatorFactory
from petl.training.generation import generation_settings
from petl.training.launch import (
    cpu_processes,
    fsdp_without_device,
    single_process_launch,
    warn_about_launch,
)
from petl.training.sampling import (
    TOKEN_AVERAGED_TASKS,
    check_packing,
    eval_order,
    mean_labelled_tokens,
    training_collator,
    training_order,
)
from petl.training.step import build_optimizer

__all__ = ["CONFIG_NAME", "Run", "prepare_run"]

logger = logging.getLogger(__name__)

CONFIG_NAME = "train_config.json"


class ModelSnapshot:
    """Each module's instance attribute names and train/eval mode, to put back after a run.

    Accelerate marks a prepared model (``_is_accelerate_prepared``) and wraps its
    ``forward`` for mixed precision (keeping ``_original_forward``); gradient
    checkpointing and ``enable_input_require_grads`` leave attributes on submodules.
    :meth:`restore` removes every attribute added since the snapshot and gives back
    the model's own ``forward`` if it had one, so the model ends up with exactly the
    attributes it had.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = [(module, frozenset(vars(module)), module.training) for module in model.modules()]
        self.own_forward = {k: vars(model)[k] for k in ("forward", "_original_forward") if k in vars(model)}

    def restore(self) -> None:
        for module, names, training in self.modules:
            for name in set(vars(module)) - names:
                del vars(module)[name]
            module.training = training
        vars(self.model).update(self.own_forward)


@dataclass
class Run:
    """The objects of one training run, built by :func:`prepare_run`."""

    config: TrainConfig
    task: str
    accelerator: Any
    """The ``accelerate.Accelerator`` driving devices, precision and processes."""
    model: nn.Module
    """The model as Accelerate prepared it (a DDP wrapper under data parallelism)."""
    unwrapped: nn.Module
    """The user's model, which strategy hooks and checkpoints see."""
    strategy: Any
    """The model's strategy, or ``None`` under full fine-tuning."""
    trainable: list[nn.Parameter]
    learning_rate: float
    """The peak learning rate (``config.learning_rate``, or the default for the kind of model)."""
    optimizer: Any
    scheduler: Any
    train_loader: Any
    eval_loader: Any
    sampler: EpochOrder | None
    """The order of each epoch; ``None`` for a streamed training set (read in passes, in its own order)."""
    total_steps: int
    steps_per_epoch: int | None
    """Optimizer steps per epoch; ``None`` for a stream, which has no length."""
    batches_per_epoch: int | None
    """Micro-batches per epoch (of this process); ``None`` for a stream."""
    output_dir: Path | None
    evaluator_factory: EvaluatorFactory | None
    known_metrics: tuple[str, ...] | None
    """The metrics the default evaluator reports, to check ``metric_for_best`` against."""
    snapshot: ModelSnapshot
    enabled_checkpointing: bool
    enabled_input_grads: bool
    token_scale: float | None = None
    """With ``token_weighted_loss``: the mean labelled tokens per training example, which a
    micro-batch's loss is weighed against (:func:`~petl.training.step.training_loss`)."""
    generation: Any = None
    """What the evaluation also generates and scores (:mod:`petl.training.generation`); ``None``: nothing."""

    def start_pass(self, epoch: int) -> None:
        """Fix the data order of ``epoch`` (a pass over a stream) before its batches are read."""
        if self.sampler is not None:
            self.sampler.set_order(epoch)
        elif hasattr(self.train_loader, "set_epoch"):
            # Accelerate's loader hands the count to the stream (a shuffled one reshuffles by it)
            # and keeps it, so that a loader skipping the batches of a resumed pass starts there too.
            self.train_loader.set_epoch(epoch)

    def begin_strategy(self) -> None:
        if self.strategy is not None:
            self.strategy.on_train_begin(self.unwrapped, self.total_steps)

    def track(self, values: Mapping[str, float], step: int) -> None:
        if self.config.log_with is not None:
            self.accelerator.log({k: v for k, v in values.items() if k != "step"}, step=step)

    def progress_bar(self, initial: int) -> Any:
        from tqdm.auto import tqdm

        disable = not (self.config.progress_bar and self.accelerator.is_main_process)
        return tqdm(total=self.total_steps, initial=initial, desc="train", unit="step", disable=disable)

    def open_outputs(self) -> None:
        """Write ``train_config.json`` and start the trackers: called once the run is known to start."""
        config = self.config
        if self.output_dir is not None and self.accelerator.is_main_process:
            atomic_write_json(self.output_dir / CONFIG_NAME, config.to_dict(), sort_keys=False)
        if config.log_with is not None:
            self.accelerator.init_trackers("petl", config={k: v for k, v in config.to_dict().items()
                                                           if isinstance(v, (int, float, str, bool))})

    @property
    def sharded(self) -> bool:
        """Whether the trainable tensors are DTensors (FSDP2): saving them is a collective, on every rank."""
        return any(is_sharded(p) for p in self.unwrapped.parameters() if p.requires_grad)

    def save_model(self, folder: Path) -> None:
        """Save the adapter (``petl.save``) or, under full fine-tuning, the whole model, atomically.

        Called on every rank: rank 0 writes; the others take part only when the adapter is
        sharded, since gathering it is a collective.
        """
        if self.strategy is not None:
            if self.accelerator.is_main_process or self.sharded:
                from petl.core.io import save

                save(self.unwrapped, folder)  # replaces the folder whole by itself
            return
        if self.accelerator.is_main_process:
            replace_dir(folder, lambda tmp: self.unwrapped.save_pretrained(tmp, safe_serialization=True))

    def close(self) -> None:
        """Undo the setup's changes to the user's model and release Accelerate's references."""
        _undo_setup(self.unwrapped, self.snapshot, self.enabled_checkpointing, self.enabled_input_grads)
        if self.config.log_with is not None:
            self.accelerator.end_training()
        self.accelerator.free_memory()


def _undo_setup(model: nn.Module, snapshot: ModelSnapshot, checkpointing: bool, input_grads: bool) -> None:
    if checkpointing:
        model.gradient_checkpointing_disable()
    if input_grads:
        model.disable_input_require_grads()
    snapshot.restore()


def _reset_accelerate() -> None:
    """Let this run choose its own precision: Accelerate keeps one state per process
    (transformers' Trainer resets it the same way before each run)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()


def _model_checks(model: nn.Module, data: Any, wrapped: bool) -> None:
    if not wrapped and (getattr(model, "is_loaded_in_8bit", False) or getattr(model, "is_loaded_in_4bit", False)):
        raise PetlError(
            "This model's base weights are quantized (8-bit/4-bit) and cannot be trained in full. "
            'Wrap it with a strategy first, e.g. petl.wrap(model, "lora", r=8) (--strategy lora).'
        )
    if not any(p.requires_grad for p in model.parameters()):
        raise PetlError(
            f"No parameter of this {type(model).__name__} requires grad, so there is nothing to train. "
            "Wrap it with petl.wrap(model, ...), or unfreeze the parameters to fine-tune in full."
        )
    head = getattr(getattr(model, "config", None), "num_labels", None)
    if data.task in CLASSIFICATION_TASKS and data.num_labels and head:
        if data.num_labels > head:
            names = f" ({', '.join(map(str, data.label_names[:10]))})" if data.label_names else ""
            raise PetlError(
                f"The data has {data.num_labels} labels{names}, but the model's head has {head} outputs. "
                f"Load the model with num_labels={data.num_labels}."
            )


def _evaluation(
    data: Any, evaluator: EvaluatorFactory | None
) -> tuple[EvaluatorFactory | None, tuple[str, ...] | None]:
    """The evaluator factory and the metrics to check ``metric_for_best`` against (``None``: unknown)."""
    if evaluator is None and data.task == "question-answering":  # needs the windows of the evaluation set
        from petl.metrics.qa import QuestionAnsweringEvaluator

        if data.eval is not None:
            QuestionAnsweringEvaluator.for_dataset(data.eval)  # fail now, not at the first evaluation
        return (lambda: QuestionAnsweringEvaluator.for_dataset(data.eval)), REPORTED_METRICS[data.task]
    if evaluator is None and data.task not in LM_TASKS:
        from petl.metrics import evaluator_for

        evaluator_for(data.task, data.label_names)  # fail now, not at the first evaluation

        def default() -> Any:
            return evaluator_for(data.task, data.label_names)

        return default, REPORTED_METRICS[data.task]
    return evaluator, (REPORTED_METRICS[data.task] if evaluator is None else None)


def prepare_run(
    model: nn.Module, data: Any, config: TrainConfig, output_dir: Path | None, evaluator: EvaluatorFactory | None
) -> Run:
    """Check the model against the data and build every object of the run.

    The checks come before any change to the model; if building the run fails after
    the model was changed, the changes are undone before the error propagates.
    """
    wrapped = is_wrapped(model)
    _model_checks(model, data, wrapped)
    if config.gradient_checkpointing and not getattr(model, "supports_gradient_checkpointing", False):
        raise ConfigError(f"{type(model).__name__} does not support gradient checkpointing; "
                          "train without gradient_checkpointing.")
    if is_stream(data.train) and config.max_steps is None:
        raise ConfigError(
            "The training data is a stream (an iterable dataset), which has no length to count epochs in: pass "
            "TrainConfig(max_steps=N) (--max-steps N), the number of optimizer steps to take. A stream that ends "
            "sooner is read again from its start."
        )
    if config.packing:
        check_packing(model, data.task)  # a forward pass on tiny inputs; the model's modes are put back
    token_scale = None
    if config.token_weighted_loss:
        if data.task not in TOKEN_AVERAGED_TASKS:
            raise ConfigError(
                f"token_weighted_loss=True weighs losses averaged over tokens ({', '.join(TOKEN_AVERAGED_TASKS)}), "
                f"but the task is {data.task!r}, whose loss already weighs every example alike. "
                "Train with token_weighted_loss=False.")
        token_scale = mean_labelled_tokens(data.train, data.task)
        if not token_scale:
            raise ConfigError(
                "token_weighted_loss=True needs the training examples' labels to count their labelled tokens, "
                "but the training set is a stream or its examples carry no labels list (or none labelled). "
                "Train with token_weighted_loss=False, or pass tokenised examples with labels.")
    evaluator, known_metrics = _evaluation(data, evaluator)
    generation = generation_settings(config, data)
    if generation is not None and known_metrics is not None:
        known_metrics = (*known_metrics, *generation.metric_names)
    snapshot = ModelSnapshot(model)
    flags = {"checkpointing": False, "input_grads": False}
    try:
        run = _build_run(model, data, config, output_dir, evaluator, known_metrics, snapshot, flags)
        run.generation, run.token_scale = generation, token_scale
        return run
    except BaseException:
        _undo_setup(model, snapshot, flags["checkpointing"], flags["input_grads"])
        raise


def _build_run(
    model: nn.Module, data: Any, config: TrainConfig, output_dir: Path | None, evaluator: EvaluatorFactory | None,
    known_metrics: tuple[str, ...] | None, snapshot: ModelSnapshot, flags: dict[str, bool],
) -> Run:
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed
    from transformers import get_scheduler

    wrapped = is_wrapped(model)
    stream = is_stream(data.train)
    _reset_accelerate()
    fsdp_warning = fsdp_without_device()
    warn_about_launch(fsdp_warning, "fsdp")
    options: dict[str, Any] = {}
    if stream and output_dir is not None and config.save_steps is None and config.eval_steps is None:
        logger.warning("The training data is a stream, which has no epoch ends to checkpoint at: without save_steps "
                       "or eval_steps no checkpoint is written (nothing to resume from). Pass save_steps=N.")
    if stream:
        # Each process reads its own slice of every batch group: dispatching batches from the main process
        # would concatenate batches padded to different lengths.
        options["dataloader_config"] = DataLoaderConfiguration(dispatch_batches=False)
    try:
        accelerator = Accelerator(
            cpu=cpu_processes(),
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            log_with=config.log_with,
            project_dir=str(output_dir) if output_dir is not None else None,
            **options,
        )
    except (ValueError, RuntimeError) as exc:
        hint = (" An FSDP configuration needs a GPU or other accelerator: on CPUs, launch without FSDP "
                "(--use_fsdp / distributed_type: FSDP) for plain data parallelism." if fsdp_warning else "")
        raise ConfigError(f"Accelerate cannot set up this run: {exc}{hint}") from exc
    warn_about_launch(single_process_launch(accelerator.num_processes), "processes")
    if accelerator.is_main_process:
        warn_once_if_oversubscribed(logger)  # other busy processes make OpenMP threads wait
    set_seed(config.seed)

    if config.gradient_checkpointing:
        if not getattr(model, "is_gradient_checkpointing", False):
            flags["checkpointing"] = True
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if wrapped and embeddings is not None and not any(p.requires_grad for p in embeddings.parameters()):
            # A frozen embedding gives checkpointed blocks inputs without grad; make them require it.
            flags["input_grads"] = True
            model.enable_input_require_grads()

    check_labels = None  # the number of classes the head can output
    if data.task in CLASSIFICATION_TASKS:
        check_labels = getattr(getattr(model, "config", None), "num_labels", None) or data.num_labels
    sampler = training_order(data.train, config, accelerator.num_processes)  # None: a stream
    # Own generators: creating a loader iterator must not draw from the global RNG (dropout uses it).
    train_loader = DataLoader(
        data.train, sampler=sampler, batch_size=config.batch_size,
        collate_fn=CheckedCollator(training_collator(data, config), check_labels, "training"),
        generator=torch.Generator().manual_seed(config.seed),
    )
    eval_loader = None
    if data.eval is not None and len(data.eval) > 0:
        eval_loader = DataLoader(
            data.eval, batch_size=config.eval_batch_size or 2 * config.batch_size, sampler=eval_order(data.eval),
            collate_fn=CheckedCollator(data.collator, check_labels, "evaluation"),
            generator=torch.Generator().manual_seed(config.seed),
        )
    trainable = [p for p in model.parameters() if p.requires_grad]
    lr = config.learning_rate if config.learning_rate is not None else default_learning_rate(wrapped)
    optimizer = build_optimizer(model, config, lr)
    if eval_loader is not None:
        prepared_model, prepared_optimizer, train_loader, eval_loader = accelerator.prepare(
            model, optimizer, train_loader, eval_loader)
    else:
        prepared_model, prepared_optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    batches_per_epoch = None if stream else len(train_loader)
    steps_per_epoch = None if stream else math.ceil(len(train_loader) / config.gradient_accumulation_steps)
    total_steps = config.max_steps if config.max_steps is not None else config.epochs * steps_per_epoch
    scheduler_name = "constant_with_warmup" if config.lr_scheduler == "constant" else config.lr_scheduler
    scheduler = get_scheduler(scheduler_name, optimizer, num_warmup_steps=math.ceil(config.warmup_ratio * total_steps),
                              num_training_steps=total_steps)
    logger.info("Training %s for %d steps (%s) on %d process(es).",
                "the adapter" if wrapped else "every parameter", total_steps,
                "a stream, read in passes" if stream else f"{steps_per_epoch} per epoch", accelerator.num_processes)
    prepared_model.train()
    return Run(
        config=config, task=data.task, accelerator=accelerator, model=prepared_model,
        unwrapped=accelerator.unwrap_model(prepared_model), strategy=state_of(model).strategy if wrapped else None,
        trainable=trainable, learning_rate=lr, optimizer=prepared_optimizer, scheduler=scheduler,
        train_loader=train_loader, eval_loader=eval_loader, sampler=sampler, total_steps=total_steps,
        steps_per_epoch=steps_per_epoch, batches_per_epoch=batches_per_epoch, output_dir=output_dir,
        evaluator_factory=evaluator,
        known_metrics=known_metrics, snapshot=snapshot, enabled_checkpointing=flags["checkpointing"],
        enabled_input_grads=flags["input_grads"],
    )

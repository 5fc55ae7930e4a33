"""Training any wrapped model (or a plain one, in full) on a task's data, driven by Accelerate.

    import petl
    model = petl.wrap(model, "lora", r=8)
    result = petl.train(model, "train.tsv", eval_data="validation.tsv", tokenizer=tok,
                        task="sequence-classification",
                        config=petl.TrainConfig(epochs=3, learning_rate=1e-3, output_dir="runs/lora"))
    result.metrics  # {"eval_accuracy": ..., "eval_loss": ...}

One optimizer step ``t`` (counted from 1) averages ``G = gradient_accumulation_steps``
micro-batches and adds the strategy's regulariser ``R`` (``None`` for most strategies):

    L_t = (1 / G) * sum_g [ task_loss(batch_g) + R(model) ]
    g_t = grad L_t * min(1, max_grad_norm / ||grad L_t||_2)        (global norm clipping)
    theta_t = AdamW(theta_{t-1}, g_t, lr_t)                       (Loshchilov & Hutter 2019, Algorithm 2)
    lr_t = lr * s / W                                  for s = t - 1 < W  (warm-up, W = ceil(warmup_ratio * T))
    lr_t = lr * (T - s) / (T - W)                      linear decay, or
    lr_t = lr * (1 + cos(pi * (s - W) / (T - W))) / 2  cosine decay

with ``T`` the planned number of optimizer steps (transformers' ``get_scheduler``).
The trainer talks to the strategy only through the protocol of :mod:`petl.core.strategy`
(one step is written once, in :mod:`petl.training.step`):
``on_train_begin(model, T)`` once, ``regularization_loss(model)`` at every
micro-batch, and ``on_step_end(model, t)`` after each ``optimizer.step()`` and before
the gradients are zeroed (AdaLoRA reads them there to reallocate its rank budget).

Devices, precision and processes come from Accelerate, so one script runs anywhere::

    python train.py                                   # one CPU or one GPU
    torchrun --nproc_per_node 2 train.py              # two processes (gloo on CPU, NCCL on GPUs)
    accelerate launch --multi_gpu --num_processes 4 train.py   # also on CPUs (gloo), without --cpu

(``accelerate launch --cpu --num_processes 4`` starts the script once, and an FSDP
configuration on a machine without GPUs runs as plain data parallelism: petl warns
about both, see :mod:`petl.training.launch`.)

Under data parallelism each process reads its own shard of every epoch (Accelerate
pads the last batches so that all processes take the same number of steps),
gradients are averaged across processes, every process reports the same losses
and metrics, and only the main process writes files.

FSDP and DeepSpeed are chosen in Accelerate's own configuration, not here: describe
the setup once with ``accelerate config`` (or write a YAML file with
``distributed_type: FSDP`` and an ``fsdp_config`` section, or ``distributed_type:
DEEPSPEED`` and a ``deepspeed_config`` section) and start the same script with
``accelerate launch --config_file that.yaml train.py``; the ``Accelerator`` built
here reads that configuration (``TrainConfig.mixed_precision`` still decides the
precision). The best adapter is read from the main process's parameters, which are
complete under DDP and DeepSpeed ZeRO stages 1-2 but only a shard under FSDP and
ZeRO-3; checkpoints (and so ``resume``) also need the whole optimizer state, which
only single-device and DDP runs keep in one process. For sharded runs train with
``output_dir=None`` and save through Accelerate (``accelerator.save_state``). petl's
test suite runs on CPUs and exercises none of the GPU configurations.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from torch import nn

from petl.errors import ConfigError
from petl.training.config import TrainConfig
from petl.training.data import resolve_data
from petl.training.evaluation import EvaluatorFactory
from petl.training.loop import TrainLoop, TrainResult
from petl.training.output_dir import check_output_dir
from petl.training.setup import prepare_run

__all__ = ["TrainConfig", "TrainResult", "train"]


def train(
    model: nn.Module,
    train_data: Any,
    eval_data: Any = None,
    *,
    tokenizer: Any = None,
    task: str | None = None,
    config: TrainConfig | None = None,
    evaluator: EvaluatorFactory | None = None,
    data_options: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_data`` and evaluate it on ``eval_data``.

    A model wrapped with ``petl.wrap`` trains its adapter (and fresh task head) only;
    a plain model is fine-tuned in full. The model is trained in place and is left
    with its original train/eval modes and attributes (nothing Accelerate or gradient
    checkpointing set stays on it), holding the best evaluated weights when
    ``config.load_best_at_end``.

    ``config.seed`` seeds every generator when the run starts, so the data order,
    dropout and the training itself repeat exactly. It does not reach the draws made
    before this call: the adapter's initial weights (and a fresh head's) were drawn when
    the model was loaded and wrapped, from whatever state the generators were in. Seed
    before loading and wrapping (``transformers.set_seed(seed)``) for a run reproducible
    end to end; ``petl train --seed`` does.

    With ``config.resume``, the newest checkpoint in ``output_dir`` is read and checked
    whole (every file present and readable; the same options, strategy, strategy
    options and model; tensors that fit) before anything is loaded or any file of the
    output folder is written, so a refused resume leaves the model and the folder as they
    were. Log records the interrupted run wrote after that
    checkpoint are dropped from ``log.jsonl``, since the resumed run writes them again.

    ``train_data`` (and ``eval_data``) may be any of these forms; everything but a
    ``TaskData`` goes through ``petl.data.load_task_data``:

    * a prepared ``petl.data.TaskData`` (then ``eval_data`` and ``data_options`` stay
      unset; its ``eval`` split is used);
    * a path to a CSV / TSV / JSON lines / JSON / CoNLL file or to a folder of
      ``<split>.<ext>`` files, or a Hub data set name;
    * a ``datasets.Dataset``, a pandas ``DataFrame`` or a list of dicts, one per row, all
      with the same keys (``[{"text": "a fine film", "label": 1}, ...]``);
    * a ``datasets.DatasetDict`` as ``train_data`` alone: its "train" split trains and its
      "validation" (else "valid", "dev", "val") split evaluates, as the log says. A "test"
      split is never evaluated on unasked: a dict with only "train" and "test" is refused
      (pass ``eval_data=dataset_dict["test"]`` if that is meant). With ``eval_data`` given,
      ``eval_data`` evaluates (logged);
    * pre-tokenized rows (an ``input_ids`` column, with ``attention_mask``,
      ``token_type_ids`` and ``labels`` or ``label``), in any form above: checked row by row
      and used as they are, other columns dropped. No tokenizer is needed: batches are
      padded with the tokenizer's pad id when one is given, else the model config's
      ``pad_token_id``. Labels are a class id per row (sequence classification), a list
      aligned with ``input_ids`` (token classification, causal LM) or target ids (seq2seq),
      with -100 for no loss;
    * as ``train_data`` only, a ``datasets.IterableDataset`` (a stream), raw (tokenised on
      the fly) or pre-tokenized. It needs ``config.max_steps``, since a stream has no length
      to count epochs in; a stream that ends sooner is read again (``set_epoch(pass)`` first,
      so a shuffled stream reshuffles deterministically). Evaluation and checkpoints follow
      ``eval_steps`` / ``save_steps`` (there is no epoch end). A resume starts the saved pass
      again and skips the batches already consumed, reproducing the uninterrupted run when
      the stream repeats its rows pass by pass.

    Args:
        model: The model, wrapped or plain, with a head for ``task``.
        train_data: The training data, in one of the forms above.
        eval_data: The evaluation data, in one of the forms above but a ``TaskData`` or a stream.
        tokenizer: The model's tokenizer, needed with raw text (not with pre-tokenized data).
        task: ``"sequence-classification"``, ``"token-classification"``, ``"causal-lm"``
            or ``"seq2seq"``; taken from the ``TaskData`` or inferred from the model's
            class when ``None``.
        config: Training options; the defaults of :class:`TrainConfig` when ``None``.
        evaluator: A callable returning a fresh ``TaskEvaluator`` before each
            evaluation; ``None`` uses ``petl.metrics.evaluator_for(task, label_names)``.
        data_options: Extra keyword options for ``load_task_data``
            (``max_length``, ``text_column``, ``label_column``, ``label_names``, ``limit``, ...).

    Returns:
        A :class:`TrainResult`.

    Raises:
        ConfigError: A stream without ``config.max_steps``; raw text without a tokenizer.
        PetlError: Bad data (missing columns, labels out of range), an unwritable
            output folder (checked before training starts), or a non-finite loss (the
            message names the step; earlier checkpoints are kept).
        CheckpointError: On resume, a checkpoint that is incomplete, unreadable or
            corrupted, or that belongs to another run (other options, strategy or
            model); nothing was changed.
    """
    started = time.perf_counter()
    config = config if config is not None else TrainConfig()
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"config must be a petl.TrainConfig, got {type(config).__name__}.")
    data = resolve_data(model, train_data, eval_data, tokenizer=tokenizer, task=task, data_options=data_options)
    output_dir = check_output_dir(config.output_dir, resume=config.resume)
    run = prepare_run(model, data, config, output_dir, evaluator)
    try:
        result = TrainLoop(run).execute()
    finally:
        run.close()
    result.runtime_s = time.perf_counter() - started
    return result

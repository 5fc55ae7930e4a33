"""``petl train``: fine-tune a model with a strategy (or in full) on a task's data.

Fine-tune a Hugging Face model on CSV/TSV/JSONL/CoNLL data and write metrics.json, the
best adapter (best/), checkpoints and a JSON-lines log to --output.

    petl train --model minilm --task sequence-classification \\
               --train train.tsv --validation validation.tsv \\
               --strategy lora --set r=8 --set alpha=16 \\
               --epochs 3 --learning-rate 1e-3 --output runs/sst2-lora

Every option is checked (the strategy and its ``--set`` options, the training
options, --metric-for-best against the task's metrics, the optional packages the
options need, a writable ``--output``, and with --resume the options the checkpoint
was written under) before the model is loaded. ``--seed`` seeds every random
generator before the model is loaded and wrapped, so the same command gives the same
adapter, bit for bit, on the same machine and library versions.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from petl.cli.common import FULL, add_threads_argument, configure_threads, parse_set
from petl.errors import ConfigError
from petl.tasks import TASKS

__all__ = ["HELP", "NAME", "add_arguments", "run"]

logger = logging.getLogger(__name__)


NAME = "train"
HELP = "fine-tune a model with a strategy (or in full) on a task's data"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``petl train``."""
    g = p.add_argument_group("model and data")
    g.add_argument("--model", required=True, help="a model folder or hub name, or 'minilm' / 'smollm2' (demo models)")
    g.add_argument("--tokenizer", help="the tokenizer's folder or name (default: the model's)")
    g.add_argument("--task", required=True, choices=TASKS)
    g.add_argument("--train", required=True, help="training data: a .csv/.tsv/.jsonl/.json/CoNLL file or folder")
    g.add_argument("--validation", help="evaluation data, like --train")
    g.add_argument("--max-length", type=int, default=128, help="truncate sequences to this many tokens (128)")
    g.add_argument("--doc-stride", type=int, default=128,
                   help="question answering: context tokens shared by consecutive windows of a long context (128)")
    g.add_argument("--qa-scoring", default="auto", choices=("auto", "squad", "cmrc2018"),
                   help="question answering: SQuAD v1.1 or CMRC 2018 (Chinese) EM/F1; auto: CMRC 2018 when most "
                        "contexts hold CJK characters")
    g.add_argument("--text-column", help="the text (or words, prompt, source) column")
    g.add_argument("--text-pair-column", help="the second sentence column of sentence pairs")
    g.add_argument("--label-column", help="the label (or tags) column")
    g.add_argument("--target-column", help="the completion / target column (causal-lm, seq2seq)")
    g.add_argument("--label-names", help="comma-separated class names in id order")
    g.add_argument("--limit", type=int, help="use only the first N examples of each split (quick runs)")
    g.add_argument("--train-limit", type=int, help="use only the first N training examples (overrides --limit)")
    g.add_argument("--eval-limit", type=int, help="use only the first N evaluation examples (overrides --limit)")
    g.add_argument("--load-in-8bit", action="store_true", help="load the base weights in 8-bit (bitsandbytes)")
    g.add_argument("--load-in-4bit", action="store_true",
                   help="load the base weights in 4-bit (bitsandbytes, QLoRA); not with --load-in-8bit")
    g.add_argument("--bnb-4bit-quant-type", metavar="{nf4,fp4}", help="the 4-bit code book (default nf4)")
    g.add_argument("--bnb-4bit-double-quant", action=argparse.BooleanOptionalAction, default=None,
                   help="also quantize the 4-bit blocks' scales (default: off)")
    g.add_argument("--bnb-4bit-compute-dtype", metavar="{float32,bfloat16,float16}",
                   help="the dtype 4-bit layers compute in (default float32)")
    s = p.add_argument_group("strategy")
    s.add_argument("--strategy", default="lora", help=f"a registered strategy, or '{FULL}' for full fine-tuning")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a strategy option (repeatable); values parse as JSON where possible, e.g. --set r=8")
    t = p.add_argument_group("training")
    t.add_argument("--output", required=True, help="the output folder")
    t.add_argument("--epochs", type=int, default=3)
    t.add_argument("--max-steps", type=int, help="optimizer steps to take (overrides --epochs)")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--eval-batch-size", type=int)
    t.add_argument("--learning-rate", type=float, help="peak rate (default 1e-3 with a strategy, 5e-5 in full)")
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument("--lr-scheduler", default="linear", help="linear, cosine or constant (after warm-up)")
    t.add_argument("--warmup-ratio", type=float, default=0.06)
    t.add_argument("--max-grad-norm", type=float, default=1.0, help="clip gradients to this norm (0 disables)")
    t.add_argument("--gradient-accumulation-steps", type=int, default=1)
    t.add_argument("--mixed-precision", default="no", help="no, fp16 or bf16")
    t.add_argument("--optimizer", default="adamw", help="adamw or adamw8bit")
    t.add_argument("--gradient-checkpointing", action="store_true")
    t.add_argument("--group-by-length", action=argparse.BooleanOptionalAction, default=False,
                   help="batches of similar length: less padding, about 2x faster, but each step sees "
                        "examples of one length (off by default; check the metric holds on your data)")
    t.add_argument("--packing", action="store_true",
                   help="causal LM: pack each batch's examples end to end into rows, attention kept apart")
    t.add_argument("--seed", type=int, default=0,
                   help="seeds every generator before loading: the fresh head, the adapter, data order, dropout")
    t.add_argument("--eval-steps", type=int, help="evaluate every N steps (default: after each epoch)")
    t.add_argument("--save-steps", type=int, help="checkpoint every N steps (default: at each evaluation)")
    t.add_argument("--metric-for-best", default=None,
                   help="e.g. eval_loss, accuracy, f1 (default: the task's metric, e.g. accuracy, entity F1)")
    t.add_argument("--early-stopping-patience", type=int)
    t.add_argument("--no-load-best-at-end", action="store_true", help="keep the last weights, not the best")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    t.add_argument("--logging-steps", type=int, default=10)
    t.add_argument("--log-with", help="also log to an Accelerate tracker: tensorboard")
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    t.add_argument("--generation-metrics", default=None, metavar="LIST",
                   help="causal-lm / seq2seq: also generate and score, comma-separated from rouge, exact_match; "
                        "'none' turns it off (default: rouge when the target column holds summaries)")
    t.add_argument("--max-new-tokens", type=int, default=64, help="generative evaluation: tokens per example (64)")
    t.add_argument("--num-beams", type=int, default=1, help="generative evaluation: 1 greedy, more for beam search")
    t.add_argument("--eval-generate-examples", type=int, help="generative evaluation: decode the first N only")
    add_threads_argument(t)


def _train_config(args: argparse.Namespace) -> Any:
    from petl.training import TrainConfig

    return TrainConfig(
        output_dir=args.output, epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        eval_batch_size=args.eval_batch_size, learning_rate=args.learning_rate, weight_decay=args.weight_decay,
        lr_scheduler=args.lr_scheduler, warmup_ratio=args.warmup_ratio,
        max_grad_norm=args.max_grad_norm if args.max_grad_norm and args.max_grad_norm > 0 else None,
        gradient_accumulation_steps=args.gradient_accumulation_steps, mixed_precision=args.mixed_precision,
        optimizer=args.optimizer, gradient_checkpointing=args.gradient_checkpointing, seed=args.seed,
        group_by_length=args.group_by_length, packing=args.packing,
        eval_steps=args.eval_steps, save_steps=args.save_steps, metric_for_best=args.metric_for_best,
        early_stopping_patience=args.early_stopping_patience, load_best_at_end=not args.no_load_best_at_end,
        resume=args.resume, logging_steps=args.logging_steps, log_with=args.log_with,
        progress_bar=not args.no_progress, generation_metrics=_generation_metrics(args.generation_metrics),
        max_new_tokens=args.max_new_tokens, num_beams=args.num_beams,
        eval_generate_examples=args.eval_generate_examples,
    )


def _generation_metrics(value: str | None) -> tuple[str, ...] | None:
    """``--generation-metrics``: ``None`` (automatic), ``()`` for "none", else the listed names."""
    if value is None:
        return None
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    return () if names in ((), ("none",)) else names


def _load_data(args: argparse.Namespace, tokenizer: Any) -> Any:
    """The task data; split by split when the two splits have different limits."""
    from petl.data import TaskData, load_task_data

    names = [n.strip() for n in args.label_names.split(",")] if args.label_names else None
    common = dict(
        tokenizer=tokenizer, max_length=args.max_length, text_column=args.text_column,
        text_pair_column=args.text_pair_column, label_column=args.label_column, target_column=args.target_column,
        doc_stride=args.doc_stride, qa_scoring=args.qa_scoring,
    )
    train_limit = args.train_limit if args.train_limit is not None else args.limit
    eval_limit = args.eval_limit if args.eval_limit is not None else args.limit
    if args.validation is None or train_limit == eval_limit:
        return load_task_data(args.task, args.train, args.validation, limit=train_limit, label_names=names, **common)
    train = load_task_data(args.task, args.train, None, limit=train_limit, label_names=names, **common)
    # The evaluation labels are read with the training set's classes, so the ids mean the same.
    evaluation = load_task_data(args.task, None, args.validation, limit=eval_limit,
                                label_names=train.label_names or names, num_labels=train.num_labels, **common)
    return TaskData(train=train.train, eval=evaluation.eval, collator=train.collator, task=train.task,
                    num_labels=train.num_labels, label_names=train.label_names)


def _quantization(args: argparse.Namespace) -> Any:
    """The base's :class:`~petl.modeling.quantization.Quantization` the flags ask for, or ``None``.

    Raises:
        ConfigError: --load-in-8bit with --load-in-4bit, a --bnb-4bit-* flag without
            --load-in-4bit, or an invalid value.
    """
    from petl.modeling.quantization import quantization_from_options

    return quantization_from_options({
        "load_in_8bit": args.load_in_8bit, "load_in_4bit": args.load_in_4bit,
        "bnb_4bit_quant_type": args.bnb_4bit_quant_type, "bnb_4bit_double_quant": args.bnb_4bit_double_quant,
        "bnb_4bit_compute_dtype": args.bnb_4bit_compute_dtype,
    }, flags=True)


def _check_options(args: argparse.Namespace, config: Any) -> None:
    """The checks that need neither the model nor the data: typos and missing packages.

    Raises:
        ConfigError: --metric-for-best is not a metric of the task, or an option needs a
            package that is not installed.
    """
    import importlib.util

    from petl.tasks import REPORTED_METRICS
    from petl.training.evaluation import check_metric_name

    check_metric_name(config.metric_for_best, REPORTED_METRICS[args.task], args.task)
    needs_bnb = [flag for flag, used in (("--load-in-8bit", args.load_in_8bit), ("--load-in-4bit", args.load_in_4bit),
                                         ("--optimizer adamw8bit", config.optimizer == "adamw8bit")) if used]
    if needs_bnb and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"{' and '.join(needs_bnb)} need bitsandbytes, which is not installed. "
                          "Install it (pip install bitsandbytes), or train without these options.")
    if config.log_with == "tensorboard":
        from accelerate.utils import is_tensorboard_available

        if not is_tensorboard_available():
            raise ConfigError("--log-with tensorboard needs tensorboard, which is not installed. "
                              "Install it (pip install tensorboard), or leave --log-with out.")


def run(args: argparse.Namespace) -> int:
    """``petl train``: load, wrap, train, and print a JSON summary."""
    configure_threads(args)  # before the imports below load torch: OpenMP reads its settings once
    from accelerate.utils import set_seed

    from petl.core.params import count_parameters
    from petl.core.registry import get
    from petl.core.wrapping import wrap
    from petl.modeling.loading import load_model, load_tokenizer
    from petl.training import train
    from petl.training.output_dir import check_output_dir
    from petl.training.resume import check_resume_options

    config = _train_config(args)  # validate every option before loading anything
    quantization = _quantization(args)
    options = dict(parse_set(item) for item in args.set)
    if args.strategy == FULL:
        if options:
            raise ConfigError(f"--set {sorted(options)} has no meaning with --strategy {FULL}: there are no "
                              "strategy options in full fine-tuning.")
        if quantization is not None:
            raise ConfigError(f"--load-in-{quantization.bits}bit freezes the base weights in {quantization.bits}-bit, "
                              f"so --strategy {FULL} cannot train them. Pick a strategy such as --strategy lora.")
    else:  # an unknown strategy or option fails now, with a suggestion, before anything is loaded
        get(args.strategy).config_class.from_dict(options)
    _check_options(args, config)
    check_output_dir(args.output, resume=args.resume)  # before minutes of loading go into a run that cannot save
    if args.resume:  # a checkpoint of other options is refused now; petl.train checks the rest before loading it
        check_resume_options(args.output, config, None if args.strategy == FULL else args.strategy)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    data = _load_data(args, tokenizer)
    set_seed(args.seed)  # a fresh head and the adapter's initial weights are drawn while loading and wrapping
    model = load_model(args.model, args.task, num_labels=data.num_labels, label_names=data.label_names,
                       quantization=quantization, pad_token_id=tokenizer.pad_token_id,
                       plain_weights=args.strategy == FULL)
    if args.strategy != FULL:
        wrap(model, args.strategy, **options)
        logger.info("%s: %s trainable parameters", args.strategy, count_parameters(model))
    result = train(model, data, tokenizer=tokenizer, config=config)
    summary = {"metrics": result.metrics, "metric_for_best": result.metric_for_best, "best_step": result.best_step,
               "global_step": result.global_step, "train_loss": result.train_loss,
               "runtime_s": round(result.runtime_s, 1), "output": str(Path(args.output))}
    print(json.dumps(summary, indent=2))
    return 0

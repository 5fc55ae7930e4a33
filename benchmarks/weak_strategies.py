"""Why are prefix-tuning, AdaLoRA and the Pfeiffer adapter weak? Small controlled runs (issue #15).

Each experiment trains MiniLM-L6 once with one strategy setting, on petl's built-in synthetic
sentiment data (the ``petl bench`` default: 800 training / 300 evaluation examples, max length
48, batch 16, 2 epochs = 100 steps) or on SST-2 (``/work/shared/data/sst2``, max length 64,
batch 32, ``--epochs`` epochs), and records the final evaluation accuracy (no model selection)
and the wall time. Everything runs in this one process, one experiment after the other, with
``--threads`` torch threads (1 by default: the CPU is shared).

    OMP_WAIT_POLICY=PASSIVE python benchmarks/weak_strategies.py --data synthetic \
        --experiments prefix_base,prefix_mlp --seeds 0
    python benchmarks/weak_strategies.py --list

Results are merged into ``benchmarks/results/weak_strategies.json`` (keyed by data, experiment
and seed: a rerun replaces its own records) and the table ``weak_strategies.md`` is rewritten
from the JSON. Experiments whose name ends in ``_default`` use the strategy's current defaults,
so what they measure depends on the petl version they ran on (recorded in each record).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
SST2 = Path("/work/shared/data/sst2")

# Pre-change defaults, spelled out so these rows keep their meaning after a default changes.
OLD_PREFIX = {"num_virtual_tokens": 16, "projection": None, "init": "normal"}
OLD_ADALORA = {"init_r": 12, "target_r": 8, "tinit": 0, "tfinal": 0, "deltaT": 1, "orth_reg_weight": 0.5}
OLD_PFEIFFER = {"variant": "pfeiffer", "reduction_factor": 16, "original_ln": False}

# name -> (strategy, options, learning rate, post-wrap hook or None, what it tests)
EXPERIMENTS: dict[str, tuple[str, dict[str, Any], float, str | None, str]] = {
    "lora_ref": ("lora", {"r": 8}, 2e-3, None, "reference: LoRA r=8 on query/value"),
    # --- prefix ---
    "prefix_base": ("prefix", OLD_PREFIX, 1e-2, None, "old default: flat, N(0,1) init, p=16, lr 1e-2"),
    "prefix_lr3e-2": ("prefix", OLD_PREFIX, 3e-2, None, "old default at lr 3e-2"),
    "prefix_lr3e-3": ("prefix", OLD_PREFIX, 3e-3, None, "old default at lr 3e-3"),
    "prefix_std0.1": ("prefix", OLD_PREFIX, 1e-2, "prefix_std0.1", "flat, N(0, 0.1^2) init"),
    "prefix_vocab": ("prefix", {**OLD_PREFIX, "init": "vocab"}, 1e-2, None,
                     "flat, init from the keys/values of random vocabulary tokens"),
    "prefix_vocab_lr3e-3": ("prefix", {**OLD_PREFIX, "init": "vocab"}, 3e-3, None, "vocab init at lr 3e-3"),
    "prefix_vocab_lr3e-2": ("prefix", {**OLD_PREFIX, "init": "vocab"}, 3e-2, None, "vocab init at lr 3e-2"),
    "prefix_mlp": ("prefix", {**OLD_PREFIX, "projection": 512}, 1e-3, None, "MLP reparametrisation 512, lr 1e-3"),
    "prefix_mlp_lr3e-3": ("prefix", {**OLD_PREFIX, "projection": 512}, 3e-3, None, "MLP 512, lr 3e-3"),
    "prefix_mlp_vocab": ("prefix", {**OLD_PREFIX, "projection": 512, "init": "vocab"}, 1e-3, None,
                         "MLP 512 from random vocabulary embeddings, lr 1e-3"),
    "prefix_p4": ("prefix", {**OLD_PREFIX, "num_virtual_tokens": 4}, 1e-2, None, "p=4"),
    "prefix_p64": ("prefix", {**OLD_PREFIX, "num_virtual_tokens": 64}, 1e-2, None, "p=64"),
    "prefix_vocab_p64": ("prefix", {**OLD_PREFIX, "num_virtual_tokens": 64, "init": "vocab"}, 1e-2, None,
                         "vocab init, p=64"),
    "prefix_default": ("prefix", {}, 1e-2, None, "petl's current defaults, lr 1e-2"),
    # --- AdaLoRA ---
    "adalora_base": ("adalora", OLD_ADALORA, 1e-2, None, "old default: tinit=tfinal=0, lr 1e-2"),
    "adalora_sched": ("adalora", {**OLD_ADALORA, "tinit": 10, "tfinal": 30}, 1e-2, None,
                      "tinit 10%, tfinal 30% of 100 steps"),
    "adalora_noorth": ("adalora", {**OLD_ADALORA, "orth_reg_weight": 0.0}, 1e-2, None, "no orthogonal penalty"),
    "adalora_noorth_sched": ("adalora", {**OLD_ADALORA, "orth_reg_weight": 0.0, "tinit": 10, "tfinal": 30}, 1e-2,
                             None, "no penalty, tinit 10%, tfinal 30%"),
    "adalora_orth0.1": ("adalora", {**OLD_ADALORA, "orth_reg_weight": 0.1}, 1e-2, None,
                        "penalty weight 0.1 (the AdaLoRA paper's GLUE setting)"),
    "adalora_orth0.1_lr3e-3": ("adalora", {**OLD_ADALORA, "orth_reg_weight": 0.1}, 3e-3, None,
                               "penalty weight 0.1, lr 3e-3"),
    "adalora_noorth_lr3e-3": ("adalora", {**OLD_ADALORA, "orth_reg_weight": 0.0}, 3e-3, None,
                              "no penalty, lr 3e-3"),
    "adalora_sqorth": ("adalora", OLD_ADALORA, 1e-2, "adalora_sqorth",
                       "squared Frobenius penalty ||P^T P - I||_F^2 (the paper's eq. 4), weight 0.5"),
    "adalora_sqorth_orthinit": ("adalora", OLD_ADALORA, 1e-2, "adalora_sqorth_orthinit",
                                "squared penalty and orthonormal start"),
    "adalora_noprune": ("adalora", OLD_ADALORA, 1e-2, "adalora_noprune",
                        "budget allocation switched off (fixed rank 12, penalty on)"),
    "adalora_orthinit": ("adalora", OLD_ADALORA, 1e-2, "adalora_orthinit",
                         "P, Q start orthonormal (nn.init.orthogonal_) instead of N(0, 0.02^2)"),
    "adalora_orthinit_lr3e-3": ("adalora", OLD_ADALORA, 3e-3, "adalora_orthinit", "orthonormal start, lr 3e-3"),
    "adalora_lr2e-2": ("adalora", OLD_ADALORA, 2e-2, None, "old default at lr 2e-2"),
    "adalora_lr3e-3": ("adalora", OLD_ADALORA, 3e-3, None, "old default at lr 3e-3"),
    "adalora_sched_lr2e-2": ("adalora", {**OLD_ADALORA, "tinit": 10, "tfinal": 30}, 2e-2, None,
                             "schedule 10%/30%, lr 2e-2"),
    "adalora_default": ("adalora", {}, 1e-2, None, "petl's current defaults, lr 1e-2"),
    # --- Pfeiffer bottleneck ---
    "pfeiffer_base": ("bottleneck", OLD_PFEIFFER, 2e-3, None, "old default: adapter on the FFN dense output"),
    "pfeiffer_lr5e-3": ("bottleneck", OLD_PFEIFFER, 5e-3, None, "old placement, lr 5e-3"),
    "pfeiffer_lr1e-3": ("bottleneck", OLD_PFEIFFER, 1e-3, None, "old placement, lr 1e-3"),
    "pfeiffer_rf4": ("bottleneck", {**OLD_PFEIFFER, "reduction_factor": 4}, 2e-3, None, "reduction factor 4"),
    "pfeiffer_ln": ("bottleneck", {**OLD_PFEIFFER, "original_ln": True}, 2e-3, None,
                    "AdapterHub's layer-norm arrangement: LN(s + f(LN(s)))"),
    "pfeiffer_ln_lr5e-3": ("bottleneck", {**OLD_PFEIFFER, "original_ln": True}, 5e-3, None, "AdapterHub LN, lr 5e-3"),
    "pfeiffer_ln_lr1e-3": ("bottleneck", {**OLD_PFEIFFER, "original_ln": True}, 1e-3, None, "AdapterHub LN, lr 1e-3"),
    "pfeiffer_default": ("bottleneck", {}, 2e-3, None, "petl's current defaults, lr 2e-3"),
}


def _prefix_std(model: Any, std: float) -> None:
    import torch

    with torch.no_grad():
        model.petl_prefix.embedding.weight.normal_(0.0, std)


def _adalora_noprune(model: Any) -> None:
    from petl.core.wrapping import state_of

    strategy = state_of(model).strategy
    strategy.on_step_end = lambda model, step: None  # never reallocate: fixed rank, penalty still on


def _adalora_orthinit(model: Any) -> None:
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".lora_A." in name:
                torch.nn.init.orthogonal_(param)  # r x d_in: orthonormal rows
            elif ".lora_B." in name:
                torch.nn.init.orthogonal_(param)  # d_out x r: orthonormal columns


def _adalora_sqorth(model: Any) -> None:
    import torch

    from petl.core.wrapping import state_of

    strategy = state_of(model).strategy

    def squared(model: Any) -> Any:
        terms = []
        for name, param in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                gram = param @ param.T if ".lora_A." in name else param.T @ param
                terms.append(((gram - torch.eye(gram.shape[0])) ** 2).sum())
        return strategy.config.orth_reg_weight * torch.stack(terms).mean()

    strategy.regularization_loss = squared


def _adalora_sqorth_orthinit(model: Any) -> None:
    _adalora_orthinit(model)
    _adalora_sqorth(model)


HOOKS: dict[str, Callable[[Any], None]] = {
    "adalora_sqorth": _adalora_sqorth,
    "adalora_sqorth_orthinit": _adalora_sqorth_orthinit,
    "adalora_orthinit": _adalora_orthinit,
    "prefix_std0.1": lambda model: _prefix_std(model, 0.1),
    "adalora_noprune": _adalora_noprune,
}


def _bench_config(data: str, epochs: int) -> Any:
    from petl.bench.config import BenchConfig, DataSpec, ModelSpec, StrategySpec, TrainSpec

    if data == "synthetic":
        spec = DataSpec(train="synthetic", train_examples=800, eval_examples=300, max_length=48)
        train = TrainSpec(epochs=2, batch_size=16)
    else:
        spec = DataSpec(train=str(SST2 / "train.tsv"), eval=str(SST2 / "validation.tsv"), max_length=64)
        train = TrainSpec(epochs=epochs, batch_size=32)
    return BenchConfig(name="weak_strategies", task="sequence-classification", seeds=(0,),
                       model=ModelSpec(name="minilm"), data=spec, train=train,
                       strategies=(StrategySpec(name="lora"),))


def _options(strategy: str, options: dict[str, Any]) -> dict[str, Any]:
    """Drop options this petl version does not know (``init``, ``original_ln`` before the change)."""
    from dataclasses import fields

    from petl.core.registry import get

    known = {f.name for f in fields(get(strategy).config_class)}
    dropped = {k: v for k, v in options.items() if k not in known}
    if dropped:
        raise SystemExit(f"This petl has no {strategy} option(s) {dropped}; the experiment needs a newer petl.")
    return dict(options)


def run_one(config: Any, data: Any, tokenizer: Any, name: str, seed: int) -> dict[str, Any]:
    """Train one experiment and return its record."""
    import petl
    from petl.bench.loading import build_row_model
    from petl.bench.schema import StrategySpec
    from petl.core.params import count_parameters
    from petl.training import TrainConfig, train

    strategy, options, lr, hook, what = EXPERIMENTS[name]
    started = time.perf_counter()
    row = StrategySpec(name=strategy, options=_options(strategy, options), learning_rate=lr)
    model = build_row_model(config, row, data, tokenizer, seed)
    if hook is not None:
        HOOKS[hook](model)
    trainable = count_parameters(model).trainable
    result = train(model, data, config=TrainConfig(
        epochs=config.train.epochs, batch_size=config.train.batch_size, learning_rate=lr, seed=seed,
        metric_for_best="eval_accuracy", load_best_at_end=False, progress_bar=False, logging_steps=10_000,
    ))
    record = {
        "experiment": name, "strategy": strategy, "options": options, "learning_rate": lr, "hook": hook,
        "what": what, "seed": seed, "accuracy": round(100 * result.metrics["eval_accuracy"], 2),
        "eval_loss": round(result.metrics.get("eval_loss", float("nan")), 4), "train_loss": round(result.train_loss, 4),
        "steps": result.global_step, "trainable": trainable, "time_s": round(time.perf_counter() - started, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()], "petl": petl.__version__,
    }
    from petl.core.wrapping import state_of

    ranks = getattr(state_of(model).strategy, "effective_ranks", None)
    if callable(ranks):
        record["mean_effective_rank"] = round(sum(ranks(model).values()) / max(len(ranks(model)), 1), 2)
    return record


NOTES = [
    "AdaLoRA rows on synthetic data other than adalora_noorth*, adalora_orth0.1* and adalora_default ran "
    "before orth_reg_weight's default changed from 0.5 to 0, so their penalty weight was 0.5 "
    "(OLD_ADALORA now spells it out).",
]


def _write(records: list[dict[str, Any]], environment: dict[str, Any], command: str) -> None:
    from petl.files import atomic_write_json, atomic_write_text

    path = RESULTS / "weak_strategies.json"
    old = json.loads(path.read_text()) if path.exists() else {"records": [], "commands": []}
    keep = {(r["data"], r["experiment"], r["seed"]): r for r in old["records"]}
    for r in records:
        keep[(r["data"], r["experiment"], r["seed"])] = r
    merged = sorted(keep.values(), key=lambda r: (r["data"], r["experiment"], r["seed"]))
    commands = [*old.get("commands", []), {"command": command, "date": environment["date"]}]
    atomic_write_json(path, {"environment": environment, "commands": commands, "notes": NOTES, "records": merged})
    lines = [
        "# Weak strategies on MiniLM-L6 (issue #15)", "",
        "Written by `benchmarks/weak_strategies.py` from `weak_strategies.json`. One training run per row, "
        "final evaluation accuracy (no model selection), torch threads 1 on a shared 2-core CPU "
        "(the load average is in the JSON). synthetic: petl's built-in data, 800/300 examples, max length 48, "
        "batch 16, 2 epochs (100 steps); sst2: /work/shared/data/sst2 (2821/872), max length 64, batch 32.", "",
        f"Last run {environment['date']}; {environment.get('versions', {})}.", "",
        *(f"* {note}" for note in NOTES), "",
        "| data | experiment | what | lr | seed | accuracy % | steps | trainable | time s |",
        "|:---|:---|:---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in merged:
        lines.append(f"| {r['data']} | {r['experiment']} | {r['what']} | {r['learning_rate']:g} | {r['seed']} | "
                     f"{r['accuracy']:.2f} | {r['steps']} | {r['trainable']:,} | {r['time_s']:.0f} |")
    atomic_write_text(RESULTS / "weak_strategies.md", "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Run the chosen experiments and merge their records into the results files."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", choices=("synthetic", "sst2"), default="synthetic")
    p.add_argument("--experiments", default="", help="comma-separated names (see --list)")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=1, help="SST-2 epochs (the synthetic data always trains 2)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--list", action="store_true")
    args = p.parse_args(argv)
    if args.list:
        for name, (strategy, _opts, lr, _, what) in EXPERIMENTS.items():
            print(f"{name:24s} {strategy:10s} lr={lr:g} {what}")
        return 0
    names = [n for n in args.experiments.split(",") if n]
    unknown = [n for n in names if n not in EXPERIMENTS]
    if unknown or not names:
        raise SystemExit(f"Unknown or no experiments {unknown}; see --list.")
    if args.data == "sst2" and not SST2.exists():
        raise SystemExit(f"{SST2} is missing.")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    torch.set_num_threads(args.threads)
    import logging

    from transformers.utils import logging as hf_logging

    from petl.bench.environment import collect_environment
    from petl.bench.loading import load_data, load_tokenizer

    logging.basicConfig(level=logging.WARNING)
    hf_logging.disable_progress_bar()
    config = _bench_config(args.data, args.epochs)
    tokenizer = load_tokenizer(config)
    data = load_data(config, tokenizer)
    command = "python benchmarks/weak_strategies.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for seed in (int(s) for s in args.seeds.split(",")):
        for name in names:
            record = run_one(config, data, tokenizer, name, seed)
            record["data"] = args.data if args.data == "synthetic" else f"sst2-{args.epochs}ep"
            print(json.dumps(record), flush=True)
            _write([record], collect_environment(), command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training and saving FSDP2-sharded tiny models: the script ``test_sharded_save.py`` runs in two processes.

Each case builds a tiny model, wraps it with a strategy, takes ``STEPS`` AdamW steps on a
fixed batch and saves it with ``petl.save`` and with the trainer's ``write_checkpoint``.
The test calls :func:`run_case` itself for the unsharded reference; as a script, under
``torchrun --nproc_per_node 2`` (gloo, CPU), every case is sharded with ``fully_shard``
(each decoder or encoder layer, then the root) and both ranks feed the same batch, so the
averaged gradient is each rank's own and the run should match the unsharded one::

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/core/sharded_worker.py OUT REPORTS

Each rank writes ``REPORTS/rank<r>.json``: per case ``"ok"`` or the error and the kinds of
the adapter's tensors (``DTensor`` when sharded), what the two
protocol cases raised (rank 0's failing save, a plain save from rank 0 alone), and every
file-system change it made under ``OUT`` (rank 1 should make none).
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_models
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))  # train_worker's write watcher

import tiny_models as tm  # noqa: E402

STRATEGIES = ("lora", "bottleneck", "prefix")
MODELS = (("llama", "causal-lm"), ("bert", "seq-cls"))
CASES: list[tuple[str, str, str]] = [(arch, head, strategy) for arch, head in MODELS for strategy in STRATEGIES]
STEPS = 2
LEARNING_RATE = 1e-2


def case_name(case: tuple[str, str, str]) -> str:
    return "-".join(case)


def _layers(model: nn.Module) -> nn.ModuleList:
    base = getattr(model, "model", None) or model.bert  # LlamaForCausalLM.model / BertFor*.bert
    return base.layers if hasattr(base, "layers") else base.encoder.layer


def wrapped(case: tuple[str, str, str]) -> nn.Module:
    """The case's tiny model, wrapped, the same in every process."""
    import petl

    arch, head, strategy = case
    model = tm.build(arch, head)
    torch.manual_seed(0)
    return petl.wrap(model, strategy)


def trained(case: tuple[str, str, str], *, sharded: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The case's model after ``STEPS`` steps (dropout off: eval mode), and its optimizer."""
    arch, head, _ = case
    model = wrapped(case)
    if sharded:
        from torch.distributed.fsdp import fully_shard

        for layer in _layers(model):
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    batch = tm.inputs(arch, head)
    for _ in range(STEPS):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def run_case(case: tuple[str, str, str], out: Path, *, sharded: bool) -> nn.Module:
    """Train the case and write ``out/<case>/adapter`` (petl.save) and ``out/<case>/checkpoint-STEPS``."""
    import petl
    from petl.training.checkpoint import write_checkpoint

    model, optimizer = trained(case, sharded=sharded)
    folder = out / case_name(case)
    petl.save(model, folder / "adapter")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    write_checkpoint(folder, STEPS, model=model, optimizer=optimizer, scheduler=scheduler, scaler=None,
                     trainer_state={"global_step": STEPS})
    return model


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def main(out: Path, reports: Path) -> None:
    import torch.distributed as dist
    from train_worker import _watch_writes

    import petl
    from petl.core.io import adapter_tensors

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    writes: list[str] = []
    _watch_writes(out, writes)
    report: dict[str, Any] = {"rank": rank, "cases": {}, "kinds": {}}
    for case in CASES:
        try:
            model = run_case(case, out, sharded=True)
            report["cases"][case_name(case)] = "ok"
            report["kinds"][case_name(case)] = sorted({type(t).__name__ for t in adapter_tensors(model).values()})
        except Exception as exc:  # reported, so the test shows each case's own error
            report["cases"][case_name(case)] = _error(exc) + "\n" + traceback.format_exc()[-1500:]
        dist.barrier()  # a failed case must not leave the ranks at different collectives
    # Rank 0's write fails (the folder holds a file petl.save did not write): both ranks must return.
    model, _ = trained(CASES[0], sharded=True)
    refused = out / "refused"
    if rank == 0:
        refused.mkdir()
        (refused / "notes.txt").write_text("not an adapter", encoding="utf-8")
    dist.barrier()
    try:
        petl.save(model, refused)
        report["refused"] = "returned"
    except Exception as exc:
        report["refused"] = _error(exc)
    # A plain (unsharded) model saved by rank 0 alone, as petl's DDP trainer does: no collective may wait.
    if rank == 0:
        petl.save(trained(CASES[0], sharded=False)[0], out / "rank0-only")
    report["writes"] = writes
    dist.barrier()
    (reports / f"rank{rank}.json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main(Path(sys.argv[1]), Path(sys.argv[2]))

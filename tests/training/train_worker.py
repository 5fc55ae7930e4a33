"""Tiny in-memory task data for the trainer's tests, and the script the two-process test runs.

As a script (under ``torchrun --nproc_per_node 2``) it trains a tiny LoRA-wrapped BERT
classifier and writes, for its rank, a JSON report outside the training output folder:
the step losses, a digest of every adapter tensor, and every file write it saw under
the output folder (through a Python audit hook), so the test can tell which rank wrote.

    python -m torch.distributed.run --nproc_per_node 2 tests/training/train_worker.py OUTPUT_DIR REPORT_DIR
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: tiny_models, tiny_data

import tiny_models as tm  # noqa: E402
from tiny_data import task_data  # noqa: E402


def digest(tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    """A SHA-256 per tensor of its exact bytes."""
    return {k: hashlib.sha256(v.detach().cpu().contiguous().numpy().tobytes()).hexdigest() for k, v in tensors.items()}


def _watch_writes(folder: Path, seen: list[str]) -> None:
    """Record every file or folder creation, rename or write-mode open under ``folder``."""
    root = str(folder.resolve())

    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], (str, bytes, os.PathLike)):
            mode = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
            flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
            writing = any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
            if writing and os.path.abspath(os.fsdecode(args[0])).startswith(root):
                seen.append(f"open {os.fsdecode(args[0])}")
        elif event in ("os.rename", "os.mkdir", "tempfile.mkstemp", "tempfile.mkdtemp", "os.remove", "shutil.rmtree"):
            paths = [os.fsdecode(a) for a in args if isinstance(a, (str, bytes, os.PathLike))]
            if any(os.path.abspath(p).startswith(root) for p in paths):
                seen.append(f"{event} {paths}")

    sys.addaudithook(hook)


def main(output_dir: str, report_dir: str) -> None:
    import petl
    from petl.training import TrainConfig, train
    from petl.training.checkpoint import trainable_state

    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    writes: list[str] = []
    _watch_writes(Path(output_dir), writes)
    model = tm.build("bert", "seq-cls")
    torch.manual_seed(0)
    petl.wrap(model, "lora", r=4)
    config = TrainConfig(output_dir=output_dir, epochs=2, batch_size=4, learning_rate=5e-3, eval_steps=3,
                         logging_steps=1, progress_bar=False)
    result = train(model, task_data("sequence-classification", n_train=26, n_eval=10), config=config)
    report = {
        "rank": rank,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "step_losses": result.step_losses,
        "metrics": result.metrics,
        "global_step": result.global_step,
        "adapter": digest(trainable_state(model)),
        "writes": writes,
    }
    Path(report_dir, f"rank{rank}.json").write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

"""Data-parallel training in two CPU processes under torchrun (gloo), as on a multi-GPU machine."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).parent / "train_worker.py"


def test_two_processes_train_one_model(tmp_path: Path) -> None:
    output, reports = tmp_path / "run", tmp_path / "reports"
    reports.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(output), str(reports)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]  # both ranks finished

    assert [r["world_size"] for r in ranks] == [2, 2]
    # 26 examples, 4 per process and step: 4 steps per epoch (a single process would take 7).
    assert [r["global_step"] for r in ranks] == [8, 8]
    assert all(math.isfinite(v) for r in ranks for v in r["step_losses"])
    assert ranks[0]["step_losses"] == ranks[1]["step_losses"]
    assert ranks[0]["metrics"] == ranks[1]["metrics"] and "eval_accuracy" in ranks[0]["metrics"]
    assert ranks[0]["adapter"] == ranks[1]["adapter"] and len(ranks[0]["adapter"]) > 0  # identical weights

    assert ranks[1]["writes"] == [], ranks[1]["writes"][:5]  # only rank 0 writes
    assert ranks[0]["writes"]
    steps = [json.loads(line)["step"] for line in (output / "log.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 9))  # one record per step, not one per process
    assert (output / "best" / "adapter_model.safetensors").is_file() and (output / "metrics.json").is_file()

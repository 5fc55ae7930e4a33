"""``petl.save`` and the checkpoint writer on models sharded with FSDP2's ``fully_shard`` (2 CPU processes, gloo).

One ``torchrun --nproc_per_node 2`` run of ``sharded_worker.py`` trains and saves every case
sharded; each test then repeats a case unsharded in this process and compares the folders.

The comparison is exact (``torch.equal``, and the adapter files byte for byte), not
``allclose``: both ranks feed the same batch, so each rank's gradient is the single
process's gradient bit for bit (the same ops on the same, all-gathered parameters), FSDP2
averages two identical values over two ranks (a division by 2 and a sum, both exact), and
AdamW is elementwise, so a shard steps exactly like the same rows of the whole tensor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import tiny_models as T
import torch
from safetensors.torch import load_file, save_file

import petl
from petl.core import distributed
from petl.core.io import WEIGHTS_NAME, adapter_tensors

sys.path.insert(0, str(Path(__file__).parent))
import sharded_worker as W  # noqa: E402

WORKER = Path(__file__).parent / "sharded_worker.py"
CASES = [pytest.param(case, id=W.case_name(case)) for case in W.CASES]


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dict[str, Any]]]:
    """The output folder of the two-process run, and each rank's report."""
    root = tmp_path_factory.mktemp("sharded")
    out, reports = root / "out", root / "reports"
    out.mkdir()
    reports.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(out), str(reports)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return out, {rank: json.loads((reports / f"rank{rank}.json").read_text()) for rank in (0, 1)}


def _assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    assert list(got) == list(want), what
    for key in want:
        assert (got[key].shape, got[key].dtype) == (want[key].shape, want[key].dtype), f"{what}: {key}"
        assert torch.equal(got[key], want[key]), f"{what}: {key} differs by {(got[key] - want[key]).abs().max()}"


def test_every_case_saves_on_both_ranks_and_only_rank_0_writes(sharded) -> None:
    _, reports = sharded
    for rank in (0, 1):
        assert reports[rank]["cases"] == {W.case_name(case): "ok" for case in W.CASES}, reports[rank]["cases"]
        assert all(kinds == ["DTensor"] for kinds in reports[rank]["kinds"].values()), reports[rank]["kinds"]
    assert reports[1]["writes"] == [], reports[1]["writes"][:5]
    assert reports[0]["writes"]


@pytest.mark.parametrize("case", CASES)
def test_sharded_save_is_the_unsharded_save(case: tuple[str, str, str], sharded, tmp_path: Path) -> None:
    out, _ = sharded
    arch, head, _ = case
    reference = W.run_case(case, tmp_path, sharded=False)
    got, want = out / W.case_name(case) / "adapter", tmp_path / W.case_name(case) / "adapter"
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
    _assert_same_tensors(load_file(got / WEIGHTS_NAME), load_file(want / WEIGHTS_NAME), "adapter")
    for path in want.iterdir():
        assert (got / path.name).read_bytes() == path.read_bytes(), path.name

    loaded = petl.load(T.build(arch, head), got)
    batch = T.inputs(arch, head)
    assert torch.equal(T.logits(loaded, batch), T.logits(reference, batch))
    assert not torch.equal(T.logits(W.wrapped(case), batch), T.logits(reference, batch))  # the steps changed it


@pytest.mark.parametrize("case", CASES)
def test_sharded_checkpoint_is_the_unsharded_checkpoint(case: tuple[str, str, str], sharded, tmp_path: Path) -> None:
    out, _ = sharded
    W.run_case(case, tmp_path, sharded=False)
    name = f"{W.case_name(case)}/checkpoint-{W.STEPS}"
    got, want = out / name, tmp_path / name
    assert sorted(p.name for p in got.iterdir()) == sorted(p.name for p in want.iterdir())
    for tensors in ("model.safetensors", "optimizer.safetensors"):
        _assert_same_tensors(load_file(got / tensors), load_file(want / tensors), tensors)
    for structure in ("optimizer.json", "scheduler.json"):
        assert json.loads((got / structure).read_text()) == json.loads((want / structure).read_text()), structure


def test_a_failed_write_on_rank_0_raises_on_every_rank_instead_of_hanging(sharded) -> None:
    out, reports = sharded
    refusal = "is not an adapter folder written by petl.save"
    assert reports[0]["refused"].startswith("PetlError: ") and refusal in reports[0]["refused"]
    assert reports[1]["refused"].startswith("PetlError: Rank 0 failed to write the adapter")
    assert refusal in reports[1]["refused"]
    assert sorted(p.name for p in (out / "refused").iterdir()) == ["notes.txt"]


def test_a_plain_save_from_rank_0_alone_waits_for_no_other_rank(sharded) -> None:
    out, _ = sharded
    arch, head, _ = W.CASES[0]
    petl.load(T.build(arch, head), out / "rank0-only")  # complete, though rank 1 never called petl.save


@pytest.mark.parametrize("strategy", W.STRATEGIES)
def test_plain_saves_are_byte_for_byte_what_they_were(strategy: str, tmp_path: Path) -> None:
    model = petl.wrap(T.build("llama", "causal-lm"), strategy)
    tensors = adapter_tensors(model)
    assert all(distributed.gather_full(tensors)[k] is t for k, t in tensors.items())  # no copy, no collective
    petl.save(model, tmp_path / "adapter")
    # What petl.save wrote before it knew of sharded tensors: CPU copies straight into safetensors.
    save_file({k: t.detach().to("cpu").contiguous().clone() for k, t in tensors.items()}, str(tmp_path / "old"),
              metadata={"format": "pt"})
    assert (tmp_path / "adapter" / WEIGHTS_NAME).read_bytes() == (tmp_path / "old").read_bytes()


def test_outside_torch_distributed_this_process_is_the_main_one() -> None:
    assert not distributed.is_distributed() and distributed.is_main_process()


def test_other_ranks_write_nothing_and_return_at_once_when_nothing_is_sharded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = petl.wrap(T.build("bert", "seq-cls"), "lora", r=2)
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    assert petl.save(model, tmp_path / "adapter") == tmp_path / "adapter"  # no collective: it would hang here
    assert list(tmp_path.iterdir()) == []

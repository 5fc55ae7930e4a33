"""How close ``petl estimate``'s training memory (weights, gradients, optimizer states and
traced activations) comes to the measured peak memory of real training steps on the CPU.

Every case (model, strategy, batch shape, gradient checkpointing; fp32) is estimated with
:func:`petl.bench.estimate.estimate` (built on the meta device, nothing loaded) and measured
in a fresh interpreter of its own:

1. import torch, transformers and petl, and take one training step of a toy model of
   the same family (hidden size 16, one layer) with the same strategy, so that the code
   of the kernels, the thread pool and the allocator's arenas, which every run pays once
   whatever the model, are resident; then ``baseline`` = the resident set (``VmRSS``);
2. build (tiny configs) or load (MiniLM-L6, SmolLM2-135M) the model, wrap it, enable
   gradient checkpointing as the trainer does, and make one batch (the last row padded,
   so the attention mask is a real one, as in padded training data);
3. reset the peak resident set (``echo 5 > /proc/self/clear_refs``), so that a transient
   of loading does not count, and take two training steps as petl's trainer takes them
   (:class:`petl.training.step.StepRunner`: forward, backward, clipping, AdamW, zero_grad),
   reading the peak (``VmHWM``, :func:`petl.bench.measure.peak_rss_mib`) after each.

``measured = peak after step 2 - baseline``: the weights, gradients, optimizer states and
activations of training. Two steps, because AdamW creates its states in the first step
(after the backward pass), so only from the second step on do they coexist with the
activations; that steady state is what the estimate's peak is. The peak after one step is
recorded too. ``error % = (estimate - measured) / measured``; the target is within 20%
on every case. Torch runs one thread (the machine is shared; memory does not depend on it).

Each case is measured twice, under two settings of glibc's allocator (``ALLOCATORS``):
``mmap_64k`` (``MALLOC_MMAP_THRESHOLD_=65536``: every block of 64 KiB or more is mapped
and unmapped on its own, so the resident set follows the live tensors: the CPU analogue of
``torch.cuda.max_memory_allocated``, which ``petl bench`` reports on a GPU, and what the
estimate predicts) and ``glibc_default`` (what a plain ``petl train`` gets: the mmap
threshold rises to the largest block freed, up to 32 MiB, after which freed activations stay
in the heap, resident; the resident set then exceeds the live tensors, by an amount that
depends on the order of allocations and grows over the first steps).

    python benchmarks/estimate_accuracy.py            # every case (about 20 minutes on 2 cores)
    python benchmarks/estimate_accuracy.py --quick    # two tiny cases (about half a minute)

Writes ``benchmarks/results/estimate_accuracy.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TARGET = 20.0
MIB = 2**20

TINY = {  # config class, options: hidden 128, four layers, so that activations dominate
    "llama-tiny": ("LlamaConfig", "causal-lm", {"vocab_size": 8192, "hidden_size": 128, "intermediate_size": 384,
                                               "num_hidden_layers": 4, "num_attention_heads": 4,
                                               "num_key_value_heads": 2, "max_position_embeddings": 512,
                                               "pad_token_id": 0}),
    "bert-tiny": ("BertConfig", "sequence-classification", {"vocab_size": 8192, "hidden_size": 128,
                                                            "intermediate_size": 512, "num_hidden_layers": 4,
                                                            "num_attention_heads": 4, "max_position_embeddings": 512}),
}
DEMO = {"minilm": ("BertConfig", "sequence-classification"), "smollm2": ("LlamaConfig", "causal-lm")}
TOY = {  # the warm-up model of each family
    "LlamaConfig": {"vocab_size": 256, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                    "num_attention_heads": 2, "num_key_value_heads": 1, "pad_token_id": 0},
    "BertConfig": {"vocab_size": 256, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                   "num_attention_heads": 2},
}
SHAPES = {"llama-tiny": [(8, 128), (32, 128)], "bert-tiny": [(8, 128), (32, 128)],
          "minilm": [(8, 128), (32, 128)], "smollm2": [(2, 256), (8, 256)]}
STRATEGIES = {"full": ("full", {}), "lora": ("lora", {"r": 8})}
PAD = 8  # padded positions at the end of the batch's last row
ALLOCATORS = {
    # glibc's defaults: the mmap threshold rises to the largest block freed (up to 32 MiB), so
    # freed activations below it stay in the heap, resident, and the peak resident set exceeds
    # the peak of live tensors
    "glibc_default": {},
    # a fixed threshold: every block of 64 KiB or more is its own mapping, returned on free, so
    # the resident set follows the live tensors (the CPU analogue of max_memory_allocated on CUDA)
    "mmap_64k": {"MALLOC_MMAP_THRESHOLD_": "65536"},
}


def cases(quick: bool) -> list[dict[str, Any]]:
    """Every (model, strategy, shape) in fp32, plus gradient checkpointing at the larger shape;
    ``quick``: two tiny cases (a causal LM trained in full, a classifier with LoRA and checkpointing)."""
    if quick:
        return [{"model": "llama-tiny", "strategy": "full", "batch_size": 8, "seq_len": 128,
                 "gradient_checkpointing": False},
                {"model": "bert-tiny", "strategy": "lora", "batch_size": 8, "seq_len": 128,
                 "gradient_checkpointing": True}]
    out = []
    for model in (*TINY, *DEMO):
        for strategy in STRATEGIES:
            for batch, length in SHAPES[model]:
                out.append({"model": model, "strategy": strategy, "batch_size": batch, "seq_len": length,
                            "gradient_checkpointing": False})
            batch, length = SHAPES[model][-1]
            out.append({"model": model, "strategy": strategy, "batch_size": batch, "seq_len": length,
                        "gradient_checkpointing": True})
    return out


def _family_and_task(model: str) -> tuple[str, str]:
    return (TINY[model][0], TINY[model][1]) if model in TINY else DEMO[model]


# -- the measuring process --------------------------------------------------------------------


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise OSError("no VmRSS in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
        return True
    except OSError:
        return False


def _build(model: str, task: str, family: str, options: dict[str, Any] | None = None) -> Any:
    import torch
    import transformers

    from petl.tasks import auto_class_name

    auto = getattr(transformers, auto_class_name(task))
    torch.manual_seed(0)
    if options is not None:
        return auto.from_config(getattr(transformers, family)(**options))
    if model == "minilm":
        from petl.modeling.demo import minilm_path

        return auto.from_pretrained(minilm_path(), num_labels=2)
    from petl.modeling.demo import smollm2_safetensors_path

    return auto.from_pretrained(smollm2_safetensors_path(), dtype=torch.float32)


def _prepare(model: Any, strategy: str, checkpointing: bool) -> Any:
    import petl

    name, options = STRATEGIES[strategy]
    if name != "full":
        petl.wrap(model, name, **options)
    if checkpointing:  # as petl.training.setup enables it
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        embeddings = model.get_input_embeddings()
        if name != "full" and not any(p.requires_grad for p in embeddings.parameters()):
            model.enable_input_require_grads()
    model.config.use_cache = False
    return model.train()


def _batch(task: str, vocab: int, batch: int, length: int) -> dict[str, Any]:
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[-1, -PAD:] = 0
    labels = torch.randint(0, 2, (batch,), generator=g) if task == "sequence-classification" \
        else ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _step_runner(model: Any) -> Any:
    from petl.training import TrainConfig
    from petl.training.step import StepRunner

    return StepRunner(model, TrainConfig(), total_steps=2)


def measure(case: dict[str, Any]) -> dict[str, Any]:
    """Measure one case in this (fresh) process; see the module docstring."""
    import torch

    from petl.bench.measure import peak_rss_mib

    torch.set_num_threads(1)
    family, task = _family_and_task(case["model"])
    toy = _prepare(_build(case["model"], task, family, TOY[family]), case["strategy"], case["gradient_checkpointing"])
    _step_runner(toy)(_batch(task, 256, 2, 16))
    del toy
    gc.collect()
    baseline = _rss_mib()
    model = _build(case["model"], task, family, TINY[case["model"]][2] if case["model"] in TINY else None)
    model = _prepare(model, case["strategy"], case["gradient_checkpointing"])
    runner = _step_runner(model)
    batch = _batch(task, model.config.vocab_size, case["batch_size"], case["seq_len"])
    loaded = _rss_mib()
    reset = _reset_peak()
    started = time.perf_counter()
    runner(batch)
    first = peak_rss_mib()
    runner(batch)
    second = peak_rss_mib()
    return {"baseline_mib": baseline, "loaded_mib": loaded - baseline, "first_step_mib": first - baseline,
            "measured_mib": second - baseline, "peak_reset": reset, "steps_s": time.perf_counter() - started}


# -- the estimate and the report --------------------------------------------------------------


def _source(model: str, folder: Path) -> str:
    if model not in TINY:
        return model
    import transformers

    family, _, options = TINY[model]
    path = folder / model
    getattr(transformers, family)(**options).save_pretrained(path)
    return str(path)


def estimate_case(case: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The estimate of one case's parts and peak, in MiB."""
    from petl.bench.estimate import estimate

    _, task = _family_and_task(case["model"])
    name, options = STRATEGIES[case["strategy"]]
    started = time.perf_counter()
    report = estimate(_source(case["model"], folder), [(case["strategy"], name, options)], task=task,
                      precisions=("fp32",), batch_size=case["batch_size"], seq_len=case["seq_len"],
                      gradient_checkpointing=case["gradient_checkpointing"])
    m = report.rows[0].memory[0]
    if m.activation_bytes is None:
        raise RuntimeError(f"{case}: activations not traced: {m.activation_note}")
    parts = {"weights": m.weights_bytes, "gradients": m.gradient_bytes, "optimizer": m.optimizer_bytes,
             "activations": m.activation_bytes, "total": m.total_bytes}
    out = {f"{k}_mib": v / MIB for k, v in parts.items()}
    out["estimate_s"] = time.perf_counter() - started
    return out


def _measure_in_subprocess(case: dict[str, Any], allocator: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(ALLOCATORS[allocator])
    done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(case)], capture_output=True, text=True,
                          timeout=1800, cwd=ROOT, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {case} ({allocator}) failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_case(case: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Estimate ``case`` and measure it once per allocator setting."""
    result = {**case, "estimate": estimate_case(case, folder)}
    total = result["estimate"]["total_mib"]
    for allocator in ALLOCATORS:
        measured = _measure_in_subprocess(case, allocator)
        measured["error_pct"] = 100 * (total - measured["measured_mib"]) / measured["measured_mib"]
        result[allocator] = measured
    return result


def _label(r: dict[str, Any]) -> str:
    checkpointing = " ckpt" if r["gradient_checkpointing"] else ""
    return f"{r['model']} {r['strategy']} {r['batch_size']}x{r['seq_len']}{checkpointing}"


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per allocator setting: the largest miss and how many cases are within the target."""
    out: dict[str, Any] = {"target_pct": TARGET}
    for allocator in ALLOCATORS:
        worst = max(rows, key=lambda r: abs(r[allocator]["error_pct"]))
        within = sum(abs(r[allocator]["error_pct"]) <= TARGET for r in rows)
        out[allocator] = {"max_abs_error_pct": abs(worst[allocator]["error_pct"]), "worst_case": _label(worst),
                          "within_target": within, "cases": len(rows), "all_within_target": within == len(rows)}
    return out


def write_markdown(path: Path, result: dict[str, Any]) -> None:
    from petl.bench.environment import environment_section
    from petl.files import atomic_write_text

    rows = result["cases"]
    lines = [
        "# `petl estimate` against measured peak memory (CPU, fp32)", "",
        "Estimate: weights + optimizer states + the traced peak of activations, temporaries and gradients alive at "
        "once (`petl/bench/activations.py`), from a model built on the meta device. Measured: the peak resident set "
        "of two training steps (`StepRunner`) in a fresh process, minus that process after its imports and a warm-up "
        "step of a toy model (`benchmarks/estimate_accuracy.py` says why). *mmap 64k*: glibc with "
        "`MALLOC_MMAP_THRESHOLD_=65536`, so that freed tensors leave the resident set (the CPU analogue of CUDA's "
        "`max_memory_allocated`); *glibc default*: the allocator as a plain `petl train` gets it, which keeps freed "
        "activations resident. MiB; error = (estimate - measured) / measured.", "",
        "| case | weights | grads | optimizer | activations | estimate | measured, mmap 64k | error % | "
        "measured, glibc default | error % | mmap 64k, 1 step |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        e, fixed, default = r["estimate"], r["mmap_64k"], r["glibc_default"]
        lines.append(f"| {_label(r)} | {e['weights_mib']:.1f} | {e['gradients_mib']:.1f} | {e['optimizer_mib']:.1f} | "
                     f"{e['activations_mib']:.1f} | {e['total_mib']:.1f} | {fixed['measured_mib']:.1f} | "
                     f"{fixed['error_pct']:+.1f} | {default['measured_mib']:.1f} | {default['error_pct']:+.1f} | "
                     f"{fixed['first_step_mib']:.1f} |")
    lines.append("")
    for allocator in ALLOCATORS:
        s = result["summary"][allocator]
        lines.append(f"* {allocator}: {s['within_target']} of {s['cases']} cases within {TARGET:.0f}%; largest miss "
                     f"{s['max_abs_error_pct']:.1f}% ({s['worst_case']}).")
    lines += ["", *environment_section(result["environment"])]
    atomic_write_text(path, "\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the tiny models only")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder for the results (default: {RESULTS.relative_to(ROOT)}; with --quick a "
                             "temporary folder, so a quick run never replaces the recorded results)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # the worker: one case as JSON
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return 0
    import torch

    from petl.bench.environment import collect_environment, load_average
    from petl.files import atomic_write_json

    torch.set_num_threads(1)
    environment = collect_environment()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for case in cases(args.quick):
            rows.append(run_case(case, Path(folder)))
            r = rows[-1]
            measured = "  ".join(f"{a} {r[a]['measured_mib']:8.1f} ({r[a]['error_pct']:+6.1f}%)" for a in ALLOCATORS)
            print(f"{_label(r):30s} estimate {r['estimate']['total_mib']:8.1f} MiB  measured {measured}", flush=True)
    environment["load_average_end"] = load_average()
    summary = summarize(rows)
    result = {"quick": args.quick, "summary": summary, "cases": rows, "environment": environment}
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="petl-estimate-accuracy-")) if args.quick else RESULTS
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "estimate_accuracy.json", result)
    write_markdown(args.out / "estimate_accuracy.md", result)
    for allocator in ALLOCATORS:
        print(f"{allocator}: largest miss {summary[allocator]['max_abs_error_pct']:.1f}% "
              f"({summary[allocator]['worst_case']})")
    print(f"Results in {args.out}/estimate_accuracy.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The text table ``petl estimate`` prints (:func:`format_estimate`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from petl.bench.estimate import EstimateReport

__all__ = ["format_estimate", "format_size"]


def format_size(value: int | None) -> str:
    """Bytes as MiB or GiB (``-`` for unknown)."""
    if value is None:
        return "-"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.1f} MiB"


def _footer(report: EstimateReport, optimizer: str) -> str:
    where = f"{report.model} ({report.config_class}, task {report.task}); optimizer {optimizer}; "
    shape = report.shape
    if shape is None:
        return where + ("memory = weights + gradients + optimizer states, activations not included "
                        "(pass --batch-size / --seq-len to trace them).")
    checkpointing = ", gradient checkpointing" if shape.gradient_checkpointing else ""
    return where + (f"activations traced for batches of {shape.batch_size} x {shape.seq_len} tokens{checkpointing}; "
                    "total = the step's traced peak: weights + optimizer states + the most activations, "
                    "temporaries and gradients alive at once.")


def format_estimate(report: EstimateReport) -> str:
    """The text table ``petl estimate`` prints."""
    traced = report.shape is not None
    header = ["strategy", "trainable", "total", "share %", "precision", "weights", "gradients", "optimizer",
              *(["activations"] if traced else []), "peak mem" if traced else "total mem"]
    lines = [header]
    for row in report.rows:
        if row.error:
            lines.append([row.label, *["-"] * (len(header) - 2), "error"])
            continue
        share = "-" if row.share is None else f"{100 * row.share:.4f}"
        for i, m in enumerate(row.memory):
            first = i == 0
            activations = [format_size(m.activation_bytes)] if traced else []
            lines.append([
                row.label if first else "", f"{row.trainable:,}" if first else "", f"{row.total:,}" if first else "",
                share if first else "", m.precision, format_size(m.weights_bytes), format_size(m.gradient_bytes),
                format_size(m.optimizer_bytes), *activations,
                format_size(m.total_bytes) if m.note is None else "n/a",
            ])
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    text = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            for r in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    optimizer = report.rows[0].memory[0].optimizer if report.rows and report.rows[0].memory else "adamw"
    text.append("")
    text.append(_footer(report, optimizer))
    for row in report.rows:
        if row.error:
            text.append(f"{row.label}: {row.error}")
        for m in row.memory:
            if m.note:
                text.append(f"{row.label} {m.precision}: n/a, {m.note}")
            elif m.activation_note:
                text.append(f"{row.label} {m.precision}: {m.activation_note}; total without activations")
    return "\n".join(text)

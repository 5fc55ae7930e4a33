"""Start-up cost of petl: ``import petl`` and ``petl --help`` in fresh interpreters.

Each measurement starts a new ``python`` process (so nothing is cached in memory
between runs except the operating system's file cache), after one untimed warm-up
run; the median of ``--runs`` wall times is reported next to the interpreter's bare
start (``python -c pass``), which is the floor every command pays. ``python -X
importtime`` names the slowest modules imported by ``import petl``.

    python benchmarks/import_time.py                       # this checkout
    python benchmarks/import_time.py --other /tmp/petl-old  # also an older checkout, side by side

Run it on a quiet machine: other busy processes slow start-up several-fold.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from petl.bench.environment import collect_environment, environment_section, load_average
from petl.files import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "python -c pass": ["-c", "pass"],
    "import petl": ["-c", "import petl"],
    "petl --help": ["-m", "petl.cli", "--help"],  # the console script's work; older checkouts have it too
}


def _time(args: list[str], checkout: Path, runs: int) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    samples = []
    for i in range(runs + 1):
        started = time.perf_counter()
        subprocess.run([sys.executable, *args], env=env, cwd=checkout.parent, check=True, capture_output=True)
        if i:  # the first run warms the file cache
            samples.append(time.perf_counter() - started)
    return samples


def _slowest_imports(checkout: Path, count: int = 8) -> list[dict[str, object]]:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", "import petl"], env=env, cwd=checkout.parent,
                          check=True, capture_output=True, text=True)
    rows = []
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
            rows.append({"module": name, "cumulative_ms": int(cumulative) / 1000})
    return sorted(rows, key=lambda r: -float(r["cumulative_ms"]))[:count]  # type: ignore[arg-type]


def measure(checkout: Path, runs: int) -> dict[str, object]:
    """Median, minimum and maximum wall seconds of each command, and the slowest imports."""
    git = ["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"]
    commit = subprocess.run(git, capture_output=True, text=True)
    out: dict[str, object] = {"checkout": str(checkout), "commit": commit.stdout.strip() or None}
    for name, args in COMMANDS.items():
        samples = _time(args, checkout, runs)
        out[name] = {"median_s": statistics.median(samples), "min_s": min(samples), "max_s": max(samples)}
    out["slowest_imports"] = _slowest_imports(checkout)
    return out


def write_markdown(result: dict, path: Path) -> None:
    lines = ["# Start-up time: `import petl` and `petl --help`", "",
             f"Fresh interpreters, one warm-up then the median of {result['runs']} runs each (seconds).", "",
             "| checkout | commit | python -c pass | import petl | petl --help |", "| --- | --- | ---: | ---: | ---: |"]
    for item in result["checkouts"]:
        cells = [f"{item[c]['median_s']:.3f}" for c in COMMANDS]
        lines.append(f"| {item['label']} | {item['commit'] or '?'} | " + " | ".join(cells) + " |")
    for item in result["checkouts"]:
        lines += ["", f"Slowest imports under `import petl` ({item['label']}, `python -X importtime`, cumulative ms):",
                  ""]
        lines += [f"- {row['module']}: {row['cumulative_ms']:.1f}" for row in item["slowest_imports"]]
    lines += ["", *environment_section(result["environment"])]
    atomic_write_text(path, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--other", type=Path, help="an older checkout to measure side by side")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    environment = collect_environment()
    checkouts = [("this checkout", ROOT)]
    if args.other:
        checkouts.append(("other checkout", args.other.resolve()))
    result = {"runs": args.runs, "environment": environment,
              "checkouts": [{"label": label, **measure(path, args.runs)} for label, path in checkouts]}
    environment["load_average_end"] = load_average()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "import_time.json", json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out / "import_time.md")
    print((args.out / "import_time.md").read_text())


if __name__ == "__main__":
    main()

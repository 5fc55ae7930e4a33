"""Summarise the Optuna journal of a ``petl bench --search`` run, finished or interrupted.

    python benchmarks/search_summary.py benchmarks/results/sst2_minilm_search

Reads ``<folder>/search.journal`` (every study of the run: one per row) and writes
``<folder>/search_summary.{json,md}``: each trial's state, parameters, validation score,
intermediate (negated) validation losses and duration, with the date, the load average
and the library versions. Nothing is estimated here: a trial still running is listed as such.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    import optuna

    from petl.bench.environment import collect_environment
    from petl.bench.search import make_storage

    journal = args.folder / "search.journal"
    storage = make_storage(f"journal://{journal.resolve()}")
    studies = []
    for summary in optuna.get_all_study_summaries(storage):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = []
        for t in study.trials:
            end = t.datetime_complete
            trials.append({
                "number": t.number, "state": t.state.name, "params": t.params,
                "score": t.value if t.state.name == "COMPLETE" else None,  # pruned: its last negated loss
                "intermediate": [t.intermediate_values[k] for k in sorted(t.intermediate_values)],
                "duration_s": (end - t.datetime_start).total_seconds() if end and t.datetime_start else None,
                **t.user_attrs,
            })
        studies.append({"study": summary.study_name, "direction": study.direction.name, "trials": trials})
    out = {"command": " ".join(sys.argv), "date": dt.datetime.now(dt.timezone.utc).isoformat(),
           "load_average": os.getloadavg(), "environment": collect_environment(), "studies": studies}
    (args.folder / "search_summary.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    lines = [f"# Search journal of {args.folder.name}", "", f"Written {out['date']}; load average "
             f"{', '.join(f'{v:.2f}' for v in out['load_average'])}.", "",
             "| study | trial | state | params | validation score | duration s |", "|:---|---:|:---|:---|---:|---:|"]
    for study in studies:
        for t in study["trials"]:
            params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
            score = "-" if t["score"] is None else f"{t['score']:.4f}"
            duration = "-" if t["duration_s"] is None else f"{t['duration_s']:.0f}"
            cells = (study["study"], t["number"], t["state"].lower(), params, score, duration)
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    (args.folder / "search_summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

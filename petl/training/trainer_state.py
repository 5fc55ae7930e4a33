"""The fields of ``trainer_state.json``, the part of a checkpoint that records where the
run stands and what run it belongs to, and the check of their types.

Every field the trainer writes is read back on resume; a field that is absent, null or
of another type makes the checkpoint unusable, which the check reports in the user's
terms before anything is loaded (never as a ``KeyError`` or ``TypeError`` later on).

| field | type |
| --- | --- |
| ``format_version`` | 1 or 2 |
| ``global_step``, ``epoch``, ``batches_in_epoch`` | counts |
| ``step_losses`` | one number per step |
| ``eval_history`` | evaluation records, each with its ``step`` |
| ``best`` | the best value, step and metrics so far, evaluations without improvement |
| ``stopped_early`` | true or false |
| ``fingerprint`` | the options a resume must keep |
| ``rng`` | the generator states (an encoded structure) |
| ``strategy`` (version 2) | the strategy's name (``null`` for full fine-tuning) and options |
| ``model`` (version 2) | the model's signature |
| ``files`` (version 2) | the names of the checkpoint's other files |
| ``log_records`` (version 2) | the lines of ``log.jsonl`` written up to the checkpoint |
"""

from __future__ import annotations

from typing import Any

__all__ = ["is_count", "is_number", "trainer_state_problems"]


def is_count(value: Any) -> bool:
    """Whether ``value`` is a non-negative ``int`` (a JSON ``true`` is not)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_number(value: Any) -> bool:
    """Whether ``value`` is an ``int`` or ``float`` (a JSON ``true`` is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_metrics(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and is_number(v) for k, v in value.items())


def _is_record(value: Any) -> bool:
    return _is_metrics(value) and is_count(value.get("step"))


def trainer_state_problems(state: dict[str, Any]) -> list[str]:
    """What is wrong with the fields of a trainer state (empty when nothing is)."""
    problems = [f"{name} is {state.get(name)!r}, not a count" for name in ("global_step", "epoch", "batches_in_epoch")
                if not is_count(state.get(name))]
    losses = state.get("step_losses")
    if not (isinstance(losses, list) and all(is_number(v) for v in losses)):
        problems.append("step_losses is not a list of numbers")
    elif is_count(state.get("global_step")) and len(losses) != state["global_step"]:
        problems.append(f"step_losses has {len(losses)} entries for {state['global_step']} steps")
    history = state.get("eval_history")
    if not (isinstance(history, list) and all(_is_record(r) for r in history)):
        problems.append("eval_history is not a list of evaluation records")
    best = state.get("best")
    if not (isinstance(best, dict) and (best.get("best_value") is None or is_number(best["best_value"]))
            and (best.get("best_step") is None or is_count(best["best_step"]))
            and _is_metrics(best.get("best_metrics")) and is_count(best.get("evaluations_without_improvement"))):
        problems.append(f"best is {best!r}, not the best-evaluation record")
    if not isinstance(state.get("stopped_early"), bool):
        problems.append(f"stopped_early is {state.get('stopped_early')!r}, not true or false")
    if state["format_version"] >= 2 and not is_count(state.get("log_records")):
        problems.append(f"log_records is {state.get('log_records')!r}, not a count")
    if not isinstance(state.get("fingerprint"), dict):
        problems.append(f"fingerprint is {state.get('fingerprint')!r}, not the run's options")
    if not isinstance(state.get("rng"), dict):
        problems.append(f"rng is {state.get('rng')!r}, not the random generator states")
    if state["format_version"] >= 2:
        strategy = state.get("strategy")
        if not (isinstance(strategy, dict) and (strategy.get("name") is None or isinstance(strategy["name"], str))
                and isinstance(strategy.get("config"), (dict, type(None)))):
            problems.append(f"strategy is {strategy!r}, not a strategy name and its options")
        if not isinstance(state.get("model"), dict):
            problems.append(f"model is {state.get('model')!r}, not the model's signature")
    return problems

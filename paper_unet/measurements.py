"""Measured figures as data: what code, ``--help`` and comments cite is read from results/measurements.json.

A decision in code states its rule (`fastpath.decide`: bf16 on a CPU with native bf16, fp32 elsewhere) and
quotes the measurement behind it from the file the benchmarks write, so a new measurement changes one file,
not the prose of several modules. Each entry carries its value, unit, machine, commit, date and source.
An installed wheel has no results/: the text then names the file instead of quoting a figure.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

__all__ = ["MEASUREMENTS", "entry", "value", "say", "say_range"]

MEASUREMENTS = Path(__file__).resolve().parents[1] / "results" / "measurements.json"


@lru_cache(maxsize=1)
def _load() -> dict:
    try:
        return json.loads(MEASUREMENTS.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def entry(key: str) -> dict | None:
    """The whole record of ``key`` (value, unit, machine, commit, date, source), or None."""
    return _load().get(key)


def value(key: str):
    """The measured value of ``key`` (a number, or [low, high]); None where results/ is absent."""
    found = entry(key)
    return None if found is None else found["value"]


def _number(v: float) -> str:
    return f"{v:g}"


def _format(v, unit: str) -> str:
    """A value (a number, or [low, high] as a range with a dash) with its unit as prose quotes it."""
    text = "-".join(map(_number, v)) if isinstance(v, list) else _number(v)
    return f"{text}x" if unit == "x" else f"{text} {unit}"


def say(key: str) -> str:
    """``key``'s figure with its unit, as prose quotes it (a ratio with an "x", a rate or a time with its unit, a
    range with a dash), or a pointer to the file when it cannot be read."""
    found = entry(key)
    if found is None:
        return f"(measured: results/measurements.json, {key})"
    return _format(found["value"], found["unit"])


def say_range(low: str, high: str) -> str:
    """Two figures of one unit as a range: low, a dash, high, the unit."""
    a, b = entry(low), entry(high)
    if a is None or b is None:
        return f"(measured: results/measurements.json, {low}, {high})"
    return _format([a["value"], b["value"]], a["unit"])

"""A run is a sequence of stages, and each stage keeps its own record beside its outputs.

The ISBI reproduction (`reproduce`) has these stages, each in its own folder of the run directory:
``fold<k>`` (train on the other blocks, predict and score block k: ``metrics.json``), ``final`` (the
final model's training: ``last.pt``), ``submission`` (the test-volume prediction), ``test`` (its score,
when test labels exist: ``metrics.json``); `report.write_report` adds the report's own record to the
results' ``summary.json``. Each writes ``stage.json`` (`RECORD`, through `atomic`):

- ``stage``, ``status`` ("running" until its outputs are complete, then "done"), ``did`` (what it did:
  iterations, seconds of training, prediction and scoring, the checkpoint it used), ``config_sha256``;
- ``sessions``: one entry per process that worked on the stage: its `provenance` (command, commit,
  machine, CPU class or GPU, torch), the device and precision path it trained or predicted with, its start,
  end and wall time. A stage interrupted on one machine and finished on another has two sessions, and
  the report names both machines.

A record is written when a stage starts and again when it ends; a finished stage is never re-stamped
by a later invocation (a resumed run, a gathering call, a resumed study). A stage whose outputs exist
from a version before these records gets a record that says so (`legacy`), with no machine.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from paper_unet.atomic import read_json, write_json
from paper_unet.provenance import machine, provenance

__all__ = ["RECORD", "config_sha256", "read_stage", "begin_stage", "finish_stage", "legacy", "complete", "machines"]

RECORD = "stage.json"


def config_sha256(config: dict) -> str:
    """A short fingerprint of a resolved config (its canonical JSON)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def read_stage(folder: str | Path) -> dict | None:
    """The stage record in ``folder``; None when there is none (or it is torn: `atomic.read_json`)."""
    return read_json(Path(folder) / RECORD, "stage record")


def begin_stage(folder: str | Path, name: str, config: dict, *, command: str | None, precision: str,
                precision_detail: str, device: str, fresh: bool = False) -> dict:
    """Start (or continue) stage ``name`` in ``folder``: its record with a new session of this process,
    written at once. An earlier record keeps its sessions, unfinished or finished (a stage done again in part:
    its scores were torn), unless ``fresh`` (a restart: a new record).
    ``precision``: the path in short ("fp32", "bf16 autocast + channels_last"); ``precision_detail``: with why."""
    folder = Path(folder)
    record = None if fresh else read_stage(folder)
    if record is None or record.get("legacy"):
        record = {"stage": name, "status": "running", "did": {}, "config_sha256": config_sha256(config),
                  "sessions": []}
    record["status"] = "running"  # a finished stage done again in part (its scores were torn) keeps its sessions
    now = time.time()
    record["sessions"].append({**provenance(command), "device": device, "precision": precision,
                               "precision_detail": precision_detail, "start_utc": _now(), "start_epoch": now,
                               "end_utc": None, "wall_s": None, "_t0": now})
    _written(folder, record)
    return record


def finish_stage(folder: str | Path, record: dict, did: dict) -> dict:
    """End the stage: its outputs are complete. The session's end and wall time, ``did``, status done."""
    session = record["sessions"][-1]
    session.update(end_utc=_now(), wall_s=round(time.time() - session.pop("_t0", time.time()), 1))
    record.update(status="done", did={**record.get("did", {}), **did})
    return _written(folder, record)


def _written(folder: str | Path, record: dict) -> dict:
    """The record as written to ``folder``'s stage.json (its public part), and returned."""
    public = _public(record)
    write_json(Path(folder) / RECORD, public)
    return public


def _public(record: dict) -> dict:
    """The record without this process's bookkeeping (the session's start as a clock reading)."""
    return {**record, "sessions": [{k: v for k, v in s.items() if not k.startswith("_")}
                                   for s in record["sessions"]]}


def legacy(folder: str | Path, name: str, did: dict | None = None, *, write: bool = True,
           why: str = "finished before stage records were kept") -> dict:
    """The record of a finished stage whose own record is missing (it finished before stage records were kept,
    or its record was torn): its outputs exist, its machine is unknown. Written to ``folder`` unless ``write``."""
    record = {"stage": name, "status": "done", "did": did or {}, "config_sha256": None, "sessions": [],
              "legacy": f"{why}: machine and commit unknown"}
    if write:
        write_json(Path(folder) / RECORD, record)
    return record


def complete(folder: str | Path, record: dict, did: dict) -> dict:
    """Mark done a stage whose outputs are complete but whose record was not finished (the process ended between
    the two writes): ``did`` from its outputs; its last session keeps no end time (it was not seen to end)."""
    record = {**record, "status": "done", "did": {**record.get("did", {}), **did},
              "completed": "from its outputs, after its process ended before finishing the record"}
    return _written(folder, record)


def machines(records: dict[str, dict]) -> dict[str, list[str]]:
    """Machine (`provenance.machine`) -> the stages that ran on it, over every session of ``records``."""
    seen: dict[str, list[str]] = {}
    for name, record in records.items():
        for session in record.get("sessions", []):
            stages = seen.setdefault(machine(session), [])
            if name not in stages:
                stages.append(name)
    return seen

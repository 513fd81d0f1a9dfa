"""Merge one bench suite's result JSON into the run's single JSON (used by bench/gpu.sh).

    python bench/gpu_merge.py MERGED SUITE_OUT_DIR SUITE STATUS LIMIT_S DEVICE

Each suite runs as its own process (its own timeout) and writes its own report; this
folds it into MERGED as soon as it ends, so a later suite's crash or timeout never loses
an earlier one's figures. A suite that left no JSON (killed by its timeout, crashed,
skipped for lack of time) is recorded with ``status: "error"`` and the reason, never dropped.
The merged file keeps the schema of `fasttda/bench/result.schema.json`: the machine and
ceilings of the first suite that ran; every ratio was computed inside its own suite's run.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import sys
from pathlib import Path


def empty_report(device: str, quick: bool) -> dict:
    known = Path(os.environ.get("MACHINE_JSON", "-"))
    if known.is_file():  # gathered once at the start by bench/gpu.sh (saves a torch import here)
        machine = json.loads(known.read_text())
    else:
        from fasttda.bench.machine import machine_info

        machine = machine_info(device)
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"schema_version": 1, "created_utc": now, "duration_s": 0.0,
            "config": {"quick": quick, "device": device, "suites": [], "argv": ["bench/gpu.sh"]},
            "machine": machine, "ceilings": {}, "suites": {}, "results": []}


def merge(merged_path: Path, suite_dir: Path, suite: str, status: str, limit_s: float, device: str) -> dict:
    found = sorted(suite_dir.glob("*.json")) if suite_dir.is_dir() else []
    part = json.loads(found[-1].read_text()) if found else None
    if merged_path.exists():
        merged = json.loads(merged_path.read_text())
    elif part is not None:
        merged = {**part, "suites": {}, "results": [], "duration_s": 0.0}
        merged["config"] = {**part["config"], "suites": [], "argv": ["bench/gpu.sh"]}
    else:
        merged = empty_report(device, quick=os.environ.get("BENCH_QUICK_FLAG") == "1")
    if part is not None:
        merged["suites"].update(part["suites"])
        merged["results"].extend(part["results"])
        merged["duration_s"] += part["duration_s"]
        if not merged["ceilings"]:
            merged["ceilings"] = part["ceilings"]
    else:
        reason = {"timeout": f"killed by bench/gpu.sh after its {limit_s:g} s limit",
                  "skipped": "not started: the run's time was spent"}.get(status, f"the suite's process exited: {status}")
        merged["suites"][suite] = {"status": "error", "seconds": float(limit_s), "cases": 0, "error": reason}
    if suite not in merged["config"]["suites"]:
        merged["config"]["suites"].append(suite)
    tmp = merged_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=1, allow_nan=False) + "\n")
    os.replace(tmp, merged_path)  # the merged file is complete at every moment
    return merged


if __name__ == "__main__":
    merged_path, suite_dir, suite, status, limit_s, device = sys.argv[1:7]
    report = merge(Path(merged_path), Path(suite_dir), suite, status, float(limit_s), device)
    entry = report["suites"][suite]
    print(f"merged {suite}: {entry['status']}, {entry['cases']} cases -> {merged_path}")

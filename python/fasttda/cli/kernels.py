"""``fasttda kernels check``: compile every Triton launch for GPU targets, without a GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import click


@click.group("kernels")
def kernels():
    """Triton kernels: compile checks for GPU targets."""


@kernels.command("check")
@click.option("--arch", "archs", default="sm_90a,sm_80", show_default=True,
              help="Comma-separated targets among sm_90a, sm_80.")
@click.option("--ops", default=None, help="Comma-separated ops to check (default: all).")
@click.option("--full", is_flag=True, help="The full kernel × kind × format × dtype × edge product "
              "(about 3x the CI grid, which covers every variant and every edge at least once).")
@click.option("--jobs", default=1, show_default=True, type=click.IntRange(1, 8),
              help="Targets compiled in parallel processes (one per target).")
@click.option("--verbose", is_flag=True, help="Print each case and its compile time as it goes.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the full report (per kernel and per launch) to this file.")
def check(archs, ops, full, jobs, verbose, json_path):
    """Compile each launch with Triton's real specialization and ptxas; report registers,
    spills, shared memory, matrix instruction and precision per kernel. Exit 1 on any compile
    failure, grid past CUDA's limits, spill or shared memory past the limits."""
    from fasttda.kernels_check import ARCHS

    arch_list = [a.strip() for a in archs.split(",") if a.strip()]
    bad = [a for a in arch_list if a not in ARCHS]
    if bad or not arch_list:
        raise click.BadParameter(f"unknown target(s) {bad}; choose among {sorted(ARCHS)}", param_hint="--arch")
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        # Kernels decorated under the interpreter cannot be compiled: run again without it.
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        cmd = [sys.executable, "-m", "fasttda", "kernels", "check", "--arch", archs]
        cmd += (["--ops", ops] if ops else []) + (["--json", json_path] if json_path else [])
        cmd += (["--full"] if full else []) + ["--jobs", str(jobs)] + (["--verbose"] if verbose else [])
        sys.exit(subprocess.run(cmd, env=env).returncode)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset; launchers say per kernel
    from fasttda.kernels_check import format_table, run_check

    if jobs > 1 and len(arch_list) > 1:
        report = _parallel(arch_list, ops, full, jobs, verbose)
    else:
        report = run_check(tuple(arch_list), ops=ops.split(",") if ops else None, full=full, verbose=verbose)
    click.echo(format_table(report))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1, sort_keys=True)
    if not report["ok"]:
        click.echo("kernels check: FAILED", err=True)
        sys.exit(1)


def _parallel(arch_list, ops, full, jobs, verbose) -> dict:
    """One process per target (compiling is single-threaded), reports merged."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        procs = []
        for i, arch in enumerate(arch_list):
            path = os.path.join(tmp, f"{arch}.json")
            cmd = [sys.executable, "-m", "fasttda", "kernels", "check", "--arch", arch, "--json", path]
            cmd += (["--ops", ops] if ops else []) + (["--full"] if full else []) + (["--verbose"] if verbose else [])
            if len(procs) >= jobs:  # wait for a slot
                procs[len(procs) - jobs][1].wait()
            procs.append((path, subprocess.Popen(cmd, stdout=subprocess.DEVNULL)))
        report = None
        for path, proc in procs:
            proc.wait()
            if not os.path.exists(path):
                raise click.ClickException(f"the check for one target crashed (exit {proc.returncode})")
            with open(path) as f:
                part = json.load(f)
            if report is None:
                report = part
            else:
                report["archs"].update(part["archs"])
                report["ok"] = report["ok"] and part["ok"]
    return report

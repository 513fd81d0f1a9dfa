"""``fasttda kernels check``: compile every Triton launch for sm_90a and sm_80, no GPU needed.

The launch list (`launches`) calls the real launchers with meta tensors; `fasttda.kernels._launch`
hands each launch to the recorder below, which compiles it for the target (`compiler`) and
keeps, per kernel: launches, distinct compiled kernels, failures, registers, spills, shared
memory, the matrix instruction in the PTX, the dot precision in the Triton IR, the float32
division instructions, and the grid size against the target's SM count.

Limits (a breach fails the check, like a compile error):
* spills: ``SPILL_LIMIT_BYTES = 64`` per thread. Register-tiled accumulators that do not fit
  spill kilobytes (the dense projection spilled 7 KB with 64-deep tiles) and that traffic
  sits in the inner loop: a tile-size bug to fix. ptxas also spills a word or two around
  libdevice's sin/cos slow path (the Gaussian tile, 8 bytes); up to 64 bytes stays in L1
  and is not worth a smaller tile.
* shared memory: the per-block maximum of the target (``SHARED_LIMIT``: 227 KiB on sm_90a,
  163 KiB on sm_80). Triton compiles past it and the launch then fails on the GPU
  ("out of resource: shared memory"), so it is checked here.
* the grid: CUDA's limits (x < 2**31, y and z <= 65535), which a launch past them breaks.
* numerics: each kernel's docstring promise (``Numerics: dot=...; div=...``) must match the
  compiled code (`inventory.check_promise`: the dot modes in the Triton IR, tensor-core
  instructions and float32 divisions in the PTX).
* completeness: every kernel in `fasttda.kernels` (`inventory.kernels`) needs at least one
  compiled launch.
"""
from __future__ import annotations

import math
import os
import sys
import time
import traceback

from fasttda.kernels_check import inventory
from fasttda.kernels_check.compiler import ARCHS, SM_COUNT, SUPPORTED_TRITON, active_target, compile_launch, resources

SPILL_LIMIT_BYTES = 64
SHARED_LIMIT = {"sm_90a": 232448, "sm_80": 166912}

__all__ = ["ARCHS", "SUPPORTED_TRITON", "run_check", "format_table"]


class Recorder:
    """Installed as `fasttda.kernels._launch.recorder` while the launch list runs."""

    def __init__(self, arch: str):
        self.arch = arch
        self.sm_count = SM_COUNT[arch]
        self.kernels: dict[str, dict] = {}
        self.case = ""
        self._seen: dict[int, dict] = {}

    def entry(self, name: str) -> dict:
        return self.kernels.setdefault(name, {
            "launches": 0, "compiled": 0, "failures": [], "registers": 0, "spill_bytes": 0, "shared_bytes": 0,
            "num_warps": set(), "matrix": set(), "dot_precision": set(), "division": set(),
            "programs_min": None, "programs_max": 0, "cases": [],
        })

    def __call__(self, kernel, grid, args, kwargs):
        from fasttda.kernels._launch import check_grid

        name = kernel.fn.__name__
        e = self.entry(name)
        e["launches"] += 1
        programs = math.prod(grid)
        e["programs_min"] = programs if e["programs_min"] is None else min(e["programs_min"], programs)
        e["programs_max"] = max(e["programs_max"], programs)
        e["cases"].append({"case": self.case, "grid": list(grid), "programs": programs})
        try:
            check_grid(grid)
            compiled, log = compile_launch(kernel, grid, args, kwargs)
        except Exception as exc:  # a compile error is the finding, not a crash of the check
            e["failures"].append(f"{self.case}: {type(exc).__name__}: {_first_line(exc)}")
            return None
        key = id(compiled)
        if key not in self._seen:
            self._seen[key] = resources(compiled, log, self.arch)
            e["compiled"] += 1
        r = self._seen[key]
        e["cases"][-1].update({k: r[k] for k in ("registers", "spill_bytes", "shared_bytes", "matrix")})
        e["registers"] = max(e["registers"], r["registers"] or 0)
        e["spill_bytes"] = max(e["spill_bytes"], r["spill_bytes"])
        e["shared_bytes"] = max(e["shared_bytes"], r["shared_bytes"])
        e["num_warps"].add(r["num_warps"])
        e["matrix"].add(r["matrix"])
        e["dot_precision"].update(r["dot_precision"] or ["none"])
        e["division"].update(r["division"] or ["none"])
        return compiled


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    # Triton's CompilationError puts the source excerpt first and the cause last
    return (text[-1] if text else "")[:300]


def run_check(archs=("sm_90a", "sm_80"), ops=None, full=False, verbose=False) -> dict:
    """Compile the launch list (the CI grid, or the full product) for each arch; JSON-ready."""
    import triton

    from fasttda.kernels import _launch
    from fasttda.kernels_check.launches import all_cases

    if _launch.triton_interpreted():
        raise RuntimeError("the compile check needs TRITON_INTERPRET unset (it compiles, it does not interpret)")
    report = {"triton": triton.__version__, "supported_triton": list(SUPPORTED_TRITON), "archs": {},
              "grid": "full" if full else "ci"}
    for arch in archs:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        rec = Recorder(arch)
        errors = []
        with active_target(arch):
            _launch.recorder = rec
            try:
                for op, name, call in all_cases(ops, full):
                    rec.case = name
                    t0 = _cpu_seconds()
                    try:
                        call()
                    except Exception as exc:  # a launcher that cannot even build its launch
                        errors.append(f"{name}: {type(exc).__name__}: {_first_line(exc)}")
                        if verbose:
                            traceback.print_exc()
                    if verbose:
                        print(f"[{arch}] {_cpu_seconds() - t0:6.1f} s CPU  {name}", file=sys.stderr, flush=True)
            finally:
                _launch.recorder = None
        kernels = {}
        expected = inventory.kernels()
        for kname, e in sorted(rec.kernels.items()):
            e = {k: sorted(v) if isinstance(v, set) else v for k, v in e.items()}
            e["limits"] = _limit_breaches(e, arch)
            if kname in expected and e["compiled"]:
                e["limits"] += inventory.check_promise(expected[kname]["doc"], e)
            kernels[kname] = e
        if ops is None:  # the whole launch list: every kernel of the package must have compiled
            errors += [f"{k} ({f['file']}): no compiled launch" for k, f in expected.items()
                       if not kernels.get(k, {}).get("compiled")]
        report["archs"][arch] = {
            "sm_count": rec.sm_count, "seconds": round(time.perf_counter() - start, 1),
            "cpu_seconds": round(_cpu_seconds() - cpu_start, 1), "kernels": kernels,
            "launcher_errors": errors,
            "failures": sum(len(e["failures"]) + len(e["limits"]) for e in kernels.values()) + len(errors),
        }
    report["ok"] = all(a["failures"] == 0 for a in report["archs"].values())
    return report


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (ptxas): the check's cost on a
    loaded machine, where wall time says more about the neighbours."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _limit_breaches(e: dict, arch: str) -> list[str]:
    out = []
    if e["spill_bytes"] > SPILL_LIMIT_BYTES:
        out.append(f"spills {e['spill_bytes']} bytes > {SPILL_LIMIT_BYTES}")
    if e["shared_bytes"] > SHARED_LIMIT[arch]:
        out.append(f"shared memory {e['shared_bytes']} bytes > {SHARED_LIMIT[arch]}")
    return out


def format_table(report: dict) -> str:
    lines = []
    for arch, a in report["archs"].items():
        lines.append(f"{arch} (triton {report['triton']}, {a['sm_count']} SMs, {a['seconds']} s, "
                     f"{a.get('cpu_seconds', '?')} s CPU): "
                     f"{a['failures']} failure(s)")
        lines.append(f"  {'kernel':28} {'launches':>8} {'compiled':>8} {'fail':>4} {'regs':>4} {'spill':>5} "
                     f"{'smem':>6} {'programs':>13}  matrix / dot precision / division")
        for name, e in a["kernels"].items():
            fails = len(e["failures"]) + len(e["limits"])
            lines.append(f"  {name:28} {e['launches']:8d} {e['compiled']:8d} {fails:4d} {e['registers']:4d} "
                         f"{e['spill_bytes']:5d} {e['shared_bytes']:6d} {e['programs_min'] or 0:>6}-{e['programs_max']:<6}"
                         f"  {' '.join(e['matrix'])} / {','.join(e['dot_precision'])} / {','.join(e['division'])}")
            for msg in e["failures"][:5] + e["limits"]:
                lines.append(f"      FAIL {msg}")
        for msg in a["launcher_errors"][:10]:
            lines.append(f"  LAUNCHER ERROR {msg}")
    return "\n".join(lines)

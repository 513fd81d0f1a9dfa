"""Compile Triton launches for a CUDA target on a machine with no GPU.

A `FakeDriver` made active in ``triton.runtime.driver`` answers the three questions
Triton asks before compiling (which target, which device, which stream). Then
``JITFunction.run(*args, grid=..., warmup=True, **kwargs)`` applies Triton's real argument
specialization (ints equal to 1 become constexprs, ints and pointers divisible by 16 are
marked so), runs the whole pipeline down to ptxas (shipped inside the triton wheel), and
returns the compiled kernel without launching anything.

Works with Triton 3.6 to 3.9 (`SUPPORTED_TRITON`): it uses only ``driver.set_active``,
``GPUTarget``, ``JITFunction.run(..., warmup=True)`` and the compiled kernel's ``asm``
and ``metadata.shared``; registers and spills come from ``ptxas -v``.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import tempfile

# Oldest and newest Triton claimed (the GPU machine has 3.6, CI 3.9). The check has run under
# 3.9 only so far; the APIs it needs (driver.set_active, GPUTarget, JITFunction.run with
# warmup=True, CompiledKernel.asm/metadata) predate 3.6, and the ptxas log hook is optional.
SUPPORTED_TRITON = ("3.6", "3.9")

ARCHS = {"sm_90a": 90, "sm_80": 80}
SM_COUNT = {"sm_90a": 132, "sm_80": 108}  # H100/H200 SXM, A100 SXM


class FakeDriver:
    """Just enough of a Triton GPU driver to compile: a target, a device id, a stream."""

    def __init__(self, capability: int):
        from triton.backends.compiler import GPUTarget

        self.capability = capability
        self.target = GPUTarget("cuda", capability, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        # Triton caches its argument binder (and the target) per device id: one id per target.
        return self.capability

    def get_current_stream(self, device=None):
        return 0

    def set_current_device(self, device):
        pass


@contextlib.contextmanager
def active_target(arch: str):
    from triton.runtime.driver import driver

    if arch not in ARCHS:
        raise ValueError(f"--arch must be among {sorted(ARCHS)}, got {arch!r}")
    driver.set_active(FakeDriver(ARCHS[arch]))
    try:
        yield
    finally:
        driver.reset_active() if _has_default_driver() else None


def _has_default_driver() -> bool:
    try:
        from triton.runtime.driver import driver

        driver.default  # noqa: B018 - raises without an active backend (no GPU)
        return True
    except Exception:
        return False


def compile_launch(kernel, grid, args, kwargs):
    """Compile one launch for the active target; returns ``(compiled, ptxas log or "")``."""
    from triton import knobs

    nvidia = getattr(knobs, "nvidia", None)
    old = getattr(nvidia, "dump_ptxas_log", None)
    buf = io.StringIO()
    try:
        if old is not None:
            nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(buf):
            compiled = kernel.run(*args, grid=grid, warmup=True, **kwargs)
    finally:
        if old is not None:
            nvidia.dump_ptxas_log = old
    log = buf.getvalue()
    saved = _saved_log_path(compiled)
    if "Used" in log:  # a fresh compile: keep its log for when Triton's cache serves the kernel
        os.makedirs(os.path.dirname(saved), exist_ok=True)
        with open(saved + ".tmp", "w") as f:
            f.write(log)
        os.replace(saved + ".tmp", saved)
    elif os.path.exists(saved):
        with open(saved) as f:
            log = f.read()
    return compiled, log


def _saved_log_path(compiled) -> str:
    """Where the ptxas log of a compiled kernel is kept, next to Triton's cache (by its hash)."""
    from triton import knobs

    return os.path.join(knobs.cache.dir, "fasttda-ptxas-logs", f"{compiled.hash}.log")


def _ptxas_path(arch: str) -> str:
    """The ptxas Triton itself uses for ``arch`` (3.9 picks a newer one for sm_90+)."""
    from triton.backends.nvidia import compiler as nv

    try:
        tool = nv.get_ptxas(ARCHS[arch])
    except TypeError:  # Triton versions whose get_ptxas takes no arch
        tool = nv.get_ptxas()
    return tool.path


def _triton_ptxas_flags() -> list[str]:
    """Flags Triton adds to ptxas that change register allocation (3.9: ``--regAllocOptLevel=2``,
    a workaround for a ptxas 13 bug; 3.6: none)."""
    import inspect

    from triton.backends.nvidia import compiler as nv

    return ["--regAllocOptLevel=2"] if "--regAllocOptLevel=2" in inspect.getsource(nv.CUDABackend.make_cubin) else []


def ptxas_log(ptx: str, arch: str, fp_fusion: bool) -> str:
    """``ptxas -v`` on the kernel's PTX, with Triton's flags: used when Triton's cache served a
    kernel that this check did not compile (no saved log)."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        cmd = [_ptxas_path(arch), "-v", *_triton_ptxas_flags(), f"--gpu-name={arch}",
               f"--fmad={'true' if fp_fusion else 'false'}", src, "-o", os.path.join(tmp, "k.cubin")]
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stderr


def resources(compiled, log: str, arch: str) -> dict:
    """Registers, spill bytes, shared memory and the code's instruction mix for one kernel."""
    ptx = compiled.asm["ptx"]
    if "Used" not in log:
        fusion = getattr(compiled.metadata, "enable_fp_fusion", True)
        log = ptxas_log(ptx, arch, fusion)
    regs = re.findall(r"Used (\d+) registers", log)
    stores = re.findall(r"(\d+) bytes spill stores", log)
    loads = re.findall(r"(\d+) bytes spill loads", log)
    ttir = compiled.asm.get("ttir", "")
    return {
        "registers": int(regs[-1]) if regs else None,
        "spill_bytes": (int(stores[-1]) if stores else 0) + (int(loads[-1]) if loads else 0),
        "shared_bytes": int(compiled.metadata.shared),
        "num_warps": int(compiled.metadata.num_warps),
        "matrix": matrix_instruction(ptx),
        "dot_precision": dot_precisions(ttir),
        "dots": len(re.findall(r"= tt\.dot ", ttir)),
        "division": division_modes(ptx),
    }


def dot_precisions(ttir: str) -> list[str]:
    """Per ``tt.dot`` in the Triton IR: ``16bit`` for bf16/fp16 operands, else its float32 mode.

    The IR prints ``inputPrecision = tf32`` / ``tf32x3`` and elides the attribute's default,
    ``ieee`` (the mode the Python front end resolves ``input_precision=None`` to is always
    written out), so a dot with no mode printed is IEEE. `inventory.check_promise` checks the
    reading against the PTX: a TF32 mode needs a tf32 mma, IEEE none.
    """
    out = set()
    for line in re.findall(r"= tt\.dot [^\n]*", ttir):
        operand = re.search(r": tensor<[\dx]+x(\w+)", line)
        if operand and operand.group(1) in ("bf16", "f16"):
            out.add("16bit")
        else:
            mode = re.search(r"inputPrecision = (\w+)", line)
            out.add(mode.group(1) if mode else "ieee")
    return sorted(out)


def matrix_instruction(ptx: str) -> str:
    """``wgmma``, ``mma.sync`` or ``fma`` (no tensor-core instruction), with the input types."""
    found = []
    for name, pattern in (("wgmma", r"wgmma\.mma_async\.\S+"), ("mma.sync", r"\bmma\.sync\.aligned\.\S+")):
        kinds = sorted({t for m in re.findall(pattern, ptx) for t in ("tf32", "bf16", "f16", "s8", "e4m3")
                        if f".{t}" in m})
        if kinds:
            found.append(f"{name}.{'+'.join(kinds)}")
    return ", ".join(found) or "fma"


def division_modes(ptx: str) -> list[str]:
    """The float32 division instructions in the PTX: ``rn`` (IEEE), ``full`` / ``approx`` (fast)."""
    return sorted(set(re.findall(r"\bdiv\.(rn|full|approx)(?:\.ftz)?\.f32", ptx)))

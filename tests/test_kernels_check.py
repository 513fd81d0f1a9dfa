"""The compile check (`fasttda kernels check`): coverage, grid limits, seed churn, numerics.

CI runs the whole check for sm_90a and sm_80 (`.ci/run`); these tests keep its pieces
honest at a small cost: the launch list is walked without compiling, and one subprocess
(no TRITON_INTERPRET) compiles a handful of launches for sm_90a.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import needs_triton

pytestmark = needs_triton


class NameRecorder:
    """Stands in for the compile check's recorder: keeps kernel names and grids, compiles nothing."""

    sm_count = 132

    def __init__(self):
        self.grids = {}

    def __call__(self, kernel, grid, args, kwargs):
        self.grids.setdefault(kernel.fn.__name__, []).append(grid)


@pytest.fixture
def recorded(monkeypatch):
    from fasttda.kernels import _launch
    from fasttda.kernels_check.launches import all_cases

    rec = NameRecorder()
    monkeypatch.setattr(_launch, "recorder", rec)
    names = {}
    for op, name, call in all_cases():
        before = sum(map(len, rec.grids.values()))
        call()
        names[name] = sum(map(len, rec.grids.values())) - before
    return rec, names


def test_launch_list_reaches_every_jit_kernel_in_the_package(recorded):
    from fasttda.kernels_check import inventory

    rec, names = recorded
    kernels = inventory.kernels()
    # the scan finds the launched kernels, and no dead @triton.jit helper hides among them
    assert {"_score_kernel", "_quantize_kernel", "_dense_project_kernel"} <= set(kernels)
    assert set(rec.grids) == set(kernels)
    assert all(n >= 1 for n in names.values())  # every case launches something
    for name, f in kernels.items():
        assert inventory.promise(f["doc"]), f"{name} ({f['file']}) states no 'Numerics: dot=...; div=....'"


def test_every_recorded_grid_fits_cuda_limits(recorded):
    """SJLT over D = 2**25 (a whole model's gradient) needs 262 144 D blocks: axis 0, not 1."""
    from fasttda.kernels._launch import MAX_GRID, check_grid

    rec, _ = recorded
    assert max(g[0] for g in rec.grids["_sjlt_project_kernel"]) > MAX_GRID[1]
    for grids in rec.grids.values():
        for g in grids:
            check_grid(g)
    with pytest.raises(ValueError, match="axis 1"):
        check_grid((1, 70000))


def test_split_paths_fill_the_gpu(recorded):
    """B = 32 rows: the projection (split over D) and the factored form (split over tokens)
    launch at least one program per SM of a 132-SM GPU."""
    rec, _ = recorded
    assert max(g[0] * g[1] * g[2] for g in rec.grids["_dense_project_kernel"] if len(g) == 3) >= 132
    factored = [g for g in rec.grids["_project_factored_kernel"]]
    assert max(g[0] * g[1] * g[2] for g in factored) >= 132


COMPILE_SCRIPT = textwrap.dedent('''
    import json, os, tempfile, importlib.util
    import torch
    from fasttda.kernels_check import inventory
    from fasttda.kernels_check.compiler import active_target, compile_launch, resources
    from fasttda.kernels import _launch
    from fasttda.kernels.project import launch_matrix, _sjlt_matrix_kernel
    from fasttda.kernels.quantize import launch_quantize, _quantize_kernel
    from fasttda.kernels.project_factored import launch_project_factored, _project_factored_kernel

    out = {}
    class Rec:
        sm_count = 132
        def __init__(self): self.compiled = []
        def __call__(self, kernel, grid, args, kwargs):
            c, log = compile_launch(kernel, grid, args, kwargs)
            self.compiled.append((kernel.fn.__name__, c, resources(c, log, "sm_90a")))
    with active_target("sm_90a"):
        _launch.recorder = rec = Rec()
        meta = torch.device("meta")
        # two seeds (keys 1 and past 2**31) and two offsets (1 and 17): one compiled kernel
        launch_matrix(100, 10, "sjlt", 1, 1, 1, 2, meta)
        launch_matrix(100, 10, "sjlt", 0x9E3779B9, 12345, 17, 2, meta)
        out["seed_kernels"] = len({id(c) for _, c, _ in rec.compiled})
        launch_quantize(torch.empty(37, 1000, device=meta), "int8")
        name, c, r = rec.compiled[-1]
        out["quantize"] = {"promise": inventory.check_promise(_quantize_kernel.fn.__doc__, {
            k: [r[k]] if k == "matrix" else r[k] or ["none"] for k in ("dot_precision", "matrix", "division")}),
            "division": r["division"]}
        x = torch.empty(2, 40, 24, device=meta)
        launch_project_factored(x, x, None, 8, 8, "rademacher", (1, 2), (3, 4))
        name, c, r = rec.compiled[-1]
        ttir = c.asm["ttir"]
        addptr = [l.split(" loc(")[0] for l in ttir.splitlines() if "tt.addptr" in l]
        out["factored"] = {"precision": r["dot_precision"], "matrix": r["matrix"], "addptr": len(addptr),
                           "i32_offsets": [l for l in addptr if l.rstrip().endswith("i32>") or l.rstrip().endswith(" i32")]}
        _launch.recorder = None
        # negative control: a kernel with a plain float32 '/' breaks a div=rn promise
        src = "import triton, triton.language as tl\\n@triton.jit\\ndef k(x, n):\\n" \\
              "    o = tl.arange(0, 16)\\n    tl.store(x + o, tl.load(x + o) / n)\\n" \\
              "@triton.jit\\ndef dot(x, P: tl.constexpr):\\n" \\
              "    o = tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :]\\n" \\
              "    tl.store(x + o, tl.dot(tl.load(x + o), tl.load(x + o), input_precision=P))\\n"
        path = os.path.join(tempfile.mkdtemp(), "negative.py")
        open(path, "w").write(src)
        spec = importlib.util.spec_from_file_location("negative", path)
        mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
        c, log = compile_launch(mod.k, (1,), (torch.empty(16, device=meta), 3.0), {})
        r = resources(c, log, "sm_90a")
        out["negative"] = inventory.check_promise("Numerics: dot=none; div=rn.", {
            "dot_precision": r["dot_precision"] or ["none"], "matrix": [r["matrix"]],
            "division": r["division"] or ["none"]})
        # the dot precision read from the IR, against the PTX's matrix instruction
        out["precisions"] = {}
        for p in ("ieee", "tf32", "tf32x3"):
            c, log = compile_launch(mod.dot, (1,), (torch.empty(256, device=meta),), {"P": p})
            r = resources(c, log, "sm_90a")
            out["precisions"][p] = [r["dot_precision"], r["matrix"], inventory.check_promise(
                f"Numerics: dot={p}; div=none.", {"dot_precision": r["dot_precision"], "matrix": [r["matrix"]],
                                                  "division": ["none"]})]
    print(json.dumps(out))
''')


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_a_new_seed_or_offset_compiles_no_new_kernel(compiled):
    assert compiled["seed_kernels"] == 1


def test_quantize_divides_in_ieee_as_its_docstring_promises(compiled):
    assert compiled["quantize"]["division"] == ["rn"]
    assert compiled["quantize"]["promise"] == []


def test_a_fast_division_breaks_the_promise(compiled):
    assert compiled["negative"] and "div=rn" in compiled["negative"][0]


def test_factored_kernel_is_tf32x3_with_64_bit_offsets(compiled):
    """B·T·d passes 2**31 for long sequences of wide layers: no pointer offset is int32."""
    assert compiled["factored"]["precision"] == ["tf32x3"]
    assert "tf32" in compiled["factored"]["matrix"]
    assert compiled["factored"]["addptr"] > 0 and compiled["factored"]["i32_offsets"] == []


def test_dot_precision_is_read_from_the_ir_as_the_ptx_confirms(compiled):
    """The IR elides the default mode (IEEE): an FMA-only dot must not read as TF32."""
    p = compiled["precisions"]
    assert p["ieee"][:2] == [["ieee"], "fma"]
    assert p["tf32"][0] == ["tf32"] and "tf32" in p["tf32"][1]
    assert p["tf32x3"][0] == ["tf32x3"] and "tf32" in p["tf32x3"][1]
    assert p["ieee"][2] == p["tf32"][2] == p["tf32x3"][2] == []  # each promise holds


def test_dot_precision_parser_on_ir_lines():
    from fasttda.kernels_check.compiler import dot_precisions

    line = "%4 = tt.dot %x_8, %y_12, %cst{} : tensor<16x16x{}> * tensor<16x16x{}> -> tensor<16x16xf32> loc(#loc1)"
    assert dot_precisions(line.format("", "f32", "f32")) == ["ieee"]
    assert dot_precisions(line.format(", inputPrecision = tf32", "f32", "f32")) == ["tf32"]
    assert dot_precisions(line.format(", inputPrecision = tf32x3", "f32", "f32")) == ["tf32x3"]
    assert dot_precisions(line.format("", "bf16", "bf16")) == ["16bit"]
    assert dot_precisions("%1 = tt.load %p") == []

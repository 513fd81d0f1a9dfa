"""One dispatch point: auto rules, the env override, and clear refusals."""
import subprocess
import sys

import pytest
import torch

from fasttda import BackendUnavailable, ops
from fasttda._dispatch import Op


def test_import_needs_no_triton_compiler_or_extension():
    code = (
        "import sys, fasttda, fasttda.ops, torch;"
        "fasttda.ops.project(torch.randn(2, 9), 4);"
        "assert 'triton' not in sys.modules, 'triton imported';"
        "assert not any(m.startswith('fasttda_cuda') for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={"PATH": "", "FASTTDA_NO_BUILD": "1",
                                                                    "PYTHONPATH": ":".join(sys.path)})


def test_auto_on_cpu_picks_reference():
    name, impl = Op("x", reference=len, triton="nowhere:fn", cuda="fn").resolve("auto", torch.device("cpu"))
    assert name == "reference" and impl is len


def test_cuda_backend_refuses_cpu_tensors(gen):
    with pytest.raises(BackendUnavailable, match="needs CUDA tensors"):
        ops.project(torch.randn(2, 5, generator=gen), 3, backend="cuda")


def test_triton_backend_refuses_cpu_tensors_without_interpreter(monkeypatch, gen):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="TRITON_INTERPRET=1"):
        ops.project(torch.randn(2, 5, generator=gen), 3, backend="triton")


def test_op_without_a_form_says_so():
    op = Op("lonely", reference=len)
    with pytest.raises(BackendUnavailable, match="no Triton kernel"):
        op.resolve("triton", torch.device("cpu"))
    with pytest.raises(BackendUnavailable, match="no CUDA kernel"):
        op.resolve("cuda", torch.device("cpu"))
    with pytest.raises(BackendUnavailable, match="no C\\+\\+ CPU kernel"):
        op.resolve("cpp", torch.device("cpu"))


def test_env_overrides_auto_but_not_an_explicit_backend(monkeypatch, gen):
    monkeypatch.setenv("FASTTDA_BACKEND", "cuda")
    x = torch.randn(2, 5, generator=gen)
    with pytest.raises(BackendUnavailable):
        ops.project(x, 3)  # auto -> env -> cuda, which cannot take CPU tensors
    ops.project(x, 3, backend="reference")
    monkeypatch.setenv("FASTTDA_BACKEND", "fastest")
    with pytest.raises(ValueError, match="FASTTDA_BACKEND"):
        ops.project(x, 3)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="backend='gpu'"):
        Op("x", reference=len).resolve("gpu", torch.device("cpu"))


def test_failed_extension_build_is_reported_and_remembered(monkeypatch):
    from fasttda import _extension

    monkeypatch.setenv("FASTTDA_NO_BUILD", "1")
    monkeypatch.setattr(_extension, "_failed", {})
    monkeypatch.setattr(_extension, "_loaded", {})
    with pytest.raises(BackendUnavailable, match="FASTTDA_NO_BUILD"):
        _extension.load("cpu")
    assert "cpu" not in _extension._failed  # the switch is not a build failure: lifting it must work
    monkeypatch.delenv("FASTTDA_NO_BUILD")
    monkeypatch.setattr(_extension, "_build", lambda kind: (_ for _ in ()).throw(RuntimeError("compiler exploded")))
    with pytest.raises(BackendUnavailable, match="compiler exploded"):
        _extension.load("cpu")
    monkeypatch.setattr(_extension, "_build", lambda kind: pytest.fail("a failed build must not be retried"))
    with pytest.raises(BackendUnavailable, match="compiler exploded"):
        _extension.load("cpu")


@pytest.mark.parametrize("kind", ["gaussian", "sjlt"])
def test_cuda_asked_for_a_kind_it_lacks_raises_never_switches(monkeypatch, gen, kind):
    """The CUDA kernel covers Rademacher only: asking for it (argument or env) with another kind
    raises naming the kind; it never runs the Triton kernel instead."""
    x = torch.randn(2, 5, generator=gen)
    with pytest.raises(BackendUnavailable, match=f"backend='cuda' covers kind='rademacher' only, got kind='{kind}'"):
        ops.project(x, 3, kind=kind, backend="cuda")
    monkeypatch.setenv("FASTTDA_BACKEND", "cuda")
    with pytest.raises(BackendUnavailable, match=r"backend='cuda' \(from FASTTDA_BACKEND\) covers kind='rademacher'"):
        ops.project(x, 3, kind=kind)
    with pytest.raises(BackendUnavailable, match="needs CUDA tensors"):  # Rademacher goes on to the device check
        ops.project(x, 3, kind="rademacher")


def test_auto_passes_over_a_form_that_cannot_serve_the_arguments(monkeypatch):
    from fasttda import _extension

    monkeypatch.setattr(_extension, "load", lambda kind: None)  # pretend the CUDA extension built
    op = Op("x", reference=len, triton="builtins:abs", cuda="builtins:max")
    cuda = torch.device("cuda")
    assert op.resolve("auto", cuda) == ("cuda", max)
    assert op.resolve("auto", cuda, {"cuda": "covers one kind only"}) == ("triton", abs)
    assert op.resolve("auto", cuda, {"cuda": "no", "triton": "no"}) == ("reference", len)
    with pytest.raises(BackendUnavailable, match="backend='triton' covers one kind only"):
        op.resolve("triton", cuda, {"triton": "covers one kind only"})

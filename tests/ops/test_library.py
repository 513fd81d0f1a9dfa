"""The ops as torch custom ops: `torch.library.opcheck` on each (schema, fake tensor, autograd
registration, AOT dispatch), and the public functions going through them."""
from __future__ import annotations

import pytest
import torch

import fasttda.ops  # noqa: F401  (registers torch.ops.fasttda.*)
from fasttda.ops import _counter_hash as ch
from fasttda.ops.project_factored import factored_seeds
from fasttda.ops.score import prepare_terms


def rand(gen, *shape):
    return torch.randn(*shape, generator=gen) + 0.1


ALL_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")


def opcheck(op, args, checks=ALL_CHECKS):
    torch.library.opcheck(op, args, test_utils=checks)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian", "sjlt"])
def test_project_op(gen, kind):
    k_row, k_col = ch.seed_keys(2**63 + 5, kind)  # a seed beyond int64 reaches the op as two 32-bit keys
    opcheck(torch.ops.fasttda.project.default, (rand(gen, 3, 37), 11, kind, k_row, k_col, 5, 2 if kind == "sjlt" else 1,
                                                "reference"))


def test_project_factored_op(gen):
    keys = [k for side in factored_seeds(2**64 - 1) for k in ch.seed_keys(side, "rademacher")]
    mask = torch.rand(2, 5, generator=gen) > 0.3
    opcheck(torch.ops.fasttda.project_factored.default,
            (rand(gen, 2, 5, 7), rand(gen, 2, 5, 3), mask, 4, 2, "rademacher", keys, "reference"))
    opcheck(torch.ops.fasttda.project_factored.default,
            (rand(gen, 2, 5, 7), rand(gen, 2, 5, 3), None, 3, 3, "gaussian", keys, "reference"))


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "int8", "fp8_e4m3", "int4"])
def test_quantize_and_dequantize_ops(gen, fmt):
    x = rand(gen, 5, 9)
    # torch cannot compare float8 outputs on the CPU (no arithmetic there), which the schema
    # and AOT checks do; they run for every other format.
    opcheck(torch.ops.fasttda.quantize.default, (x, fmt, "reference"),
            ALL_CHECKS if fmt != "fp8_e4m3" else ("test_autograd_registration", "test_faketensor"))
    data, scale = torch.ops.fasttda.quantize(x, fmt, "reference")
    opcheck(torch.ops.fasttda.dequantize.default, (data, scale if scale.numel() else None, fmt, 9, "reference"),
            ALL_CHECKS if fmt != "fp8_e4m3" else ("test_autograd_registration", "test_faketensor"))


@pytest.mark.parametrize("fmt", ["fp16", "int8", "int4"])
def test_encoder_epilogue_op(gen, fmt):
    hidden = rand(gen, 3, 5, 7)
    mask = (torch.rand(3, 5, generator=gen) > 0.3).to(torch.float32)
    mask[:, 0] = 1
    opcheck(torch.ops.fasttda.encoder_epilogue.default, (hidden, mask, fmt, "reference"))
    data, scale, norms = torch.ops.fasttda.encoder_epilogue(hidden, mask, fmt, "reference")
    public = fasttda.ops.encoder_epilogue(hidden, mask, fmt, backend="reference")
    assert torch.equal(data, public.data) and torch.equal(norms, public.norms)
    assert (public.scale is None) == (fmt == "fp16") and (public.scale is None or torch.equal(scale, public.scale))


def test_score_topk_op(gen):
    data, scale = fasttda.ops.quantize(rand(gen, 40, 6), "int8")
    terms = prepare_terms([rand(gen, 3, 6), rand(gen, 3, 6)], [data, rand(gen, 40, 6).half()],
                          scales=[scale, None], weights=[1.0, -0.5])
    opcheck(torch.ops.fasttda.score_topk.default,
            (terms.queries, terms.rows, terms.factors, ",".join(terms.fmts), 7, "reference"))


def test_public_ops_equal_the_custom_ops(gen):
    x = rand(gen, 4, 30)
    k_row, k_col = ch.seed_keys(9, "rademacher")
    assert torch.equal(fasttda.ops.project(x, 8, seed=9, backend="reference"),
                       torch.ops.fasttda.project(x, 8, "rademacher", k_row, k_col, 0, 1, "reference"))
    data, scale = fasttda.ops.quantize(x, "fp32", backend="reference")
    assert scale is None and torch.equal(data, x)


def test_compiled_ops_are_one_graph(gen):
    """Compiled code sees each op as one node of known shape: project -> quantize -> dequantize
    traces to one graph with no break, and gives the eager result."""
    k_row, k_col = ch.seed_keys(3, "rademacher")

    def f(x):
        y = torch.ops.fasttda.project(x, 8, "rademacher", k_row, k_col, 0, 1, "reference")
        data, scale = torch.ops.fasttda.quantize(y * 2, "int8", "reference")
        return torch.ops.fasttda.dequantize(data, scale, "int8", 8, "reference") + 1

    x = rand(gen, 4, 30)
    explained = torch._dynamo.explain(f)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    assert torch.equal(torch.compile(f, backend="eager", fullgraph=True)(x), f(x))

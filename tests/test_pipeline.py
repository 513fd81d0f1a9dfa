"""fasttda.pipeline and its one projection spec: what a store records, and what it is checked against."""
from __future__ import annotations

import json

import pytest
import torch

from fasttda import pipeline
from fasttda.capture import Dense, Factored, Projection, Raw
from fasttda.data import Example
from fasttda.store import FeatureStore, model_fingerprint
from tiny_models import make_checkpoints, make_rows, one_thread  # noqa: F401


@pytest.mark.parametrize("text, spec", [
    ("factored:16x8", Factored(16, 8)), ("factored", Factored(16, 16)), ("factored:4", Factored(4, 4)),
    ("factored:4x2,kind=gaussian", Factored(4, 2, kind="gaussian")), ("rademacher:64", Dense(64)),
    ("gaussian:32", Dense(32, kind="gaussian")), ("sjlt:128", Dense(128, kind="sjlt")),
    ("sjlt:128,s=4", Dense(128, kind="sjlt", s=4)), ("none", Raw()),
])
def test_projection_text_dict_and_str_round_trip(text, spec):
    assert Projection.parse(text) == spec
    assert Projection.parse(str(spec)) == spec
    assert Projection.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_projection_reads_the_spec_of_older_stores_and_refuses_nonsense():
    legacy = {"kind": "factored", "k_in": 4, "k_out": 2, "dim": 0, "seed": 3, "out_dim": 8}
    assert Projection.from_dict(legacy) == Factored(4, 2)
    assert Projection.from_dict({"kind": "sjlt", "k_in": 0, "k_out": 0, "dim": 64, "seed": 0}) == Dense(64, "sjlt")
    assert Projection.from_dict({"kind": "none", "seed": 0}) == Raw()
    for bad in ("factored:banana", "sjlt:64,t=2", "rademacher:64,s=2", "fancy:3"):
        with pytest.raises(ValueError, match="not understood|applies to kind='sjlt'"):
            Projection.parse(bad)
    with pytest.raises(ValueError, match="no known projection type"):
        Projection.from_dict({"type": "nope"})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    path = make_checkpoints(root / "models", n_epochs=0, seed=4)[0]
    examples = [Example(r["id"], r["prompt"], r["response"]) for r in make_rows(5, 9)]
    return pipeline.load_checkpoint(path), examples, root


def test_store_records_the_spec_with_sjlt_s_and_an_honest_fingerprint(checkpoint):
    ckpt, examples, root = checkpoint
    config = pipeline.CaptureConfig("sjlt:48,s=3", ["*mlp*"], 32, batch_size=4, seed=11)
    store = pipeline.index(ckpt, examples, root / "sjlt", config, fmt="fp32")
    m = store.manifest
    assert m["spec"] == {"type": "dense", "k": 48, "kind": "sjlt", "s": 3, "seed": 11, "out_dim": 48,
                         "modules": ["*mlp*"], "max_length": 32, "lora_only": False}
    # the field named sha256 holds the full SHA-256 of the weights; the sampled hash is named so
    assert m["fingerprint"] == model_fingerprint(ckpt.model, str(ckpt.path))
    assert m["meta"]["model_sample"] == pipeline.sampled_fingerprint(ckpt.model) != m["fingerprint"]["sha256"]
    back = pipeline.store_config(store)
    assert (back.projection, back.seed, back.modules, back.max_length) == (Dense(48, "sjlt", 3), 11, ["*mlp*"], 32)
    # the rows are the projection with s=3: the same features as a query taken with the store's config
    torch.testing.assert_close(store.read(), pipeline.query_features(ckpt, examples, back), rtol=1e-5, atol=1e-6)
    s1 = pipeline.query_features(ckpt, examples[:2], pipeline.CaptureConfig("sjlt:48", ["*mlp*"], 32, seed=11))
    assert not torch.allclose(s1, store.read(0, 2))
    with pytest.raises(pipeline.StoreMismatch, match=r"projection sjlt:48,s=3, not sjlt:48"):
        pipeline.check_store(store, config=pipeline.CaptureConfig("sjlt:48", seed=11))
    with pytest.raises(pipeline.StoreMismatch, match=r"\(seed 11\), not sjlt:48,s=3 \(seed 12\)"):
        pipeline.check_store(store, config=pipeline.CaptureConfig("sjlt:48,s=3", seed=12))
    with pytest.raises(pipeline.StoreMismatch, match="modules"):
        pipeline.index(ckpt, examples, root / "sjlt", pipeline.CaptureConfig("sjlt:48,s=3", None, 32, seed=11),
                       resume=True)


def test_a_store_written_before_the_spec_type_still_opens(checkpoint):
    """Stores of the previous layout: the projection in ``meta`` and ``spec`` as kind/k_in/k_out/dim/seed,
    the sampled hash in ``meta["model"]``."""
    ckpt, examples, root = checkpoint
    old = {"kind": "factored", "k_in": 2, "k_out": 3, "dim": 0, "seed": 5}
    meta = {"projection": old, "projection_str": "factored:2x3", "modules": None, "max_length": 32,
            "model": ckpt.sampled_fingerprint, "model_path": str(ckpt.path), "data": "x", "n_examples": 2}
    feats = pipeline.query_features(ckpt, examples[:2], pipeline.CaptureConfig("factored:2x3", None, 32, seed=5))
    with FeatureStore.create(root / "old", feats.shape[1], "fp32", meta=meta,
                             spec=dict(old, out_dim=feats.shape[1], modules=None, max_length=32, lora_only=False),
                             fingerprint={"name": str(ckpt.path), "sha256": ckpt.sampled_fingerprint}) as store:
        store.append(feats, ids=[e.id for e in examples[:2]])
    store = pipeline.open_store(root / "old")
    config = pipeline.store_config(store)
    assert (config.projection, config.seed, config.max_length) == (Factored(2, 3), 5, 32)
    pipeline.check_store(store, checkpoint=ckpt, config=config)
    torch.testing.assert_close(pipeline.query_features(ckpt, examples[:2], config), store.read())


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8_e4m3", "bf16"])
def test_rows_quantized_before_the_copy_equal_the_store_quantizing_them(checkpoint, fmt):
    """index quantizes on the capture device and appends the quantized rows; the store is the
    one `FeatureStore.append` writes from the float rows (same norms and quantize: bitwise)."""
    ckpt, examples, root = checkpoint
    config = pipeline.CaptureConfig("factored:3x5", None, 32, batch_size=4, seed=2)
    fused = pipeline.index(ckpt, examples, root / f"dev-{fmt}", config, fmt=fmt)
    feats = pipeline.query_features(ckpt, examples, config)
    with FeatureStore.create(root / f"host-{fmt}", feats.shape[1], fmt) as host:
        host.append(feats)
    host = FeatureStore.open(root / f"host-{fmt}")
    (a,), (b,) = list(fused.iter_chunks()), list(host.iter_chunks())
    assert torch.equal(a.data.view(torch.uint8), b.data.view(torch.uint8)) and torch.equal(a.norms, b.norms)
    assert (a.scale is None and b.scale is None) or torch.equal(a.scale, b.scale)


@pytest.mark.parametrize("fmt", ["int8", "int4", "fp8_e4m3"])
def test_quantized_rows_through_the_triton_kernel(monkeypatch, gen, fmt):
    """On a GPU `quantized_rows` runs the Triton quantize (here under TRITON_INTERPRET=1):
    bitwise the reference that `FeatureStore.append` applies on the host."""
    from fasttda._dispatch import triton_import_error, triton_interpreted
    from fasttda.ops.quantize import quantize

    if triton_import_error() or not triton_interpreted():
        pytest.skip("needs triton and TRITON_INTERPRET=1 (as CI runs)")
    feats = torch.randn(6, 37, generator=gen) * torch.rand(6, 1, generator=gen).add(0.1)
    monkeypatch.setenv("FASTTDA_BACKEND", "triton")
    data, scale, norms = pipeline.quantized_rows(feats, fmt)
    ref_data, ref_scale = quantize(feats, fmt, backend="reference")
    assert torch.equal(data.view(torch.uint8), ref_data.view(torch.uint8)) and torch.equal(scale, ref_scale)
    torch.testing.assert_close(norms, feats.double().norm(dim=1).float(), rtol=1e-6, atol=0)

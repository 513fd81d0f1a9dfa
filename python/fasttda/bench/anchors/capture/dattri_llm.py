"""dattri-llm's capture, driven the way its own `GradientStreamer` drives one step.

`dattri_llm.HookManager` with a `CaptureCallback` (the callback its streamer uses), hooked
on the workload's block linears (`HookManagerConfig(linear_io=[pattern])`), projected with
its ``"logra"`` style at rank ``k`` on both factors (dattri's Rademacher `random_project`,
its default projector, whose matrices the manager caches after the first step) and
``capture_style="materialized"``: each backward hook contracts the projected factors into
the per-example ``k × k`` block, so the step leaves one ``[B, k²]`` tensor per layer, the
same output as fasttda's capture. ``include_frozen=True`` so frozen weights are still
captured (dattri-llm skips frozen layers otherwise). One step is what `GradientStreamer`
runs per batch for a frozen probe: ``zero_grad``, ``model(**batch).loss``, ``backward``,
read the record; its DataLoader, seeding and RNG bookkeeping are left out.

dattri-llm's logra projection is one matrix per side with ``proj_dim`` rows, so it only
does equal ranks on both sides (``k_in == k_out``).
"""
from __future__ import annotations

import re
import warnings
from typing import Callable

import torch

from fasttda.bench.anchors import AnchorMissing, need, version
from fasttda.bench.anchors.capture.workload import Batch, Workload, target_modules

IMPL = "dattri-llm.logra"


def installed_version() -> str | None:
    return version("dattri-llm")


def build(model: torch.nn.Module, w: Workload, device: str, *, seed: int = 0) -> Callable[[Batch], object]:
    """Hook ``model`` and return ``step(batch)``, one forward + backward + capture."""
    dattri_llm = need("dattri_llm", "pip install dattri-llm")
    need("dattri.func.projection", "pip install dattri (dattri-llm's default projector)")
    from dattri_llm.gradient.callbacks import CaptureCallback

    if w.k_in != w.k_out:
        raise AnchorMissing(f"dattri-llm's logra style projects both sides to one proj_dim; "
                            f"k_in={w.k_in} != k_out={w.k_out}")
    # An explicit list of names, anchored, so the selection is exactly the suite's modules.
    names = target_modules(model, w.module_pattern)
    projection = {"style": "logra", "proj_dim": w.k_in, "proj_seed": seed, "proj_type": "rademacher",
                  # dattri's CUDA projector wants a multiple of 8
                  "proj_max_batch_size": -(-w.batch // 8) * 8}
    if device == "cuda":
        projection["device"] = "cuda"
    config = dattri_llm.HookManagerConfig(
        linear_io=[f"^{re.escape(name)}$" for name in names],
        projection_kwargs={"__default__": projection},
        capture_style="materialized",
        include_frozen=True,
    )
    capture = CaptureCallback()
    with warnings.catch_warnings():
        # Frozen weights are the point of the frozen rows; dattri-llm warns about them.
        warnings.filterwarnings("ignore", message=".*have no trainable parameter", category=UserWarning)
        manager = dattri_llm.HookManager(model, config=config, callbacks=[capture])
        collecting = manager.collect(deregister_on_exit=True)
        collecting.__enter__()

    def step(batch: Batch):
        model.zero_grad(set_to_none=True)
        capture.record = None
        model(**batch.inputs()).loss.backward()
        record = capture.record
        if record is None:
            raise RuntimeError("dattri-llm captured no step")
        return record.gradient

    step.close = lambda: collecting.__exit__(None, None, None)  # type: ignore[attr-defined]
    step.layers = len(names)  # type: ignore[attr-defined]
    return step

"""fasttda's own capture, through its public API: `fasttda.GradientCapture`.

``GradientCapture(model, modules=["re:<pattern>"], projection=("factored", k_in, k_out))``
opened once; one step is ``cap.features(**batch)``: forward, backward of the summed
per-example losses, and the ``[B, modules · k_out · k_in]`` float32 feature rows.
``options`` are passed through (``freeze=False``, ``hold_inputs=True``, ...) so the suite can
show what each of the capture's choices costs.
"""
from __future__ import annotations

from typing import Callable

import torch

from fasttda.bench.anchors.capture.workload import Batch, Workload
from fasttda.bench.suites._common import fasttda_attr


def build(model: torch.nn.Module, w: Workload, *, seed: int = 0, **options) -> Callable[[Batch], torch.Tensor]:
    capture_cls = fasttda_attr("fasttda.capture", "GradientCapture")
    capture = capture_cls(model, modules=[f"re:{w.module_pattern}"], projection=("factored", w.k_in, w.k_out),
                          seed=seed, **options)
    total = capture.layout.total_dim
    if total != w.feature_dim:
        raise RuntimeError(f"GradientCapture selected {total} feature columns, expected {w.feature_dim} "
                           f"({w.modules} modules × {w.k_out}×{w.k_in})")
    capture.__enter__()

    def step(batch: Batch) -> torch.Tensor:
        return capture.features(**batch.inputs())

    step.close = lambda: capture.__exit__(None, None, None)  # type: ignore[attr-defined]
    step.layers = len(capture.layout.blocks)  # type: ignore[attr-defined]
    return step

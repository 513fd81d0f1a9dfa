"""Bergson's capture, driven one batch at a time the way its `CollectorComputer` does.

`bergson.InMemoryCollector` (its in-memory index builder) with a `GradientProcessor` at
``projection_dim=k`` (per-module, two-sided Rademacher ``k × k``, Bergson's default
projection) on the workload's block linears. One step is the body of
`CollectorComputer.run_with_collector_hooks` for one batch: fetch the rows from the
`datasets.Dataset`, `pad_and_tensor`, ``with collector.with_batch(mask)`` (which registers
the hooks and removes them on exit), Bergson's own forward/backward (`fwd_bwd_factory`,
per-example summed cross-entropy), then ``collector.process_batch`` (copy the per-module
``[B, k²]`` blocks into the builder's buffer). Its tqdm bar, profiler and the final
``torch.save`` of the token count are left out; no launcher or process group is needed.

Bergson projects both sides of a module to the same ``projection_dim`` (``k_in == k_out``).
"""
from __future__ import annotations

import tempfile
from typing import Callable

import torch

from fasttda.bench.anchors import AnchorMissing, need, version
from fasttda.bench.anchors.capture.workload import Batch, Workload, target_modules

IMPL = "bergson"


def installed_version() -> str | None:
    return version("bergson")


def build(model: torch.nn.Module, w: Workload, batches: list[Batch], device: str, *,
          seed: int = 0) -> Callable[[Batch], object]:
    """Set up Bergson's collector over ``batches`` (their rows form its dataset); return
    ``step(batch)``, one forward + backward + capture + store into the in-memory index."""
    bergson = need("bergson", "pip install bergson")
    datasets = need("datasets", "pip install datasets (a bergson dependency)")
    from bergson.collector.collector import fwd_bwd_factory
    from bergson.data import pad_and_tensor

    if w.k_in != w.k_out:
        raise AnchorMissing(f"bergson projects both sides to one projection_dim; "
                            f"k_in={w.k_in} != k_out={w.k_out}")
    rows = [None] * sum(len(b.rows) for b in batches)
    for b in batches:
        for row, ids in zip(b.rows, b.input_ids.tolist()):
            rows[row] = ids
    data = datasets.Dataset.from_dict({"input_ids": rows})
    run_dir = tempfile.TemporaryDirectory(prefix="fasttda-bench-bergson-")
    cfg = bergson.IndexConfig(run_path=run_dir.name, projection_dim=w.k_in, projection_type="rademacher",
                              projection_seed=seed)
    processor = bergson.GradientProcessor(projection_dim=w.k_in, projection_type="rademacher",
                                          projection_seed=seed)
    collector = bergson.InMemoryCollector(model=model, data=data, cfg=cfg, processor=processor,
                                          target_modules=set(target_modules(model, w.module_pattern)))
    if len(collector.target_info) != w.modules:
        raise RuntimeError(f"bergson found {len(collector.target_info)} target modules, expected {w.modules}")
    forward_backward = fwd_bwd_factory(cfg)
    model_device = torch.device(device)

    def step(batch: Batch):
        example = data[batch.rows]
        x, y, _, collection_mask = pad_and_tensor(example["input_ids"], labels=example.get("labels"),
                                                  device=model_device, sync_max_len=False)
        with collector.with_batch(collection_mask):
            losses = forward_backward(model, x, y, example)
        collector.process_batch(batch.rows, losses=losses)

    step.close = run_dir.cleanup  # type: ignore[attr-defined]
    step.layers = len(collector.target_info)  # type: ignore[attr-defined]
    return step

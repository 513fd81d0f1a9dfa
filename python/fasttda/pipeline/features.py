"""Features in, stores out: capture a data set's per-example gradients at one checkpoint.

`index` quantizes them on the capture device and writes the quantized rows into a
`FeatureStore` whose manifest records the `CaptureConfig`
(as ``spec``), the weights' SHA-256 (as ``fingerprint``) and where the rows came from
(``meta``); `query_features` computes the same features for queries; `check_store` and
`store_config` read a store back and refuse one that does not match.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import torch

from fasttda.capture import GradientCapture, Projection
from fasttda.data import Example, batches, contrast_references, data_fingerprint, encode, pad_id_of
from fasttda.pipeline.checkpoints import Checkpoint
from fasttda.ops.quantize import quantize
from fasttda.store import FeatureStore
from fasttda.store._tensors import row_norms

DEFAULT_PROJECTION = "factored:16x16"


class StoreMismatch(ValueError):
    """A store that does not belong to this model, projection or data set."""


@dataclass
class CaptureConfig:
    """Everything that fixes what a feature row means; a store records it as its ``spec``.

    ``projection`` is a `fasttda.capture.Projection` or anything ``Projection.parse``
    reads (``"factored:16x16"``, ``"sjlt:8192,s=4"``, ...); ``batch_size`` only sets the
    speed and is not recorded.
    """
    projection: Projection | str | None = DEFAULT_PROJECTION
    modules: list[str] | None = None
    max_length: int = 512
    batch_size: int = 16
    seed: int = 0

    def __post_init__(self):
        self.projection = Projection.parse(self.projection)
        if self.modules is not None:
            self.modules = list(self.modules)

    def spec(self, out_dim: int, *, lora_only: bool) -> dict:
        """The manifest ``spec``: the projection's fields plus the seed, width and capture options."""
        return {**self.projection.to_dict(), "seed": self.seed, "out_dim": out_dim, "modules": self.modules,
                "max_length": self.max_length, "lora_only": lora_only}

    def capture(self, checkpoint: Checkpoint) -> GradientCapture:
        return GradientCapture(checkpoint.model, modules=self.modules, projection=self.projection, seed=self.seed,
                               lora_only=checkpoint.is_lora)


def store_config(store: FeatureStore, *, batch_size: int = 16) -> CaptureConfig:
    """The `CaptureConfig` a store was built with (stores of older fasttda versions included)."""
    spec = store.spec
    if not isinstance(spec, dict) or not ({"type", "kind"} & set(spec)) or "seed" not in spec:
        raise StoreMismatch(f"store {store.path} records no projection; it was not built by fasttda's index")
    return CaptureConfig(Projection.from_dict(spec), spec.get("modules"), int(spec.get("max_length", 512)),
                         batch_size, int(spec["seed"]))


def open_store(path: str | os.PathLike) -> FeatureStore:
    """Open a store for reading; a one-line error when there is none."""
    if not Path(path).exists():
        raise FileNotFoundError(f"store not found: {path}")
    return FeatureStore.open(path, mode="r")


def check_store(store: FeatureStore, path=None, *, checkpoint: Checkpoint | None = None,
                config: CaptureConfig | None = None, data: str | None = None) -> dict:
    """Raise `StoreMismatch` unless ``store`` was built with this checkpoint, projection
    (and seed) and data set (a `data_fingerprint`); returns the store's ``meta``."""
    path = store.path if path is None else path
    meta = store.meta
    if config is not None:
        built = store_config(store)
        if (built.projection, built.seed) != (config.projection, config.seed):
            seeds = built.seed != config.seed
            raise StoreMismatch(
                f"store {path} was built with projection {built.projection}"
                f"{f' (seed {built.seed})' if seeds else ''}, not {config.projection}"
                f"{f' (seed {config.seed})' if seeds else ''}; rebuild it or use the same projection")
    if checkpoint is not None and meta.get("model_sample", meta.get("model")) != checkpoint.sampled_fingerprint:
        raise StoreMismatch(f"store {path} was built from another model ({meta.get('model_path', '?')}), "
                            f"not {checkpoint.path}")
    if data is not None and meta.get("data") != data:
        raise StoreMismatch(f"store {path} was built from another data set; rebuild it for this one")
    if "n_examples" in meta and len(store) != meta["n_examples"] and data is None:
        raise StoreMismatch(f"store {path} is incomplete ({len(store)} of {meta['n_examples']} rows); "
                            "finish it with --resume (resume=True in Python)")
    return meta


def _progress(total: int, desc: str, enabled: bool):
    from fasttda.progress import bar

    return bar(total, desc, enabled=enabled)


def features(checkpoint: Checkpoint, examples: Sequence[Example], config: CaptureConfig, *, start: int = 0,
             progress: bool = False, desc: str = "features", cap: GradientCapture | None = None
             ) -> Iterator[tuple[int, torch.Tensor]]:
    """Yield ``(row_start, [B, dim] float32)`` for ``examples[start:]`` in order, on the
    model's device (non-finite features raise `FloatingPointError`)."""
    encoded = encode(checkpoint.tokenizer, examples, config.max_length)
    pad = pad_id_of(checkpoint.tokenizer)
    device = next(checkpoint.model.parameters()).device
    with (cap or config.capture(checkpoint)) as cap, _progress(len(examples) - start, desc, progress) as bar:
        row = start
        for batch in batches(encoded, config.batch_size, pad, start=start):
            feats = cap.features(**{k: v.to(device) for k, v in batch.items()}).detach()
            yield row, feats
            row += len(feats)
            bar.update(len(feats))


def query_features(checkpoint: Checkpoint, queries: Sequence[Example], config: CaptureConfig,
                   *, contrast: bool = False, progress: bool = False) -> torch.Tensor:
    """``[Q, dim]`` float32 CPU features of the queries at one checkpoint: the gradient of
    the loss on each response, or on its ``target`` span alone where the query names one.

    With ``contrast``, every query must carry a ``reference`` (the correct output) and its
    feature is g(response) − g(reference), the reference's loss taken on its
    ``reference_target`` span or else on the whole reference: the first-order form of
    DDA's ground/error comparison models (issue 18). It is just another query row, so
    every mode and the one-pass scorer take it as they are; its dot-product score is the
    difference of the two plain scores (a cosine normalizes the difference as a whole).
    """
    name = Path(checkpoint.path).name
    plain = torch.cat([f.to("cpu", torch.float32) for _, f in features(
        checkpoint, queries, config, progress=progress, desc=f"queries @ {name}")])
    if not contrast:
        return plain
    ref = torch.cat([f.to("cpu", torch.float32) for _, f in features(
        checkpoint, contrast_references(queries), config, progress=progress, desc=f"references @ {name}")])
    return (plain.double() - ref.double()).float()


def index(checkpoint: Checkpoint, examples: Sequence[Example], out: str | os.PathLike, config: CaptureConfig,
          *, fmt: str = "fp32", resume: bool = False, progress: bool = False) -> FeatureStore:
    """Write every example's features at ``checkpoint`` into a new store at ``out`` (or
    finish one after a crash with ``resume=True``); returns the store opened for reading."""
    out = Path(out)
    data = data_fingerprint(examples)
    cap = config.capture(checkpoint)
    if out.exists():
        if not resume:
            raise FileExistsError(f"store already exists: {out} (finish it with --resume, resume=True in Python, "
                                  "or choose another path)")
        store = FeatureStore.open(out, mode="append")
        try:
            check_store(store, out, checkpoint=checkpoint, config=config, data=data)
            built = store_config(store)
            if (built.modules, built.max_length) != (config.modules, config.max_length):
                raise StoreMismatch(f"store {out} was built with modules={built.modules} and max_length="
                                    f"{built.max_length}, not modules={config.modules} and max_length="
                                    f"{config.max_length}; resume with the same options")
        except BaseException:
            store.close()
            raise
        start = len(store)
    else:
        store = create_store(out, checkpoint, examples, config, dim=cap.layout.total_dim, fmt=fmt)
        start = 0
    with store:
        for row, feats in features(checkpoint, examples, config, start=start, progress=progress, cap=cap,
                                   desc=f"index @ {Path(checkpoint.path).name}"):
            store.append_quantized(*quantized_rows(feats, store.fmt),
                                   ids=[ex.id for ex in examples[row: row + len(feats)]])
            store.commit()
    return FeatureStore.open(out, mode="r")


def create_store(out: str | os.PathLike, checkpoint: Checkpoint, examples: Sequence[Example], config: CaptureConfig,
                 *, dim: int, fmt: str) -> FeatureStore:
    """A new, empty store for ``examples`` at ``checkpoint``, open for appending, with the
    manifest `index` writes (``spec``, ``fingerprint``, ``meta``); distributed builds join
    their parts into one."""
    meta = {"model_sample": checkpoint.sampled_fingerprint, "model_path": str(checkpoint.path),
            "tokenizer": checkpoint.tokenizer_fingerprint, "data": data_fingerprint(examples),
            "n_examples": len(examples)}
    return FeatureStore.create(out, dim, fmt, meta=meta, spec=config.spec(dim, lora_only=checkpoint.is_lora),
                               fingerprint=checkpoint.fingerprint)


def quantized_rows(feats: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(data, scale, norms)`` of float rows quantized to ``fmt`` on their own device, then
    copied to the host: only the stored bytes (a quarter of float32 for int8) cross.

    The same norms and `fasttda.ops.quantize` that `FeatureStore.append` applies on the CPU,
    so the store holds the same rows (bitwise on the CPU; on a GPU the Triton quantize is
    bitwise equal to the reference, and the norms agree to float32 rounding). Capture sums
    each row from several modules' blocks, so the fused `fasttda.ops.project_quantized`
    (which needs one call to see a whole row) does not apply here.
    """
    norms = row_norms(feats)
    data, scale = quantize(feats, fmt)
    return data.cpu(), None if scale is None else scale.cpu(), norms.cpu()

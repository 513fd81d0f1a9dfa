"""Hugging Face ``Trainer``: capture per-example projected gradients while it trains.

    from fasttda.integrations.hf import AttributionCallback
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[AttributionCallback("grads.store")])
    trainer.train()                      # the training loop is unchanged

fasttda's capture hooks ride along on the trainer's own forward and backward passes: the
forward hook keeps each captured module's (projected) input, the backward hook turns the
output gradient the trainer's backward already computes into the per-example projected
rows. No extra forward, no extra backward, no weight-gradient copy. One row per training
example per optimizer micro-step is appended to a `FeatureStore`.

What a row is: example i's contribution to the gradient of the trainer's loss on its batch
(the trainer's loss normalization included, e.g. the mean over the batch's tokens), at the
weights of that step. Score with ``normalize=True`` (cosine) to factor the normalization out.

Ids are ``"<global_step>:<micro_step>:<position>:<sha256 of the input_ids>[:16]"`` (the
trainer's sampler decides the order; the content hash names the example wherever it lands,
as dattri-llm does). Rows are committed at every checkpoint save and at the end of training,
so a run resumed from a checkpoint (``trainer.train(resume_from_checkpoint=...)``) continues
the store from exactly that step; a store holding steps past the checkpoint is refused.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from fasttda.capture.hooks import CaptureHooks
from fasttda.store import FeatureStore

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - the [hf] extra is missing
    raise ImportError("fasttda.integrations.hf needs transformers: pip install 'fasttda[hf]'") from exc


class AttributionCallback(TrainerCallback):
    """Append per-example projected gradients of every training step to ``store_path``.

    Args:
        store_path: the store (created on first use; reopened in append mode on resume).
        projection: fasttda capture projection: ``"factored"`` (16×16 per module),
            ``("factored", k_in, k_out)`` or ``("dense", k)``.
        modules: which modules to capture (globs / ``"re:"`` patterns; None: all Linear/Conv1D
            but the output embedding).
        seed: projection seed (numpy integers accepted).
        fmt: stored format (``fp16``, ``bf16``, ``fp32``, ``int8``, ...).
        every: capture every ``every``-th optimizer step (1: all).
    """

    def __init__(self, store_path, projection="factored", *, modules=None, seed: int = 0, fmt: str = "fp16",
                 every: int = 1, backend: str | None = "auto"):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        self.store_path, self.projection, self.modules = Path(store_path), projection, modules
        self.seed, self.fmt, self.every, self.backend = seed, fmt, every, backend
        self.hooks: CaptureHooks | None = None
        self.store: FeatureStore | None = None
        self._ids: list[str] = []
        self._pre = None
        self._micro = 0
        self._step = 0

    # -- trainer events ---------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.hooks = CaptureHooks(model, self.modules, projection=self.projection, seed=self.seed,
                                  backend=self.backend)
        self._open_store(state.global_step)
        self.hooks.attach()
        self._pre = model.register_forward_pre_hook(self._record_inputs, with_kwargs=True)
        self._step, self._micro = state.global_step, 0

    def on_step_begin(self, args, state, control, **kwargs):
        self._step, self._micro = state.global_step, 0
        self._active = state.global_step % self.every == 0

    def on_substep_end(self, args, state, control, **kwargs):
        self._collect()

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._collect()

    def on_save(self, args, state, control, **kwargs):
        if self.store is not None:
            self.store.commit()

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        """Commit what was captured and remove the hooks (called at the end of training)."""
        if self._pre is not None:
            self._pre.remove()
            self._pre = None
        if self.hooks is not None:
            self.hooks.detach()
            self.hooks = None
        if self.store is not None:
            self.store.commit()
            self.store.close()
            self.store = None

    # -- internals ----------------------------------------------------------------------------
    _active = True

    def _open_store(self, global_step: int) -> None:
        layout = self.hooks.layout
        meta = {"source": "fasttda.integrations.hf.AttributionCallback", "layout": layout.to_dict(),
                "ids": "global_step:micro_step:position:sha256(input_ids)[:16]"}
        if (self.store_path / "manifest.json").is_file():
            store = FeatureStore.open(self.store_path, mode="append")
            if store.dim != layout.total_dim or store.meta.get("layout") != meta["layout"]:
                store.close()
                raise ValueError(f"store at {self.store_path} was captured with another layout/projection")
            last = int(store.ids_at([len(store) - 1])[0].split(":")[0]) if len(store) else -1
            if last >= global_step:
                store.close()
                raise ValueError(f"store at {self.store_path} holds rows of step {last}, past the checkpoint's step "
                                 f"{global_step}: resume from the latest checkpoint, or start a new store")
            self.store = store
        else:
            self.store = FeatureStore.create(self.store_path, layout.total_dim, self.fmt, meta=meta)

    def _record_inputs(self, module, args, kwargs):
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        if torch.is_grad_enabled() and isinstance(input_ids, torch.Tensor):
            self.hooks.set_token_mask(mask)
            ids = input_ids.detach().cpu()
            keep = mask.detach().cpu().bool() if isinstance(mask, torch.Tensor) else torch.ones_like(ids, dtype=torch.bool)
            self._ids = [f"{self._step}:{self._micro}:{i}:"
                         + hashlib.sha256(row[k].numpy().tobytes()).hexdigest()[:16]
                         for i, (row, k) in enumerate(zip(ids, keep))]
        return None

    def _collect(self) -> None:
        if self.hooks is None:
            return
        try:
            feats = self.hooks.pop_features()
        except RuntimeError:  # no forward under grad this micro-step (nothing to capture)
            return
        self._micro += 1
        if self._active:
            self.store.append(feats, ids=self._ids)

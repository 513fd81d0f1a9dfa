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

Cost per step on the training thread: the hooks' projections (matrices generated once and
reused) and a hand-over; nothing reads device memory on the host there (no host sync).
A writer thread does the rest, off the training thread: the attention-mask check, quantizing
on the device (so only the stored bytes cross to the host), hashing the ids and appending to
the store, at most ``queue`` micro-steps behind. An error found there (a NaN row, a full disk,
a mask holding values other than 0/1) is raised on the training thread at the next
micro-step, save or end of training, naming the offending ids; nothing of that batch is
written. `fasttda bench --suite hf` measures the overhead against plain training.
"""
from __future__ import annotations

import hashlib
import queue as _queue
import threading
from pathlib import Path

import torch

from fasttda.capture.hooks import CaptureHooks
from fasttda.store import FeatureStore

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - the [hf] extra is missing
    raise ImportError("fasttda.integrations.hf needs transformers: pip install 'fasttda[hf]'") from exc


class _Writer:
    """One thread appending (features, inputs) batches to the store in order; errors are kept
    and handed to the training thread by `check`."""

    def __init__(self, store: FeatureStore, depth: int):
        self.store, self.error = store, None
        self.jobs: _queue.Queue = _queue.Queue(maxsize=depth)
        self.thread = threading.Thread(target=self._loop, name="fasttda-hf-writer", daemon=True)
        self.thread.start()

    def put(self, feats, inputs) -> None:
        self.check()
        self.jobs.put((feats, inputs))

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            try:
                if job is None:
                    return
                if self.error is None:
                    feats, inputs = job
                    self.store.append(feats, ids=_row_ids(*inputs))
            except BaseException as exc:  # handed to the training thread
                self.error = exc
            finally:
                self.jobs.task_done()

    def check(self) -> None:
        if self.error is not None:
            exc, self.error = self.error, None
            raise exc

    def flush(self) -> None:
        """Wait until every batch handed over is appended; raise the first error."""
        self.jobs.join()
        self.check()

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join()


def _row_ids(input_ids, mask, step: int, micro: int) -> list[str]:
    ids = input_ids.detach().cpu()
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu()
        if mask.dtype != torch.bool and bool(((mask != 0) & (mask != 1)).any()):
            raise ValueError(f"attention_mask of step {step} must hold only 0 and 1")
        keep = mask != 0
    else:
        keep = torch.ones_like(ids, dtype=torch.bool)
    return [f"{step}:{micro}:{i}:" + hashlib.sha256(row[k].numpy().tobytes()).hexdigest()[:16]
            for i, (row, k) in enumerate(zip(ids, keep))]


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
        queue: micro-steps the writer thread may lag behind (bounds the memory held).
    """

    def __init__(self, store_path, projection="factored", *, modules=None, seed: int = 0, fmt: str = "fp16",
                 every: int = 1, backend: str | None = "auto", queue: int = 4):
        for name, value in (("every", every), ("queue", queue)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.queue = queue
        self._writer: _Writer | None = None
        self._inputs = None
        self.store_path, self.projection, self.modules = Path(store_path), projection, modules
        self.seed, self.fmt, self.every, self.backend = seed, fmt, every, backend
        self.hooks: CaptureHooks | None = None
        self.store: FeatureStore | None = None
        self._pre = None
        self._micro = 0
        self._step = 0

    # -- trainer events ---------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.hooks = CaptureHooks(model, self.modules, projection=self.projection, seed=self.seed,
                                  backend=self.backend)
        self._open_store(state.global_step)
        self._writer = _Writer(self.store, self.queue)
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
            self._writer.flush()
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
            try:
                self._writer.flush()
                self.store.commit()
            finally:
                self._writer.stop()
                self._writer = None
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
            # a bool mask needs no value check here (a host sync); the writer checks the original
            self.hooks.set_token_mask(mask != 0 if isinstance(mask, torch.Tensor) else None)
            self._inputs = (input_ids, mask, self._step, self._micro)
        return None

    def _collect(self) -> None:
        if self.hooks is None:
            return
        try:  # the store's append rejects non-finite rows (in the writer): no check, no sync here
            feats = self.hooks.pop_features(check_finite=False)
        except RuntimeError:  # no forward under grad this micro-step (nothing to capture)
            return
        self._micro += 1
        if self._active:
            self._writer.put(feats, self._inputs)
        else:
            self._writer.check()

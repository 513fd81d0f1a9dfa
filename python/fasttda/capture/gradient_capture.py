"""`GradientCapture`: a model and a batch in, per-example projected gradient features out.

    with fasttda.GradientCapture(model, modules=["*.mlp.*"], projection=("factored", 16, 16)) as cap:
        feats = cap.features(**batch)          # [B, cap.layout.total_dim] float32

While the context is open the model is in eval mode (dropout off, so features are
deterministic) and no parameter requires grad: autograd computes only the output
gradients the hooks need, never a weight-gradient matmul. Both are restored on exit.

Capture is not compiled. A ``torch.compile``d model is captured through its original
module (``model._orig_mod``), run eagerly, so its features are the eager ones: the hooks
keep per-call Python state (what each module's output gradient will need, keyed by call,
and a tensor hook registered on every captured output) and test grad and inference mode,
and Dynamo breaks the graph at each of these (torch 2.13: ``is_inference_mode_enabled``,
the seeds' ``int.to_bytes``), so a compiled forward would run as many small graphs with
the hooks in Python between them; its module names would also gain an ``_orig_mod.``
prefix, which changes every module's seed. What the hooks call are the custom ops
``torch.ops.fasttda.*``, which compile as single nodes (see `fasttda.ops._library`).
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch
from torch import nn

from fasttda.capture.hooks import CaptureHooks
from fasttda.capture.wrappers import unwrap_parallel
from fasttda.ops._checks import as_token_mask
from fasttda.capture.loss import default_labels, per_example_loss, position_ids_from_mask


class GradientCapture:
    """Per-example gradient features of a (Hugging Face) causal LM, one batch at a time.

    Captures ``torch.nn.Linear``, Hugging Face ``Conv1D`` and PEFT LoRA adapter Linears;
    embeddings and norms are not captured (yet). Columns follow ``named_modules`` order;
    `layout` maps each module name to its column slice (see `CaptureLayout`).

    Args:
        model: the model; ``model(**inputs)`` must return an object with ``.logits`` unless
            ``loss_fn`` reads the outputs itself.
        modules: None (all capturable but the output embedding), a glob or ``"re:"``
            pattern, or a list of them.
        projection: None (raw per-example gradients, each module's block is its weight
            gradient flattened in the weight's own layout, ``[out, in]`` for Linear and
            ``[in, out]`` for Conv1D, then the bias when included) or `Raw`, ``"factored"``
            (16×16), ``("factored", k_in[, k_out])`` or `Factored`, ``("dense", k)`` or
            `Dense`, or any text `Projection.parse` reads (``"sjlt:8192,s=4"``).
        seed: global seed. Factored blocks use ``module_seed(seed, name)`` (blake2b of the
            name keyed by the seed), which `ops.project_factored` splits into P_in/P_out
            seeds; dense uses ``seed`` for one matrix over all selected parameters, each
            module at its parameter offset. Same model and seed, same features, any machine.
        lora_only: capture only the PEFT LoRA ``lora_A``/``lora_B`` adapters.
        include_bias: include bias gradients (a column of ones on x for factored).
        loss_fn: ``loss_fn(outputs, batch) -> Tensor[B]`` of per-example losses (or a
            scalar that is already a sum over examples). Default: `per_example_loss` on
            the labels (tokens labelled -100 and padding do not count).
        freeze: stop parameters from requiring grad during capture (the speed trick).
        hold_inputs: see `CaptureHooks`.
        backend: backend of the projection ops.
    """

    def __init__(self, model: nn.Module, modules=None, *, projection="factored", seed: int = 0,
                 lora_only: bool = False, include_bias: bool = False,
                 loss_fn: Callable | None = None, freeze: bool = True, hold_inputs: bool = False,
                 backend: str | None = "auto"):
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        model = _uncompiled(unwrap_parallel(_uncompiled(model)))  # DDP: the inner module, under its own names
        self.hooks = CaptureHooks(model, modules, projection=projection, seed=seed, lora_only=lora_only,
                                  include_bias=include_bias, hold_inputs=hold_inputs, backend=backend)
        self.model = model
        self.loss_fn = loss_fn
        self.freeze = freeze
        self._saved: tuple | None = None
        self.last_losses: torch.Tensor | None = None  # per-example losses of the last features() call
        self._forward_params = _forward_parameters(model)

    @property
    def layout(self):
        return self.hooks.layout

    def __enter__(self) -> "GradientCapture":
        if self._saved is not None:
            raise RuntimeError("this GradientCapture is already open")
        modes = [(m, m.training) for m in self.model.modules()]
        grads = [(p, p.requires_grad) for p in self.model.parameters()]
        self._saved = (modes, grads)
        self.model.eval()
        if self.freeze:
            for p, _ in grads:
                p.requires_grad_(False)
        self.hooks.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.detach()
        modes, grads = self._saved
        for p, flag in grads:
            p.requires_grad_(flag)
        for m, flag in modes:
            m.training = flag
        self._saved = None

    def features(self, **batch) -> torch.Tensor:
        """Run forward and backward on ``batch`` and return ``[B, layout.total_dim]`` float32.

        ``batch`` holds ``input_ids`` ``[B, T]``, optionally ``attention_mask`` (1 = real
        token; left or right padding) and ``labels`` (-100 = not counted; default: the
        input ids, -100 at padding), plus any other model inputs. Unless given,
        ``position_ids`` are counted over real tokens, so an example gets the same features
        alone or left-padded in a batch. The per-example losses are kept in `last_losses`.
        """
        if self._saved is None:
            raise RuntimeError("GradientCapture.features() must be called inside `with GradientCapture(...) as cap:`")
        inputs, labels, mask = self._model_inputs(batch)
        self.hooks.set_token_mask(mask)
        try:
            with torch.enable_grad():
                outputs = self.model(**inputs)
                losses = self._losses(outputs, batch, labels, mask)
                self.last_losses = losses.detach()
                total = losses.sum()
                if not total.requires_grad:
                    raise RuntimeError("the loss does not depend on any captured module's output")
                total.backward()
            return self.hooks.pop_features()
        except BaseException:
            self.hooks._reset()
            raise
        finally:
            self.hooks.set_token_mask(None)

    # -- internals ------------------------------------------------------------------------
    def _model_inputs(self, batch: dict):
        if "input_ids" not in batch:
            raise ValueError(f"batch must hold 'input_ids'; got keys {sorted(batch)}")
        input_ids = batch["input_ids"]
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
            raise ValueError(f"input_ids must be an integer [B, T] tensor, got {getattr(input_ids, 'shape', input_ids)!r}")
        mask = batch.get("attention_mask")
        if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != input_ids.shape):
            raise ValueError(f"attention_mask must be a [B, T] tensor like input_ids {tuple(input_ids.shape)}")
        mask = as_token_mask(mask, "attention_mask")
        labels = batch.get("labels")
        if labels is None:
            labels = default_labels(input_ids, mask)
        elif not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape:
            raise ValueError(f"labels must be a [B, T] tensor like input_ids {tuple(input_ids.shape)}")
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if mask is not None and "position_ids" not in inputs and "position_ids" in self._forward_params:
            inputs["position_ids"] = position_ids_from_mask(mask)
        if "use_cache" in self._forward_params:
            inputs.setdefault("use_cache", False)
        return inputs, labels, mask

    def _losses(self, outputs, batch, labels, mask) -> torch.Tensor:
        B = batch["input_ids"].shape[0]
        if self.loss_fn is None:
            logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
            return per_example_loss(logits, labels, mask)
        losses = self.loss_fn(outputs, batch)
        if not isinstance(losses, torch.Tensor) or tuple(losses.shape) not in ((B,), ()):
            raise ValueError(f"loss_fn must return a [B] = [{B}] tensor of per-example losses (or their sum), "
                             f"got {getattr(losses, 'shape', type(losses).__name__)!r}")
        return losses


def _uncompiled(model):
    """The module a ``torch.compile`` wrapper runs (the wrapper itself is never traced here)."""
    if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        return model._orig_mod
    return model


def _forward_parameters(model: nn.Module) -> set[str]:
    """Keyword names ``model.forward`` accepts; ``**kwargs`` is taken to accept anything."""
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return set()
    names = {p.name for p in params}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        names |= {"position_ids", "use_cache"}
    return names

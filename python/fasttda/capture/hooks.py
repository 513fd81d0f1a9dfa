"""`CaptureHooks`: the low-level hook API, usable inside any training or evaluation loop.

Forward hooks on each captured module keep what its projection needs from the input x
and register a hook on the output tensor; when autograd delivers the output gradient dy,
the module's per-example block is computed at once and added to a float32 ``[B, total_dim]``
buffer, and x (or its projection) and dy are dropped. Parameters never need ``.grad``:
a module whose output does not require grad (frozen weights, no grad-requiring input)
has its output made to require grad, so autograd computes dy without any
weight-gradient matmul.

    hooks = CaptureHooks(model, modules=["*.mlp.*"], projection=("factored", 16))
    with hooks:                                    # installs; removes on exit
        hooks.set_token_mask(batch["attention_mask"])
        losses = per_example_loss(model(**inputs).logits, batch["labels"], batch["attention_mask"])
        losses.sum().backward()                    # your optimizer step may follow
        feats = hooks.pop_features()               # [B, hooks.layout.total_dim]

Features are gradients of whatever was backpropagated: backprop a *sum* of per-example
losses (a batch mean scales every row by 1/B). Inputs must be batch-first; tokens are all
dimensions between the batch and the feature dimension.

Memory beyond what autograd holds: with the factored projection, ``[B, tokens, k_in]``
per captured module (x is projected in the forward hook) plus one module's dy at a time;
with ``hold_inputs=True``, raw ``dense`` or raw (None) projections, each captured module's
x until its dy arrives (what plain training would hold), and one module's per-example
gradient rows at a time. Gradient checkpointing in training mode is refused: its
recomputed forward would be recorded twice.
"""
from __future__ import annotations

import torch
from torch import nn

from fasttda.capture import projection as proj
from fasttda.capture.matrices import MatrixCache
from fasttda.ops._checks import as_token_mask
from fasttda.capture.modules import CaptureLayout, ModuleBlock, module_dims, module_seed, select_modules
from fasttda.ops._checks import check_seed
from fasttda.capture.wrappers import unwrap_parallel


def build_layout(selected, projection, seed: int, include_bias: bool) -> CaptureLayout:
    blocks, start, param_offset = [], 0, 0
    for name, module, kind, lora in selected:
        d_in, d_out = module_dims(module, kind)
        bias = bool(include_bias and getattr(module, "bias", None) is not None)
        numel = d_in * d_out + (d_out if bias else 0)
        width = projection.width(numel)
        if isinstance(projection, proj.Dense):
            block_seed, lo = seed, 0
        else:
            block_seed, lo = module_seed(seed, name), start
            start += width
        blocks.append(ModuleBlock(name, kind, lora, d_in, d_out, bias, block_seed, param_offset, numel,
                                  lo, lo + width, projection.block_shape(kind, d_in, d_out)))
        param_offset += numel
    total = projection.k if isinstance(projection, proj.Dense) else start
    return CaptureLayout(tuple(blocks), total, projection.to_dict(), seed)


class CaptureHooks:
    """Per-example gradient features from hooks, for any loop that runs forward and backward.

    Args:
        model: any ``torch.nn.Module`` (a Hugging Face or PEFT model, or your own).
        modules: None (all Linear/Conv1D but the output embedding), a glob/``"re:"`` name
            pattern, or a list of them; see `select_modules`.
        projection: a `Projection` spec (`Factored`, `Dense`, `Raw`), None (raw per-example
            gradients), ``"factored"`` (16×16), ``("factored", k_in[, k_out])``,
            ``("dense", k)``, or text such as ``"sjlt:8192,s=4"`` (see `Projection.parse`).
        seed: global seed in [0, 2**64); module seeds are ``module_seed(seed, name)``.
        lora_only: capture only PEFT LoRA ``lora_A``/``lora_B`` adapters.
        include_bias: add each module's bias gradient (for factored: x gets a column of ones).
        hold_inputs: factored only: keep raw x until backward and use the fused kernel
            `ops.project_factored` (faster on GPU, more memory) instead of projecting x in
            the forward hook.
        backend: backend for the ops (``"auto"``, ``"reference"``, ``"triton"``, ``"cuda"``).
    """

    def __init__(self, model: nn.Module, modules=None, *, projection="factored", seed: int = 0,
                 lora_only: bool = False, include_bias: bool = False, hold_inputs: bool = False,
                 backend: str | None = "auto"):
        seed = check_seed(seed)  # numpy integers too; stored as a plain int in the layout
        self.projection = proj.Projection.parse(projection)
        if hold_inputs and not isinstance(self.projection, proj.Factored):
            raise ValueError("hold_inputs=True only applies to the factored projection")
        model = unwrap_parallel(model)
        selected = select_modules(model, modules, lora_only=lora_only)
        self.model = model
        self.layout = build_layout(selected, self.projection, seed, include_bias)
        self.hold_inputs = hold_inputs
        self.backend = backend
        self._modules = [(block, sel[1]) for block, sel in zip(self.layout.blocks, selected)]
        self._handles: list = []
        self._token_mask: torch.Tensor | None = None
        self._mask_shape: tuple | None = None
        self.matrices = MatrixCache()
        # Modules that read one input tensor, learned from the previous batch: first reader's
        # name -> the readers in call order (see `_kept_input`).
        self._groupable = isinstance(self.projection, proj.Factored) and not hold_inputs
        self._groups: dict[str, tuple[ModuleBlock, ...]] = {}
        self._reset()

    # -- installation -------------------------------------------------------------------
    def attach(self) -> "CaptureHooks":
        if self._handles:
            raise RuntimeError("CaptureHooks are already attached")
        # transformers ≥ 5 renamed the flag and warns on the old name; ask the new one first.
        checkpointing = getattr(self.model, "is_activation_checkpointing", None)
        if checkpointing is None:
            checkpointing = getattr(self.model, "is_gradient_checkpointing", False)
        if checkpointing and self.model.training:
            raise ValueError("gradient checkpointing is on and the model is in training mode: the recomputed "
                             "forward would be captured twice; call model.gradient_checkpointing_disable() "
                             "or model.eval() (GradientCapture does the latter)")
        for block, module in self._modules:
            self._handles.append(module.register_forward_hook(self._forward_hook(block)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._reset()
        self.matrices.clear()
        self._groups = {}

    def __enter__(self) -> "CaptureHooks":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    # -- per batch ----------------------------------------------------------------------
    def set_token_mask(self, mask: torch.Tensor | None) -> None:
        """``[B, T]`` mask (bool, or integer or float 0/1) of the tokens that count; None counts all.

        Applies to the following forward passes. Modules whose inputs have T tokens use it;
        padding must be False here so that nothing at padding positions can leak in.
        """
        mask = as_token_mask(mask, "token mask")
        self._mask_shape = None if mask is None else tuple(mask.shape)
        # A CPU mask that keeps every token changes nothing: drop it (one check per batch; a
        # device mask is kept, as reading it on the host would be a sync).
        all_true = mask is not None and mask.device.type == "cpu" and bool(mask.all())
        self._token_mask = None if all_true else mask

    def pop_features(self, *, check_finite: bool = True) -> torch.Tensor:
        """The ``[B, layout.total_dim]`` float32 features accumulated since the last pop; resets.

        Modules whose output did not reach the loss contribute zeros. Raises if no forward
        was recorded, or if forwards were recorded but no output gradient arrived (the
        backward pass did not run), or (``check_finite``) if a block holds NaN/inf.
        """
        buffer, waiting, arrived = self._buffer, bool(self._pending), self._arrived
        self._reset()  # outputs still waiting never reached the loss: their gradient is zero
        if buffer is None:
            raise RuntimeError("no batch was recorded: run a forward pass (with grad enabled) under the hooks first")
        if waiting and not arrived:
            raise RuntimeError("forward passes were recorded but no gradient arrived: call backward() on the loss")
        if check_finite and not bool(torch.isfinite(buffer).all()):
            bad = [b.name for b in self.layout.blocks if not bool(torch.isfinite(buffer[:, b.columns]).all())]
            raise FloatingPointError(f"non-finite gradient features in modules {bad}")
        return buffer

    # -- internals ------------------------------------------------------------------------
    def _reset(self) -> None:
        for cell in getattr(self, "_pending", {}).values():
            cell.clear()  # a gradient arriving later for a dropped batch is ignored
        self._buffer: torch.Tensor | None = None
        self._pending: dict[int, list] = {}
        self._arrived = False
        self._next_id = 0
        if getattr(self, "_readers", None) is not None:
            self._learn_group()
        self._stash = None  # {block: kept} for the other readers of the input read last
        self._readers = None  # (input tensor, its version, [blocks]) of the input read last

    def _tokens(self, block: ModuleBlock, t: torch.Tensor, width: int) -> torch.Tensor:
        if t.dim() < 2 or t.shape[-1] != width:
            raise ValueError(f"module {block.name!r}: expected a batch-first tensor [B, ..., {width}], "
                             f"got shape {tuple(t.shape)}")
        return t.reshape(t.shape[0], -1, width)

    def _mask_for(self, block: ModuleBlock, x: torch.Tensor):
        if self._mask_shape is None:
            return None
        if self._mask_shape != tuple(x.shape[:2]):
            raise ValueError(f"module {block.name!r} sees [B, tokens] = {tuple(x.shape[:2])} but the token mask "
                             f"is {self._mask_shape}")
        return None if self._token_mask is None else self._token_mask.to(x.device)

    def _kept_input(self, block: ModuleBlock, x_in: torch.Tensor, x: torch.Tensor, mask):
        """What block's backward step needs from its input. Modules that read the same
        input tensor one after the other in the last batch (q/k/v, gate/up) form a group:
        the first one's call projects the input for all of them at once, and the others
        take their part if, and only if, they are called with that very tensor unchanged
        (same object, same version counter); otherwise each projects its own."""
        def kept_for(blocks):
            return proj.keep_input(self.projection, blocks, x, mask, hold_inputs=self.hold_inputs,
                                   backend=self.backend, cache=self.matrices)
        if not self._groupable:
            return kept_for((block,))[0]
        same = self._readers is not None and self._readers[0] is x_in and self._readers[1] == x_in._version
        if same:
            self._readers[2].append(block)
        else:
            self._learn_group()
            self._readers = (x_in, x_in._version, [block])
        stash = self._stash
        if same and stash is not None and block in stash:
            return stash.pop(block)
        group = self._groups.get(block.name, (block,))
        kept = kept_for(group)
        self._stash = dict(zip(group[1:], kept[1:])) or None
        return kept[0]

    def _learn_group(self) -> None:
        """Record the readers of the input read last as a group (or forget a stale one)."""
        if self._readers is not None:
            readers = self._readers[2]
            if len(readers) > 1:
                self._groups[readers[0].name] = tuple(readers)
            else:
                self._groups.pop(readers[0].name, None)
        self._readers = None
        self._stash = None

    def _forward_hook(self, block: ModuleBlock):
        def hook(module, inputs, output):
            if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
                return None
            if not isinstance(output, torch.Tensor) or not inputs or not isinstance(inputs[0], torch.Tensor):
                raise TypeError(f"module {block.name!r}: expected tensor input and output")
            x = self._tokens(block, inputs[0].detach(), block.d_in)
            mask = self._mask_for(block, x)
            self._ensure_buffer(x)
            cell = [self._kept_input(block, inputs[0], x, mask), mask]
            call_id = self._next_id
            self._next_id += 1
            self._pending[call_id] = cell
            if not output.requires_grad:
                output = output.detach().requires_grad_()
            output.register_hook(self._backward_hook(block, call_id, cell))
            return output
        return hook

    def _backward_hook(self, block: ModuleBlock, call_id: int, cell: list):
        def hook(grad):
            if not cell:  # the batch was popped or dropped before this gradient arrived
                return None
            kept, mask = cell
            cell.clear()
            self._pending.pop(call_id, None)
            self._arrived = True
            dy = self._tokens(block, grad.detach(), block.d_out)
            feats = proj.block_features(self.projection, block, kept, dy, mask, hold_inputs=self.hold_inputs,
                                        backend=self.backend, cache=self.matrices)
            self._buffer[:, block.columns] += feats.to(self._buffer.device)
            return None
        return hook

    def _ensure_buffer(self, x: torch.Tensor) -> None:
        B = x.shape[0]
        if self._buffer is None:
            self._buffer = torch.zeros(B, self.layout.total_dim, dtype=torch.float32, device=x.device)
        elif self._buffer.shape[0] != B:
            raise ValueError(f"batch size changed from {self._buffer.shape[0]} to {B} before pop_features()")

"""How one module's per-token factors (x, dy) become its per-example feature block.

Three projections, each a pair of steps around the backward pass:

* `Factored` (LoGra): the forward step projects x to ``[B, N, k_in]`` right away, so only
  that is held until the backward step projects dy and sums ``pdyᵀ px`` over tokens.
  P_in and P_out are generated once per module and kept (`fasttda.capture.matrices`), and
  modules that read the same input tensor project it with one GEMM.
  With ``hold_inputs=True`` x itself is held and the fused kernel
  `fasttda.ops.project_factored` does both projections and the sum in one pass (same
  features, more memory).
* `Dense`: the exact per-example gradient ``Σ_t dy xᵀ`` in the weight's layout, projected
  with `fasttda.ops.project` at the module's parameter offset, a few weight rows at a time;
  summed over modules this is the projection of the flattened gradient of all selected
  parameters.
* `Raw` (``projection=None``): the exact per-example gradient itself, flattened.

All three are `Projection` specs: the one type capture takes and stores record.

Dense and raw hold each module's x from forward to backward.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import lru_cache

import torch

# Functions are imported from their modules: once a submodule such as fasttda.ops.project
# is imported, the package attribute `fasttda.ops.project` is that module, not the function.
from fasttda.ops.project import KINDS as DENSE_KINDS
from fasttda.ops.project import project, projection_matrix
from fasttda.ops.project_factored import KINDS as FACTORED_KINDS
from fasttda.ops.project_factored import factored_seeds as _factored_seeds
from fasttda.ops.project_factored import project_factored

DENSE_CHUNK_ENTRIES = 1 << 22

# The two blake2b side seeds of a module seed, derived once (the hooks ask at every call).
factored_seeds = lru_cache(maxsize=1 << 14)(_factored_seeds)


class Projection:
    """How a per-example gradient becomes a feature row: the one projection spec of fasttda.

    Three shapes, each a frozen dataclass: `Factored` (LoGra blocks, one per module),
    `Dense` (one JL/SJLT projection of the whole selected gradient, SJLT's ``s`` included)
    and `Raw` (no projection). Capture takes one, and a store built by `fasttda.pipeline`
    records ``to_dict()`` (plus the seed) in its manifest's ``spec``, so two stores, or a
    store and a query, are comparable exactly when their specs are equal.

    * ``Projection.parse(value)``: a spec, None (raw), a tuple ``("factored", k_in[, k_out])``
      / ``("dense", k)``, or text: ``factored:16x16``, ``rademacher:8192``, ``gaussian:4096``,
      ``sjlt:8192``, ``sjlt:8192,s=4``, ``factored:16x16,kind=gaussian``, ``none``.
    * ``str(spec)``: the text form, which parses back to an equal spec.
    * ``spec.to_dict()`` / ``Projection.from_dict(d)``: the JSON form a store records
      (``from_dict`` also reads the ``{"kind", "k_in", "k_out", "dim", "seed"}`` form of
      stores written before this type existed).
    """

    type = "?"

    # -- the block each module contributes -----------------------------------------------
    def width(self, block_numel: int) -> int:
        raise NotImplementedError

    def block_shape(self, module_kind: str, d_in: int, d_out: int) -> tuple[int, ...]:
        raise NotImplementedError

    # -- spellings --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"type": self.type, **{f.name: getattr(self, f.name) for f in fields(self)}}

    @staticmethod
    def parse(value) -> "Projection":
        if isinstance(value, Projection):
            return value
        if value is None:
            return Raw()
        if isinstance(value, str):
            return _parse_text(value)
        if isinstance(value, tuple) and value and value[0] in ("factored", "dense"):
            args = value[1:]
            if value[0] == "factored" and len(args) in (1, 2):
                return Factored(*args)
            if value[0] == "dense" and len(args) == 1:
                return Dense(*args)
        raise ValueError(
            "projection must be None, 'factored', ('factored', k_in[, k_out]), ('dense', k), a text spec "
            f"such as 'factored:16x16' or 'sjlt:8192,s=4', or a fasttda.capture.Projection; got {value!r}")

    @staticmethod
    def from_dict(data) -> "Projection":
        """The spec recorded by ``to_dict()`` (extra keys, e.g. a store's seed, are ignored)."""
        if not isinstance(data, dict):
            raise ValueError(f"a projection spec must be a JSON object, got {type(data).__name__}")
        try:
            if data.get("type") in _BY_TYPE:
                cls = _BY_TYPE[data["type"]]
                return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})
            kind = data.get("kind") if "type" not in data else None  # the form of stores before this type
            if kind == "factored":
                return Factored(int(data["k_in"]), int(data["k_out"]))
            if kind in Dense.KINDS:
                return Dense(int(data["dim"]), kind=kind)
            if kind == "none":
                return Raw()
        except (KeyError, TypeError) as exc:
            raise ValueError(f"projection spec {data!r} is malformed ({exc})") from None
        raise ValueError(f"projection spec {data!r} names no known projection type {tuple(_BY_TYPE)}")


@dataclass(frozen=True)
class Factored(Projection):
    """LoGra-style ``k_out × k_in`` block per module (``k_out`` defaults to ``k_in``)."""

    k_in: int = 16
    k_out: int | None = None
    kind: str = "rademacher"

    type = "factored"
    KINDS = FACTORED_KINDS

    def __post_init__(self):
        if self.k_out is None:
            object.__setattr__(self, "k_out", self.k_in)
        for name in ("k_in", "k_out"):
            _check_size(f"Factored.{name}", getattr(self, name))
        if self.kind not in self.KINDS:
            raise ValueError(f"Factored.kind must be one of {self.KINDS}, got {self.kind!r}")

    def width(self, block_numel: int) -> int:
        return self.k_out * self.k_in

    def block_shape(self, module_kind: str, d_in: int, d_out: int) -> tuple[int, ...]:
        return (self.k_out, self.k_in)

    def __str__(self) -> str:
        return f"factored:{self.k_in}x{self.k_out}" + ("" if self.kind == "rademacher" else f",kind={self.kind}")


@dataclass(frozen=True)
class Dense(Projection):
    """One ``[k]`` projection of the whole selected gradient (kinds of `fasttda.ops.project`;
    ``s`` is SJLT's number of nonzeros per input coordinate)."""

    k: int
    kind: str = "rademacher"
    s: int = 1

    type = "dense"
    KINDS = DENSE_KINDS

    def __post_init__(self):
        _check_size("Dense.k", self.k)
        if self.kind not in self.KINDS:
            raise ValueError(f"Dense.kind must be 'rademacher', 'gaussian' or 'sjlt', got {self.kind!r}")
        _check_size("Dense.s", self.s)
        if self.s != 1 and self.kind != "sjlt":
            raise ValueError(f"Dense.s applies to kind='sjlt' only, got s={self.s} with kind={self.kind!r}")

    def width(self, block_numel: int) -> int:
        return self.k

    def block_shape(self, module_kind: str, d_in: int, d_out: int) -> tuple[int, ...]:
        return (self.k,)

    def __str__(self) -> str:
        return f"{self.kind}:{self.k}" + (f",s={self.s}" if self.s != 1 else "")


@dataclass(frozen=True)
class Raw(Projection):
    """No projection: each module's block is its exact per-example weight gradient."""

    type = "raw"

    def width(self, block_numel: int) -> int:
        return block_numel

    def block_shape(self, module_kind: str, d_in: int, d_out: int) -> tuple[int, ...]:
        return (d_out, d_in) if module_kind == "linear" else (d_in, d_out)

    def __str__(self) -> str:
        return "none"


_BY_TYPE = {"factored": Factored, "dense": Dense, "raw": Raw}
_TEXT_USAGE = ("expected factored:KINxKOUT, rademacher:K, gaussian:K, sjlt:K[,s=S] or none "
               "(options: ,kind=gaussian for factored)")


def _check_size(name: str, k) -> None:
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise ValueError(f"{name} must be an int >= 1, got {k!r}")


def _parse_text(text: str) -> Projection:
    head, *options = text.strip().lower().split(",")
    kind, _, size = head.partition(":")
    try:
        opts = dict(o.strip().split("=", 1) for o in options)
        if kind == "factored":
            k_in, _, k_out = size.partition("x") if size else ("16", "", "")
            return Factored(int(k_in), int(k_out) if k_out else None, **{k: v for k, v in opts.items()})
        if kind in DENSE_KINDS:
            extra = {"s": int(opts.pop("s"))} if "s" in opts else {}
            if opts:
                raise ValueError
            return Dense(int(size), kind=kind, **extra)
        if kind in ("none", "raw") and not size and not opts:
            return Raw()
    except (ValueError, TypeError):
        pass
    raise ValueError(f"projection {text!r} not understood: {_TEXT_USAGE}")


def _masked(t: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # where(), not a product: NaN at padding must not leak into the sums.
    return t if mask is None else torch.where(mask[:, :, None], t, torch.zeros((), dtype=t.dtype, device=t.device))


def _work_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _op_dtype(t: torch.Tensor) -> torch.Tensor:
    """The ops take float32/bf16/fp16; float64 models hand them float32."""
    return t.to(torch.float32) if t.dtype == torch.float64 else t


# -- forward step: what each projection holds until the backward pass ---------------------
def keep_input(projection, blocks, x, mask, *, hold_inputs: bool, backend, cache) -> list:
    """x ``[B, N, d_in]`` (detached), read by every module of ``blocks`` → what each one's
    backward step needs. Factored: one GEMM with the blocks' P_in side by side (`MatrixCache`)."""
    if not (isinstance(projection, Factored) and not hold_inputs):
        return [x] * len(blocks)
    B, N, d_in = x.shape
    k = projection.k_in
    bias = [block.bias for block in blocks]
    seeds = tuple(factored_seeds(block.seed)[0] for block in blocks)
    p_in = cache.matrix(seeds, d_in + any(bias), k, projection.kind, x.device, backend)
    if p_in is None:  # too large to keep: each block projects on the fly
        px = torch.cat([_project(x, k, projection.kind, s, backend) for s in seeds], dim=2)
        bias_row = torch.cat([projection_matrix(1, k, kind=projection.kind, seed=s, offset=d_in, device=x.device)[0]
                              for s in seeds]) if any(bias) else None
    else:
        px = torch.mm(x.reshape(B * N, d_in).to(torch.float32), p_in[:d_in]).reshape(B, N, -1)
        bias_row = p_in[d_in] if any(bias) else None
    for i, has_bias in enumerate(bias):
        if has_bias:  # the ones column appended to x: row d_in of P_in
            px[:, :, i * k:(i + 1) * k] += bias_row[i * k:(i + 1) * k]
    px = _masked(px, mask)
    return [px[:, :, i * k:(i + 1) * k] for i in range(len(blocks))]


def _project(t, k, kind, seed, backend):
    """`ops.project` over the tokens of ``t`` ``[B, N, d]`` → ``[B, N, k]``."""
    B, N, d = t.shape
    return project(_op_dtype(t).reshape(B * N, d), k, kind=kind, seed=seed, backend=backend).reshape(B, N, k)


# -- backward step ------------------------------------------------------------------------
def block_features(projection, block, kept, dy, mask, *, hold_inputs: bool, backend, cache) -> torch.Tensor:
    """dy ``[B, N, d_out]`` and the kept input → the module's ``[B, width]`` float32 contribution."""
    if isinstance(projection, Factored):
        if hold_inputs:
            return _fused_factored(projection, block, kept, dy, mask, backend)
        _, seed_out = factored_seeds(block.seed)
        B, N, d_out = dy.shape
        p_out = cache.matrix((seed_out,), d_out, projection.k_out, projection.kind, dy.device, backend)
        if p_out is None:  # too large to keep
            pdy = _project(dy, projection.k_out, projection.kind, seed_out, backend)
        else:
            pdy = torch.mm(dy.reshape(B * N, d_out).to(torch.float32), p_out).reshape(B, N, -1)
        return torch.bmm(_masked(pdy, mask).transpose(1, 2), kept).reshape(B, -1)
    x = _masked(kept.to(_work_dtype(kept)), mask)
    dy = _masked(dy.to(x.dtype), mask)
    if isinstance(projection, Raw):
        return _raw_gradient(block, x, dy).to(torch.float32)
    return _dense_projection(projection, block, x, dy, backend)


def _fused_factored(projection, block, x, dy, mask, backend):
    x = _op_dtype(x)
    if block.bias:
        x = torch.cat([x, torch.ones_like(x[:, :, :1])], dim=2)
    return project_factored(x, _op_dtype(dy).to(x.dtype), k_in=projection.k_in, k_out=projection.k_out,
                                seed=block.seed, mask=mask, kind=projection.kind, backend=backend)


def _weight_rows(block, x, dy, lo, hi):
    """Rows ``[lo, hi)`` of the per-example weight gradient in the weight's layout, ``[B, rows, cols]``."""
    if block.kind == "linear":
        return torch.bmm(dy[:, :, lo:hi].transpose(1, 2), x)
    return torch.bmm(x[:, :, lo:hi].transpose(1, 2), dy)


def _raw_gradient(block, x, dy):
    B = x.shape[0]
    rows = block.d_out if block.kind == "linear" else block.d_in
    parts = [_weight_rows(block, x, dy, 0, rows).reshape(B, -1)]
    if block.bias:
        parts.append(dy.sum(1))
    return torch.cat(parts, dim=1)


def _dense_projection(projection, block, x, dy, backend):
    B = x.shape[0]
    rows, cols = (block.d_out, block.d_in) if block.kind == "linear" else (block.d_in, block.d_out)
    step = max(1, DENSE_CHUNK_ENTRIES // (B * cols))
    out = None
    pieces = [(lo, min(rows, lo + step)) for lo in range(0, rows, step)]
    for lo, hi in pieces:
        g = _weight_rows(block, x, dy, lo, hi).reshape(B, -1)
        part = project(_op_dtype(g), projection.k, kind=projection.kind, seed=_dense_seed(block),
                           offset=block.param_offset + lo * cols, s=projection.s, backend=backend)
        out = part if out is None else out.add_(part)
    if block.bias:
        out.add_(project(_op_dtype(dy.sum(1)), projection.k, kind=projection.kind, seed=_dense_seed(block),
                             offset=block.param_offset + rows * cols, s=projection.s, backend=backend))
    return out


def _dense_seed(block) -> int:
    # Dense projects one concatenated gradient, so every module uses the global seed
    # (stored in the block's `seed` slot by the layout builder) with its own offset.
    return block.seed

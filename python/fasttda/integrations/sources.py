"""Other tools' gradient indexes, read where they lie: validated, zero-copy where possible, nothing unpickled.

* ``trak``: a TRAKer ``save_dir``. TRAK writes ``<save_dir>/<model_id>/{grads,features}.mmap``
  with numpy's ``open_memmap`` (``.npy`` files: header + raw rows), plus ``_is_featurized.mmap``.
  ``grads`` are the projected per-example gradients, ``features`` the finalized
  ``grads (GᵀG)⁻¹`` rows TRAK scores with. The header is parsed without pickle and the file
  must hold exactly the rows it announces (C order, float16/float32).
* ``bergson``: a Bergson index folder, ``info.json`` (``num_grads``, ``grad_sizes``,
  ``base_dtype``) + ``gradients.bin`` (raw ``[num_grads, Σ grad_sizes]`` rows), or a folder of
  such shards (sorted by name), as ``bergson.data.create_index`` / ``load_gradients`` define it.
* ``less``: LESS's ``grads-<n>.pt`` shards / ``all_orig.pt`` (``torch.load(weights_only=True)``,
  which reads them into memory: they are zip archives, not raw rows).
* ``dattri-llm``: a ``GradientStorageManager`` directory written with ``disk_format="memmap"``
  (its default): ``[rank_<r>/]index.jsonl`` lists ``batch_<i>.mmap`` groups, each a raw
  ``.mmap.bin`` plus a ``.mmap.meta`` of primitives (``torch.load(weights_only=True)``, as
  dattri-llm reads it). Rows are per-example ("batch"-indexed), materialized layers
  concatenated in the record's layer order; ids are dattri-llm's sample hashes.

Every file a source reads must lie inside the index folder once symlinks are resolved, and
every size, offset and shape the metadata announces is checked against the files before a
byte is read: a crafted index gets a one-line error naming the file.
"""
from __future__ import annotations

import json
import math
import pickle
import warnings
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

CHUNK_ROWS = 8192
TORCH_OF = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


class Segment:
    """``n`` consecutive rows of a source: ``rows(a, b)`` (a zero-copy view where the format
    allows) and ``ids(a, b)`` (a list, or None for running row numbers)."""

    def __init__(self, n: int, rows: Callable[[int, int], torch.Tensor], ids=None, zero_copy: bool = True):
        self.n, self.rows, self.zero_copy = n, rows, zero_copy
        self.ids = ids or (lambda a, b: None)


class Source:
    """Rows of another tool's index: ``n`` rows of ``dim`` values in ``segments`` laid end to end."""

    def __init__(self, kind: str, path: Path, dim: int, dtype: torch.dtype, segments: list[Segment], info: dict,
                 in_place: str | None = None):
        self.kind, self.path, self.dim, self.dtype, self.segments, self.info = kind, path, dim, dtype, segments, info
        self.n = sum(s.n for s in segments)
        self.in_place = in_place  # None when it can be scored in place, else why not

    def chunks(self, start: int = 0, rows: int = CHUNK_ROWS) -> Iterator[tuple[int, torch.Tensor, list | None]]:
        """``(first_row, rows [m, dim], ids or None)`` from row ``start`` on."""
        base = 0
        for seg in self.segments:
            for s in range(max(start - base, 0), seg.n, rows):
                e = min(s + rows, seg.n)
                yield base + s, seg.rows(s, e), seg.ids(s, e)
            base += seg.n


def inside(root: Path, path: Path, what: str = "file") -> Path:
    """``path`` with symlinks resolved, refused unless it lies inside ``root`` and is a regular file."""
    real, top = path.resolve(), root.resolve()
    if real != top and top not in real.parents:
        raise ValueError(f"{path}: this {what} leads outside the index folder {root} (a symlink or '..'); refused")
    if not real.is_file():
        raise FileNotFoundError(f"{path}: no such {what}")
    return real


def _view(array: np.ndarray) -> torch.Tensor:
    """A read-only numpy map as a torch tensor without a copy (fasttda never writes into it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the given NumPy array is not writable"
        t = torch.from_numpy(array)
    return t.view(torch.bfloat16) if array.dtype == np.uint16 else t


def _count(value, name: str, where: Path, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{where}: {name} must be an int >= {low}, got {value!r}")
    return value


def _exact_size(file: Path, want: int, what: str) -> None:
    got = file.stat().st_size
    if got != want:
        raise ValueError(f"{file}: {what} needs exactly {want} bytes, the file has {got}; refused")


def _array_segment(array: np.ndarray) -> Segment:
    return Segment(array.shape[0], lambda a, b: _view(array[a:b]))


# -- TRAK ---------------------------------------------------------------------------------
def _npy_rows(file: Path) -> np.ndarray:
    """A 2-D float16/float32 C-order ``.npy`` as a read-only memmap, header checked against the size."""
    try:
        with open(file, "rb") as f:
            version = np.lib.format.read_magic(f)
            header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                      else np.lib.format.read_array_header_2_0)(f)  # a literal_eval'd dict: no pickle
            offset = f.tell()
    except (ValueError, OSError, SyntaxError) as exc:
        raise ValueError(f"{file}: not a TRAK .npy memmap ({exc})") from None
    shape, fortran, dtype = header
    if len(shape) != 2 or dtype.newbyteorder("=") not in (np.float16, np.float32) or dtype.byteorder == ">":
        raise ValueError(f"{file}: expected a 2-D little-endian float16/float32 array, got {dtype} {shape}")
    if fortran and shape[0] > 1 and shape[1] > 1:
        raise ValueError(f"{file}: Fortran-ordered array; TRAK writes rows in C order")
    _exact_size(file, offset + math.prod(shape) * dtype.itemsize, f"the header's {dtype} {shape}")
    return np.memmap(file, dtype=dtype.newbyteorder("="), mode="r", offset=offset, shape=shape)


def trak_source(save_dir, *, model_id: int = 0, array: str = "features") -> Source:
    top = Path(save_dir)
    root = top / str(int(model_id))
    if array not in ("features", "grads"):
        raise ValueError(f"array must be 'features' or 'grads', got {array!r}")
    file = root / f"{array}.mmap"
    if not file.exists():
        raise FileNotFoundError(f"path={str(file)!r}: no TRAK {array} memmap for model_id {model_id}")
    rows = _npy_rows(inside(top, file, "TRAK memmap"))
    flags = root / "_is_featurized.mmap"
    if flags.exists():
        done = np.load(inside(top, flags), mmap_mode="r", allow_pickle=False)
        missing = int((np.asarray(done) == 0).sum())
        if missing:
            raise ValueError(f"{flags}: {missing} of {len(done)} training examples were never featurized; "
                             "finish traker.featurize first")
    return Source("trak", file, rows.shape[1], TORCH_OF[rows.dtype.name], [_array_segment(rows)],
                  {"model_id": int(model_id), "array": array})


# -- Bergson ------------------------------------------------------------------------------
BERGSON_DTYPES = {"float16": np.float16, "float32": np.float32, "float64": np.float64, "bfloat16": np.uint16}


def _bergson_shard(top: Path, root: Path):
    info_path = root / "info.json"
    try:
        info = json.loads(inside(top, info_path, "info.json").read_text())
        n, sizes = info["num_grads"], info["grad_sizes"]
        name = info["base_dtype"] if "base_dtype" in info else np.dtype(info["dtype"]["formats"][0]).base.name
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        if isinstance(exc, ValueError) and str(exc).startswith(str(info_path)):
            raise
        raise ValueError(f"{info_path}: not a Bergson index info.json ({type(exc).__name__}: {exc})") from None
    n = _count(n, "num_grads", info_path)
    if not isinstance(sizes, dict) or not sizes:
        raise ValueError(f"{info_path}: grad_sizes must be a non-empty object of module -> size")
    dim = sum(_count(v, f"grad_sizes[{k!r}]", info_path, low=1) for k, v in sizes.items())
    if info.get("attribute_tokens"):
        raise ValueError(f"{info_path}: a per-token Bergson index (attribute_tokens); import a per-example index")
    if name not in BERGSON_DTYPES:
        raise ValueError(f"{info_path}: base_dtype {name!r} is not one of {sorted(BERGSON_DTYPES)}")
    binary = root / "gradients.bin"
    if not binary.exists():
        raise ValueError(f"{binary}: missing (the index lists {n} x {dim} {name})")
    real = inside(top, binary, "gradients.bin")
    _exact_size(binary, n * dim * np.dtype(BERGSON_DTYPES[name]).itemsize, f"num_grads {n} x {dim} {name}")
    rows = np.memmap(real, dtype=BERGSON_DTYPES[name], mode="r", shape=(n, dim)) if n else np.empty((0, dim),
                                                                                                   BERGSON_DTYPES[name])
    return rows, name, sizes


def bergson_source(index_dir) -> Source:
    root = Path(index_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"path={str(root)!r}: no such Bergson index folder")
    roots = [root] if (root / "info.json").exists() else sorted(p for p in root.iterdir() if (p / "info.json").exists())
    if not roots:
        raise FileNotFoundError(f"path={str(root)!r} holds no info.json (and no shard folders with one)")
    shards = [_bergson_shard(root, r) for r in roots]
    names = {s[1] for s in shards}
    dims = {s[0].shape[1] for s in shards}
    if len(names) > 1 or len(dims) > 1:
        raise ValueError(f"{root}: shards disagree on dtype/width: {sorted(names)} {sorted(dims)}")
    name = names.pop()
    why = "float64 rows are not a score format: import them (fasttda import bergson)" if name == "float64" else None
    return Source("bergson", root, dims.pop(), TORCH_OF[name], [_array_segment(s[0]) for s in shards],
                  {"grad_sizes": shards[0][2], "shards": [r.name for r in roots]}, in_place=why)


# -- LESS ---------------------------------------------------------------------------------
def less_source(path) -> Source:
    from fasttda.integrations.less import less_shards, load_less_tensor

    files = less_shards(path)
    heads = [load_less_tensor(f) for f in files]  # LESS shards are small projected rows
    dims = {t.shape[1] for t in heads}
    if len(dims) > 1:
        raise ValueError(f"{path}: LESS shards disagree on dim: {sorted(dims)}")
    segments = [Segment(t.shape[0], lambda a, b, t=t: t[a:b], zero_copy=False) for t in heads]
    return Source("less", Path(path), dims.pop(), heads[0].dtype, segments, {"files": [f.name for f in files]},
                  in_place="LESS's .pt shards are zip archives of pickled tensors, not raw rows: fasttda never "
                           "unpickles, so it reads them into memory with torch.load(weights_only=True); convert "
                           "them once with fasttda import less (a copy)")


# -- dattri-llm ---------------------------------------------------------------------------
def _load_meta(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path}: refused, it holds objects other than primitives ({exc})") from None
    except (RuntimeError, OSError, EOFError) as exc:
        raise ValueError(f"{path}: not a dattri-llm memmap meta ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != 2 or not isinstance(payload.get("records"), list):
        raise ValueError(f"{path}: not a dattri-llm memmap meta of format 2")
    return payload


class _DattriGroup:
    """One ``batch_<i>.mmap`` group: its meta and a read-only map of its ``.bin``."""

    def __init__(self, top: Path, log_dir: Path, handle):
        if not isinstance(handle, str) or not handle.endswith(".mmap"):
            raise ValueError(f"{log_dir / str(handle)}: written with disk_format='pickle' (a pickle, never loaded); "
                             "re-collect with dattri-llm's default disk_format='memmap'")
        self.meta_path, bin_path = log_dir / f"{handle}.meta", log_dir / f"{handle}.bin"
        self.meta = _load_meta(inside(top, self.meta_path, "dattri-llm meta"))
        self.bin_path = inside(top, bin_path, "dattri-llm memmap")
        size = self.bin_path.stat().st_size
        self.buf = np.memmap(self.bin_path, dtype=np.uint8, mode="r") if size else np.empty(0, np.uint8)

    def record(self, idx, n: int) -> list[np.ndarray]:
        """The record's layers as ``[n, width]`` arrays over the map (checked against its size)."""
        records = self.meta["records"]
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(records):
            raise ValueError(f"{self.meta_path}: record index {idx!r} is not one of its {len(records)} records")
        rec, parts = records[idx], []
        try:
            layers, indexing = rec["layers"], rec.get("indexing", {})
            for name, layer in layers.items():
                if layer["kind"] != "dense" or indexing.get(name, "batch") != "batch":
                    raise ValueError(f"{self.meta_path}: layer {name!r} is {layer['kind']}/{indexing.get(name)}; "
                                     "only materialized per-example ('batch') layers are rows")
                parts.append(self._layer(name, layer["parts"]["data"], n))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{self.meta_path}: record {idx} is malformed ({type(exc).__name__}: {exc})") from None
        if not parts:
            raise ValueError(f"{self.meta_path}: record {idx} has no layers")
        return parts

    def _layer(self, name, spec, n: int) -> np.ndarray:
        dtype = {"float16": np.float16, "float32": np.float32, "float64": np.float64,
                 "bfloat16": np.uint16}.get(spec["dtype"])
        if dtype is None:
            raise ValueError(f"{self.meta_path}: layer {name!r} has dtype {spec['dtype']!r}")
        shape = spec["shape"]
        if not isinstance(shape, (list, tuple)) or not shape:
            raise ValueError(f"{self.meta_path}: layer {name!r} has shape {shape!r}")
        dims = [_count(s, f"layer {name!r} shape", self.meta_path) for s in shape]
        off, nbytes = (_count(spec[k], f"layer {name!r} {k}", self.meta_path) for k in ("byte_off", "nbytes"))
        itemsize = np.dtype(dtype).itemsize
        if nbytes != math.prod(dims) * itemsize or off % itemsize or off + nbytes > self.buf.shape[0]:
            raise ValueError(f"{self.meta_path}: layer {name!r} announces {nbytes} bytes at {off} for shape {dims} "
                             f"{spec['dtype']}, which {self.bin_path.name} ({self.buf.shape[0]} bytes) does not hold")
        if dims[0] != n:
            raise ValueError(f"{self.meta_path}: layer {name!r} holds {dims[0]} rows, the index lists {n}")
        width = math.prod(dims[1:])
        return self.buf[off:off + nbytes].view(dtype).reshape(n, width)


def dattri_llm_source(save_dir) -> Source:
    root = Path(save_dir)
    logs = ([root / "index.jsonl"] if (root / "index.jsonl").exists() else []) + sorted(
        root.glob("rank_*/index.jsonl"), key=lambda p: int(p.parent.name.split("_")[1]))
    if not logs:
        raise FileNotFoundError(f"path={str(root)!r}: no dattri-llm index.jsonl (nor rank_*/index.jsonl)")
    groups: dict = {}
    segments, dtypes, widths = [], set(), set()
    for log in logs:
        for lineno, line in enumerate(inside(root, log, "index.jsonl").read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                handle, records = entry["file"], list(entry["records"])
                items = [(r["idx"], list(r["hashes"])) for r in records]
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{log}:{lineno}: not a dattri-llm index line ({exc})") from None
            key = handle
            if key not in groups:
                groups[key] = _DattriGroup(root, root, handle)
            for idx, hashes in items:
                parts = groups[key].record(idx, len(hashes))
                dtypes |= {p.dtype.name for p in parts}
                widths.add(sum(p.shape[1] for p in parts))
                segments.append(_dattri_segment(parts, hashes))
    if not segments:
        raise ValueError(f"{logs[0]}: the dattri-llm index lists no records")
    if len(dtypes) > 1 or len(widths) > 1:
        raise ValueError(f"{root}: records disagree on dtype/width: {sorted(dtypes)} {sorted(widths)}")
    name = dtypes.pop()
    name = "bfloat16" if name == "uint16" else name
    why = "float64 rows are not a score format: import them (fasttda import dattri-llm)" if name == "float64" else None
    return Source("dattri-llm", root, widths.pop(), TORCH_OF[name], segments,
                  {"logs": [str(p.relative_to(root)) for p in logs]}, in_place=why)


def _dattri_segment(parts: list[np.ndarray], hashes: list) -> Segment:
    if len(parts) == 1:  # one layer: rows are a view of the map
        return Segment(len(hashes), lambda a, b: _view(parts[0][a:b]), lambda a, b: hashes[a:b])
    # several layers lie apart in the file: a row is assembled from them, one chunk at a time
    return Segment(len(hashes), lambda a, b: torch.cat([_view(p[a:b]) for p in parts], 1), lambda a, b: hashes[a:b],
                   zero_copy=False)


SOURCES = {"trak": trak_source, "bergson": bergson_source, "less": less_source, "dattri-llm": dattri_llm_source}

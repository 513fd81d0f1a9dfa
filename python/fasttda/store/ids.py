"""Row ids: user ints or strings fixed per store by its first append, or running row indices."""
from __future__ import annotations

import hashlib

import numpy as np
import torch


def normalize_ids(ids, n: int, current: str | None):
    """``(id_kind, values)`` for an append of ``n`` rows to a store whose id kind is ``current``.

    values: an int64 array ("int"), a list of str ("str"), or None ("index": row indices).
    ids must be 1-D and of one kind: all ints (not bools) or all strings (valid UTF-8,
    so no lone surrogates); anything else is refused before a byte is written.
    """
    if ids is None:
        if current in (None, "index"):
            return "index", None
        raise ValueError(f"this store's rows carry {current} ids; pass ids= (n={n}) with every append")
    if isinstance(ids, torch.Tensor):
        ids = ids.cpu().numpy()
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__"):
        raise TypeError(f"ids must be a sequence of {n} ints or strings, got {type(ids).__name__}")
    if isinstance(ids, np.ndarray) and ids.ndim != 1:
        raise ValueError(f"ids must be 1-D (one id per row), got shape {ids.shape}")
    if len(ids) != n:
        raise ValueError(f"ids has {len(ids)} entries for {n} rows")
    kind, values = _classify(ids)
    if current not in (None, kind):
        raise ValueError(f"this store's ids are {current!r}; got {kind} ids"
                         + (" (it was filled with running row indices: pass no ids)" if current == "index" else ""))
    return kind, values


def _classify(ids):
    if isinstance(ids, np.ndarray) and ids.dtype.kind in "iu":
        if ids.dtype.kind == "u" and ids.size and ids.max() > np.iinfo(np.int64).max:
            raise ValueError("ids must fit in int64")
        return "int", ids.astype(np.int64)
    items = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
    if not items:
        return "int", np.empty(0, np.int64)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in items):
        try:
            return "int", np.array([int(v) for v in items], dtype=np.int64)
        except OverflowError:
            raise ValueError("ids must fit in int64") from None
    if all(isinstance(v, str) for v in items):
        for i, v in enumerate(items):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"ids[{i}] = {v!r} is not valid Unicode (a lone surrogate): ids are stored "
                                 "as UTF-8") from None
        return "str", [str(v) for v in items]
    kinds = sorted({type(v).__name__ for v in items})
    if any(isinstance(v, (list, tuple, np.ndarray)) for v in items):
        raise ValueError("ids must be 1-D (one int or string per row), got nested sequences")
    raise TypeError(f"ids must be all ints or all strings, not a mix of {kinds}")


def name_rows(bad: list[int], id_values, first_row: int) -> str:
    """The ids of batch rows ``bad`` for an error message (row indices when the store has no ids)."""
    if id_values is None:
        names = [first_row + i for i in bad]
    else:
        names = [id_values[i] for i in bad]
        names = [v.item() if hasattr(v, "item") else v for v in names]
    return f"{names[:10]}{' ...' if len(names) > 10 else ''}"


def ids_digest(readers, id_kind: str | None, rows: int) -> str:
    """SHA-256 of the ids in row order, independent of how the rows are sharded."""
    h = hashlib.sha256(f"{id_kind}:{rows}:".encode())
    if id_kind == "int":
        for reader in readers:
            h.update(memoryview(np.ascontiguousarray(reader.array("ids"))))
    elif id_kind == "str":
        lengths, blob = hashlib.sha256(), hashlib.sha256()
        for reader in readers:
            if reader.rows:
                lengths.update(np.diff(reader.array("ids_end"), prepend=0).astype("<i8").tobytes())
                blob.update(memoryview(np.ascontiguousarray(reader.array("ids"))))
        h.update(lengths.digest() + blob.digest())
    return h.hexdigest()

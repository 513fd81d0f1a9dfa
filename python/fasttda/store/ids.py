"""Row ids: user ints or strings fixed per store by its first append, or running row indices."""
from __future__ import annotations

import hashlib

import numpy as np
import torch


def normalize_ids(ids, n: int, current: str | None):
    """``(id_kind, values)`` for an append of ``n`` rows to a store whose id kind is ``current``.

    values: an int64 array ("int"), a list of str ("str"), or None ("index": row indices).
    """
    if ids is None:
        if current in (None, "index"):
            return "index", None
        raise ValueError(f"this store's rows carry {current} ids; pass ids= (n={n}) with every append")
    if isinstance(ids, torch.Tensor):
        ids = ids.cpu().numpy()
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__len__"):
        raise TypeError(f"ids must be a sequence of {n} ints or strings, got {type(ids).__name__}")
    if len(ids) != n:
        raise ValueError(f"ids has {len(ids)} entries for {n} rows")
    arr = np.asarray(ids) if n else np.empty(0, np.int64)
    if arr.dtype.kind in "iu":
        if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
            raise ValueError("ids must fit in int64")
        kind, values = "int", arr.astype(np.int64)
    elif arr.dtype.kind == "U" or (arr.dtype.kind == "O" and all(isinstance(v, str) for v in ids)):
        kind, values = "str", [str(v) for v in ids]
    else:
        raise TypeError(f"ids must be all ints or all strings, got numpy dtype {arr.dtype}")
    if current not in (None, kind):
        raise ValueError(f"this store's ids are {current!r}; got {kind} ids"
                         + (" (it was filled with running row indices: pass no ids)" if current == "index" else ""))
    return kind, values


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

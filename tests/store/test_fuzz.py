"""Fuzz the store's reader and writer with damaged and crafted stores (issue 11).

Each case copies a small sound store, applies one to three random mutations (manifest: JSON
edits, type swaps, deletions, huge and negative numbers, deep nesting, garbage; shard files:
truncation, extension, bit flips, swaps, symlinks, FIFOs, directories) and runs ``open`` (each
verify level), ``read``, ``ids``, ``verify`` and ``open(mode="append")`` + ``append`` + ``commit``.
Each must work with exactly the committed rows or raise a documented `StoreError`: never
another exception, never a change outside the store (a sentinel tree next to it, which the
symlinks point into), never a hang (an alarm per case).

Seeded: ``FASTTDA_FUZZ_CASES`` (default 300) cases from ``FASTTDA_FUZZ_SEED`` (default 0).
"""
import copy
import json
import os
import random
import shutil
import signal

import numpy as np
import pytest
import torch

from fasttda import FeatureStore
from fasttda.store import StoreError

CASES = int(os.environ.get("FASTTDA_FUZZ_CASES", "300"))
SEED = int(os.environ.get("FASTTDA_FUZZ_SEED", "0"))
CASE_SECONDS = 20


class Hang(Exception):
    pass


def _build(path, rng, fmt, id_kind):
    n, dim = 11, 5
    x = torch.from_numpy(rng.standard_normal((n, dim)).astype(np.float32))
    ids = {"index": None, "int": list(range(50, 50 + n)), "str": [f"doc-{i}-é" for i in range(n)]}[id_kind]
    with FeatureStore.create(path, dim, fmt, meta={"a": [1, {"b": 2}]}, shard_rows=4) as s:
        s.append(x[:6], ids=None if ids is None else ids[:6])
        s.commit()
        s.append(x[6:], ids=None if ids is None else ids[6:])
    r = FeatureStore.open(path, verify="full")
    return r.read(), _ids(r), json.loads((path / "manifest.json").read_text())


def _ids(store):
    ids = store.ids()
    return ids.tolist() if isinstance(ids, np.ndarray) else list(ids)


def _snapshot(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns, open(p, "rb").read() if os.path.isfile(p) else None)
    return out


# -- mutations ------------------------------------------------------------------------------------------------
def _random_value(rng):
    return rng.choice([
        -1, -(2 ** 70), 2 ** 64, 10 ** 30, 0, True, False, None, 1.5, float("1e308"), "", "../../outside/secret",
        "/etc/passwd", "shard-000000", [], {}, [1, 2], {"rows": 1}, "x" * 300, _deep(rng.randint(30, 800)),
    ])


def _deep(depth):
    v = 0
    for _ in range(depth):
        v = [v]
    return v


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate_manifest(store, rng, outside):
    path = store / "manifest.json"
    try:
        m = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError):
        m = None
    kind = rng.randrange(9)
    if not isinstance(m, dict) or kind == 0:  # raw damage
        raw = path.read_bytes() if path.is_file() and not path.is_symlink() else b"{}"
        choice = rng.randrange(4)
        if choice == 0:
            raw = raw[: rng.randrange(len(raw) + 1)]
        elif choice == 1:
            raw = b"[" * 50000 + b"]" * 50000
        elif choice == 2:
            raw = bytes(rng.randrange(256) for _ in range(64))
        else:
            raw = raw.replace(b"1", b"NaN", 1)
        path.unlink(missing_ok=True)
        path.write_bytes(raw)
        return
    paths = [p for p in _paths(m) if p]
    target = rng.choice(paths)
    parent = m
    for key in target[:-1]:
        parent = parent[key]
    key = target[-1]
    if kind in (1, 2, 3):
        parent[key] = _random_value(rng)
    elif kind == 4:
        del parent[key]
    elif kind == 5 and isinstance(parent[key], int) and not isinstance(parent[key], bool):
        parent[key] = rng.choice([parent[key] + 1, parent[key] - 1, -parent[key], parent[key] * 2 ** 40])
    elif kind == 6 and isinstance(m.get("shards"), list) and m["shards"]:
        s = m["shards"]
        op = rng.randrange(3)
        if op == 0:
            s.append(copy.deepcopy(rng.choice(s)))
        elif op == 1 and len(s) > 1:
            i, j = rng.sample(range(len(s)), 2)
            s[i], s[j] = s[j], s[i]
        else:
            s.pop(rng.randrange(len(s)))
        if rng.random() < 0.5:
            m["rows"] = sum(e.get("rows", 0) for e in s if isinstance(e, dict) and isinstance(e.get("rows"), int))
    elif kind == 7 and isinstance(m.get("shards"), list) and m["shards"]:
        entry = rng.choice(m["shards"])
        files = entry.get("files") if isinstance(entry, dict) else None
        if isinstance(files, dict) and files:
            meta = files[rng.choice(sorted(files))]
            if isinstance(meta, dict):
                meta["file"] = rng.choice(["../../outside/secret", str(outside / "secret"), "shard-000000.data",
                                           "../manifest.json", "shard-000001.norms"])
    else:
        parent[key] = str(parent[key])  # a type swap
    path.write_text(json.dumps(m))


def _mutate_shards(store, rng, outside):
    shards = store / "shards"
    if not shards.is_dir() or shards.is_symlink():
        return
    files = sorted(p for p in shards.iterdir())
    if not files:
        return
    victim = rng.choice(files)
    kind = rng.randrange(9)
    if victim.is_symlink() or not victim.is_file():
        victim.unlink() if victim.is_symlink() else None
        return
    raw = victim.read_bytes()
    if kind == 0:
        os.truncate(victim, rng.randrange(len(raw) + 1))
    elif kind == 1:
        with open(victim, "ab") as f:
            f.write(os.urandom(rng.randrange(1, 40)))
    elif kind == 2 and raw:
        b = bytearray(raw)
        i = rng.randrange(len(b))
        b[i] ^= 1 << rng.randrange(8)
        victim.write_bytes(bytes(b))
    elif kind == 3 and len(files) > 1:
        other = rng.choice([f for f in files if f != victim])
        if other.is_file() and not other.is_symlink():
            a, b = victim.read_bytes(), other.read_bytes()
            victim.write_bytes(b)
            other.write_bytes(a)
    elif kind == 4:  # a link to an outside copy with the same bytes (its hash matches)
        copy_path = outside / "copies" / victim.name
        copy_path.write_bytes(raw)
        victim.unlink()
        victim.symlink_to(copy_path)
    elif kind == 5:
        victim.unlink()
        victim.symlink_to(rng.choice([outside / "secret", outside, outside / "missing"]))
    elif kind == 6:
        victim.unlink()
        if rng.random() < 0.5:
            os.mkfifo(victim)
        else:
            victim.mkdir()
    elif kind == 7:  # the whole shards directory moves outside, a link in its place
        dest = outside / f"shards-{rng.randrange(10 ** 9)}"
        shards.rename(dest)
        shards.symlink_to(dest)
    else:  # a link at the next (uncommitted) shard's name
        for name in ("shard-000009.data", "shard-000003.norms"):
            if not (shards / name).is_dir() or (shards / name).is_symlink():
                (shards / name).unlink(missing_ok=True)
                (shards / name).symlink_to(outside / "secret")


# -- the checks ------------------------------------------------------------------------------------------------
def _semantic(m):
    try:
        return json.dumps({k: m[k] for k in ("dim", "fmt", "id_kind", "rows", "shards")}, sort_keys=True)
    except (KeyError, TypeError, ValueError, RecursionError):
        return None


def _exercise(store, orig, rng):
    """Run every operation; returns the number of operations that succeeded."""
    rows, ids, manifest = orig
    same = None
    ok = 0
    for verify in ("none", "size", "full"):
        try:
            s = FeatureStore.open(store, verify=verify)
            got, got_ids = s.read(), _ids(s)
            s.norms()
            list(s.iter_chunks(3))
            s.verify()
            ok += 1
        except StoreError:
            continue
        if same is None:
            same = _semantic(s.manifest) == _semantic(manifest)
        if same:  # every byte re-hashed and the manifest says what it said: exactly the committed rows
            assert torch.equal(got, rows) and got_ids == ids
        else:
            assert got.shape == (len(s), s.dim) and len(got_ids) == len(s)
    id_kind = manifest["id_kind"]
    new = torch.tensor([[rng.gauss(0, 1) for _ in range(manifest["dim"])] for _ in range(5)])
    new_ids = {"index": None, "int": list(range(900, 905)), "str": [f"new{i}" for i in range(5)]}[id_kind]
    try:
        with FeatureStore.open(store, mode="append") as w:
            before, same = len(w), _semantic(w.manifest) == _semantic(manifest)
            w.append(new, ids=new_ids)
    except StoreError:
        return ok
    ok += 1
    try:  # damage in a shard the writer did not re-hash is still found by a full check
        after = FeatureStore.open(store, verify="full")
        after.verify()
    except StoreError:
        return ok
    assert len(after) == before + 5
    if same:
        assert torch.equal(after.read(0, len(rows)), rows) and _ids(after)[: len(ids)] == ids
    return ok


def _alarm(signum, frame):
    raise Hang()


@pytest.mark.parametrize("fmt, id_kind", [("int8", "str"), ("fp16", "int"), ("int4", "index")])
def test_fuzz_store(tmp_path, fmt, id_kind):
    rng = random.Random(f"{SEED}-{fmt}-{id_kind}")
    nprng = np.random.default_rng(SEED)
    template = tmp_path / "template"
    orig = _build(template, nprng, fmt, id_kind)
    outside = tmp_path / "outside"
    (outside / "copies").mkdir(parents=True)
    (outside / "secret").write_bytes(os.urandom(100))
    old = signal.signal(signal.SIGALRM, _alarm)
    succeeded = refused = 0
    try:
        for case in range(CASES // 3):
            store = tmp_path / f"case{case}"
            shutil.copytree(template, store, symlinks=True)
            for _ in range(rng.randint(1, 3)):
                (_mutate_manifest if rng.random() < 0.5 else _mutate_shards)(store, rng, outside)
            before = _snapshot(outside)
            signal.alarm(CASE_SECONDS)
            try:
                n = _exercise(store, orig, rng)
            except Hang:
                pytest.fail(f"case {case} (seed {SEED}) hung for {CASE_SECONDS} s")
            finally:
                signal.alarm(0)
            succeeded += n > 0
            refused += n < 4
            assert _snapshot(outside) == before, f"case {case} (seed {SEED}) changed a file outside the store"
            shutil.rmtree(store, ignore_errors=True)
    finally:
        signal.signal(signal.SIGALRM, old)
    assert succeeded and refused  # both outcomes were exercised

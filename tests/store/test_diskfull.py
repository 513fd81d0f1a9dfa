"""Issue 11 case 3: a full disk at any write or fsync never corrupts committed rows, and what is
committed after it reads back exactly as appended.

Faults are injected at every ``os.pwrite``/``os.write``/``os.fsync`` call an append or commit
makes, one call at a time (the k-th call raises ENOSPC); a real 64 KiB tmpfs runs too where
this process may mount one.
"""
import errno
import os
import shutil
import subprocess

import pytest
import torch

from fasttda import FeatureStore
from fasttda.ops.quantize import dequantize, quantize

CALLS = ("pwrite", "write", "fsync")


class Faults:
    """Counts the watched calls; when armed, the ``fail_at``-th one raises ENOSPC (once)."""

    def __init__(self, monkeypatch):
        self.count, self.fail_at, self.fired = 0, None, False
        for name in CALLS:
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._wrap(real))

    def _wrap(self, real):
        def call(*args, **kwargs):
            self.count += 1
            if self.fail_at is not None and self.count == self.fail_at:
                self.fired = True
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return real(*args, **kwargs)
        return call

    def arm(self, k):
        self.count, self.fail_at, self.fired = 0, k, False

    def disarm(self):
        self.fail_at, self.armed_calls = None, self.count


def roundtrip(x, fmt):
    data, scale = quantize(x, fmt, backend="reference")
    return dequantize(data, scale, fmt, dim=x.shape[1], backend="reference")


def _scenario(path, faults, k, gen, phase, fmt, ids):
    """Returns (rows that must be committed, the store's final rows) for a fault at call k."""
    x = torch.randn(10, 3, generator=gen)
    a = torch.randn(5, 3, generator=gen) + 4
    b = torch.randn(11, 3, generator=gen) - 4
    y = torch.full((5, 3), 9.0) + torch.rand(5, 3, generator=gen)
    kw = (lambda lo, hi: {"ids": [f"r{i}" for i in range(lo, hi)]}) if ids else (lambda lo, hi: {})
    store = FeatureStore.create(path, 3, fmt, shard_rows=4)
    store.append(x, **kw(0, 10))
    store.commit()
    store.append(a, **kw(10, 15))  # pending when the disk fills
    if phase == "append":
        faults.arm(k)
    try:
        store.append(b, **kw(15, 26))
        appended_b = True
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
        appended_b = False
    faults.disarm()
    if phase == "commit":
        faults.arm(k)
    try:
        store.commit()
    except OSError as exc:
        assert exc.errno == errno.ENOSPC and phase == "commit"
    if phase == "commit":
        faults.disarm()
    committed = len(store)
    # what the store promises: a failed append drops that batch only; a failed commit drops
    # every pending row (unless the manifest was already replaced, then all are committed)
    expected = {10: x, 15: torch.cat([x, a]), 26: torch.cat([x, a, b])}
    assert committed in expected, committed
    if committed == 15:
        assert not appended_b
    assert store.num_pending == 0
    store.append(y, **kw(committed, committed + 5))
    store.commit()
    store.close()
    return torch.cat([expected[committed], y]), committed


@pytest.mark.parametrize("phase, fmt, ids", [("append", "int8", False), ("append", "fp16", True),
                                             ("commit", "int8", True)])
def test_enospc_at_every_write_and_fsync(tmp_path, monkeypatch, gen, phase, fmt, ids):
    faults = Faults(monkeypatch)
    # count the calls the phase makes when nothing fails
    _scenario(tmp_path / "count", faults, None, gen, phase, fmt, ids)
    calls = faults.armed_calls
    assert calls > 4
    seen = set()
    for k in range(1, calls + 1):
        path = tmp_path / f"k{k}"
        want, committed = _scenario(path, faults, k, gen, phase, fmt, ids)
        seen.add(committed)
        r = FeatureStore.open(path, verify="full")
        assert torch.equal(r.read(), roundtrip(want, fmt)), f"fault at call {k}"
        assert r.verify()["rows"] == len(want)
        if ids:
            assert r.ids() == [f"r{i}" for i in range(len(want))]
        # and a later writer resumes it cleanly
        with FeatureStore.open(path, mode="append") as w:
            w.append(want[:1], **({"ids": ["again"]} if ids else {}))
        assert len(FeatureStore.open(path, verify="full")) == len(want) + 1
    # a fault in append drops that batch only; in commit, faults fell before and after the manifest's replace
    assert seen == ({15} if phase == "append" else {10, 26}), (calls, seen)


def _mount_tmpfs(where):
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        return "needs root and mount(8) to mount a 64 KiB tmpfs"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"mounting a tmpfs is not permitted here: {done.stderr.strip() or done.returncode}"
    return None


def test_real_full_tmpfs(tmp_path, gen):
    mnt = tmp_path / "mnt"
    why = _mount_tmpfs(mnt)
    if why:
        pytest.skip(why)
    try:
        store = FeatureStore.create(mnt / "s", 2, "int8")
        x = torch.randn(10, 2, generator=gen)
        store.append(x)
        store.commit()
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 512)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)
        with pytest.raises(OSError) as err:
            store.append(torch.full((3000, 2), 5.0))
            store.commit()
        assert err.value.errno == errno.ENOSPC
        filler.unlink()
        y = torch.full((5, 2), 9.0)
        store.append(y)
        store.commit()
        store.close()
        r = FeatureStore.open(mnt / "s", verify="full")
        assert torch.equal(r.read(), roundtrip(torch.cat([x, y]), "int8"))
        assert torch.equal(r.read(10, 15), torch.full((5, 2), 9.0))
    finally:
        # lazy: the store's memory maps may still hold the mount; it goes once they are freed
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)

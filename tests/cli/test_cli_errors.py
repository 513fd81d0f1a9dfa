"""Every subcommand on each kind of bad input: exit status != 0, no traceback, at most two lines
on stderr, and a message naming the file or argument at fault (issue 11 case 8)."""
from __future__ import annotations

import fractions
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from fasttda import FeatureStore
from fasttda.cli import main
from tiny_models import make_checkpoints, make_rows, one_thread, write_jsonl  # noqa: F401


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    model = make_checkpoints(root / "models", n_epochs=0, seed=3)[0]
    f = {"root": root, "model": model}
    f["data"] = write_jsonl(root / "train.jsonl", make_rows(1, 6))
    f["missing"] = root / "nope.jsonl"
    f["empty"] = root / "empty.jsonl"
    f["empty"].write_text("")
    f["not_utf8"] = root / "latin1.jsonl"
    f["not_utf8"].write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "caf\xe9", "response": "c"}\n')
    f["wrong_schema"] = write_jsonl(root / "schema.jsonl", [{"text": "no prompt here"}])
    # stores: sound, truncated, bad manifests
    for name in ("store", "truncated", "no_key", "deep", "not_utf8_manifest", "locked"):
        with FeatureStore.create(root / name, 4, "fp16", shard_rows=4) as s:
            s.append(torch.randn(6, 4), ids=[f"r{i}" for i in range(6)])
    indexed = CliRunner().invoke(main, [str(a) for a in index_args(f, out=root / "indexed")])
    assert indexed.exit_code == 0, indexed.output
    data = root / "truncated" / "shards" / "shard-000001.data"
    os.truncate(data, data.stat().st_size - 2)
    m = json.loads((root / "no_key" / "manifest.json").read_text())
    del m["shards"][0]["files"]
    (root / "no_key" / "manifest.json").write_text(json.dumps(m))
    (root / "deep" / "manifest.json").write_text("[" * 200000 + "]" * 200000)
    (root / "not_utf8_manifest" / "manifest.json").write_bytes(b"\xff\xfe\x00{")
    f["empty_dir"] = root / "empty_dir"
    f["empty_dir"].mkdir()
    # model directories: pickled non-tensors, a bad adapter_config.json
    pickled = root / "pickled"
    shutil.copytree(model, pickled)
    for p in pickled.glob("*.safetensors"):
        p.unlink()
    torch.save({"model.embed_tokens.weight": fractions.Fraction(1, 3)}, pickled / "pytorch_model.bin")
    f["pickled"] = pickled
    lora = root / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text("{ not json")
    f["lora"] = lora
    return f


def run(args, monkeypatch=None, blocked=()):
    for module in blocked:  # an extra that is not installed
        monkeypatch.setitem(sys.modules, module, None)
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def check(result, *names):
    out = result.output + (result.stderr if hasattr(result, "stderr") else "")
    assert result.exit_code not in (0, None), out
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}:\n{out}"  # click reported it
    assert "Traceback" not in out
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, result.stderr
    assert any(str(n) in result.stderr for n in names), (names, result.stderr)


def index_args(bad, model=None, data=None, out=None, *extra):
    return ["index", "--model", model or bad["model"], "--data", data or bad["data"],
            "--out", out or bad["root"] / "out-never", "--projection", "rademacher:8", "--format", "fp32",
            "--quiet", "--max-length", 32, *extra]


def query_args(bad, store=None, queries=None, model=None):
    return ["query", "--store", store or bad["root"] / "indexed", "--model", model or bad["model"],
            "--queries", queries or bad["data"], "--top-k", 2]


def dda_args(bad, tmp_path, data=None, queries=None, base=None):
    return ["dda", "--base", base or bad["model"], "--checkpoint", bad["model"], "--data", data or bad["data"],
            "--queries", queries or bad["data"], "--out", tmp_path / "dda", "--projection", "rademacher:8",
            "--quiet", "--max-length", 32]


@pytest.mark.parametrize("sub", ["info", "verify"])
@pytest.mark.parametrize("kind", ["missing", "empty_dir", "truncated", "no_key", "deep", "not_utf8_manifest",
                                  "a_file"])
def test_store_commands(bad, sub, kind):
    path = {"missing": bad["root"] / "no-such-store", "empty_dir": bad["empty_dir"], "a_file": bad["data"]}.get(
        kind, bad["root"] / kind)
    check(run(["store", sub, path]), path)


@pytest.mark.parametrize("kind", ["missing", "empty", "not_utf8", "wrong_schema"])
def test_data_files(bad, tmp_path, kind):
    path = bad[kind]
    check(run(index_args(bad, data=path, out=tmp_path / "s")), path)
    check(run(query_args(bad, queries=path)), path)
    check(run(dda_args(bad, tmp_path, queries=path)), path)
    if kind == "not_utf8":
        assert "line 2" in run(index_args(bad, data=path, out=tmp_path / "s")).stderr


@pytest.mark.parametrize("kind", ["missing", "pickled", "lora", "empty_dir"])
def test_model_directories(bad, tmp_path, kind):
    path = {"missing": bad["root"] / "no-model", "empty_dir": bad["empty_dir"]}.get(kind) or bad[kind]
    name = path / "adapter_config.json" if kind == "lora" else path
    check(run(index_args(bad, model=path, out=tmp_path / "s")), name)
    check(run(query_args(bad, model=path)), name)
    check(run(dda_args(bad, tmp_path, base=path)), name)
    if kind == "pickled":
        assert "refused" in run(index_args(bad, model=path, out=tmp_path / "s")).stderr


@pytest.mark.parametrize("kind", ["truncated", "no_key", "deep", "missing", "locked"])
def test_stores_given_to_index_resume_and_query(bad, kind):
    path = bad["root"] / ("no-such-store" if kind == "missing" else kind)
    holder = FeatureStore.open(path, mode="append") if kind == "locked" else None
    try:
        if kind != "missing":
            check(run(index_args(bad, out=path) + ["--resume"]), path)
        if kind != "locked":  # readers are welcome while a writer holds the store
            check(run(query_args(bad, store=path)), path)
    finally:
        if holder is not None:
            holder.close()


def test_missing_extra(bad, tmp_path, monkeypatch):
    for args in (index_args(bad, out=tmp_path / "s"), query_args(bad)):
        result = run(args, monkeypatch, blocked=["transformers", "transformers.utils"])
        check(result, "transformers")
        assert "pip install 'fasttda[hf]'" in result.stderr
    from fasttda.cli._common import error_line

    for module, extra in (("matplotlib", "demo"), ("peft", "hf"), ("rank_bm25", "demo")):
        line = error_line(ModuleNotFoundError(f"No module named '{module}'", name=module))
        assert module in line and f"fasttda[{extra}]" in line


def test_a_real_process_prints_one_line(bad):
    """Outside click's test runner: the installed entry point, no traceback, exit 1."""
    code = "import sys; sys.modules['transformers'] = None; from fasttda.cli import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "index", "--model", str(bad["model"]), "--data",
                           str(bad["data"]), "--out", str(bad["root"] / "never")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "fasttda[hf]" in lines[0], done.stderr

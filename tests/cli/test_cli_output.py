"""What `fasttda query` and `fasttda dda` hand the user: text in the JSONL, a readable
report.html, one similarity default, int4 stores, a store's real dims, the --resume hint,
and progress as plain lines when stderr is not a terminal."""
from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest
from click.testing import CliRunner

from fasttda.cli import main
from tiny_models import make_checkpoints, make_rows, one_thread, write_jsonl  # noqa: F401


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_out")
    models = make_checkpoints(root / "models", n_epochs=2, seed=3)
    data = write_jsonl(root / "train.jsonl", make_rows(5, 11))
    rows = make_rows(6, 2)
    rows[0]["target"] = rows[0]["response"].split()[0]  # attribute one word of the first query
    queries = write_jsonl(root / "queries.jsonl", rows)
    store = root / "store"
    result = invoke("index", "--model", models[-1], "--data", data, "--out", store, "--projection", "factored:4x4",
                    "--format", "int4", "--quiet", "--max-length", 64)
    assert result.exit_code == 0, result.output
    return {"root": root, "models": models, "data": data, "queries": queries, "store": store}


def invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, env=env)


def test_int4_store_has_real_spec_dims(files):
    result = invoke("store", "info", files["store"])
    assert result.exit_code == 0, result.output
    spec = json.loads(result.output.split("spec: ", 1)[1].splitlines()[0])
    assert spec["out_dim"] > 0 and spec["k_in"] == 4 and spec["k_out"] == 4
    assert all(v != 0 for k, v in spec.items() if k in ("dim", "out_dim", "k_in", "k_out"))
    assert "int4" in result.output


def test_query_writes_text_and_a_report(files, tmp_path):
    out = tmp_path / "top5.jsonl"
    result = invoke("query", "--store", files["store"], "--model", files["models"][-1], "--queries",
                    files["queries"], "--data", files["data"], "--top-k", 5, "--out", out,
                    env={"FASTTDA_PROGRESS_INTERVAL": "0"})
    assert result.exit_code == 0, result.output
    train = {r["id"]: r for r in make_rows(5, 11)}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["query"]["target"] and rows[1]["query"]["target"] is None
    for row in rows:
        for hit in row["results"]:
            assert (hit["prompt"], hit["response"]) == (train[hit["id"]]["prompt"], train[hit["id"]]["response"])
    html = out.with_suffix(".html").read_text()
    assert html.count("<section") == 2 and '<mark class="target">' in html
    HTMLParser().feed(html)
    # progress went to stderr as plain lines (CliRunner's stderr is no terminal), never carriage returns
    assert "queries @ epoch2: 2/2 ex (100%)" in result.stderr and "scoring 2 queries: 11/11 rows" in result.stderr
    assert "\r" not in result.stderr


def test_no_text_and_no_html(files, tmp_path):
    out = tmp_path / "top3.jsonl"
    result = invoke("query", "--store", files["store"], "--model", files["models"][-1], "--queries",
                    files["queries"], "--data", files["data"], "--top-k", 3, "--out", out, "--no-text",
                    "--no-html", "--quiet")
    assert result.exit_code == 0, result.output
    hit = json.loads(out.read_text().splitlines()[0])["results"][0]
    assert set(hit) == {"rank", "id", "row", "score"} and not out.with_suffix(".html").exists()


def test_query_data_must_match_the_store(files, tmp_path):
    other = write_jsonl(tmp_path / "other.jsonl", make_rows(7, 11))
    result = invoke("query", "--store", files["store"], "--model", files["models"][-1], "--queries",
                    files["queries"], "--data", other, "--out", tmp_path / "x.jsonl", "--quiet")
    assert result.exit_code == 1 and "another data set" in result.output


def test_query_and_dda_default_to_cosine(files, tmp_path):
    common = ("--store", files["store"], "--model", files["models"][-1], "--queries", files["queries"],
              "--top-k", 11, "--quiet")
    default, cosine, dot = (tmp_path / f"{n}.jsonl" for n in ("default", "cosine", "dot"))
    for path, flag in ((default, ()), (cosine, ("--cosine",)), (dot, ("--dot",))):
        assert invoke("query", *common, *flag, "--out", path, "--no-html").exit_code == 0
    scores = {p: [h["score"] for h in json.loads(p.read_text().splitlines()[0])["results"]] for p in (default, cosine, dot)}
    assert scores[default] == scores[cosine] != scores[dot]
    assert all(abs(s) <= 1 + 1e-5 for s in scores[default])  # cosines
    for cmd in ("query", "dda"):
        assert "--cosine / --dot  " in invoke(cmd, "--help").output or "[default: cosine]" in invoke(cmd, "--help").output


def test_existing_store_error_names_the_flag(files, tmp_path):
    result = invoke("index", "--model", files["models"][-1], "--data", files["data"], "--out", files["store"],
                    "--projection", "factored:4x4", "--format", "int4", "--quiet", "--max-length", 64)
    assert result.exit_code == 1 and "--resume" in result.output and "pass resume" not in result.output


def test_dda_writes_text_and_report(files, tmp_path):
    m = files["models"]
    out = tmp_path / "dda"
    result = invoke("dda", "--base", m[0], "--checkpoint", m[1], "--checkpoint", m[2], "--data", files["data"],
                    "--queries", files["queries"], "--out", out, "--projection", "factored:4x4", "--top-k", 4,
                    "--quiet", "--max-length", 64, "--format", "int4")
    assert result.exit_code == 0, result.output
    row = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    assert row["query"]["response"] and all("response" in h for h in row["results"])
    assert (out / "report.html").read_text().count("<section") == 2

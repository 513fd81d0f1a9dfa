"""The CLI on tiny saved checkpoints: index, query, dda, and one clear line per bad input."""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from fasttda.cli import main
from tiny_models import make_checkpoints, make_rows, one_thread, write_jsonl  # noqa: F401


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    models = make_checkpoints(root / "models", n_epochs=2, seed=1)
    other = make_checkpoints(root / "other", n_epochs=0, seed=9, extra_word="zzz")[0]  # another tokenizer
    data = write_jsonl(root / "train.jsonl", make_rows(1, 13))
    queries = write_jsonl(root / "queries.jsonl", make_rows(2, 3))
    return {"root": root, "models": models, "other": other, "data": data, "queries": queries}


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    return result


def index_store(files, out, model=None, projection="factored:4x4"):
    return invoke("index", "--model", model or files["models"][-1], "--data", files["data"], "--out", out,
                  "--projection", projection, "--format", "fp32", "--quiet", "--max-length", 64)


def test_help_everywhere():
    for cmd in ([], ["index"], ["query"], ["dda"], ["demo"]):
        result = invoke(*cmd, "--help")
        assert result.exit_code == 0 and "Usage" in result.output


def test_index_then_query(files, tmp_path):
    store = tmp_path / "store"
    result = index_store(files, store)
    assert result.exit_code == 0, result.output
    assert "indexed 13 examples" in result.output
    out = tmp_path / "results.jsonl"
    result = invoke("query", "--store", store, "--model", files["models"][-1], "--queries", files["queries"],
                    "--top-k", 5, "--out", out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["results"]) == 5 for r in rows)
    ids = {r["id"] for r in make_rows(1, 13)}
    assert all(x["id"] in ids for r in rows for x in r["results"])
    scores = [x["score"] for x in rows[0]["results"]]
    assert scores == sorted(scores, reverse=True)
    # two stores with weights, on standard output
    store0 = tmp_path / "store0"
    assert index_store(files, store0, model=files["models"][0]).exit_code == 0
    result = invoke("query", "--store", store, "--store", store0, "--weight", 1.0, "--weight", -0.5, "--model",
                    files["models"][-1], "--model", files["models"][0], "--queries", files["queries"], "--top-k", 3,
                    "--cosine")
    assert result.exit_code == 0, result.output
    assert len([json.loads(line) for line in result.stdout.splitlines()]) == 3


def test_index_resume_finishes_a_store(files, tmp_path):
    store = tmp_path / "store"
    assert index_store(files, store).exit_code == 0
    again = index_store(files, store)
    assert again.exit_code == 1 and "already exists" in again.output
    resumed = invoke("index", "--model", files["models"][-1], "--data", files["data"], "--out", store,
                     "--projection", "factored:4x4", "--format", "fp32", "--quiet", "--max-length", 64, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "indexed 13 examples" in resumed.output


def test_dda_command(files, tmp_path):
    m = files["models"]
    result = invoke("dda", "--base", m[0], "--checkpoint", m[1], "--checkpoint", m[2], "--data", files["data"],
                    "--queries", files["queries"], "--out", tmp_path / "dda", "--projection", "factored:4x4",
                    "--top-k", 4, "--quiet", "--max-length", 64, "--lr", 2e-4, "--lr", 1e-4, "--beta", 0.5)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "dda" / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and len(rows[0]["results"]) == 4
    config = json.loads((tmp_path / "dda" / "config.json").read_text())
    assert list(config["weights"].values()) == pytest.approx([2 / 3, 1 / 3, -0.5])
    assert config["query_loss"] == "response"
    # queries naming a target span: attributed for the span, and the stores are reused
    targeted = write_jsonl(tmp_path / "targeted.jsonl",
                           [dict(r, target=r["response"].split()[0]) for r in make_rows(2, 3)])
    result = invoke("dda", "--base", m[0], "--checkpoint", m[1], "--checkpoint", m[2], "--data", files["data"],
                    "--queries", targeted, "--out", tmp_path / "dda", "--projection", "factored:4x4",
                    "--top-k", 4, "--quiet", "--max-length", 64, "--lr", 2e-4, "--lr", 1e-4, "--beta", 0.5)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "dda" / "config.json").read_text())["query_loss"] == "span"
    span_rows = [json.loads(line) for line in (tmp_path / "dda" / "results.jsonl").read_text().splitlines()]
    assert [x["score"] for x in span_rows[0]["results"]] != [x["score"] for x in rows[0]["results"]]


def one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_missing_data_file(files, tmp_path):
    one_line_error(index_store(dict(files, data=tmp_path / "nope.jsonl"), tmp_path / "s"), "data file not found", "nope.jsonl")


def test_missing_model(files, tmp_path):
    one_line_error(index_store(files, tmp_path / "s", model=tmp_path / "no-model"), "model directory not found")
    (tmp_path / "empty-dir").mkdir()
    one_line_error(index_store(files, tmp_path / "s", model=tmp_path / "empty-dir"), "no Hugging Face model")


def test_missing_field_names_the_line(files, tmp_path):
    rows = make_rows(3, 5)
    del rows[3]["response"]
    bad = write_jsonl(tmp_path / "bad.jsonl", rows)
    one_line_error(index_store(dict(files, data=bad), tmp_path / "s"), "line 4", "missing field 'response'")
    # overridden field names are honoured, and a wrong override is reported the same way
    renamed = write_jsonl(tmp_path / "renamed.jsonl", [{"q": r["prompt"], "a": r["response"]} for r in make_rows(3, 4)])
    ok = invoke("index", "--model", files["models"][-1], "--data", renamed, "--out", tmp_path / "s2", "--quiet",
                "--prompt-field", "q", "--response-field", "a", "--projection", "factored:2x2", "--max-length", 64)
    assert ok.exit_code == 0, ok.output
    one_line_error(invoke("index", "--model", files["models"][-1], "--data", renamed, "--out", tmp_path / "s3",
                          "--prompt-field", "q"), "line 1", "missing field 'response'")


def test_invalid_json_names_the_line(files, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(make_rows(3, 1)[0]) + "\n{not json\n")
    one_line_error(index_store(dict(files, data=bad), tmp_path / "s"), "line 2", "not valid JSON")


def test_empty_data_file(files, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    one_line_error(index_store(dict(files, data=empty), tmp_path / "s"), "no examples")
    one_line_error(invoke("query", "--store", tmp_path / "s", "--model", files["models"][0], "--queries", empty),
                   "no examples")


def test_tokenizer_differs_between_checkpoints(files, tmp_path):
    result = invoke("dda", "--base", files["other"], "--checkpoint", files["models"][1], "--data", files["data"],
                    "--queries", files["queries"], "--out", tmp_path / "dda", "--quiet")
    one_line_error(result, "tokenizer", "differs")


def test_store_from_another_projection(files, tmp_path):
    store = tmp_path / "store"
    assert index_store(files, store).exit_code == 0
    result = invoke("query", "--store", store, "--model", files["models"][-1], "--queries", files["queries"],
                    "--projection", "rademacher:64")
    one_line_error(result, "projection factored:4x4", "not rademacher:64")
    resumed = invoke("index", "--model", files["models"][-1], "--data", files["data"], "--out", store,
                     "--projection", "factored:2x2", "--resume", "--quiet")
    one_line_error(resumed, "projection")


def test_store_from_another_model(files, tmp_path):
    store = tmp_path / "store"
    assert index_store(files, store, model=files["models"][0]).exit_code == 0
    result = invoke("query", "--store", store, "--model", files["models"][2], "--queries", files["queries"])
    one_line_error(result, "another model")


def test_bad_projection_spec_and_missing_store(files, tmp_path):
    one_line_error(index_store(files, tmp_path / "s", projection="factored:banana"), "not understood")
    one_line_error(invoke("query", "--store", tmp_path / "none", "--model", files["models"][0], "--queries",
                          files["queries"]), "store not found")


def test_lora_checkpoint_captures_only_adapters(files, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from fasttda.pipeline import load_checkpoint

    base = AutoModelForCausalLM.from_pretrained(str(files["models"][0]))
    lora = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    adapter_dir = tmp_path / "adapter"
    lora.save_pretrained(str(adapter_dir))
    assert load_checkpoint(adapter_dir).is_lora
    store = tmp_path / "store"
    result = invoke("index", "--model", adapter_dir, "--data", files["data"], "--out", store, "--projection",
                    "factored:2x2", "--format", "fp32", "--quiet", "--max-length", 64)
    assert result.exit_code == 0, result.output
    # one layer x (q_proj, v_proj) x (lora_A, lora_B) x 2x2 = 16 columns: the adapters only
    assert "16 dims" in result.output


def test_query_target_field(files, tmp_path):
    store = tmp_path / "store"
    assert index_store(files, store).exit_code == 0
    rows = make_rows(2, 3)
    targeted = [dict(r, target=r["response"].split()[1]) for r in rows]
    path = write_jsonl(tmp_path / "targeted.jsonl", targeted)
    outs = {}
    for name, queries, extra in (("span", path, []), ("whole", files["queries"], []),
                                 ("ignored", path, ["--target-field", "absent"])):
        outs[name] = tmp_path / f"{name}.jsonl"
        result = invoke("query", "--store", store, "--model", files["models"][-1], "--queries", queries,
                        "--top-k", 13, "--out", outs[name], *extra)
        assert result.exit_code == 0, result.output
    scores = {n: [[x["score"] for x in json.loads(line)["results"]] for line in p.read_text().splitlines()]
              for n, p in outs.items()}
    assert scores["ignored"] == scores["whole"]  # a field name absent from the file: whole responses
    assert scores["span"] != scores["whole"]
    targeted[1]["target"] = "not-in-the-response"
    bad = write_jsonl(tmp_path / "bad.jsonl", targeted)
    one_line_error(invoke("query", "--store", store, "--model", files["models"][-1], "--queries", bad),
                   "line 2", "'not-in-the-response' does not occur in field 'response'")


def test_query_contrast(files, tmp_path):
    """Queries carrying a 'reference' are contrastive by default: with --dot their scores are
    the response's plain scores minus the reference's."""
    store = tmp_path / "store"
    assert index_store(files, store).exit_code == 0
    rows, refs = make_rows(2, 3), make_rows(5, 3)
    paths = {"contrast": write_jsonl(tmp_path / "c.jsonl", [dict(r, reference=f["response"])
                                                              for r, f in zip(rows, refs)]),
             "response": files["queries"],
             "reference": write_jsonl(tmp_path / "r.jsonl", [dict(r, response=f["response"])
                                                               for r, f in zip(rows, refs)])}
    scores = {}
    for name, extra in (("contrast", []), ("response", []), ("reference", []), ("off", ["--no-contrast"])):
        out = tmp_path / f"{name}.jsonl"
        result = invoke("query", "--store", store, "--model", files["models"][-1], "--queries",
                        paths.get(name, paths["contrast"]), "--top-k", 13, "--dot", "--out", out, *extra)
        assert result.exit_code == 0, result.output
        scores[name] = [{x["id"]: x["score"] for x in json.loads(line)["results"]}
                        for line in out.read_text().splitlines()]
    assert scores["off"] == scores["response"]  # --no-contrast ignores the references
    for q in range(3):
        diff = {i: scores["response"][q][i] - scores["reference"][q][i] for i in scores["contrast"][q]}
        scale = max(abs(v) for v in diff.values())
        assert all(abs(scores["contrast"][q][i] - diff[i]) <= 1e-4 * scale for i in diff)
    one_line_error(invoke("query", "--store", store, "--model", files["models"][-1], "--queries",
                          files["queries"], "--contrast"), "contrastive queries need a 'reference'")


def test_query_with_int8_queries(files, tmp_path):
    store = tmp_path / "store8"
    result = invoke("index", "--model", files["models"][-1], "--data", files["data"], "--out", store,
                    "--projection", "factored:4x4", "--format", "int8", "--quiet", "--max-length", 64)
    assert result.exit_code == 0, result.output
    args = ["query", "--store", store, "--model", files["models"][-1], "--queries", files["queries"], "--top-k", 4]
    exact = [json.loads(line) for line in invoke(*args).stdout.splitlines()]
    rounded = invoke(*args, "--query-precision", "int8")
    assert rounded.exit_code == 0, rounded.output
    rows = [json.loads(line) for line in rounded.stdout.splitlines()]
    assert len(rows) == 3 and all(len(r["results"]) == 4 for r in rows)
    for a, b in zip(exact, rows):  # the queries' rounding moves scores by about 1 %
        for x, y in zip(a["results"], b["results"]):
            assert abs(x["score"] - y["score"]) <= 0.05 * abs(a["results"][0]["score"])
    fp32 = tmp_path / "store32"
    assert index_store(files, fp32).exit_code == 0
    bad = invoke("query", "--store", fp32, "--model", files["models"][-1], "--queries", files["queries"],
                 "--query-precision", "int8")
    assert bad.exit_code != 0 and "needs int8 or int4 rows" in bad.output

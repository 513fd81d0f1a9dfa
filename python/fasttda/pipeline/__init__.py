"""The pipeline: index a data set at a checkpoint, featurize queries, check stores, score.

This is the one path that ``fasttda index``, ``fasttda query``, ``fasttda dda``, the demo
and the methods share; build new methods and integrations on it rather than on capture,
store and scoring directly.

    from fasttda import pipeline

    ckpt = pipeline.load_checkpoint("runs/epoch3")                  # model + tokenizer, eval mode
    config = pipeline.CaptureConfig("factored:16x16", seed=0)        # what a row means
    store = pipeline.index(ckpt, train, "stores/epoch3", config, fmt="fp16")
    q = pipeline.query_features(ckpt, queries, config)               # [Q, dim] float32
    values, rows = pipeline.score_stores([q], [store], [1.0], k=50, normalize=True)

Checkpoints (`fasttda.pipeline.checkpoints`):
    `load_checkpoint(path, device=, dtype=)` -> `Checkpoint` (``.model``, ``.tokenizer``,
    ``.is_lora``, ``.fingerprint``: the full SHA-256 of the weights, ``.sampled_fingerprint``:
    a cheap hash of a sample of them, which stores are checked against);
    `load_tokenizer`, `check_same_tokenizer(paths)`, `sampled_fingerprint(model)`;
    `CheckpointError` (a ValueError with a one-line message).

Features and stores (`fasttda.pipeline.features`):
    `CaptureConfig(projection, modules, max_length, batch_size, seed)`: what fixes a row;
    ``projection`` is a `fasttda.capture.Projection` or its text form.
    `index(checkpoint, examples, out, config, fmt=, resume=, progress=)` -> the store, open
    for reading. Its manifest records ``spec`` (``config.spec(...)``: the projection's
    fields, seed, width, modules, max_length, lora_only), ``fingerprint`` (the full
    SHA-256) and ``meta`` (sampled fingerprint, model path, tokenizer and data
    fingerprints, example count). Rows are quantized on the model's device
    (`quantized_rows`) and only the quantized rows are copied to the host.
    `features(...)`: the iterator of ``(row, [B, dim] float32)`` batches both build on.
    `query_features(checkpoint, queries, config)` -> ``[Q, dim]`` float32 on the CPU.
    `open_store(path)`, `store_config(store)` -> the `CaptureConfig` a store was built with,
    `check_store(store, checkpoint=, config=, data=)` -> its meta, or `StoreMismatch`.

Scoring (`fasttda.pipeline.ranking`):
    `score_stores(query_feats, stores, weights, k=, normalize=, preconditioners=)` ->
    ``(values, indices)``: one weighted streaming pass over stores indexing one data set.
    `fit_preconditioner(store, damping)`; `Attribution` (ranked rows, ``write_jsonl``).
"""
from fasttda.pipeline.checkpoints import (Checkpoint, CheckpointError, check_same_tokenizer, load_checkpoint,
                                          load_tokenizer, sampled_fingerprint)
from fasttda.pipeline.features import (DEFAULT_PROJECTION, CaptureConfig, StoreMismatch, check_store, create_store,
                                       features, index, open_store, quantized_rows, query_features, store_config)
from fasttda.pipeline.ranking import Attribution, fit_preconditioner, score_stores

__all__ = [
    "Attribution", "CaptureConfig", "Checkpoint", "CheckpointError", "DEFAULT_PROJECTION", "StoreMismatch",
    "check_same_tokenizer", "check_store", "create_store", "features", "fit_preconditioner", "index",
    "load_checkpoint", "load_tokenizer", "open_store", "quantized_rows", "query_features", "sampled_fingerprint",
    "score_stores", "store_config",
]

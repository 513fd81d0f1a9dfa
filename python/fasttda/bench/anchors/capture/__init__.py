"""The `capture` suite's workloads and adapters (fasttda's capture, dattri-llm, Bergson).

Each adapter's ``build(model, workload, ...)`` hooks a freshly loaded model and returns
``step(batch)``, one forward + backward + capture, timed by the suite; ``step.close()``
unhooks. An anchor that is not installed raises `fasttda.bench.anchors.AnchorMissing`.
"""

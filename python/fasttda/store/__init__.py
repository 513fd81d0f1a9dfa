"""The feature store: quantized rows on disk, sharded, resumable and crash-safe.

* `FeatureStore` — create/open/append/commit/read/iter_chunks/verify (feature_store.py)
* `check_compatible` — may these stores be scored together? (verify.py)
* `model_fingerprint` — the SHA-256 of the weights a manifest records; its ``spec`` is the
  writer's (`fasttda.pipeline.CaptureConfig.spec`: a `fasttda.capture.Projection` plus seed)
"""
from fasttda.store.errors import CorruptStoreError, IncompatibleStoresError, StoreError, StoreLockedError
from fasttda.store.feature_store import Chunk, FeatureStore
from fasttda.store.fingerprint import model_fingerprint
from fasttda.store.verify import check_compatible

__all__ = ["FeatureStore", "Chunk", "check_compatible", "model_fingerprint", "StoreError",
           "StoreLockedError", "CorruptStoreError", "IncompatibleStoresError"]

"""The feature store: quantized rows on disk, sharded, resumable and crash-safe.

* `FeatureStore` — create/open/append/commit/read/iter_chunks/verify (feature_store.py)
* `check_compatible` — may these stores be scored together? (verify.py)
* `model_fingerprint`, `projection_spec` — what a manifest records about where rows came from
"""
from fasttda.store.errors import CorruptStoreError, IncompatibleStoresError, StoreError, StoreLockedError
from fasttda.store.feature_store import Chunk, FeatureStore
from fasttda.store.fingerprint import model_fingerprint
from fasttda.store.manifest import projection_spec
from fasttda.store.verify import check_compatible

__all__ = ["FeatureStore", "Chunk", "check_compatible", "model_fingerprint", "projection_spec", "StoreError",
           "StoreLockedError", "CorruptStoreError", "IncompatibleStoresError"]

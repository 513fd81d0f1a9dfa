"""Drop-in adapters for other TDA codebases; each uses fasttda's public API only.

* `fasttda.integrations.trak.FastTDAProjector`: a TRAK projector (TRAK and LESS).
* `fasttda.integrations.dattri.random_project`: dattri's ``random_project`` contract.
* `fasttda.integrations.less.import_less_grads`: LESS gradient shards into a FeatureStore.
"""

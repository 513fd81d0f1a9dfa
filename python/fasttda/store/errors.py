"""The store's errors. Each message names the store path, file or row ids at fault."""
from __future__ import annotations


class StoreError(RuntimeError):
    """Base class of the feature store's errors."""


class StoreLockedError(StoreError):
    """Another writer holds the store's lock."""


class CorruptStoreError(StoreError):
    """A shard file is missing, truncated or fails its checksum; ``problems`` lists them."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [])


class IncompatibleStoresError(ValueError):
    """Stores that cannot be combined or scored together; the message names what differs."""

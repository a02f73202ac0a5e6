"""Typed errors of the feedback store, all subclasses of `StoreError`.

The gateway translates them once into its error body: `field` names the offending input where
there is one (`param` in the body), `index` the position of the offending item in a submitted
batch. Messages are written for the client that sent the data.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the feedback store raises on purpose."""

    def __init__(self, message: str, *, field: str | None = None, index: int | None = None):
        if index is not None:
            message = f"item {index}: {message}"
        super().__init__(message)
        self.field = field
        self.index = index


class DatabaseNotMigrated(StoreError):
    """The database has no schema, or one at another revision than this code expects."""


class UnknownInteraction(StoreError):
    """A referenced interaction id is not in the store."""


class ForeignInteraction(StoreError):
    """A principal referred to an interaction made by another principal."""


class RatingOutOfRange(StoreError):
    """A rating score lies outside the declared range."""


class SelfPreference(StoreError):
    """A preference names the same interaction on both sides."""


class TextTooLong(StoreError):
    """A submitted text is longer than the configured limit."""


class InvalidFeedback(StoreError):
    """A feedback item is malformed (e.g. a preference with both or neither target)."""


class UnknownTask(StoreError):
    """A referenced task id is not in the store."""


class InvalidTask(StoreError):
    """A task is malformed (e.g. both or neither of prompt and messages)."""


class UnknownAdapter(StoreError):
    """A referenced adapter version is not in the registry."""


class DuplicateAdapter(StoreError):
    """An adapter version is registered twice."""


class UnknownRun(StoreError):
    """A referenced training or eval run id is not in the store."""


class DatabaseUnavailable(StoreError):
    """The database did not answer in time; the request may be retried."""


class IdempotencyKeyReused(StoreError):
    """An idempotency key came back with a different request than the one it first named."""


class InvalidSubject(StoreError):
    """An erasure or export names neither or both of a principal and a user key, or an empty one."""

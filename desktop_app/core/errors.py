"""Typed errors of the desktop core. Each message is one line that says what to do."""

from runtimes.errors import OutpostError

__all__ = [
    "AlreadyExistsError",
    "BlobIntegrityError",
    "DatasetFormatError",
    "DestinationNotEmptyError",
    "InvalidArgumentError",
    "NotFoundError",
    "OutpostError",
    "WorkspaceError",
]


class WorkspaceError(OutpostError):
    """The workspace folder or its database cannot be opened, migrated or backed up."""


class DatasetFormatError(OutpostError):
    """A dataset on disk is not in the expected format, or one of its files is invalid."""


class NotFoundError(OutpostError):
    """A named record (dataset, version, blob, ...) does not exist."""


class AlreadyExistsError(OutpostError):
    """A record with that name already exists."""


class BlobIntegrityError(OutpostError):
    """A stored blob is missing or its content no longer matches its sha256."""


class DestinationNotEmptyError(OutpostError):
    """An output folder is not empty and Outpost will not write over it."""


class InvalidArgumentError(OutpostError, ValueError):
    """An argument is out of range or malformed."""

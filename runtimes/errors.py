"""Typed errors of the edge contract. Each message is one line that says what to do."""


class OutpostError(Exception):
    """Base of every error Outpost reports to a user."""


class PackageError(OutpostError):
    """A package cannot be read, verified or trusted."""


class RuntimeUnavailableError(OutpostError):
    """No installed runtime can run the requested format."""


class ImageDecodeError(OutpostError):
    """An input image could not be decoded."""


class UnknownProviderError(OutpostError):
    """An execution provider (device) name the chosen runtime does not know."""

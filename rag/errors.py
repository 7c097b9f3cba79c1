"""Errors the library raises on purpose; the CLI and HTTP layers turn them into one-line
messages and exit codes (2 for bad input, 1 for everything else)."""


class RagError(Exception):
    """A failure with a message fit to show a user as it is."""

    exit_code = 1


class BadInputError(RagError):
    """The user asked for something that cannot be done as asked (empty query, missing path...)."""

    exit_code = 2


class IndexMissingError(BadInputError):
    pass


class IncompatibleIndexError(BadInputError):
    """The index was built with other settings (model, chunking) or an older format."""


class UnknownDocumentError(BadInputError):
    """A document id that is not in the index (HTTP 404)."""


class PayloadTooLargeError(BadInputError):
    """An upload over the configured size limit (HTTP 413)."""


class ServerBusyError(RagError):
    """More answers waiting for the model than the server keeps in line (HTTP 503, Retry-After)."""

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


class IndexDamagedError(RagError):
    """A generation whose files do not match its manifest: truncated, overwritten, mixed up
    with another index's, or offsets that no longer reproduce their text."""

    def __init__(self, where: str, problems: list[str]):
        more = f" and {len(problems) - 1} more problem(s)" if len(problems) > 1 else ""
        # Without the advice, for `rag index` to say how it recovered instead.
        self.summary = f"index in {where} is damaged ({problems[0]}{more})"
        self.where = where
        self.problems = problems
        super().__init__(f"{self.summary}; run `rag index`")


class ServerBusyError(RagError):
    """More answers waiting for the model than the server keeps in line (HTTP 503, Retry-After)."""


class StoreSettingsError(BadInputError):
    """The store settings are wrong: a URI that names no server, a token the server refuses
    (exit 2; HTTP 503, since the server's settings and not the request are at fault)."""


class StoreUnavailableError(RagError):
    """The store's server cannot be reached or fails a call (exit 1; HTTP 503)."""

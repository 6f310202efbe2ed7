"""The daemon's error hierarchy; each error carries the stable protocol code it is reported with."""

from __future__ import annotations


class MfcdError(Exception):
    """A failure a client or operator can act on; `str()` is the one-line message.

    Where in a request it lies travels beside the message, for programs: `field`, the
    argument at fault; in a batch, `op`, the operation (counted from 1) of `ops`, or
    `line`, the line of `text` (counted from 1); in the config files, `file` and `line`.
    """

    code = "internal_error"

    def __init__(
        self,
        message: str,
        field: str | None = None,
        *,
        op: int | None = None,
        line: int | None = None,
        file: str | None = None,
    ) -> None:
        super().__init__(message)
        self.field = field
        self.op = op
        self.line = line
        self.file = file


class BadRequest(MfcdError):
    code = "bad_request"


class UnsupportedVersion(MfcdError):
    code = "unsupported_version"


class BatchSyntax(MfcdError):
    """A line of a batch text does not parse (mfcctl reports it as a usage error)."""

    code = "syntax_error"


class InvalidArgument(MfcdError):
    code = "invalid_argument"


class NotFound(MfcdError):
    code = "not_found"


class TooLarge(MfcdError):
    code = "too_large"


class VifLimit(MfcdError):
    code = "vif_limit"


class KernelError(MfcdError):
    """The kernel refused an operation; carries the operation and errno."""

    code = "kernel_error"

    def __init__(self, message: str, operation: str, errno: int) -> None:
        super().__init__(message)
        self.operation = operation
        self.errno = errno
        self.undo_failures: list[KernelError] = []  # set when rolling back also failed
        self.applied = 0  # Dataplane.apply: how many operations went in before this one
        self.partial = 0  # ... and of this one, a run, how many of its routes went in
        # (family, table) when the kernel refused the table itself: another multicast
        # router owns it (MRT_INIT: EADDRINUSE), see dataplane.table_owned.
        self.table: tuple[int, int] | None = None


class StateError(MfcdError):
    """The state file could not be read or written."""

    code = "state_error"


class ConfigError(MfcdError):
    code = "config_error"


class DeclaredInConfig(MfcdError):
    """A runtime change to a route or setting the config files declare (they own it)."""

    code = "declared_in_config"

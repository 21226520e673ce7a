"""The error tree: what the user can fix (exit 2) versus what we must fix (exit 1).

A budget miss is not an error: it is a verdict in the report, mapped to exit 3 by the CLI.
"""

from __future__ import annotations


class EdgecompressError(Exception):
    """Base class; `exit_code` is what the CLI returns."""

    exit_code = 1


class UserError(EdgecompressError):
    """Bad input or usage. Rendered as one line: what, where, what was expected, a hint."""

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, expected: str | None = None, hint: str | None = None):
        self.what, self.where, self.expected, self.hint = what, where, expected, hint
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = [self.what if self.where is None else f"{self.where}: {self.what}"]
        if self.expected:
            parts.append(f"expected {self.expected}")
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "; ".join(parts)


class InternalError(EdgecompressError):
    """A bug or an unmet internal contract (a pass broke parity, a fusion stopped firing, ...)."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(f"{message} (this is a bug in edgecompress; please report it)")


class VerificationError(EdgecompressError):
    """An artifact failed its check against the reference model; nothing is shipped."""

    exit_code = 1

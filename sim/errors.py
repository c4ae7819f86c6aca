"""Errors raised for bad user input: they carry the file, the field and the reason."""

from __future__ import annotations


class InputError(Exception):
    """A scenario, profile, trace or flag that cannot be used as given.

    The CLI turns it into one line on stderr and exit code 2, never a traceback.
    """

    def __init__(self, reason: str, *, file: str | None = None, field: str | None = None) -> None:
        self.reason = reason
        self.file = file
        self.field = field
        super().__init__(self.message())

    def message(self) -> str:
        where = []
        if self.file:
            where.append(str(self.file))
        if self.field:
            where.append(f"field '{self.field}'")
        prefix = ": ".join(where)
        return f"{prefix}: {self.reason}" if prefix else self.reason

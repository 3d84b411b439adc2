"""Exceptions that carry enough context to print one clear line.

Every error a user can cause (bad file, bad config, bad argument) is a subclass of
:class:`MgrecError`. The command line catches exactly this base class, prints ``str(err)``
on one line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MgrecError", "DataError", "ConfigError"]


class MgrecError(Exception):
    """Base class of every error mgrec raises on purpose."""


class DataError(MgrecError):
    """Bad input data, located by file, line and field where they are known.

    Args:
        message: what is wrong, in plain words.
        file: the file the data came from.
        line: 1-based line number in that file (the header, if any, is line 1).
        field: the column or field name.

    Example:
        >>> str(DataError("not an integer: 'abc'", file="ratings.csv", line=7, field="user_id"))
        "ratings.csv, line 7, field 'user_id': not an integer: 'abc'"
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.field = field
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file)
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return (", ".join(where) + ": " + self.message) if where else self.message


class ConfigError(MgrecError):
    """A configuration value or command-line option that cannot be used."""

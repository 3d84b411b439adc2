"""API keys with roles, checked in constant time.

Keys come from a file (``--api-keys-file``) or the ``MGREC_API_KEYS`` environment variable.
Both use one entry per line (or per comma in the variable): ``<role>:<key>``, where ``role``
is ``read``, ``write`` or ``admin``. Roles nest: ``admin`` may do everything, ``write`` may
also read. Blank lines and lines starting with ``#`` are ignored.

Only SHA-256 digests of the keys are kept in memory, and a presented key is compared with
every stored digest by :func:`hmac.compare_digest`, without stopping at the first match, so
the time taken does not depend on which key (or how much of one) matched. No key is ever
logged: errors name the file and line, never the value.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from mgrec.errors import ConfigError

__all__ = ["ROLES", "ApiKeys", "load_api_keys", "ENV_VAR"]

#: Roles from least to most privileged; a role grants every role before it.
ROLES = ("read", "write", "admin")
ENV_VAR = "MGREC_API_KEYS"
MIN_KEY_LENGTH = 16


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class ApiKeys:
    """Digests of the accepted keys with their roles."""

    entries: tuple[tuple[bytes, str], ...]

    def __len__(self) -> int:
        return len(self.entries)

    def role_of(self, key: str | None) -> str | None:
        """The role of ``key``, or ``None`` when it is missing or unknown (constant time in
        the number of keys)."""
        if not key:
            return None
        presented = _digest(key)
        found: str | None = None
        for digest, role in self.entries:
            if hmac.compare_digest(presented, digest) and found is None:
                found = role
        return found

    @staticmethod
    def allows(role: str, needed: str) -> bool:
        """Whether ``role`` grants ``needed``."""
        return ROLES.index(role) >= ROLES.index(needed)


def _parse(lines: list[tuple[str, str]]) -> ApiKeys:
    entries: list[tuple[bytes, str]] = []
    seen: set[bytes] = set()
    for where, raw in lines:
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        role, sep, key = text.partition(":")
        role, key = role.strip(), key.strip()
        if not sep or role not in ROLES:
            raise ConfigError(f"{where}: expected '<role>:<key>' with role one of {', '.join(ROLES)}")
        if len(key) < MIN_KEY_LENGTH:
            raise ConfigError(f"{where}: the key is shorter than {MIN_KEY_LENGTH} characters")
        digest = _digest(key)
        if digest in seen:
            raise ConfigError(f"{where}: the same key appears twice")
        seen.add(digest)
        entries.append((digest, role))
    return ApiKeys(tuple(entries))


def load_api_keys(path: str | Path | None = None, *, env: dict[str, str] | None = None) -> ApiKeys:
    """Keys from ``path`` and from ``MGREC_API_KEYS`` (both may be given).

    Raises:
        ConfigError: for an unreadable file or a malformed entry (named by file and line or
            by the variable and entry number, never by the key).
    """
    env = os.environ if env is None else env
    lines: list[tuple[str, str]] = []
    if path is not None:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"{p}: cannot read the API keys file ({err.strerror})") from None
        lines += [(f"{p}, line {n}", line) for n, line in enumerate(text.splitlines(), start=1)]
    value = env.get(ENV_VAR, "")
    lines += [(f"{ENV_VAR}, entry {n}", part) for n, part in enumerate(value.split(","), start=1)]
    return _parse(lines)

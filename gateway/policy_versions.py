"""Every version of the domain's policy, kept in the state store.

A version is the exact YAML text of a policy, numbered 1, 2, 3, … in the
``policy_versions`` table with its SHA-256, when and by whom it was made, and a
comment. The newest version is the live one: a gateway records the policy file
it starts from when the file differs from the newest version (``created_by``
``"file"``), and a replacement through the admin API records the new text
before it goes live. Versions are never edited or deleted.

:func:`write_policy_file` rewrites the policy file atomically (a temporary file
in the same directory, flushed to disk, then renamed over the old one), so a
crash leaves either the old file or the new one, never half of one.

>>> import tempfile
>>> from gateway.state import StateStore
>>> with tempfile.TemporaryDirectory() as d, StateStore(d) as store:
...     first = record_if_new(store, "version: 1\\n", by="file")
...     again = record_if_new(store, "version: 1\\n", by="file")
...     second = record(store, "version: 1 # edited\\n", by="owner", comment="why")
...     [(v.version, v.created_by, v.comment) for v in versions(store)], first == again
([(2, 'owner', 'why'), (1, 'file', None)], True)
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.errors import ConfigError, InputError
from gateway.state import StateStore

_COLUMNS = "version, yaml, sha256, created_at, created_by, comment"


def sha256(text: str) -> str:
    """The SHA-256 of ``text`` (UTF-8), in hex."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PolicyVersion:
    """One stored version of the policy."""

    version: int
    yaml: str
    sha256: str
    created_at: float
    created_by: str
    comment: str | None

    def to_json(self, *, live: bool, text: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "version": self.version,
            "sha256": self.sha256,
            "created_at": datetime.fromtimestamp(self.created_at, UTC).isoformat(
                timespec="seconds"),
            "created_by": self.created_by,
            "comment": self.comment,
            "live": live,
        }
        if text:
            out = {"version": self.version, "yaml": self.yaml, **out}
        return out


def _from_row(row: tuple[Any, ...]) -> PolicyVersion:
    version, text, digest, created_at, created_by, comment = row
    return PolicyVersion(int(version), text, digest, float(created_at), created_by, comment)


def _newest(con: sqlite3.Connection) -> PolicyVersion | None:
    row = con.execute(
        f"SELECT {_COLUMNS} FROM policy_versions ORDER BY version DESC LIMIT 1").fetchone()
    return None if row is None else _from_row(tuple(row))


def _insert(con: sqlite3.Connection, store: StateStore, text: str, by: str,
            comment: str | None) -> int:
    (last,) = con.execute("SELECT COALESCE(MAX(version), 0) FROM policy_versions").fetchone()
    version = int(last) + 1
    con.execute(
        f"INSERT INTO policy_versions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
        (version, text, sha256(text), store._clock(), by, comment),
    )
    return version


def record(store: StateStore, text: str, *, by: str, comment: str | None = None) -> int:
    """Store ``text`` as the next version; returns its number."""
    with store._transaction() as con:
        return _insert(con, store, text, by, comment)


def record_if_new(store: StateStore, text: str, *, by: str = "file",
                  comment: str | None = None) -> int:
    """The newest version if it holds exactly ``text``; else ``text`` stored as the next."""
    with store._transaction() as con:
        newest = _newest(con)
        if newest is not None and newest.sha256 == sha256(text):
            return newest.version
        return _insert(con, store, text, by, comment)


def forget(store: StateStore, version: int) -> None:
    """Remove ``version`` again: only to undo a replacement that failed before going live."""
    with store._transaction() as con:
        con.execute("DELETE FROM policy_versions WHERE version = ? AND version = "
                    "(SELECT MAX(version) FROM policy_versions)", (version,))


def live(store: StateStore) -> PolicyVersion | None:
    """The newest version (the one the gateway runs), or ``None`` before the first start."""
    with store._pool.connection() as con:
        return _newest(con)


def get(store: StateStore, version: int | None = None) -> PolicyVersion:
    """Version ``version`` (default: the newest); :class:`InputError` if there is none."""
    if version is None:
        found = live(store)
        if found is None:
            raise InputError("No policy version is stored yet: start the gateway once.")
        return found
    with store._pool.connection() as con:
        row = con.execute(f"SELECT {_COLUMNS} FROM policy_versions WHERE version = ?",
                          (version,)).fetchone()
        if row is not None:
            return _from_row(tuple(row))
        (newest,) = con.execute("SELECT MAX(version) FROM policy_versions").fetchone()
    known = f"versions are 1 to {newest}" if newest else "none is stored yet"
    raise InputError(f"Field 'version': there is no policy version {version}; {known}.")


def versions(store: StateStore) -> list[PolicyVersion]:
    """Every version, newest first."""
    with store._pool.connection() as con:
        rows = con.execute(
            f"SELECT {_COLUMNS} FROM policy_versions ORDER BY version DESC").fetchall()
    return [_from_row(tuple(row)) for row in rows]


def write_policy_file(path: str | os.PathLike[str], text: str) -> None:
    """Replace the file at ``path`` by ``text`` atomically, keeping its permissions."""
    target = Path(path).resolve()
    temp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o644
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            data = text.encode("utf-8")
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.chmod(temp, mode)
        os.replace(temp, target)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise ConfigError(f"Cannot write the policy file {target}: {exc.strerror or exc}; "
                          "the policy was not changed.") from None
    try:  # the rename itself is durable once the directory is flushed
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:  # pragma: no cover - a file system without directory fsync
        pass

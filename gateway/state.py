"""The domain's state store: users and session tokens in SQLite.

The store lives at ``<data_dir>/state.db`` (mode 0600, in a directory created
0700 when missing). It runs in WAL mode with ``synchronous=FULL``, so a
committed change survives a crash or power loss. The schema is versioned: each
entry of :data:`MIGRATIONS` is applied once, in order, inside one transaction,
and recorded in the ``schema_version`` table; later features (budgets, audit)
add migrations rather than editing earlier ones.

The store is safe to share between threads: each operation borrows a SQLite
connection from a small pool, so the Flight server's threads read (token look-ups
on every call) without waiting for each other, and writes serialise through
SQLite's own lock (``BEGIN IMMEDIATE`` with a busy timeout). Several processes
(the server and the ``stockade users`` command) may use the same file at once.

Passwords are stored as argon2id hashes, tokens as SHA-256 digests; neither is
ever stored or returned in clear. Beside each password hash the store keeps an
argon2id hash of the credential a network derives from that password for this
domain (:mod:`gateway.network_keys`), made whenever the store sees the password
(user creation, a new password, a direct login) and the domain's name is known
(the gateway records it: :meth:`StateStore.set_domain_name`). A login whose
password carries the derived prefix is checked against that verifier only.

>>> import tempfile
>>> from argon2 import PasswordHasher
>>> with tempfile.TemporaryDirectory() as data_dir:
...     with StateStore(data_dir, hasher=PasswordHasher(memory_cost=8192)) as store:
...         alice = store.add_user("alice", "analyst", "s3cret-pass", {"site": "north"})
...         token = store.issue_token(alice, ttl_s=60)
...         store.user_for_token(token).name
'alice'
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any

from argon2 import PasswordHasher

from gateway.errors import (
    AuthenticationError,
    ConfigError,
    InputError,
    NotFoundError,
    did_you_mean,
)
from gateway.network_keys import RESERVED_PREFIX, derive, is_derived, realm_of
from gateway.passwords import (
    hash_password,
    needs_rehash,
    new_password,
    new_token,
    token_digest,
    verify_password,
)

AttributeValue = str | int | float | bool

STATE_FILE = "state.db"
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024

WRONG_CREDENTIALS = "Wrong user name or password."
INVALID_TOKEN = "Your session token has expired or is not valid; log in again."
#: The refusal of any credential a network derived (the same whatever the reason, so
#: that it does not tell who has an account).
NETWORK_REFUSED = (
    "Wrong user name or password (checked through a network). If they are right, domain "
    "'{domain}' has not seen your password since it began to accept logins through a "
    "network: log in to it directly once, or ask its owner to reset your password."
)
WRONG_DOMAIN = (
    "A network derived this credential for domain '{realm}', which is not this domain's "
    "name: the network's operator must set this domain's own name (its policy's "
    "domain.name) as its domain_name in the network's configuration."
)
UNNAMED_DOMAIN = (
    "This domain cannot check logins through a network yet: its state store does not know "
    "the domain's name (start its gateway once). Log in with your password."
)

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

# Ordered, append-only: (version, description, statements). Never edit an entry
# that has shipped; add a new one.
MIGRATIONS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (
        1,
        "users and session tokens",
        (
            """
            CREATE TABLE users (
                name          TEXT PRIMARY KEY COLLATE NOCASE,
                role          TEXT NOT NULL,
                attributes    TEXT NOT NULL DEFAULT '{}',
                password_hash TEXT NOT NULL,
                disabled      INTEGER NOT NULL DEFAULT 0,
                created_at    REAL NOT NULL,
                updated_at    REAL NOT NULL
            )
            """,
            """
            CREATE TABLE tokens (
                digest     TEXT PRIMARY KEY,
                user_name  TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
                issued_at  REAL NOT NULL,
                expires_at REAL NOT NULL
            )
            """,
            "CREATE INDEX tokens_by_user ON tokens(user_name)",
            "CREATE INDEX tokens_by_expiry ON tokens(expires_at)",
        ),
    ),
    (
        2,
        "privacy budgets: allowances, dataset caps, append-only charges, dp answers",
        (
            # Amounts are integers: ε in units of 1e-12, δ in units of 1e-18
            # (see gateway.ledger), so sums are exact.
            """
            CREATE TABLE budget_allowances (
                user_name  TEXT NOT NULL COLLATE NOCASE,
                dataset    TEXT NOT NULL,
                epsilon    INTEGER NOT NULL,
                delta      INTEGER NOT NULL,
                updated_at REAL NOT NULL,
                PRIMARY KEY (user_name, dataset)
            )
            """,
            """
            CREATE TABLE budget_dataset_caps (
                dataset    TEXT PRIMARY KEY,
                epsilon    INTEGER NOT NULL,
                delta      INTEGER NOT NULL,
                updated_at REAL NOT NULL
            )
            """,
            """
            CREATE TABLE budget_charges (
                id         INTEGER PRIMARY KEY AUTOINCREMENT,
                user_name  TEXT NOT NULL COLLATE NOCASE,
                dataset    TEXT NOT NULL,
                epsilon    INTEGER NOT NULL CHECK (epsilon >= 0),
                delta      INTEGER NOT NULL CHECK (delta >= 0),
                query_key  TEXT,
                charged_at REAL NOT NULL
            )
            """,
            "CREATE INDEX budget_charges_by_user ON budget_charges(user_name, dataset)",
            "CREATE INDEX budget_charges_by_dataset ON budget_charges(dataset)",
            """
            CREATE TRIGGER budget_charges_append_only_update BEFORE UPDATE ON budget_charges
            BEGIN SELECT RAISE(ABORT, 'budget charges are append-only'); END
            """,
            """
            CREATE TRIGGER budget_charges_append_only_delete BEFORE DELETE ON budget_charges
            BEGIN SELECT RAISE(ABORT, 'budget charges are append-only'); END
            """,
            """
            CREATE TABLE dp_answers (
                query_key  TEXT PRIMARY KEY,
                user_name  TEXT NOT NULL COLLATE NOCASE,
                dataset    TEXT NOT NULL,
                charge_id  INTEGER NOT NULL REFERENCES budget_charges(id),
                answer     BLOB NOT NULL,
                created_at REAL NOT NULL
            )
            """,
        ),
    ),
    (
        3,
        "audit log: append-only, hash-chained records of queries and login failures",
        (
            # Each record's hash is SHA-256 of the previous record's hash and this
            # record's canonical content (see gateway.audit).
            """
            CREATE TABLE audit_log (
                id        INTEGER PRIMARY KEY AUTOINCREMENT,
                at        REAL NOT NULL,
                kind      TEXT NOT NULL,
                user_name TEXT NOT NULL COLLATE NOCASE,
                details   TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                hash      TEXT NOT NULL
            )
            """,
            "CREATE INDEX audit_log_by_user ON audit_log(user_name, id)",
            """
            CREATE TRIGGER audit_log_append_only_update BEFORE UPDATE ON audit_log
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
            """,
            """
            CREATE TRIGGER audit_log_append_only_delete BEFORE DELETE ON audit_log
            BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END
            """,
        ),
    ),
    (
        4,
        "requests for budget and access, and their decisions",
        (
            # kind 'budget': epsilon/delta in the units of gateway.ledger;
            # kind 'access': mode. Decided rows keep who decided, why and when.
            """
            CREATE TABLE requests (
                id              INTEGER PRIMARY KEY AUTOINCREMENT,
                user_name       TEXT NOT NULL COLLATE NOCASE,
                kind            TEXT NOT NULL CHECK (kind IN ('budget', 'access')),
                dataset         TEXT NOT NULL,
                epsilon         INTEGER,
                delta           INTEGER,
                mode            TEXT,
                reason          TEXT NOT NULL,
                status          TEXT NOT NULL DEFAULT 'pending'
                                CHECK (status IN ('pending', 'approved', 'denied')),
                decided_by      TEXT,
                decision_reason TEXT,
                created_at      REAL NOT NULL,
                decided_at      REAL
            )
            """,
            "CREATE INDEX requests_by_user ON requests(user_name, id)",
            "CREATE INDEX requests_by_status ON requests(status, id)",
        ),
    ),
    (
        5,
        "policy versions: the text of every policy the gateway has run",
        (
            # See gateway.policy_versions: the newest version is the live one.
            """
            CREATE TABLE policy_versions (
                version    INTEGER PRIMARY KEY,
                yaml       TEXT NOT NULL,
                sha256     TEXT NOT NULL,
                created_at REAL NOT NULL,
                created_by TEXT NOT NULL,
                comment    TEXT
            )
            """,
        ),
    ),
    (
        6,
        "who set a dataset cap: the policy's budget_cap, or an owner through the API",
        (
            # gateway.ledger: an owner's cap stays until the owner removes it; the
            # policy's caps are re-applied at start and on a policy change around it.
            "ALTER TABLE budget_dataset_caps ADD COLUMN set_by TEXT NOT NULL DEFAULT 'policy'",
        ),
    ),
    (
        7,
        "credentials derived by networks: each user's verifier, and the domain's own name",
        (
            # gateway.network_keys: network_verifier is the argon2id hash of the
            # credential derived from the user's password for network_realm (the
            # domain's name, lower case, when it was made); NULL until the store
            # sees the password again (a direct login, or a new password).
            "ALTER TABLE users ADD COLUMN network_verifier TEXT",
            "ALTER TABLE users ADD COLUMN network_realm TEXT",
            # One row: the name of the domain this store belongs to, recorded by the
            # gateway (its policy's domain.name), so the CLI knows it too.
            """
            CREATE TABLE domain_identity (
                id         INTEGER PRIMARY KEY CHECK (id = 1),
                name       TEXT NOT NULL,
                updated_at REAL NOT NULL
            )
            """,
        ),
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]


class LoginError(AuthenticationError):
    """A failed login: :data:`WRONG_CREDENTIALS` (or, for a credential a network
    derived, :data:`NETWORK_REFUSED`), whatever the reason.

    ``reason`` (``unknown_user``, ``wrong_password``, ``disabled`` or
    ``no_network_verifier``) is for the server's log and audit only; it never
    reaches the client.
    """

    def __init__(self, reason: str, message: str = WRONG_CREDENTIALS) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class User:
    """A user of the domain, as stored (without its password hash).

    >>> u = User("alice", "analyst", {"site": "north"})
    >>> u.attributes["site"], u.disabled
    ('north', False)
    """

    name: str
    role: str
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    disabled: bool = False
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC), compare=False)
    updated_at: datetime = field(default_factory=lambda: datetime.now(UTC), compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "attributes", MappingProxyType(dict(self.attributes)))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps in ISO 8601, UTC)."""
        return {
            "name": self.name,
            "role": self.role,
            "attributes": dict(self.attributes),
            "disabled": self.disabled,
            "created_at": self.created_at.isoformat(timespec="seconds"),
            "updated_at": self.updated_at.isoformat(timespec="seconds"),
        }


# ---------------------------------------------------------------- validation


def validate_user_name(name: str) -> str:
    """Return ``name`` if it is a valid user name, else raise :class:`InputError`.

    >>> validate_user_name("alice.smith")
    'alice.smith'
    >>> validate_user_name("alice smith")
    Traceback (most recent call last):
    ...
    gateway.errors.InputError: Invalid user name 'alice smith': use 1 to 64 letters, digits, '_', '.' or '-', starting with a letter.
    """  # noqa: E501
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InputError(
            f"Invalid user name {name!r}: use 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter."
        )
    return name


def validate_role(role: str) -> str:
    """Return ``role`` if it is identifier-like, else raise :class:`InputError`."""
    if not isinstance(role, str) or not _IDENTIFIER_RE.fullmatch(role):
        raise InputError(
            f"Invalid role name {role!r}: use letters, digits and '_', not starting with a digit."
        )
    return role


def validate_password(password: str) -> str:
    """Apply the password policy: 8 to 1024 characters, not a derived credential's prefix."""
    if not isinstance(password, str) or len(password) < MIN_PASSWORD_LENGTH:
        raise InputError(f"Passwords must be at least {MIN_PASSWORD_LENGTH} characters long.")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise InputError(f"Passwords must be at most {MAX_PASSWORD_LENGTH} characters long.")
    if is_derived(password):
        raise InputError(f"Passwords may not start with '{RESERVED_PREFIX}' (the mark of "
                         "credentials a network derives); choose another.")
    return password


def validate_attributes(
    attributes: Mapping[str, Any] | None,
) -> dict[str, AttributeValue]:
    """Check user attributes: identifier keys, str/int/float/bool values.

    >>> validate_attributes({"site": "north", "level": 3})
    {'site': 'north', 'level': 3}
    >>> validate_attributes({"site": ["a"]})
    Traceback (most recent call last):
    ...
    gateway.errors.InputError: Attribute 'site' must be a string, a number or true/false, not list.
    """
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise InputError("User attributes must be a mapping of names to values.")
    checked: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not _IDENTIFIER_RE.fullmatch(key):
            raise InputError(
                f"Invalid attribute name {key!r}: use letters, digits and '_', "
                "not starting with a digit."
            )
        if not isinstance(value, str | int | float | bool):
            raise InputError(
                f"Attribute '{key}' must be a string, a number or true/false, "
                f"not {type(value).__name__}."
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"Attribute '{key}' must be a finite number.")
        checked[key] = value
    return checked


# ---------------------------------------------------------------- connections


class _Pool:
    """A small pool of SQLite connections to one file, shared by threads.

    A connection is used by one thread at a time; idle connections are kept (up
    to ``max_idle``) so that the common case is a pop and a push.
    """

    def __init__(self, path: Path, *, max_idle: int = 16) -> None:
        self._path = path
        self._max_idle = max_idle
        self._idle: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        try:
            con.execute("PRAGMA busy_timeout = 30000")
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = FULL")
            con.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            con.close()
            raise
        return con

    @contextmanager
    def connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._closed:
                raise RuntimeError("The state store is closed.")
            con = self._idle.pop() if self._idle else None
        if con is None:
            con = self._connect()
        try:
            yield con
        finally:
            if con.in_transaction:  # an error escaped mid-transaction
                con.rollback()
            with self._lock:
                keep = not self._closed and len(self._idle) < self._max_idle
                if keep:
                    self._idle.append(con)
            if not keep:
                con.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for con in idle:
            con.close()


# ---------------------------------------------------------------- the store


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _user_from_row(row: sqlite3.Row | tuple[Any, ...]) -> User:
    name, role, attributes, disabled, created_at, updated_at = row
    return User(
        name=name,
        role=role,
        attributes=json.loads(attributes),
        disabled=bool(disabled),
        created_at=_ts(created_at),
        updated_at=_ts(updated_at),
    )


_USER_COLUMNS = "name, role, attributes, disabled, created_at, updated_at"


class StateStore:
    """Users and session tokens of one domain, in ``<data_dir>/state.db``.

    ``hasher`` sets the argon2 parameters (hashes made with other parameters are
    upgraded at the next successful login); ``clock`` returns Unix seconds and
    exists for tests.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        hasher: PasswordHasher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / STATE_FILE
        self._hasher = hasher
        self._clock = clock
        self._dummy_hash: str | None = None
        self._dummy_lock = threading.Lock()
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600)
            os.close(fd)
            os.chmod(self.path, 0o600)
        except OSError as exc:
            raise ConfigError(
                f"Cannot open the state store at {self.path}: {exc.strerror or exc}."
            ) from exc
        self._pool = _Pool(self.path)
        try:
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._pool.close()
            raise ConfigError(f"{self.path} is not a usable Stockade state store ({exc}).") from exc
        except BaseException:
            self._pool.close()
            raise

    # -- lifecycle

    def close(self) -> None:
        """Close the store's connections; the store cannot be used afterwards."""
        self._pool.close()

    def __enter__(self) -> StateStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"StateStore({str(self.data_dir)!r})"

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction; ``BEGIN IMMEDIATE`` takes the write lock up front."""
        with self._pool.connection() as con:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def _migrate(self) -> None:
        with self._transaction() as con:
            con.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version INTEGER PRIMARY KEY,"
                " description TEXT NOT NULL,"
                " applied_at REAL NOT NULL)"
            )
            (current,) = con.execute(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version"
            ).fetchone()
            if current > SCHEMA_VERSION:
                raise ConfigError(
                    f"{self.path} was written by a newer Stockade (schema version {current}; "
                    f"this one knows up to {SCHEMA_VERSION}). Upgrade Stockade to use it."
                )
            for version, description, statements in MIGRATIONS:
                if version <= current:
                    continue
                for statement in statements:
                    con.execute(statement)
                con.execute(
                    "INSERT INTO schema_version (version, description, applied_at)"
                    " VALUES (?, ?, ?)",
                    (version, description, self._clock()),
                )

    def schema_version(self) -> int:
        """The schema version of the file (the last migration applied)."""
        with self._pool.connection() as con:
            (version,) = con.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(version)

    # -- users

    def add_user(
        self,
        name: str,
        role: str,
        password: str,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> User:
        """Create a user; :class:`InputError` if the name is taken or anything is invalid."""
        user = self._add_user(name, role, password, attributes, only_if_empty=False)
        assert user is not None
        return user

    def _add_user(
        self,
        name: str,
        role: str,
        password: str,
        attributes: Mapping[str, AttributeValue] | None,
        *,
        only_if_empty: bool,
    ) -> User | None:
        validate_user_name(name)
        validate_role(role)
        validate_password(password)
        attrs = validate_attributes(attributes)
        password_hash = hash_password(password, hasher=self._hasher)
        verifier, realm = self._network_verifier(password, self.domain_name())
        now = self._clock()
        with self._transaction() as con:
            if only_if_empty and con.execute("SELECT 1 FROM users LIMIT 1").fetchone():
                return None
            existing = con.execute("SELECT name FROM users WHERE name = ?", (name,)).fetchone()
            if existing:
                raise InputError(f"User '{existing[0]}' already exists.")
            con.execute(
                "INSERT INTO users (name, role, attributes, password_hash, disabled,"
                " created_at, updated_at, network_verifier, network_realm)"
                " VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?)",
                (name, role, json.dumps(attrs, sort_keys=True), password_hash, now, now,
                 verifier, realm),
            )
        return User(name, role, attrs, False, _ts(now), _ts(now))

    def _not_found(self, con: sqlite3.Connection, name: str) -> NotFoundError:
        names = [n for (n,) in con.execute("SELECT name FROM users")]
        return NotFoundError(
            f"Unknown user '{name}'.{did_you_mean(name, names)} "
            "See `stockade users list` for the users of this domain."
        )

    def get_user(self, name: str) -> User:
        """The user called ``name`` (case-insensitive); :class:`NotFoundError` if none."""
        with self._pool.connection() as con:
            row = con.execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                raise self._not_found(con, name)
        return _user_from_row(row)

    def list_users(self) -> list[User]:
        """All users, by name."""
        with self._pool.connection() as con:
            rows = con.execute(f"SELECT {_USER_COLUMNS} FROM users ORDER BY name").fetchall()
        return [_user_from_row(row) for row in rows]

    def _update(
        self, name: str, assignments: str, params: tuple[Any, ...], *, revoke: bool
    ) -> User:
        with self._transaction() as con:
            cur = con.execute(
                f"UPDATE users SET {assignments}, updated_at = ? WHERE name = ?",
                (*params, self._clock(), name),
            )
            if cur.rowcount == 0:
                raise self._not_found(con, name)
            if revoke:
                con.execute("DELETE FROM tokens WHERE user_name = ?", (name,))
            row = con.execute(
                f"SELECT {_USER_COLUMNS} FROM users WHERE name = ?", (name,)
            ).fetchone()
        return _user_from_row(row)

    def remove_user(self, name: str) -> None:
        """Delete a user and end all their sessions."""
        with self._transaction() as con:
            con.execute("DELETE FROM tokens WHERE user_name = ?", (name,))
            if con.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise self._not_found(con, name)

    def set_password(self, name: str, password: str) -> None:
        """Change a password and end all the user's sessions."""
        validate_password(password)
        password_hash = hash_password(password, hasher=self._hasher)
        verifier, realm = self._network_verifier(password, self.domain_name())
        self._update(name, "password_hash = ?, network_verifier = ?, network_realm = ?",
                     (password_hash, verifier, realm), revoke=True)

    def set_role(self, name: str, role: str) -> User:
        """Change a user's role (sessions stay; the role is read on every call)."""
        return self._update(name, "role = ?", (validate_role(role),), revoke=False)

    def set_attributes(self, name: str, attributes: Mapping[str, AttributeValue]) -> User:
        """Replace a user's attributes."""
        attrs = json.dumps(validate_attributes(attributes), sort_keys=True)
        return self._update(name, "attributes = ?", (attrs,), revoke=False)

    def set_disabled(self, name: str, disabled: bool) -> User:
        """Disable (or enable) a user; either way their current sessions end."""
        return self._update(name, "disabled = ?", (int(bool(disabled)),), revoke=True)

    # -- authentication

    def _dummy(self) -> str:
        with self._dummy_lock:
            if self._dummy_hash is None:
                self._dummy_hash = hash_password(new_password(), hasher=self._hasher)
            return self._dummy_hash

    def authenticate(self, name: str, password: str) -> User:
        """Check a user name and password; :class:`LoginError` if they do not match.

        The error and, as far as possible, the time taken are the same for an
        unknown user, a wrong password and a disabled user. A password with the
        prefix of a network's derived credential is checked as one
        (:meth:`_authenticate_derived`), never against the password hash; a
        plain password is never checked against the derived verifier. A
        successful login upgrades what the store keeps of the password (a hash
        made with other parameters; the derived verifier, when missing or made
        for another domain name).
        """
        if isinstance(password, str) and is_derived(password):
            return self._authenticate_derived(name, password)
        dummy = self._dummy()
        row, domain = self._login_row(name)
        if row is None:
            verify_password(dummy, password, hasher=self._hasher)
            raise LoginError("unknown_user")
        stored_name, password_hash, disabled, verifier, realm = row
        if not verify_password(password_hash, password, hasher=self._hasher):
            raise LoginError("wrong_password")
        if disabled:
            raise LoginError("disabled")
        self._upgrade(stored_name, password, password_hash, verifier, realm, domain)
        return self.get_user(stored_name)

    def _login_row(self, name: str) -> tuple[tuple[Any, ...] | None, str | None]:
        """``(name, password_hash, disabled, network_verifier, network_realm)`` of user
        ``name`` (None if there is none), and the domain's recorded name."""
        row = None
        with self._pool.connection() as con:
            (domain,) = con.execute(
                "SELECT (SELECT name FROM domain_identity WHERE id = 1)").fetchone()
            if isinstance(name, str) and _NAME_RE.fullmatch(name):
                row = con.execute(
                    "SELECT name, password_hash, disabled, network_verifier, network_realm"
                    " FROM users WHERE name = ?", (name,)
                ).fetchone()
        return row, domain

    def _upgrade(self, name: str, password: str, password_hash: str, verifier: str | None,
                 realm: str | None, domain: str | None) -> None:
        """After a direct login: rehash the password, (re)make the derived verifier."""
        changes: dict[str, str | None] = {}
        if needs_rehash(password_hash, hasher=self._hasher):
            changes["password_hash"] = hash_password(password, hasher=self._hasher)
        if domain is not None and (verifier is None or realm != domain.lower()
                                   or needs_rehash(verifier, hasher=self._hasher)):
            changes["network_verifier"], changes["network_realm"] = self._network_verifier(
                password, domain)
        if not changes:
            return
        assignments = ", ".join(f"{column} = ?" for column in changes)
        with self._transaction() as con:
            # Only if nobody changed the password meanwhile.
            con.execute(
                f"UPDATE users SET {assignments} WHERE name = ? AND password_hash = ?",
                (*changes.values(), name, password_hash),
            )

    def _network_verifier(self, password: str, domain: str | None
                          ) -> tuple[str | None, str | None]:
        """``(hash of the credential derived for domain, its realm)``; Nones if unnamed."""
        if domain is None:
            return None, None
        return hash_password(derive(password, domain), hasher=self._hasher), domain.lower()

    def _authenticate_derived(self, name: str, credential: str) -> User:
        """Check a credential a network derived from the user's password for this domain.

        A credential derived for another name is refused before anything is
        checked (it says which name the network used, so that its operator can
        fix it), as is every credential when the store does not know the
        domain's name. Otherwise every failure is the same :class:`LoginError`
        (:data:`NETWORK_REFUSED`), an account without a verifier included.
        """
        dummy = self._dummy()
        realm = realm_of(credential)
        row, domain = self._login_row(name)
        if domain is None:
            raise AuthenticationError(UNNAMED_DOMAIN)
        if realm != domain.lower():
            raise AuthenticationError(WRONG_DOMAIN.format(realm=realm))
        refused = NETWORK_REFUSED.format(domain=domain)
        if row is None:
            verify_password(dummy, credential, hasher=self._hasher)
            raise LoginError("unknown_user", refused)
        stored_name, _, disabled, verifier, verifier_realm = row
        if verifier is None or verifier_realm != realm:
            verify_password(dummy, credential, hasher=self._hasher)
            raise LoginError("no_network_verifier", refused)
        if not verify_password(verifier, credential, hasher=self._hasher):
            raise LoginError("wrong_password", refused)
        if disabled:
            raise LoginError("disabled", refused)
        if needs_rehash(verifier, hasher=self._hasher):
            with self._transaction() as con:
                con.execute("UPDATE users SET network_verifier = ? WHERE name = ?"
                            " AND network_verifier = ?",
                            (hash_password(credential, hasher=self._hasher), stored_name,
                             verifier))
        return self.get_user(stored_name)

    # -- the domain's name

    def domain_name(self) -> str | None:
        """The name of the domain this store belongs to, as its gateway recorded it."""
        with self._pool.connection() as con:
            row = con.execute("SELECT name FROM domain_identity WHERE id = 1").fetchone()
        return None if row is None else str(row[0])

    def set_domain_name(self, name: str) -> str | None:
        """Record the domain's name (its policy's ``domain.name``); the previous one.

        Networks derive each user's credential for this domain from this name: when
        it changes, every user must log in directly once (or get a new password)
        before logging in through a network again.
        """
        if not isinstance(name, str) or not name:
            raise InputError("A domain's name must be a non-empty string.")
        with self._transaction() as con:
            row = con.execute("SELECT name FROM domain_identity WHERE id = 1").fetchone()
            con.execute(
                "INSERT INTO domain_identity (id, name, updated_at) VALUES (1, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET name = excluded.name,"
                " updated_at = excluded.updated_at", (name, self._clock()))
        return None if row is None else str(row[0])

    def issue_token(self, user: User | str, ttl_s: float, *, token: str | None = None) -> str:
        """A new session token for ``user``, valid ``ttl_s`` seconds.

        Only the token's digest is stored; the token itself is returned once.
        Expired tokens are purged on the way. ``token`` is one made beforehand
        with :func:`gateway.passwords.new_token` (a login decided after its token
        was sent: :mod:`gateway.auth`).
        """
        if not ttl_s > 0:
            raise InputError(f"A token lifetime must be positive, not {ttl_s}.")
        name = user.name if isinstance(user, User) else user
        token = new_token() if token is None else token
        now = self._clock()
        with self._transaction() as con:
            row = con.execute("SELECT name FROM users WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise self._not_found(con, name)
            con.execute("DELETE FROM tokens WHERE expires_at <= ?", (now,))
            con.execute(
                "INSERT INTO tokens (digest, user_name, issued_at, expires_at) VALUES (?, ?, ?, ?)",
                (token_digest(token), row[0], now, now + ttl_s),
            )
        return token

    def user_for_token(self, token: str) -> User:
        """The user a valid token belongs to; :class:`AuthenticationError` otherwise.

        A token is valid when it was issued here, has not expired or been revoked,
        and its user still exists and is enabled.
        """
        if not isinstance(token, str) or not token:
            raise AuthenticationError(INVALID_TOKEN)
        with self._pool.connection() as con:
            row = con.execute(
                "SELECT t.expires_at, u.name, u.role, u.attributes, u.disabled,"
                " u.created_at, u.updated_at"
                " FROM tokens AS t JOIN users AS u ON u.name = t.user_name"
                " WHERE t.digest = ?",
                (token_digest(token),),
            ).fetchone()
        if row is None or row[0] <= self._clock() or row[4]:
            raise AuthenticationError(INVALID_TOKEN)
        return _user_from_row(row[1:])

    def revoke_token(self, token: str) -> None:
        """End one session (a client's CloseSession or logout)."""
        with self._transaction() as con:
            con.execute("DELETE FROM tokens WHERE digest = ?", (token_digest(token),))

    def revoke_tokens(self, name: str) -> int:
        """End all sessions of a user; returns how many were open."""
        with self._transaction() as con:
            return con.execute("DELETE FROM tokens WHERE user_name = ?", (name,)).rowcount

    def purge_expired_tokens(self) -> int:
        """Delete expired tokens; returns how many."""
        with self._transaction() as con:
            return con.execute(
                "DELETE FROM tokens WHERE expires_at <= ?", (self._clock(),)
            ).rowcount


def ensure_admin(
    store: StateStore, *, role: str, name: str = "owner", password: str | None
) -> str | None:
    """Create the first user, an admin, when the store has no user yet.

    With ``password=None`` a one-time password is generated and returned so the
    server can print it once; otherwise (or when users exist) returns ``None``.

    >>> import tempfile
    >>> from argon2 import PasswordHasher
    >>> data_dir = tempfile.TemporaryDirectory()
    >>> store = StateStore(data_dir.name, hasher=PasswordHasher(memory_cost=8192))
    >>> one_time = ensure_admin(store, role="owner", password=None)
    >>> store.authenticate("owner", one_time).role
    'owner'
    >>> ensure_admin(store, role="owner", password=None) is None
    True
    >>> store.close(); data_dir.cleanup()
    """
    secret = new_password() if password is None else password
    created = store._add_user(name, role, secret, None, only_if_empty=True)
    return secret if created is not None and password is None else None

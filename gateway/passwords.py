"""Password hashing, session tokens and one-time passwords.

Passwords are hashed with argon2id (argon2-cffi's defaults, RFC 9106's low-memory
profile). Session tokens are random strings handed to the client once; the state
store keeps only their SHA-256 digest, so a copy of the database opens no session.

>>> h = hash_password("correct horse battery")
>>> h.startswith("$argon2id$")
True
>>> verify_password(h, "correct horse battery"), verify_password(h, "wrong")
(True, False)
>>> len(new_token()) >= 43
True
>>> token_digest("abc")[:16]
'ba7816bf8f01cfea'
"""

from __future__ import annotations

import hashlib
import secrets
import string

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

DEFAULT_HASHER = PasswordHasher()

# Letters and digits that cannot be mistaken for one another when read aloud or
# copied from a terminal (no 0/O, 1/l/I).
_PASSWORD_ALPHABET = "".join(c for c in string.ascii_letters + string.digits if c not in "0O1lI")
_PASSWORD_LENGTH = 20  # about 113 bits


def hash_password(password: str, *, hasher: PasswordHasher | None = None) -> str:
    """Return the argon2id hash of ``password`` (salted, self-describing)."""
    return (hasher or DEFAULT_HASHER).hash(password)


def verify_password(
    password_hash: str, password: str, *, hasher: PasswordHasher | None = None
) -> bool:
    """Whether ``password`` matches ``password_hash``; a malformed hash never matches."""
    try:
        return (hasher or DEFAULT_HASHER).verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str, *, hasher: PasswordHasher | None = None) -> bool:
    """Whether ``password_hash`` was made with other parameters than ``hasher``'s."""
    try:
        return (hasher or DEFAULT_HASHER).check_needs_rehash(password_hash)
    except InvalidHashError:
        return True


def new_token() -> str:
    """A fresh session token: 256 random bits, URL-safe, prefixed ``stk_``.

    The prefix lets secret scanners recognise a leaked token.
    """
    return "stk_" + secrets.token_urlsafe(32)


def token_digest(token: str) -> str:
    """The SHA-256 hex digest under which a token is stored.

    A plain hash is enough here (unlike for passwords): tokens carry 256 random
    bits, so they cannot be guessed from their digest.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_password() -> str:
    """A one-time password: 20 characters free of look-alikes, about 113 bits.

    >>> p = new_password()
    >>> len(p), p.isalnum()
    (20, True)
    """
    return "".join(secrets.choice(_PASSWORD_ALPHABET) for _ in range(_PASSWORD_LENGTH))

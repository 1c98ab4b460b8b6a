"""Per-domain credentials that a network derives from an analyst's password.

A network node logs its analysts in to every domain it lists. It never sends the
analyst's password to a domain: for domain ``D`` it sends, as the Basic password,

    ``stockade-dk1:<d>:<base64url(argon2id(password, salt="stockade-network:" + d))>``

where ``d`` is ``D``'s own name (its policy's ``domain.name``, in lower case). A
domain keeps, beside the hash of the password, an argon2 hash of the credential
derived for *its own* name (:mod:`gateway.state`), and checks a credential that
carries the prefix against that alone. So what one domain receives is useless at
any other (their salts differ), and reveals the password only to an offline
search at the cost of :data:`TIME_COST` and :data:`MEMORY_KIB` per guess: weak
passwords stay guessable by a domain that wants to (see ``docs/network.md``).

>>> key = derive("correct horse battery", "St_Marys")
>>> key.startswith("stockade-dk1:st_marys:"), len(key.rsplit(":", 1)[1])
(True, 43)
>>> key == derive("correct horse battery", "st_marys")
True
>>> key == derive("correct horse battery", "city_general")
False
>>> realm_of(key), is_derived(key), is_derived("correct horse battery")
('st_marys', True, False)

The cost is measured, not guessed: on a 2-core machine shared with other work,
one derivation took ~80 ms and four in parallel ~450 ms (with 64 MiB and 3 passes,
argon2-cffi's password default, one took ~600 ms: too slow for a login that
derives one key per domain). The parameters are OWASP's baseline for argon2id.
They are part of the format: changing them needs a new prefix (``dk2``), which
domains and networks must both know.
"""

from __future__ import annotations

import base64

from argon2.low_level import Type, hash_secret_raw

from gateway.errors import AuthenticationError

#: Every derived credential starts with this; passwords may not (see ``validate_password``).
RESERVED_PREFIX = "stockade-dk"
#: The version of the derivation below.
PREFIX = "stockade-dk1:"
SALT_PREFIX = "stockade-network:"
TIME_COST = 2
MEMORY_KIB = 19 * 1024
PARALLELISM = 1
KEY_BYTES = 32

MALFORMED = ("This is not a credential a Stockade network derives "
             "(stockade-dk1:<domain>:<key>): log in with your password.")


def salt_for(domain_name: str) -> bytes:
    """The derivation's salt for the domain called ``domain_name`` (case-insensitive).

    >>> salt_for("St_Marys")
    b'stockade-network:st_marys'
    """
    return (SALT_PREFIX + domain_name.lower()).encode("utf-8")


def derive(password: str, domain_name: str) -> str:
    """The credential a network sends domain ``domain_name`` instead of ``password``."""
    raw = hash_secret_raw(password.encode("utf-8"), salt_for(domain_name), TIME_COST,
                          MEMORY_KIB, PARALLELISM, KEY_BYTES, Type.ID)
    key = base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")
    return f"{PREFIX}{domain_name.lower()}:{key}"


def is_derived(secret: str) -> bool:
    """Whether ``secret`` is (or claims to be) a derived credential, of any version."""
    return secret.startswith(RESERVED_PREFIX)


def realm_of(credential: str) -> str:
    """The domain name a derived credential was made for; AuthenticationError if malformed.

    >>> realm_of("stockade-dk1:x")
    Traceback (most recent call last):
    ...
    gateway.errors.AuthenticationError: This is not a credential a Stockade network derives (stockade-dk1:<domain>:<key>): log in with your password.
    """  # noqa: E501
    if not credential.startswith(PREFIX):
        raise AuthenticationError(MALFORMED)
    realm, colon, key = credential[len(PREFIX):].rpartition(":")
    if not colon or not realm or len(key) != 43:
        raise AuthenticationError(MALFORMED)
    return realm


def for_domain(credential: str, domain_name: str) -> bool:
    """Whether ``credential`` was derived for the domain called ``domain_name``.

    >>> for_domain(derive("pw", "a"), "A"), for_domain(derive("pw", "a"), "b")
    (True, False)
    """
    return realm_of(credential) == domain_name.lower()

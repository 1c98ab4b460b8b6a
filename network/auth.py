"""Analysts' sessions at the network: one login, a token at every domain.

The network has no users of its own. An analyst logs in to the network with the
user name and password the domains know (Basic, as with a domain). The network
never sends that password to a domain: it derives, for each domain, a credential
from the password and the domain's own name (:mod:`gateway.network_keys`;
argon2id, in parallel, at most :data:`DERIVE_WORKERS` at a time), forgets the
password, and logs in to every domain with its own credential. A domain checks
it against the verifier it keeps for its own name, so what one domain receives
is worth nothing at another (see ``docs/network.md`` for the trust model). The
login succeeds when at least one domain accepts. The analyst gets a network
bearer token; behind it, the :class:`NetworkSession` keeps the bearer token each
domain issued, and each domain authenticates and authorises the analyst itself
on every call.

The derived credentials (never the password) are kept in the session's memory
only, for the session's lifetime (``session_ttl_s``, or until the client closes
the session): each is needed to log in to its domain when it was down at login
time, and again when the domain's token expires. They are never written
anywhere, logged or sent anywhere but each to its own domain.

Domains throttle failed logins per (user name, client address)
(:class:`gateway.throttle.LoginThrottle`), and every network login is a login at
every domain, from the network's address. So that the network does not get its
analysts throttled at a domain by retrying credentials the domain refused, a
refusal is remembered (per domain, user and a keyed digest of the credential, in
memory, for ``rejection_memory_s``) and not retried meanwhile; the network also
throttles failed network logins itself, per (user name, analyst's address), the
way a domain does (:mod:`gateway.auth`): once a user name has failed often, its
Basic logins are decided where pyarrow tells the client's address, by the first
call that is not a Handshake.

Every call needs a login but the ``stockade.network.health`` action, which
answers ``{"status": "ok"}`` and nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow.flight as flight

from gateway.auth import (
    AUTH_REQUIRED,
    MALFORMED_HEADER,
    DeferredLogin,
    DeferredLogins,
    decode_basic,
    first_header,
    throttled_message,
)
from gateway.dialects import DIALECT_HEADER, EPSILON_HEADER
from gateway.errors import (
    AuthenticationError,
    PermissionDeniedError,
    StockadeError,
    UnavailableError,
)
from gateway.flight_errors import to_flight_error
from gateway.network_keys import derive
from gateway.throttle import LoginThrottle, client_address
from network.domains import DomainDown, DomainLink, DomainRejected, DomainTimeout
from network.options import PARTIAL_HEADER

log = logging.getLogger("stockade.network.auth")

WRONG_CREDENTIALS = "Wrong user name or password"
NOT_SEEN_HINT = (
    "If your password is right: a domain accepts logins through a network once it has seen "
    "your password (since it began to accept them), so log in to each domain directly once, "
    "or ask its owner to reset your password.")
#: How many credentials are derived at once, across all logins: each takes
#: ``gateway.network_keys.MEMORY_KIB`` of memory and one core for its duration.
DERIVE_WORKERS = max(1, min(4, os.cpu_count() or 1))
T = TypeVar("T")


@dataclass
class DomainLogin:
    """The analyst's standing at one domain: ``ok`` (with a token), ``rejected``,
    ``unavailable`` or ``timeout`` (not logged in: tried again when needed)."""

    state: str
    token: str | None = None
    message: str = ""
    skipped: bool = False  # not asked: its last health check failed


@dataclass
class NetworkSession:
    """One analyst's login at the network.

    ``logins`` holds the analyst's standing at each domain; each domain has its
    own lock, so that logging in again at a slow domain holds up no other.
    ``_credentials`` holds the credential derived for each domain (never the
    password); None once the session is closed.
    """

    id: str  # digest of the network token (the token itself is not kept)
    user: str
    expires: float
    logins: dict[str, DomainLogin]
    _credentials: dict[str, str] | None = field(repr=False)
    options: dict[str, Any] = field(default_factory=dict)
    locks: dict[str, threading.Lock] = field(default_factory=dict, repr=False)

    def lock(self, domain: str) -> threading.Lock:
        return self.locks.setdefault(domain, threading.Lock())

    def credential(self, domain: str) -> str:
        """The credential derived for ``domain``; AuthenticationError once closed."""
        credentials = self._credentials
        if credentials is None:
            raise AuthenticationError("Your network session was closed: log in again.")
        return credentials[domain]

    def forget_credentials(self) -> None:
        self._credentials = None

    @property
    def closed(self) -> bool:
        return self._credentials is None


class RejectionMemory:
    """Which (domain, user, credential) a domain refused lately; bounded, in memory.

    The credential is kept as an HMAC under a key made when the network starts.
    """

    def __init__(self, keep_s: float, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.keep_s = keep_s
        self.max_entries = max_entries
        self._clock = clock
        self._key = secrets.token_bytes(32)
        self._entries: OrderedDict[tuple[str, str, bytes], tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def _digest(self, secret: str) -> bytes:
        return hmac.new(self._key, secret.encode(), hashlib.sha256).digest()

    def remember(self, domain: str, user: str, secret: str, message: str) -> None:
        key = (domain, user.lower(), self._digest(secret))
        with self._lock:
            self._entries[key] = (self._clock() + self.keep_s, message)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def recalled(self, domain: str, user: str, secret: str) -> str | None:
        """The domain's refusal message, if it refused these credentials lately."""
        key = (domain, user.lower(), self._digest(secret))
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry[0] <= self._clock():
                del self._entries[key]
                return None
            return entry[1]

    def forget(self, domain: str, user: str) -> None:
        with self._lock:
            for key in [k for k in self._entries if k[0] == domain and k[1] == user.lower()]:
                del self._entries[key]


class Sessions:
    """Logs analysts in to the domains and keeps their sessions (bounded, expiring)."""

    def __init__(self, links: Mapping[str, DomainLink], *, ttl_s: float = 3600.0,
                 rejection_memory_s: float = 300.0, max_sessions: int = 10_000,
                 is_down: Callable[[str], bool] | None = None,
                 pool: ThreadPoolExecutor | None = None) -> None:
        self.links = dict(links)
        self.ttl_s = ttl_s
        self.max_sessions = max_sessions
        self.rejections = RejectionMemory(rejection_memory_s)
        self.throttle = LoginThrottle()
        self._is_down = is_down or (lambda name: False)
        self._pool = pool or ThreadPoolExecutor(max_workers=16, thread_name_prefix="login")
        self._derivations = ThreadPoolExecutor(max_workers=DERIVE_WORKERS,
                                               thread_name_prefix="derive")
        self._sessions: OrderedDict[str, NetworkSession] = OrderedDict()
        self._lock = threading.Lock()

    # -- logging in -----------------------------------------------------------------

    def derive(self, password: str) -> dict[str, str]:
        """The credential for each domain (name in the network → credential), in parallel.

        Each is derived for the domain's own name (``domain_name`` in the config),
        which the config keeps unique, so no two domains get the same credential.
        """
        futures = {name: self._derivations.submit(derive, password, link.own_name)
                   for name, link in self.links.items()}
        return {name: future.result() for name, future in futures.items()}

    def login(self, user: str, password: str, *, address: str | None = None,
              token: str | None = None) -> tuple[str, NetworkSession]:
        """Log in to every domain; ``(network token, session)``.

        ``password`` is used to derive each domain's credential and then dropped.
        ``address`` is the analyst's (:func:`gateway.throttle.client_address`),
        None where it is not known; ``token`` a network token made beforehand (a
        login decided after its token was sent). Domains known to be down (the
        last health check failed) are not waited for: the session logs in to them
        when they are first needed.
        """
        if address is not None:
            wait = self.throttle.wait_s(user, address)
            if wait > 0:
                raise AuthenticationError(throttled_message(wait))
        credentials = self.derive(password)
        del password
        futures = {name: self._pool.submit(self._login_one, link, user, credentials[name],
                                           skip_down=True)
                   for name, link in self.links.items()}
        logins = {name: future.result() for name, future in futures.items()}
        if not any(login.state in ("ok", "rejected") for login in logins.values()):
            # every domain is down, or thought down: ask those not asked before giving up
            futures = {name: self._pool.submit(self._login_one, self.links[name], user,
                                               credentials[name])
                       for name, login in logins.items() if login.skipped}
            logins.update({name: future.result() for name, future in futures.items()})
        if not any(login.state == "ok" for login in logins.values()):
            rejected = sorted(n for n, login in logins.items() if login.state == "rejected")
            if rejected:
                self.throttle.failure(user, address)
                raise AuthenticationError(
                    f"{WRONG_CREDENTIALS}: no domain of the network accepted them "
                    f"(refused by {', '.join(rejected)}). {NOT_SEEN_HINT}")
            reasons = "; ".join(login.message for login in logins.values())
            raise UnavailableError("No domain of the network could check your credentials: "
                                   f"{reasons}")
        self.throttle.success(user, address)
        token = token or secrets.token_urlsafe(32)
        session = NetworkSession(
            _session_id(token), user, time.monotonic() + self.ttl_s, logins, credentials)
        with self._lock:
            self._sessions[session.id] = session
            while len(self._sessions) > self.max_sessions:
                _, old = self._sessions.popitem(last=False)
                old.forget_credentials()
        log.info("network login by %r: %s", user,
                 ", ".join(f"{n}={login.state}" for n, login in logins.items()))
        return token, session

    def _login_one(self, link: DomainLink, user: str, credential: str, *,
                   skip_down: bool = False) -> DomainLogin:
        refused = self.rejections.recalled(link.name, user, credential)
        if refused is not None:
            return DomainLogin("rejected", message=refused)
        if skip_down and self._is_down(link.name):
            return DomainLogin("unavailable", message=f"domain '{link.name}' is unavailable "
                                                      "(its last health check failed)",
                               skipped=True)
        try:
            return DomainLogin("ok", token=link.login(user, credential))
        except (AuthenticationError, PermissionDeniedError) as exc:
            message = (f"{_rejected_message(link.name, exc).rstrip('.')}. The network asks "
                       f"domain '{link.name}' again with these credentials "
                       f"{self.rejections.keep_s:g} s after this refusal.")
            self.rejections.remember(link.name, user, credential, message)
            return DomainLogin("rejected", message=message)
        except DomainTimeout as exc:
            return DomainLogin("timeout", message=exc.message)
        except StockadeError as exc:
            return DomainLogin("unavailable", message=exc.message)

    # -- finding a session ------------------------------------------------------------

    def find(self, token: str) -> NetworkSession:
        """The live session of a network bearer token."""
        key = _session_id(token)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and session.expires <= time.monotonic():
                del self._sessions[key]
                session.forget_credentials()
                raise AuthenticationError("Your network session has expired: log in again.")
        if session is None:
            raise AuthenticationError("Unknown or expired network token: log in again.")
        return session

    def close(self, session: NetworkSession) -> None:
        """End ``session``: its credentials and domain tokens are forgotten."""
        with self._lock:
            self._sessions.pop(session.id, None)
        session.forget_credentials()
        session.logins = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def shutdown(self) -> None:
        """Forget every session (the network is stopping)."""
        with self._lock:
            sessions = list(self._sessions.values())
            self._sessions.clear()
        for session in sessions:
            session.forget_credentials()
            session.logins = {}
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._derivations.shutdown(wait=False, cancel_futures=True)

    # -- calling a domain as the analyst ----------------------------------------------

    def token(self, session: NetworkSession, link: DomainLink) -> str:
        """The analyst's token at ``link``: logs in now if the domain was down at login.

        Raises the domain's refusal (naming it) if it rejected the credentials.
        """
        with session.lock(link.name):
            login = session.logins.get(link.name)
            if login is not None and login.state == "ok" and login.token:
                return login.token
            if login is not None and login.state == "rejected":
                raise DomainRejected(login.message)
            return self._relogin(session, link)

    def _relogin(self, session: NetworkSession, link: DomainLink) -> str:
        """Log in at ``link`` again (the caller holds the session's lock of ``link``)."""
        login = self._login_one(link, session.user, session.credential(link.name))
        session.logins[link.name] = login
        if login.state == "ok" and login.token:
            return login.token
        if login.state == "rejected":
            raise DomainRejected(login.message)
        if login.state == "timeout":
            raise DomainTimeout(login.message)
        raise DomainDown(login.message)

    def call(self, session: NetworkSession, link: DomainLink, fn: Callable[[str], T]) -> T:
        """``fn(token)`` with the analyst's token at ``link``.

        If the domain no longer accepts the token (it expired there), the session
        logs in again with the kept credential and calls ``fn`` once more.
        """
        token = self.token(session, link)
        try:
            return fn(token)
        except DomainRejected:
            with session.lock(link.name):
                current = session.logins.get(link.name)
                if current is not None and current.token not in (None, token):
                    fresh = current.token  # another call logged in meanwhile
                else:
                    fresh = self._relogin(session, link)
            assert fresh is not None
            return fn(fresh)


def _rejected_message(name: str, exc: StockadeError) -> str:
    if exc.message.startswith(f"domain '{name}'"):
        return exc.message
    return f"domain '{name}' rejected your credentials: {exc.message}"


def _session_id(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- Flight middleware


class NetworkMiddleware(flight.ServerMiddleware):  # type: ignore[misc]
    """The caller of one call: their session (None for an anonymous call) and headers.

    A middleware with a ``deferred`` login has its session only once
    :meth:`verify` has logged in with the client's address.
    """

    def __init__(self, session: NetworkSession | None, token: str | None = None, *,
                 headers: Mapping[str, str | None] | None = None,
                 deferred: tuple[NetworkAuthFactory, DeferredLogin] | None = None) -> None:
        super().__init__()
        self.session = session
        self.token = token
        self.headers = dict(headers or {})
        self._deferred = deferred

    def verify(self, peer: str) -> None:
        """Decide a deferred login now that the client's address (``context.peer()``) is known."""
        if self._deferred is None:
            return
        factory, login = self._deferred
        address = client_address(peer)
        self.session = login.settle(
            lambda user, password: factory.check_deferred(login, password, address))
        self._deferred = None

    def sending_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"} if self.token else {}

    def __repr__(self) -> str:  # never print the token
        user = self.session.user if self.session else None
        return f"NetworkMiddleware(user={user!r})"


class NetworkAuthFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Basic → log in to the domains and issue a network token; Bearer → the session.

    A call without credentials is refused, but for DoAction, which goes through
    as anonymous: the server answers the health action alone to it.
    """

    def __init__(self, sessions: Sessions, deferred: DeferredLogins | None = None) -> None:
        super().__init__()
        self.sessions = sessions
        self.deferred = deferred if deferred is not None else DeferredLogins()

    def start_call(self, info: flight.CallInfo | None, headers: Mapping[str, Any]
                   ) -> NetworkMiddleware:
        try:
            method = info.method if info is not None else None
            return self._start(headers, method)
        except Exception as exc:
            raise to_flight_error(exc) from None

    def _start(self, headers: Mapping[str, Any], method: Any) -> NetworkMiddleware:
        options = {name: first_header(headers, name)
                   for name in (DIALECT_HEADER, EPSILON_HEADER, PARTIAL_HEADER)}
        value = first_header(headers, "authorization")
        if not value or not value.strip():
            if method == flight.FlightMethod.DO_ACTION:
                return NetworkMiddleware(None, headers=options)
            raise AuthenticationError(AUTH_REQUIRED)
        scheme, _, credentials = value.strip().partition(" ")
        if scheme.lower() == "bearer":
            token = credentials.strip()
            login = self.deferred.find(token)
            if login is not None:  # a Handshake's login, decided by this call
                return NetworkMiddleware(None, headers=options, deferred=(self, login))
            return NetworkMiddleware(self.sessions.find(token), headers=options)
        if scheme.lower() == "basic":
            user, password = decode_basic(credentials)
            if self.sessions.throttle.guarded(user):
                login = self.deferred.new(user, password)
                if method == flight.FlightMethod.HANDSHAKE:
                    self.deferred.keep(login)
                return NetworkMiddleware(None, login.token, headers=options,
                                         deferred=(self, login))
            token, session = self.sessions.login(user, password)
            return NetworkMiddleware(session, token, headers=options)
        raise AuthenticationError(MALFORMED_HEADER)

    def check_deferred(self, login: DeferredLogin, password: str, address: str
                       ) -> NetworkSession:
        """Log a deferred login in from ``address``; its token becomes valid if it succeeds.

        A refused one stays known until it expires: each call with its token gets
        the same refusal.
        """
        session = self.sessions.login(login.name, password, address=address,
                                      token=login.token)[1]
        self.deferred.discard(login.token)
        return session


def session_of(context: flight.ServerCallContext, key: str) -> NetworkSession:
    """The caller's session, its login decided; unauthenticated error for an anonymous call."""
    middleware = context.get_middleware(key)
    if not isinstance(middleware, NetworkMiddleware):
        raise AuthenticationError(AUTH_REQUIRED)
    middleware.verify(context.peer())
    if middleware.session is None:
        raise AuthenticationError(AUTH_REQUIRED)
    return middleware.session


def headers_of(context: flight.ServerCallContext, key: str) -> dict[str, str | None]:
    middleware = context.get_middleware(key)
    return middleware.headers if isinstance(middleware, NetworkMiddleware) else {}

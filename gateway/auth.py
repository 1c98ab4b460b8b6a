"""Flight authentication: Basic credentials in, a bearer token out.

Flight clients log in the way ADBC, JDBC and pyarrow's ``authenticate_basic_token``
do: a Handshake call carrying ``authorization: Basic <base64 user:password>``,
whose response carries ``authorization: Bearer <token>``; every later call sends
that bearer header. The check itself happens in :class:`AuthMiddlewareFactory`,
which pyarrow runs for every call *including* the Handshake, so the token it
issues rides on the Handshake's response headers. :class:`NoOpHandshake` only
makes the Handshake succeed (without an auth handler pyarrow answers it with
UNIMPLEMENTED and ADBC's login fails).

Wire a server like this::

    FlightServerBase(
        location,
        auth_handler=NoOpHandshake(),
        middleware={MIDDLEWARE_KEY: AuthMiddlewareFactory(store, principal_for)},
    )

and read the caller in a handler with :func:`principal_from_context`.

Failed logins are throttled per (account, client address)
(:class:`gateway.throttle.LoginThrottle`): a guesser waits, the account's owner
elsewhere does not. pyarrow tells a handler the client's address
(``context.peer()``) but not the middleware, and the Handshake has no handler of
its own. So while an account has few recent failures, its logins are checked at
once, in the middleware, as above. Once it has many (it is *guarded*), a Basic
login is checked where the address is known: on a Handshake, the token is sent
back unchecked and the login is decided by the first call that uses it; on any
other call, by that call's handler (both through :meth:`AuthMiddleware.verify`).
A wrong password then fails at that first call instead of at the Handshake, with
the same message. Wrong user names, wrong passwords and disabled users get the
same answer; an address that must wait is told how long.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow.flight as flight

from gateway.dialects import DIALECT_HEADER, DP_PARTS_HEADER, EPSILON_HEADER
from gateway.errors import AuthenticationError
from gateway.flight_errors import to_flight_error
from gateway.passwords import new_token
from gateway.state import LoginError, StateStore, User
from gateway.throttle import LoginThrottle, client_address
from policy.principal import Principal

log = logging.getLogger("stockade.auth")

MIDDLEWARE_KEY = "auth"
AUTH_REQUIRED = "Authentication required: connect with a user name and password."
MALFORMED_HEADER = (
    "The authorization header is malformed: expected 'Basic <base64 of user:password>' "
    "or 'Bearer <token>'."
)
T = TypeVar("T")


def throttled_message(wait_s: float) -> str:
    """What an address that must wait before trying an account again is told.

    >>> throttled_message(29.2)
    'Too many failed logins for this user name from your address: try again in 30 s.'
    """
    return ("Too many failed logins for this user name from your address: "
            f"try again in {math.ceil(wait_s)} s.")


def principal_of(user: User) -> Principal:
    """The plain principal of a user (no check against a policy).

    >>> principal_of(User("alice", "analyst", {"site": "north"}))
    Principal(user='alice', role='analyst', attributes=mappingproxy({'site': 'north'}))
    """
    return Principal(user.name, user.role, user.attributes)


class NoOpHandshake(flight.ServerAuthHandler):  # type: ignore[misc]
    """Answers the Handshake and accepts every call; the middleware does the checking.

    The answer is one empty ``HandshakeResponse`` (what Arrow's Java server sends
    when authentication is done by headers): some clients wait for a message
    before they read the ``authorization`` header the middleware set.
    """

    def authenticate(self, outgoing: Any, incoming: Any) -> None:
        if outgoing is not None:
            outgoing.write(b"")

    def is_valid(self, token: bytes) -> bytes:
        return b""


@dataclass(eq=False)
class DeferredLogin:
    """A Basic login to be checked where the client's address is known.

    ``token`` is sent to the client before the check; it becomes valid only if
    the check succeeds. :meth:`settle` runs the check once (concurrent calls
    with the same token wait for it and get the same outcome) and forgets the
    password.
    """

    name: str
    token: str
    expires: float
    _password: str | None = field(repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _settled: bool = field(default=False, repr=False)
    _result: Any = field(default=None, repr=False)
    _error: Exception | None = field(default=None, repr=False)

    def settle(self, check: Callable[[str, str], T]) -> T:
        """``check(name, password)``, run once; later calls get its result or error."""
        with self._lock:
            if not self._settled:
                try:
                    self._result = check(self.name, self._password or "")
                except Exception as exc:
                    self._error = exc
                finally:
                    self._settled = True
                    self._password = None
        if self._error is not None:
            raise self._error
        result: T = self._result
        return result


class DeferredLogins:
    """Logins made on a Handshake while their account was guarded, until their next call.

    Bounded (the oldest go first) and short-lived: a client uses its token at once.
    """

    def __init__(self, *, ttl_s: float = 60.0, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, DeferredLogin] = OrderedDict()
        self._lock = threading.Lock()

    def new(self, name: str, password: str) -> DeferredLogin:
        """A deferred login with a fresh token (not kept: see :meth:`keep`)."""
        return DeferredLogin(name, new_token(), self._clock() + self.ttl_s, password)

    def keep(self, login: DeferredLogin) -> None:
        """Keep ``login`` until its token's next call; expired ones (oldest first) go now."""
        now = self._clock()
        with self._lock:
            while self._entries and next(iter(self._entries.values())).expires <= now:
                self._entries.popitem(last=False)
            self._entries[session_id(login.token)] = login
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def find(self, token: str) -> DeferredLogin | None:
        key = session_id(token)
        with self._lock:
            login = self._entries.get(key)
            if login is not None and login.expires <= self._clock():
                del self._entries[key]
                return None
            return login

    def discard(self, token: str) -> None:
        with self._lock:
            self._entries.pop(session_id(token), None)

    def __len__(self) -> int:
        return len(self._entries)


class AuthMiddleware(flight.ServerMiddleware):  # type: ignore[misc]
    """The authenticated caller of one call: ``.user`` and ``.principal``.

    ``token`` is set when this call logged in with Basic credentials; it is sent
    back in the ``authorization`` response header. ``session_id`` identifies the
    login (a digest of its bearer token, never the token): a client that logs in
    once per connection, as ADBC and JDBC do, keeps it for the connection.
    ``dialect``, ``epsilon`` and ``dp_parts`` are the call's ``x-stockade-dialect``,
    ``x-stockade-epsilon`` and ``x-stockade-dp-parts`` headers, if any (pyarrow's
    call context has no header accessor, so they are read here).

    A middleware made with :meth:`deferred` knows its caller only once
    :meth:`verify` has checked the login with the client's address; until then
    ``user`` and ``principal`` refuse (so a handler that forgot to verify fails
    closed).
    """

    def __init__(
        self,
        user: User | None,
        principal: Principal | None,
        token: str | None = None,
        *,
        session_id: str | None = None,
        dialect: str | None = None,
        epsilon: str | None = None,
        dp_parts: str | None = None,
    ) -> None:
        super().__init__()
        self._user = user
        self._principal = principal
        self.token = token
        self.session_id = session_id
        self.dialect = dialect
        self.epsilon = epsilon
        self.dp_parts = dp_parts
        self._pending: tuple[AuthMiddlewareFactory, DeferredLogin] | None = None

    @classmethod
    def deferred(cls, factory: AuthMiddlewareFactory, login: DeferredLogin, *,
                 send_token: bool, dialect: str | None = None,
                 epsilon: str | None = None, dp_parts: str | None = None) -> AuthMiddleware:
        """A caller whose login ``factory`` checks at :meth:`verify`."""
        middleware = cls(None, None, login.token if send_token else None,
                         session_id=session_id(login.token), dialect=dialect, epsilon=epsilon,
                         dp_parts=dp_parts)
        middleware._pending = (factory, login)
        return middleware

    @property
    def user(self) -> User:
        if self._user is None:
            raise AuthenticationError(AUTH_REQUIRED)
        return self._user

    @property
    def principal(self) -> Principal:
        if self._principal is None:
            raise AuthenticationError(AUTH_REQUIRED)
        return self._principal

    def verify(self, peer: str) -> None:
        """Check a deferred login now that the client's address (``context.peer()``) is known."""
        if self._pending is None:
            return
        factory, login = self._pending
        address = client_address(peer)
        self._user, self._principal = login.settle(
            lambda name, password: factory.check_deferred(login, password, address))
        self._pending = None

    def sending_headers(self) -> dict[str, str]:
        if self.token is None:
            return {}
        return {"authorization": f"Bearer {self.token}"}

    def __repr__(self) -> str:  # never print the token
        if self._user is None:
            return "AuthMiddleware(unverified)"
        return f"AuthMiddleware(user={self._user.name!r}, role={self._user.role!r})"


def first_header(headers: Mapping[str, Any], key: str) -> str | None:
    value = headers.get(key)
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return value


def session_id(token: str) -> str:
    """The session identifier of a bearer token (a digest: tokens are never kept).

    >>> len(session_id("abc")), session_id("abc") == session_id("abc")
    (64, True)
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def decode_basic(credentials: str) -> tuple[str, str]:
    """Decode the base64 ``user:password`` of a Basic header, padded or not.

    >>> decode_basic("YWxpY2U6cHc=")
    ('alice', 'pw')
    >>> decode_basic("YWxpY2U6cHc")
    ('alice', 'pw')
    """
    text = credentials.strip().rstrip("=")
    text += "=" * (-len(text) % 4)
    try:
        decoded = base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise AuthenticationError(MALFORMED_HEADER) from None
    name, colon, password = decoded.partition(":")
    if not colon:
        raise AuthenticationError(MALFORMED_HEADER)
    return name, password


class AuthMiddlewareFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Authenticates every Flight call from its ``authorization`` header.

    ``principal_for`` turns the stored user into the principal the policy sees
    (the gateway checks there that the role exists). ``on_login_failure(user,
    reason, address)`` is called for each failed login, with ``reason`` one of
    ``unknown_user``, ``wrong_password``, ``disabled``, ``no_network_verifier`` (a
    credential a network derived, for an account the store has no verifier for:
    :mod:`gateway.state`), ``throttled``, and the client's address (None for a
    login checked before the address is known).
    """

    def __init__(
        self,
        store: StateStore,
        principal_for: Callable[[User], Principal],
        *,
        token_ttl_s: int = 3600,
        on_login_failure: Callable[[str, str, str | None], None] | None = None,
        throttle: LoginThrottle | None = None,
        deferred: DeferredLogins | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.principal_for = principal_for
        self.token_ttl_s = token_ttl_s
        self.on_login_failure = on_login_failure
        self.throttle = throttle if throttle is not None else LoginThrottle()
        self.deferred = deferred if deferred is not None else DeferredLogins()

    def start_call(self, info: flight.CallInfo | None, headers: Mapping[str, Any]
                   ) -> AuthMiddleware:
        try:
            handshake = info is not None and info.method == flight.FlightMethod.HANDSHAKE
            return self._start(headers, handshake=handshake)
        except Exception as exc:
            raise to_flight_error(exc) from None

    def _start(self, headers: Mapping[str, Any], *, handshake: bool) -> AuthMiddleware:
        value = first_header(headers, "authorization")
        if not value or not value.strip():
            raise AuthenticationError(AUTH_REQUIRED)
        scheme, _, credentials = value.strip().partition(" ")
        scheme = scheme.lower()
        dialect = first_header(headers, DIALECT_HEADER)
        epsilon = first_header(headers, EPSILON_HEADER)
        dp_parts = first_header(headers, DP_PARTS_HEADER)
        if scheme == "bearer":
            token = credentials.strip()
            login = self.deferred.find(token)
            if login is not None:  # a Handshake's login, decided by this call
                return AuthMiddleware.deferred(self, login, send_token=False, dialect=dialect,
                                               epsilon=epsilon, dp_parts=dp_parts)
            user = self.store.user_for_token(token)
            return AuthMiddleware(user, self.principal_for(user),
                                  session_id=session_id(token), dialect=dialect,
                                  epsilon=epsilon, dp_parts=dp_parts)
        if scheme == "basic":
            name, password = decode_basic(credentials)
            if self.throttle.guarded(name):
                login = self.deferred.new(name, password)
                if handshake:  # no handler will see this call: the next one decides
                    self.deferred.keep(login)
                return AuthMiddleware.deferred(self, login, send_token=True, dialect=dialect,
                                               epsilon=epsilon, dp_parts=dp_parts)
            user = self._check(name, password, None)
            principal = self.principal_for(user)
            token = self.store.issue_token(user, self.token_ttl_s)
            return AuthMiddleware(user, principal, token,
                                  session_id=session_id(token), dialect=dialect,
                                  epsilon=epsilon, dp_parts=dp_parts)
        raise AuthenticationError(MALFORMED_HEADER)

    def check_deferred(self, login: DeferredLogin, password: str, address: str
                       ) -> tuple[User, Principal]:
        """Decide a deferred login from ``address``; its token becomes valid if it succeeds.

        A refused one stays known until it expires, so each call that still uses
        its token (ADBC goes on after a failed call) gets the same refusal.
        """
        wait = self.throttle.wait_s(login.name, address)
        if wait > 0:
            self._failed(login.name, "throttled", address)
            raise AuthenticationError(throttled_message(wait))
        user = self._check(login.name, password, address)
        principal = self.principal_for(user)
        self.store.issue_token(user, self.token_ttl_s, token=login.token)
        self.deferred.discard(login.token)
        return user, principal

    def _check(self, name: str, password: str, address: str | None) -> User:
        try:
            user = self.store.authenticate(name, password)
        except LoginError as exc:
            self.throttle.failure(name, address)
            self._failed(name, exc.reason, address)
            raise
        self.throttle.success(name, address)
        return user

    def _failed(self, name: str, reason: str, address: str | None) -> None:
        log.info("login failed for %r from %s: %s", name, address or "(not known yet)", reason)
        if self.on_login_failure is not None:
            try:
                self.on_login_failure(name, reason, address)
            except Exception:
                log.exception("on_login_failure hook failed")


def middleware_from_context(context: flight.ServerCallContext) -> AuthMiddleware:
    """The auth middleware of the current call, its login checked; unauthenticated if none."""
    middleware = context.get_middleware(MIDDLEWARE_KEY)
    try:
        if not isinstance(middleware, AuthMiddleware):
            raise AuthenticationError(AUTH_REQUIRED)
        middleware.verify(context.peer())
    except Exception as exc:
        raise to_flight_error(exc) from None
    return middleware


def principal_from_context(context: flight.ServerCallContext) -> Principal:
    """The principal of the current call (see :func:`middleware_from_context`)."""
    return middleware_from_context(context).principal

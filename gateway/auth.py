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

Repeated failed logins for one user name lock that name out for a growing
delay (:class:`LoginThrottle`); the client sees the same message as for a
wrong password.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pyarrow.flight as flight

from gateway.dialects import DIALECT_HEADER, EPSILON_HEADER
from gateway.errors import AuthenticationError
from gateway.flight_errors import to_flight_error
from gateway.state import WRONG_CREDENTIALS, LoginError, StateStore, User
from policy.principal import Principal

log = logging.getLogger("stockade.auth")

MIDDLEWARE_KEY = "auth"
AUTH_REQUIRED = "Authentication required: connect with a user name and password."
MALFORMED_HEADER = (
    "The authorization header is malformed: expected 'Basic <base64 of user:password>' "
    "or 'Bearer <token>'."
)


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


@dataclass
class _Failures:
    times: deque[float]
    lockouts: int = 0
    locked_until: float = field(default=float("-inf"))


class LoginThrottle:
    """Counts failed logins per user name and locks a name out when they pile up.

    After ``max_failures`` failures within ``window_s`` seconds the name is
    refused for ``lockout_s`` seconds; each further failure while failures are
    still recent doubles the delay, up to ``max_lockout_s``. A successful login
    clears the name. At most ``max_entries`` names are remembered (least
    recently failed ones are forgotten first), so memory stays bounded whatever
    an attacker sends.

    >>> now = [0.0]
    >>> t = LoginThrottle(max_failures=2, lockout_s=10, clock=lambda: now[0])
    >>> t.failure("bob"); t.allowed("bob")
    True
    >>> t.failure("bob"); t.allowed("bob")
    False
    >>> now[0] = 11.0; t.allowed("bob")
    True
    """

    def __init__(
        self,
        *,
        max_failures: int = 5,
        window_s: float = 300.0,
        lockout_s: float = 30.0,
        max_lockout_s: float = 900.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_failures = max_failures
        self.window_s = window_s
        self.lockout_s = lockout_s
        self.max_lockout_s = max_lockout_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[str, _Failures] = OrderedDict()
        self._lock = threading.Lock()

    def allowed(self, name: str) -> bool:
        """Whether a login attempt for ``name`` may be checked now."""
        with self._lock:
            entry = self._entries.get(name.lower())
            return entry is None or self._clock() >= entry.locked_until

    def failure(self, name: str) -> None:
        """Record a failed login for ``name``."""
        key = name.lower()
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = _Failures(deque(maxlen=self.max_failures))
                self._entries[key] = entry
                while len(self._entries) > self.max_entries:
                    self._entries.popitem(last=False)
            else:
                self._entries.move_to_end(key)
            while entry.times and entry.times[0] <= now - self.window_s:
                entry.times.popleft()
            if not entry.times:
                entry.lockouts = 0
            entry.times.append(now)
            if len(entry.times) >= self.max_failures:
                delay = min(self.lockout_s * 2**entry.lockouts, self.max_lockout_s)
                entry.lockouts += 1
                entry.locked_until = now + delay

    def success(self, name: str) -> None:
        """Forget the failures of ``name`` after a successful login."""
        with self._lock:
            self._entries.pop(name.lower(), None)

    def __len__(self) -> int:
        return len(self._entries)


class AuthMiddleware(flight.ServerMiddleware):  # type: ignore[misc]
    """The authenticated caller of one call: ``.user`` and ``.principal``.

    ``token`` is set when this call logged in with Basic credentials; it is sent
    back in the ``authorization`` response header. ``session_id`` identifies the
    login (a digest of its bearer token, never the token): a client that logs in
    once per connection, as ADBC and JDBC do, keeps it for the connection.
    ``dialect`` and ``epsilon`` are the call's ``x-stockade-dialect`` and
    ``x-stockade-epsilon`` headers, if any (pyarrow's call context has no header
    accessor, so they are read here).
    """

    def __init__(
        self,
        user: User,
        principal: Principal,
        token: str | None = None,
        *,
        session_id: str | None = None,
        dialect: str | None = None,
        epsilon: str | None = None,
    ) -> None:
        super().__init__()
        self.user = user
        self.principal = principal
        self.token = token
        self.session_id = session_id
        self.dialect = dialect
        self.epsilon = epsilon

    def sending_headers(self) -> dict[str, str]:
        if self.token is None:
            return {}
        return {"authorization": f"Bearer {self.token}"}

    def __repr__(self) -> str:  # never print the token
        return f"AuthMiddleware(user={self.user.name!r}, role={self.user.role!r})"


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
    reason)`` is called for each failed login, with ``reason`` one of
    ``unknown_user``, ``wrong_password``, ``disabled``, ``locked_out``.
    """

    def __init__(
        self,
        store: StateStore,
        principal_for: Callable[[User], Principal],
        *,
        token_ttl_s: int = 3600,
        on_login_failure: Callable[[str, str], None] | None = None,
        throttle: LoginThrottle | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.principal_for = principal_for
        self.token_ttl_s = token_ttl_s
        self.on_login_failure = on_login_failure
        self.throttle = throttle if throttle is not None else LoginThrottle()

    def start_call(self, info: flight.CallInfo, headers: Mapping[str, Any]) -> AuthMiddleware:
        try:
            return self._start(headers)
        except Exception as exc:
            raise to_flight_error(exc) from None

    def _start(self, headers: Mapping[str, Any]) -> AuthMiddleware:
        value = first_header(headers, "authorization")
        if not value or not value.strip():
            raise AuthenticationError(AUTH_REQUIRED)
        scheme, _, credentials = value.strip().partition(" ")
        scheme = scheme.lower()
        dialect = first_header(headers, DIALECT_HEADER)
        epsilon = first_header(headers, EPSILON_HEADER)
        if scheme == "bearer":
            token = credentials.strip()
            user = self.store.user_for_token(token)
            return AuthMiddleware(user, self.principal_for(user),
                                  session_id=session_id(token), dialect=dialect,
                                  epsilon=epsilon)
        if scheme == "basic":
            name, password = decode_basic(credentials)
            user = self._login(name, password)
            principal = self.principal_for(user)
            token = self.store.issue_token(user, self.token_ttl_s)
            return AuthMiddleware(user, principal, token,
                                  session_id=session_id(token), dialect=dialect,
                                  epsilon=epsilon)
        raise AuthenticationError(MALFORMED_HEADER)

    def _login(self, name: str, password: str) -> User:
        if not self.throttle.allowed(name):
            self._failed(name, "locked_out")
            raise AuthenticationError(WRONG_CREDENTIALS)
        try:
            user = self.store.authenticate(name, password)
        except LoginError as exc:
            self.throttle.failure(name)
            self._failed(name, exc.reason)
            raise
        self.throttle.success(name)
        return user

    def _failed(self, name: str, reason: str) -> None:
        log.info("login failed for %r: %s", name, reason)
        if self.on_login_failure is not None:
            try:
                self.on_login_failure(name, reason)
            except Exception:
                log.exception("on_login_failure hook failed")


def middleware_from_context(context: flight.ServerCallContext) -> AuthMiddleware:
    """The auth middleware of the current call; unauthenticated error if none."""
    middleware = context.get_middleware(MIDDLEWARE_KEY)
    if not isinstance(middleware, AuthMiddleware):
        raise to_flight_error(AuthenticationError(AUTH_REQUIRED))
    return middleware


def principal_from_context(context: flight.ServerCallContext) -> Principal:
    """The principal of the current call (see :func:`middleware_from_context`)."""
    return middleware_from_context(context).principal

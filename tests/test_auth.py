"""Flight authentication through a real server, pyarrow's client and ADBC."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import adbc_driver_flightsql.dbapi as adbc
import pyarrow.flight as flight
import pytest
from argon2 import PasswordHasher

from gateway.auth import (
    AUTH_REQUIRED,
    MALFORMED_HEADER,
    MIDDLEWARE_KEY,
    AuthMiddlewareFactory,
    DeferredLogins,
    NoOpHandshake,
    decode_basic,
    middleware_from_context,
    principal_of,
)
from gateway.errors import AuthenticationError, PermissionDeniedError
from gateway.network_keys import derive
from gateway.state import StateStore, User
from gateway.throttle import LoginThrottle
from policy.principal import Principal
from tests.network_fixtures import DelayProxy, anonymous_call_errors, unauthenticated

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
WRONG = "Wrong user name or password"
EXPIRED = "Your session token has expired or is not valid; log in again"
THROTTLED = "Too many failed logins for this user name from your address: try again in"
#: A second client address on this machine: clients through a proxy bound to it.
OTHER_ADDRESS = "127.0.0.2"


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class WhoAmIServer(flight.FlightServerBase):  # type: ignore[misc]
    def do_action(self, context: flight.ServerCallContext, action: flight.Action) -> list[bytes]:
        middleware = middleware_from_context(context)
        if action.type == "whoami":
            return [middleware.principal.user.encode()]
        if action.type == "attributes":
            return [repr(dict(middleware.principal.attributes)).encode()]
        return []


def roles_checked(user: User) -> Principal:
    if user.role == "ghost":
        raise PermissionDeniedError(f"Role '{user.role}' is not in the policy.")
    return principal_of(user)


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.store_clock = Clock(1_700_000_000.0)
        self.throttle_clock = Clock()
        self.store = StateStore(tmp_path, hasher=FAST, clock=self.store_clock)
        self.failures: list[tuple[str, str]] = []
        self.addresses: list[str | None] = []  # of each failure, when known
        self.throttle = LoginThrottle(
            max_failures=5, window_s=60, lockout_s=30, clock=self.throttle_clock
        )
        self.deferred = DeferredLogins(clock=self.throttle_clock)
        self.factory = AuthMiddlewareFactory(
            self.store,
            roles_checked,
            token_ttl_s=600,
            on_login_failure=self._failed,
            throttle=self.throttle,
            deferred=self.deferred,
        )
        self.server = WhoAmIServer(
            "grpc://127.0.0.1:0",
            auth_handler=NoOpHandshake(),
            middleware={MIDDLEWARE_KEY: self.factory},
        )
        self.uri = f"grpc://127.0.0.1:{self.server.port}"

        self.proxy: DelayProxy | None = None

    def _failed(self, user: str, reason: str, address: str | None) -> None:
        self.failures.append((user, reason))
        self.addresses.append(address)

    def client(self) -> flight.FlightClient:
        return flight.FlightClient(self.uri)

    def other_client(self) -> flight.FlightClient:
        """A client that the server sees coming from :data:`OTHER_ADDRESS`."""
        if self.proxy is None:
            self.proxy = DelayProxy(("127.0.0.1", self.server.port), source=OTHER_ADDRESS).start()
        return flight.FlightClient(self.proxy.url)

    def close(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        self.server.shutdown()
        self.store.close()


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    h.store.add_user("alice", "clinician", "password12", {"site": "north"})
    h.store.add_user("carol", "analyst", "password33")
    h.store.set_disabled("carol", True)
    h.store.add_user("gus", "ghost", "password44")
    try:
        yield h
    finally:
        h.close()


def whoami(client: flight.FlightClient, headers: list[tuple[bytes, bytes]]) -> str:
    options = flight.FlightCallOptions(headers=headers)
    results = list(client.do_action(flight.Action("whoami", b""), options))
    return bytes(results[0].body.to_pybytes()).decode()


def basic(user: str, password: str, *, padded: bool = True) -> list[tuple[bytes, bytes]]:
    encoded = base64.b64encode(f"{user}:{password}".encode())
    if not padded:
        encoded = encoded.rstrip(b"=")
    return [(b"authorization", b"Basic " + encoded)]


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


def assert_clean(exc: BaseException, message: str) -> None:
    text = str(exc)
    assert message in text
    assert "Traceback" not in text and 'File "' not in text


# ---------------------------------------------------------------- pyarrow client


def test_basic_token_then_bearer(harness: Harness) -> None:
    client = harness.client()
    key, value = client.authenticate_basic_token("alice", "password12")
    assert key == b"authorization" and value.startswith(b"Bearer stk_")
    assert whoami(client, [(key, value)]) == "alice"
    token = value.decode().removeprefix("Bearer ")
    assert harness.store.user_for_token(token).name == "alice"


def test_attributes_reach_the_principal(harness: Harness) -> None:
    client = harness.client()
    header = client.authenticate_basic_token("alice", "password12")
    options = flight.FlightCallOptions(headers=[header])
    (result,) = client.do_action(flight.Action("attributes", b""), options)
    assert result.body.to_pybytes() == b"{'site': 'north'}"


@pytest.mark.parametrize("padded", [True, False])
def test_basic_header_on_a_call(harness: Harness, padded: bool) -> None:
    headers = basic("alice", "password12", padded=padded)
    assert headers[0][1].endswith(b"==") is padded  # 16 bytes of credentials need padding
    assert whoami(harness.client(), headers) == "alice"


def test_basic_scheme_is_case_insensitive(harness: Harness) -> None:
    headers = [(b"authorization", b"basic " + base64.b64encode(b"alice:password12"))]
    assert whoami(harness.client(), headers) == "alice"


@pytest.mark.parametrize(
    ("user", "password", "reason"),
    [
        ("alice", "wrong-password", "wrong_password"),
        ("nobody", "password12", "unknown_user"),
        ("carol", "password33", "disabled"),
    ],
)
def test_failed_logins_look_alike(harness: Harness, user: str, password: str, reason: str) -> None:
    client = harness.client()
    with pytest.raises(flight.FlightUnauthenticatedError) as info:
        client.authenticate_basic_token(user, password)
    assert_clean(info.value, WRONG)
    with pytest.raises(flight.FlightUnauthenticatedError) as info:
        whoami(client, basic(user, password))
    assert_clean(info.value, WRONG)
    assert harness.failures == [(user, reason), (user, reason)]


def test_no_header(harness: Harness) -> None:
    with pytest.raises(flight.FlightUnauthenticatedError) as info:
        whoami(harness.client(), [])
    assert_clean(info.value, AUTH_REQUIRED.rstrip("."))


@pytest.mark.parametrize(
    "value", [b"Digest abc", b"Basic !!!notbase64", b"Basic " + base64.b64encode(b"nocolon")]
)
def test_malformed_header(harness: Harness, value: bytes) -> None:
    with pytest.raises(flight.FlightUnauthenticatedError) as info:
        whoami(harness.client(), [(b"authorization", value)])
    assert_clean(info.value, MALFORMED_HEADER.rstrip("."))


def test_unknown_token(harness: Harness) -> None:
    with pytest.raises(flight.FlightUnauthenticatedError) as info:
        whoami(harness.client(), bearer("stk_madeup"))
    assert_clean(info.value, EXPIRED)


def test_expired_token(harness: Harness) -> None:
    client = harness.client()
    header = client.authenticate_basic_token("alice", "password12")
    assert whoami(client, [header]) == "alice"
    harness.store_clock.now += 601
    with pytest.raises(flight.FlightUnauthenticatedError) as info:
        whoami(client, [header])
    assert_clean(info.value, EXPIRED)
    assert harness.failures == []  # an expired session is not a failed login


def test_revoked_when_disabled(harness: Harness) -> None:
    client = harness.client()
    header = client.authenticate_basic_token("alice", "password12")
    harness.store.set_disabled("alice", True)
    with pytest.raises(flight.FlightUnauthenticatedError, match=re.escape(EXPIRED)):
        whoami(client, [header])


def test_principal_for_refusal_is_reported(harness: Harness) -> None:
    with pytest.raises(flight.FlightUnauthorizedError) as info:
        harness.client().authenticate_basic_token("gus", "password44")
    assert_clean(info.value, "Role 'ghost' is not in the policy")


def login(client: flight.FlightClient, user: str, password: str) -> str:
    """Log in and make one call: the user the server saw (the login may be decided there)."""
    return whoami(client, [client.authenticate_basic_token(user, password)])


def refusal(client: flight.FlightClient, user: str, password: str) -> str:
    """The message of a refused login (at the Handshake, or at the first call after it)."""
    with pytest.raises(flight.FlightUnauthenticatedError) as info:
        login(client, user, password)
    assert_clean(info.value, "")
    return str(info.value).split(". Detail:")[0]


def test_a_guesser_is_throttled_and_the_owner_is_not(harness: Harness) -> None:
    # Before: five wrong passwords from anyone locked the account for its owner.
    attacker, owner = harness.other_client(), harness.client()
    for _ in range(5):  # the account's first failures are refused at the Handshake
        with pytest.raises(flight.FlightUnauthenticatedError, match=WRONG):
            attacker.authenticate_basic_token("alice", "bad-password")
    assert harness.throttle.guarded("alice")
    for _ in range(5):  # now each login is decided where the address is known
        assert refusal(attacker, "alice", "bad-password").startswith(WRONG)
    # The guesser's address waits, even with the right password...
    assert refusal(attacker, "alice", "password12").startswith(f"{THROTTLED} 30 s")
    assert harness.failures[-1] == ("alice", "throttled")
    assert harness.addresses[-1] == OTHER_ADDRESS
    # ...and the owner, elsewhere, logs in.
    assert login(owner, "alice", "password12") == "alice"
    assert refusal(owner, "alice", "typo-password").startswith(WRONG)  # owner's own count
    assert harness.addresses[-1] == "127.0.0.1"
    # Other names are not affected.
    harness.store.add_user("bob", "analyst", "password55")
    assert login(attacker, "bob", "password55") == "bob"
    # Each failure doubles the wait, at most max_lockout_s; after it, the address may try.
    harness.throttle_clock.now += 31
    assert refusal(attacker, "alice", "bad-password").startswith(WRONG)
    assert refusal(attacker, "alice", "password12").startswith(f"{THROTTLED} 60 s")
    harness.throttle_clock.now += 61
    assert login(attacker, "alice", "password12") == "alice"
    assert harness.throttle.allowed("alice", OTHER_ADDRESS)
    reasons = [r for _, r in harness.failures]
    assert reasons.count("wrong_password") == 12 and reasons.count("throttled") == 2


def test_refusals_do_not_tell_whether_the_user_exists(harness: Harness) -> None:
    attacker = harness.other_client()
    seen: dict[str, list[str]] = {"alice": [], "nobody": []}
    for name in seen:  # the same sequence for a user and for a name nobody has
        for _ in range(11):
            seen[name].append(refusal(attacker, name, "bad-password"))
    assert seen["alice"] == seen["nobody"]
    assert [m.startswith(WRONG) for m in seen["alice"]] == [True] * 10 + [False]
    assert seen["alice"][-1].startswith(THROTTLED)


def test_a_deferred_login_token_is_valid_only_if_the_password_was(harness: Harness) -> None:
    for _ in range(5):
        refusal(harness.client(), "alice", "bad-password")
    assert harness.throttle.guarded("alice")
    client = harness.client()
    header = client.authenticate_basic_token("alice", "bad-password")  # not decided yet
    refused = header[1].decode().removeprefix("Bearer ")
    for _ in range(2):  # each use of its token gets the same answer, counted once
        with pytest.raises(flight.FlightUnauthenticatedError, match=WRONG):
            whoami(client, [header])
    assert [r for _, r in harness.failures].count("wrong_password") == 6
    header = client.authenticate_basic_token("alice", "password12")
    token = header[1].decode().removeprefix("Bearer ")
    with pytest.raises(AuthenticationError):
        harness.store.user_for_token(token)  # sent, but not valid until decided
    assert whoami(client, [header]) == "alice"
    assert whoami(client, [header]) == "alice"
    assert harness.store.user_for_token(token).name == "alice"
    assert len(harness.deferred) == 1  # the refused one, until it expires
    harness.throttle_clock.now += 61
    with pytest.raises(flight.FlightUnauthenticatedError, match=re.escape(EXPIRED)):
        whoami(client, [(b"authorization", f"Bearer {refused}".encode())])
    # A Basic header on an ordinary call is decided by that call.
    assert whoami(client, basic("alice", "password12")) == "alice"
    with pytest.raises(flight.FlightUnauthenticatedError, match=WRONG):
        whoami(client, basic("alice", "nope-nope"))


def test_an_unverified_caller_has_no_principal(harness: Harness) -> None:
    for _ in range(5):
        harness.throttle.failure("alice", None)
    middleware = harness.factory.start_call(None, {"authorization": basic("alice", "x")[0][1]})
    assert "unverified" in repr(middleware)
    with pytest.raises(AuthenticationError, match="Authentication required"):
        _ = middleware.principal  # a handler that forgot to verify fails closed


def test_a_network_credential_logs_in_and_its_failures_are_throttled(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    try:
        h.store.set_domain_name("st_marys")
        h.store.add_user("alice", "clinician", "password12")
        client = h.client()
        # What a network sends this domain: accepted, and the same principal.
        header = client.authenticate_basic_token("alice", derive("password12", "st_marys"))
        assert whoami(client, [header]) == "alice"
        # Derived for another domain: refused, not counted as a guess.
        for _ in range(6):
            with pytest.raises(flight.FlightUnauthenticatedError) as info:
                client.authenticate_basic_token("alice", derive("password12", "city_general"))
            assert_clean(info.value, "derived this credential for domain 'city_general'")
        assert h.failures == [] and len(h.throttle) == 0
        assert not h.throttle.guarded("alice")
        # Wrong derived credentials are guesses: audited and throttled like passwords.
        for _ in range(5):
            with pytest.raises(flight.FlightUnauthenticatedError) as info:
                client.authenticate_basic_token("alice", derive("wrong-pass", "st_marys"))
            assert_clean(info.value, "log in to it directly once")
        assert h.failures == [("alice", "wrong_password")] * 5
        assert h.throttle.guarded("alice")
    finally:
        h.close()


def test_failure_hook_errors_do_not_break_login(tmp_path: Path) -> None:
    with StateStore(tmp_path, hasher=FAST) as store:
        store.add_user("alice", "analyst", "password12")

        def broken(user: str, reason: str, address: str | None) -> None:
            raise RuntimeError("audit down")

        factory = AuthMiddlewareFactory(store, principal_of, on_login_failure=broken)
        with pytest.raises(flight.FlightUnauthenticatedError):
            factory.start_call(None, {"authorization": basic("alice", "nope")[0][1].decode()})
        middleware = factory.start_call(
            None, {"authorization": [basic("alice", "password12")[0][1]]}
        )
        assert middleware.user.name == "alice"
        assert middleware.sending_headers()["authorization"].startswith("Bearer stk_")
        assert "stk_" not in repr(middleware)


def test_internal_errors_are_not_leaked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path, hasher=FAST)
    store.add_user("alice", "analyst", "password12")
    token = store.issue_token("alice", 60)
    store.close()  # every use now fails inside the store
    factory = AuthMiddlewareFactory(store, principal_of)
    with pytest.raises(flight.FlightInternalError) as info:
        factory.start_call(None, {"authorization": [f"Bearer {token}"]})
    assert "incident" in str(info.value) and "closed" not in str(info.value)


# ---------------------------------------------------------------- the throttle


def test_throttle_delay_grows_and_resets() -> None:
    clock = Clock(0.0)
    t = LoginThrottle(max_failures=3, window_s=100, lockout_s=10, max_lockout_s=25, clock=clock)
    for _ in range(3):
        t.failure("Bob", "10.0.0.1")
    assert not t.allowed("bob", "10.0.0.1")  # names are case-insensitive
    assert t.allowed("bob", "10.0.0.2")  # other addresses are not held back
    clock.now = 10.0
    assert t.allowed("bob", "10.0.0.1")
    t.failure("bob", "10.0.0.1")  # failures are still recent: locked again, twice as long
    clock.now = 29.0
    assert not t.allowed("bob", "10.0.0.1")
    clock.now = 30.0
    assert t.allowed("bob", "10.0.0.1")
    t.failure("bob", "10.0.0.1")  # capped at max_lockout_s
    clock.now = 54.0
    assert not t.allowed("bob", "10.0.0.1")
    clock.now = 55.0
    assert t.allowed("bob", "10.0.0.1")
    clock.now = 1_000.0  # the window has passed: counting starts over
    t.failure("bob", "10.0.0.1")
    assert t.allowed("bob", "10.0.0.1")


def test_throttle_guards_an_account_while_failures_go_on() -> None:
    clock = Clock(0.0)
    t = LoginThrottle(max_failures=3, window_s=100, lockout_s=10, max_lockout_s=25, clock=clock)
    t.failure("bob", None)
    t.failure("bob", "10.0.0.1")
    assert not t.guarded("bob")
    t.failure("bob", None)  # failures with and without an address count for the account
    assert t.guarded("bob") and t.allowed("bob", "10.0.0.1")
    clock.now = 20.0
    t.failure("bob", None)  # one more failure keeps it guarded, max_lockout_s from now
    clock.now = 44.0
    assert t.guarded("bob")
    clock.now = 45.0
    assert not t.guarded("bob")
    t.success("bob", "10.0.0.1")  # a success clears its address, not the account's record
    assert len(t) == 0


def test_throttle_memory_is_bounded() -> None:
    t = LoginThrottle(max_failures=1, max_entries=100)
    for i in range(1_000):
        t.failure(f"user{i}", "10.0.0.1")
    assert len(t) == 100
    assert not t.allowed("user999", "10.0.0.1") and t.allowed("user0", "10.0.0.1")
    assert t.guarded("user999") and not t.guarded("user0")


def test_deferred_logins_are_bounded_and_expire() -> None:
    clock = Clock(0.0)
    logins = DeferredLogins(ttl_s=60, max_entries=10, clock=clock)
    made = [logins.new(f"user{i}", "pw") for i in range(20)]
    for login_ in made:
        logins.keep(login_)
    assert len(logins) == 10
    assert logins.find(made[0].token) is None and logins.find(made[-1].token) is made[-1]
    clock.now = 61.0
    assert logins.find(made[-1].token) is None
    logins.keep(logins.new("late", "pw"))  # the expired ones (and their passwords) go
    assert len(logins) == 1
    assert "pw" not in repr(made[-1])


def test_decode_basic_edge_cases() -> None:
    assert decode_basic(base64.b64encode(b"a:b:c").decode()) == ("a", "b:c")
    assert decode_basic(base64.b64encode("é:ü".encode()).decode().rstrip("=")) == ("é", "ü")
    with pytest.raises(AuthenticationError):
        decode_basic(base64.b64encode(b"\xff\xfe:x").decode())


def test_handshake_answers_with_a_message_and_the_token(harness: Harness) -> None:
    # Some clients (firetiger's TypeScript client) wait for a HandshakeResponse before
    # they read the response headers: raw gRPC shows what goes over the wire.
    import grpc

    channel = grpc.insecure_channel(harness.uri.removeprefix("grpc://"))
    try:
        handshake = channel.stream_stream(
            "/arrow.flight.protocol.FlightService/Handshake",
            request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
        [(key, value)] = basic("alice", "password12")
        call = handshake(iter([b""]), metadata=[(key.decode(), value.decode())], timeout=10)
        messages = list(call)
        headers = dict(call.initial_metadata())
    finally:
        channel.close()
    assert messages == [b""]  # one HandshakeResponse, every field at its default
    assert headers["authorization"].startswith("Bearer ")


def test_handshake_handler_accepts_anything() -> None:
    handler = NoOpHandshake()
    handler.authenticate(None, None)  # reads nothing, raises nothing
    assert handler.is_valid(b"whatever") == b""


# ---------------------------------------------------------------- ADBC


def adbc_connect(uri: str, user: str, password: str) -> Any:
    return adbc.connect(uri, db_kwargs={"username": user, "password": password})


@pytest.mark.filterwarnings("ignore:Cannot disable autocommit")
def test_adbc_logs_in(harness: Harness) -> None:
    conn = adbc_connect(harness.uri, "alice", "password12")
    conn.close()
    assert harness.failures == []


@pytest.mark.filterwarnings("ignore:Cannot disable autocommit")
@pytest.mark.parametrize(("user", "password"), [("alice", "nope-nope"), ("nobody", "password12")])
def test_adbc_wrong_credentials(harness: Harness, user: str, password: str) -> None:
    # ADBC's Go driver logs in (Handshake, unpadded Basic) while connecting.
    with pytest.raises(adbc.Error) as info:
        conn = adbc_connect(harness.uri, user, password)
        conn.close()
    text = str(info.value)
    assert "UNAUTHENTICATED" in text and WRONG in text and "Traceback" not in text
    assert harness.failures == [(user, "wrong_password" if user == "alice" else "unknown_user")]


def test_concurrent_calls(harness: Harness) -> None:
    from concurrent.futures import ThreadPoolExecutor

    harness.store.add_user("bob", "analyst", "password55")

    def session(user: str, password: str) -> set[str]:
        client = harness.client()
        header = client.authenticate_basic_token(user, password)
        return {whoami(client, [header]) for _ in range(25)}

    logins = [("alice", "password12"), ("bob", "password55")] * 4
    with ThreadPoolExecutor(8) as pool:
        seen = list(pool.map(lambda c: session(*c), logins))
    assert seen == [{user} for user, _ in logins]


@pytest.mark.filterwarnings("ignore:Cannot disable autocommit")
def test_the_gateway_throttles_by_address_through_adbc(gateway) -> None:  # type: ignore[no-untyped-def]
    import uuid

    name = f"thr_{uuid.uuid4().hex[:8]}"
    gateway.domain.store.add_user(name, "analyst", "right-password")
    host, port = gateway.url.removeprefix("grpc://").rsplit(":", 1)
    proxy = DelayProxy((host, int(port)), source=OTHER_ADDRESS).start()
    try:
        attacker = flight.FlightClient(proxy.url)
        for _ in range(10):  # five refused at the Handshake, five at the first call
            refusal(attacker, name, "wrong-password")
        attacker.close()
        with pytest.raises(adbc.Error, match=THROTTLED):
            conn = adbc_connect(proxy.url, name, "right-password")
            try:
                conn.cursor().execute("SELECT 1")
            finally:
                conn.close()
        # The owner of the account, from another address, is not held back.
        with adbc_connect(gateway.url, name, "right-password") as conn, conn.cursor() as cur:
            cur.execute("SELECT count(*) AS n FROM oncology.screenings")
            assert cur.fetchone()[0] > 0
        records = [r for r in gateway.domain.audit.records(user=name)
                   if r.kind == "login_failure"]
        assert [r.details["reason"] for r in records].count("wrong_password") == 10
        assert records[-1].details == {"reason": "throttled", "address": OTHER_ADDRESS}
    finally:
        proxy.stop()


def test_the_gateway_answers_no_call_without_credentials(gateway) -> None:  # type: ignore[no-untyped-def]
    errors = anonymous_call_errors(gateway.url)
    assert len(errors) > 30
    wrong = {name: f"{type(exc).__name__}: {exc}" for name, exc in errors.items()
             if not unauthenticated(exc)}
    assert wrong == {}

"""network.auth and network.domains' errors: sessions over fake domains."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from gateway.errors import (
    AuthenticationError,
    InputError,
    PermissionDeniedError,
    UnavailableError,
)
from gateway.network_keys import derive
from network.auth import RejectionMemory, Sessions
from network.domains import DomainDown, DomainRejected, DomainTimeout, domain_error


class FakeLink:
    """A domain that knows some users' passwords, may be down, and counts logins.

    As a domain gateway does, it accepts only the credential derived from the
    password for its own name (``own_name``), and records what it was sent.
    """

    def __init__(self, name: str, users: dict[str, str], *, down: bool = False,
                 slow: bool = False, own_name: str | None = None) -> None:
        self.name = name
        self.own_name = own_name or name
        self.users = users
        self.received: list[str] = []
        self.down = down
        self.slow = slow
        self.logins = 0
        self.issued = 0
        self.valid: set[str] = set()

    def login(self, user: str, credential: str) -> str:
        self.logins += 1
        if self.down:
            raise DomainDown(f"domain '{self.name}' is unavailable: connection refused")
        if self.slow:
            raise DomainTimeout(f"domain '{self.name}' did not answer within 1 s")
        self.received.append(credential)
        password = self.users.get(user)
        if password is None or credential != derive(password, self.own_name):
            raise DomainRejected(f"domain '{self.name}' rejected your credentials: Wrong user "
                                 "name or password.")
        self.issued += 1
        token = f"Bearer {self.name}-{self.issued}"
        self.valid.add(token)
        return token

    def whoami(self, token: str) -> str:
        if token not in self.valid:
            raise DomainRejected(f"domain '{self.name}' rejected your credentials: token expired")
        return f"{self.name}:{token}"


def sessions(*links: FakeLink, **kwargs: object) -> Sessions:
    return Sessions({link.name: link for link in links}, **kwargs)  # type: ignore[arg-type]


def test_login_succeeds_when_one_domain_accepts() -> None:
    a = FakeLink("a", {"ann": "pw"})
    b = FakeLink("b", {})
    c = FakeLink("c", {"ann": "pw"}, down=True)
    store = sessions(a, b, c)
    token, session = store.login("ann", "pw")
    assert {n: login.state for n, login in session.logins.items()} == {
        "a": "ok", "b": "rejected", "c": "unavailable"}
    assert store.find(token) is session
    assert store.call(session, a, a.whoami) == "a:Bearer a-1"  # type: ignore[arg-type]
    with pytest.raises(DomainRejected, match="domain 'b' rejected your credentials"):
        store.token(session, b)  # type: ignore[arg-type]
    with pytest.raises(UnavailableError, match="domain 'c' is unavailable"):
        store.token(session, c)  # type: ignore[arg-type]
    c.down = False  # back up: the kept password logs in now
    assert store.call(session, c, c.whoami) == "c:Bearer c-1"  # type: ignore[arg-type]


def test_each_domain_gets_its_own_derived_credential_never_the_password() -> None:
    a = FakeLink("a", {"ann": "pw"})
    b = FakeLink("b", {"ann": "pw"}, own_name="b_hospital")  # listed under another name
    c = FakeLink("c", {"ann": "pw"}, down=True)
    store = sessions(a, b, c)
    _, session = store.login("ann", "pw")
    assert a.received == [derive("pw", "a")] and b.received == [derive("pw", "b_hospital")]
    assert a.received[0] != b.received[0]
    assert all("pw" not in secret.rsplit(":", 1)[1] for secret in a.received + b.received)
    # The session keeps the credentials, not the password: c logs in later with its own.
    assert session.closed is False and "'pw'" not in repr(vars(session))
    c.down = False
    assert store.call(session, c, c.whoami) == "c:Bearer c-1"  # type: ignore[arg-type]
    assert c.received == [derive("pw", "c")]


def test_every_domain_refusing_says_how_to_give_them_the_password() -> None:
    a, b = FakeLink("a", {}), FakeLink("b", {})
    with pytest.raises(AuthenticationError, match="log in to each domain directly once, or "
                                                  "ask its owner to reset your password"):
        sessions(a, b).login("ann", "pw")


def test_every_domain_refusing_is_a_wrong_password_and_is_throttled() -> None:
    # Throttled per (user, analyst's address): the guesser waits, the analyst elsewhere
    # does not (before, five wrong passwords from anyone locked the name out).
    a, b = FakeLink("a", {"ann": "pw"}), FakeLink("b", {"ann": "pw"})
    store = sessions(a, b)
    for _ in range(5):
        with pytest.raises(AuthenticationError, match=r"Wrong user name or password: no domain "
                                                      r"of the network accepted them \(refused "
                                                      r"by a, b\)"):
            store.login("ann", f"guess-{_}", address="192.0.2.1")
    assert store.throttle.guarded("ann")  # the network now decides ann's logins by address
    logins = a.logins
    with pytest.raises(AuthenticationError, match="^Too many failed logins for this user name "
                                                  "from your address: try again in 30 s.$"):
        store.login("ann", "pw", address="192.0.2.1")  # the domains are not asked
    assert a.logins == logins
    _, session = store.login("ann", "pw", address="198.51.100.7")
    assert session.logins["a"].state == "ok"


def test_no_domain_reachable_is_unavailable() -> None:
    store = sessions(FakeLink("a", {}, down=True), FakeLink("b", {}, slow=True))
    with pytest.raises(UnavailableError, match="No domain of the network could check your "
                                               "credentials: domain 'a' is unavailable"):
        store.login("ann", "pw")


def test_a_refusal_is_remembered_not_retried() -> None:
    a, b = FakeLink("a", {"zoe": "pw"}), FakeLink("b", {})
    store = sessions(a, b, rejection_memory_s=300)
    for _ in range(4):
        store.login("zoe", "pw")
    assert b.logins == 1 and a.logins == 4
    # another password is another question
    with pytest.raises(AuthenticationError):
        store.login("zoe", "other")
    assert b.logins == 2


def test_rejection_memory_expires() -> None:
    now = [0.0]
    memory = RejectionMemory(10, clock=lambda: now[0])
    memory.remember("a", "Zoe", "pw", "no")
    assert memory.recalled("a", "zoe", "pw") == "no"
    assert memory.recalled("a", "zoe", "other") is None
    now[0] = 11
    assert memory.recalled("a", "zoe", "pw") is None


def test_an_expired_domain_token_is_renewed_with_the_kept_password() -> None:
    a = FakeLink("a", {"ann": "pw"})
    store = sessions(a)
    _, session = store.login("ann", "pw")
    a.valid.clear()  # the domain forgot the token (expired)
    assert store.call(session, a, a.whoami) == "a:Bearer a-2"  # type: ignore[arg-type]
    assert a.logins == 2


def test_closing_a_session_forgets_the_password_and_tokens() -> None:
    a = FakeLink("a", {"ann": "pw"})
    store = sessions(a)
    token, session = store.login("ann", "pw")
    store.close(session)
    assert session.closed and session.logins == {}
    with pytest.raises(AuthenticationError, match="log in again"):
        store.find(token)
    with pytest.raises(AuthenticationError, match="session was closed"):
        store.token(session, a)  # type: ignore[arg-type]


def test_sessions_expire() -> None:
    store = sessions(FakeLink("a", {"ann": "pw"}), ttl_s=0.0)
    token, session = store.login("ann", "pw")
    with pytest.raises(AuthenticationError, match="Your network session has expired"):
        store.find(token)
    assert session.closed


@pytest.mark.parametrize(("exc", "cls", "message"), [
    (flight.FlightUnavailableError("failed to connect to all addresses"), DomainDown,
     "domain 'd' is unavailable: failed to connect to all addresses."),
    (flight.FlightTimedOutError("Deadline Exceeded"), DomainTimeout,
     "domain 'd' did not answer within 2.5 s"),
    (flight.FlightUnauthenticatedError("Wrong user name or password. Detail: Unauthenticated"),
     DomainRejected, "domain 'd' rejected your credentials: Wrong user name or password."),
    (OSError("Your session token has expired. Detail: Unauthenticated. Detail: Unauthenticated"),
     DomainRejected, "domain 'd' rejected your credentials: Your session token has expired."),
    (flight.FlightUnauthorizedError("Budget for dataset 'oncology' exhausted"),
     PermissionDeniedError, "domain 'd': Budget for dataset 'oncology' exhausted."),
    (pa.ArrowInvalid("Unknown column 'x' (line 1, column 8). Detail: Python exception: "
                     "StockadeError\n"), InputError,
     "domain 'd': Unknown column 'x' (line 1, column 8)."),
    (flight.FlightInternalError("Internal error (incident 12ab)"), UnavailableError,
     "domain 'd' failed: Internal error (incident 12ab)."),
])
def test_domain_errors_name_the_domain(exc: Exception, cls: type, message: str) -> None:
    error = domain_error("d", 2.5, exc)
    assert type(error) is cls
    assert error.message == message


def test_domains_thought_down_are_skipped_at_login_unless_none_else_answers() -> None:
    a, b = FakeLink("a", {"ann": "pw"}), FakeLink("b", {"ann": "pw"})
    down = {"b"}
    store = sessions(a, b, is_down=lambda name: name in down)
    _, session = store.login("ann", "pw")
    assert b.logins == 0 and session.logins["b"].state == "unavailable"
    assert store.token(session, b) == "Bearer b-1"  # type: ignore[arg-type]  # asked when needed
    down.add("a")  # every domain thought down: they are asked anyway
    _, session = store.login("ann", "pw")
    assert session.logins["a"].state == session.logins["b"].state == "ok"

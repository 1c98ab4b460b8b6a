"""A rogue domain in a network learns nothing it can use at another domain.

The network lists two real domain gateways and a rogue: a Flight server that
records every ``authorization`` header it is sent and accepts any login. An
analyst logs in to the network and runs a federated query; what the rogue
recorded is then tried, as Basic credentials, at every real domain. It must not
be the password, must be refused by every other domain, and is accepted only by
a real gateway that has the rogue's own name (the domain it was derived for).
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.flight as flight
import pytest
from network_fixtures import (
    DOMAINS,
    USERS,
    RunningDomain,
    connect,
    start_domain,
    start_network,
    write_domain,
)

from gateway.auth import NoOpHandshake
from gateway.network_keys import derive
from gateway.state import StateStore
from network.fanout import STATUS_KEY

pytestmark = pytest.mark.filterwarnings(
    "ignore:pandas only supports SQLAlchemy:UserWarning",
)

FEDERATED_COUNT = ("/* partial_results: true */ "
                   "SELECT count(*) AS n FROM federated.oncology.screenings")


class _Recorded(flight.ServerMiddleware):  # type: ignore[misc]
    def __init__(self, basic: bool) -> None:
        super().__init__()
        self.basic = basic

    def sending_headers(self) -> dict[str, str]:
        return {"authorization": "Bearer rogue-session"} if self.basic else {}


class _Recorder(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.headers: list[str] = []
        self.lock = threading.Lock()

    def start_call(self, info: flight.CallInfo, headers: Mapping[str, Any]) -> _Recorded:
        values = [v.decode("latin-1") if isinstance(v, bytes) else v
                  for v in headers.get("authorization", [])]
        with self.lock:
            self.headers.extend(values)
        return _Recorded(any(v.lower().startswith("basic ") for v in values))


class RogueDomain(flight.FlightServerBase):  # type: ignore[misc]
    """Accepts every login, records every credential, answers nothing else."""

    def __init__(self) -> None:
        self.recorder = _Recorder()
        super().__init__("grpc://127.0.0.1:0", auth_handler=NoOpHandshake(),
                         middleware={"record": self.recorder})

    @property
    def url(self) -> str:
        return f"grpc://127.0.0.1:{self.port}"

    def get_flight_info(self, context: Any, descriptor: flight.FlightDescriptor) -> Any:
        raise flight.FlightUnavailableError("the rogue answers no query")

    def basic_credentials(self) -> list[tuple[str, str]]:
        out = []
        for value in self.recorder.headers:
            scheme, _, encoded = value.partition(" ")
            if scheme.lower() == "basic":
                user, _, secret = base64.b64decode(encoded + "==").decode().partition(":")
                out.append((user, secret))
        return out


@dataclass
class Lab:
    domains: dict[str, RunningDomain]
    rogue: RogueDomain
    network: Any
    url: str
    root: Path


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("rogue")
    domains = {name: start_domain(root / name, name) for name in ("st_marys", "city_general")}
    rogue = RogueDomain()
    network, url = start_network({**{n: d.url for n, d in domains.items()}, "rogue": rogue.url})
    yield Lab(domains, rogue, network, url, root)
    network.shutdown()
    rogue.shutdown()
    for d in domains.values():
        d.stop()


def _login(url: str, user: str, secret: str) -> tuple[bytes, bytes]:
    client = flight.FlightClient(url)
    try:
        return client.authenticate_basic_token(user, secret)  # type: ignore[no-any-return]
    finally:
        client.close()


def test_what_a_rogue_domain_captures_is_worthless_elsewhere(lab: Lab) -> None:
    user, password = "rita", USERS["rita"][1]
    conn = connect(lab.url, user)
    try:
        cur = conn.cursor()
        cur.execute(FEDERATED_COUNT)
        table = cur.fetch_arrow_table()
        cur.close()
    finally:
        conn.close()
    # The honest domains answered; the rogue took part in the login.
    assert table.column("n").to_pylist() == [DOMAINS["st_marys"]["rows"] + 3
                                             + DOMAINS["city_general"]["rows"]]
    assert b'"rogue": "unavailable' in table.schema.metadata[STATUS_KEY]

    captured = lab.rogue.basic_credentials()
    assert captured, lab.rogue.recorder.headers
    assert not any(password in header for header in lab.rogue.recorder.headers)
    for got_user, secret in captured:
        assert got_user == user
        assert secret != password and password not in secret
        assert secret == derive(password, "rogue")
        for name, domain in lab.domains.items():
            # Refused by every other domain, even relabelled with that domain's name.
            relabelled = secret.replace("stockade-dk1:rogue:", f"stockade-dk1:{name}:")
            for attempt in (secret, relabelled):
                with pytest.raises(flight.FlightUnauthenticatedError):
                    _login(domain.url, user, attempt)
            # ...where the password, and the credential derived for it, work.
            assert _login(domain.url, user, password)[1].startswith(b"Bearer ")
            assert _login(domain.url, user, derive(password, name))[1].startswith(b"Bearer ")


def test_what_a_rogue_captures_is_accepted_only_by_its_own_domain(lab: Lab,
                                                                  tmp_path: Path) -> None:
    conn = connect(lab.url, "rita")
    conn.close()
    (_, secret), *_ = lab.rogue.basic_credentials()
    assert secret.startswith("stockade-dk1:rogue:")
    # A real gateway whose own name is 'rogue', with the same accounts: the one domain
    # the captured credential was derived for.
    policy = write_domain(tmp_path / "rogue", "city_general")
    policy.write_text(policy.read_text().replace("{name: city_general,", "{name: rogue,"))
    real_rogue = start_domain(tmp_path / "rogue", "city_general", users=False)
    real_rogue.domain.store.add_user("rita", "researcher", USERS["rita"][1])
    try:
        assert _login(real_rogue.url, "rita", secret)[1].startswith(b"Bearer ")
    finally:
        real_rogue.stop()


def test_an_account_without_a_verifier_is_told_to_log_in_directly(lab: Lab,
                                                                  tmp_path: Path) -> None:
    # Users added before the domain's gateway first started (so before its store
    # knew its name) have no verifier yet, like every account after an upgrade.
    root = tmp_path / "late"
    write_domain(root, "city_general")
    with StateStore(root / "state") as store:
        store.add_user("rita", "researcher", USERS["rita"][1])
    late = start_domain(root, "city_general", users=False)
    network, url = start_network(
        {"st_marys": lab.domains["st_marys"].url, "late": late.url},
        own_names={"late": "city_general"},
        settings="{health_interval_s: 0.5, rejection_memory_s: 1}")
    sql = "SELECT count(*) AS n FROM late.oncology.screenings"
    try:
        conn = connect(url, "rita")
        try:
            cur = conn.cursor()
            with pytest.raises(Exception) as info:
                cur.execute(sql)
            assert "domain 'late' rejected your credentials" in str(info.value)
            assert ("domain 'city_general' has not seen your password since it began to accept "
                    "logins through a network: log in to it directly once, or ask its owner "
                    "to reset your password") in str(info.value)
        finally:
            conn.close()
        connect(late.url, "rita").close()  # one direct login
        time.sleep(1.1)  # the network's memory of the refusal (rejection_memory_s) ends
        conn = connect(url, "rita")
        try:
            cur = conn.cursor()
            cur.execute(sql)
            assert cur.fetch_arrow_table().column("n").to_pylist() == [
                DOMAINS["city_general"]["rows"]]
            cur.close()
        finally:
            conn.close()
    finally:
        network.shutdown()
        late.stop()

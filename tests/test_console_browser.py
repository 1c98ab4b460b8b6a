"""The console end to end, in a real headless Chromium: `stockade console` as a process.

The owner logs in, creates an analyst, the analyst asks for budget from Python,
the owner approves it in the browser, and the analyst's next query sees the new
budget. Streamlit reruns are asynchronous: every step waits on what the page
shows, never on a clock.
"""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.cli import main as cli_main
from gateway.remote import GatewayClient
from gateway.state import STATE_FILE

ROOT = Path(__file__).resolve().parents[1]
OWNER_PASSWORD = "owner-e2e-password"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
WAIT_MS = 30_000


def _chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; installed here when missing (as root), else a clear failure."""
    path = _chromium()
    if path is None and hasattr(os, "geteuid") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], env=env,
                       capture_output=True, timeout=1200)
        path = _chromium()
    if path is None:
        pytest.fail("The console's browser test needs Debian's chromium and could not install "
                    "it: run `sudo apt-get install -y chromium` (or `make browser`).")
    return path


@pytest.fixture(scope="module")
def domain_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("console-e2e")


@pytest.fixture(scope="module")
def domain_url(domain_root: Path) -> Iterator[str]:
    """A gateway of this test's own over the demo policy and a small sample of the data."""
    from gateway.serving import start_server
    from gateway.settings import load_settings
    from tests.sample_domain import DEMO_POLICY, generate

    root = domain_root
    generate(root, 4000)
    (root / "policy.yaml").write_text(DEMO_POLICY)
    settings = load_settings({"policy": str(root / "policy.yaml"),
                              "data_dir": str(root / "state"), "port": 0,
                              "memory_limit": "1GB"}, env={})
    server, domain, url, _ = start_server(settings)
    domain.store.set_password("owner", OWNER_PASSWORD)
    yield url
    server.shutdown()
    domain.close()


@pytest.fixture(scope="module")
def console_url(domain_url: str) -> Iterator[str]:
    """`stockade console --gateway URL --port 0`, until it says where it listens."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "console", "--gateway", domain_url, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd="/")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.fullmatch(r"console listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, f"unexpected first line {line!r} (exit code {proc.poll()})"
        yield match.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0, proc.returncode


def test_owner_approves_a_budget_request_in_the_browser(  # type: ignore[no-untyped-def]
        chromium, domain_root, domain_url, console_url):
    import adbc_driver_flightsql.dbapi as flight_sql
    from playwright.sync_api import expect, sync_playwright

    name, password = f"eve_{uuid.uuid4().hex[:6]}", "eve-e2e-password"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(WAIT_MS)
            expect.set_options(timeout=WAIT_MS)
            page.goto(console_url)

            # Log in as the owner: the gateway's URL is already filled in from --gateway.
            expect(page.locator(".st-key-login_url input")).to_have_value(domain_url)
            page.get_by_label("User", exact=True).fill("owner")
            page.get_by_label("Password", exact=True).fill(OWNER_PASSWORD)
            page.get_by_role("button", name="Log in").click()
            expect(page.get_by_role("heading", name="st_marys")).to_be_visible()

            # Create an analyst.
            page.get_by_role("link", name="Users & budgets").click()
            expect(page.get_by_role("heading", name="Create a user")).to_be_visible()
            page.locator(".st-key-create_name input").fill(name)
            page.locator(".st-key-create_role input").click()
            page.get_by_role("option", name="analyst", exact=True).click()
            page.locator(".st-key-create_password input").fill(password)
            page.locator(".st-key-create_submit button").click()
            expect(page.get_by_text(f"User '{name}' created with the role 'analyst'.")
                   ).to_be_visible()

            # The new analyst asks for more budget, from Python.
            with GatewayClient(domain_url, name, password) as analyst:
                filed = analyst.action("stockade.request_budget", {
                    "dataset": "oncology", "epsilon": 2.0, "reason": "Screening trends"})
                before = analyst.action("stockade.budget")
            assert [b["epsilon_allowance"] for b in before] == [pytest.approx(3.0)]
            rid = filed["id"]

            # The owner approves it in the console.
            page.get_by_role("link", name="Requests").click()
            request = page.locator(f".st-key-request_{rid}")
            expect(request).to_contain_text(f"#{rid} · {name}")
            expect(request).to_contain_text("Screening trends")
            request.get_by_role("button", name="Approve").click()
            expect(page.get_by_text(f"Request #{rid} of '{name}' approved.")).to_be_visible()
            expect(page.locator(f".st-key-request_{rid}")).to_have_count(0)
        finally:
            browser.close()

    # The analyst's next query sees the new budget: 3.0 + 2.0, less this query's 0.1.
    conn = flight_sql.connect(domain_url, db_kwargs={"username": name, "password": password},
                              autocommit=True)
    try:
        cur = conn.cursor()
        cur.execute("SELECT COUNT(*) AS n FROM oncology.screenings")
        table = cur.fetch_arrow_table()
        cur.close()
    finally:
        conn.close()
    meta = table.schema.metadata
    assert float(meta[b"stockade.dp.epsilon_spent"]) == pytest.approx(0.1)
    assert float(meta[b"stockade.dp.epsilon_remaining"]) == pytest.approx(4.9)
    with GatewayClient(domain_url, name, password) as analyst:
        [budget] = analyst.action("stockade.budget")
        [mine] = analyst.action("stockade.my_requests")
    assert budget["epsilon_allowance"] == pytest.approx(5.0)
    assert budget["epsilon_remaining"] == pytest.approx(4.9)
    assert mine["status"] == "approved" and mine["decided_by"] == "owner"

    # The audit log shows the request and its approval, and its chain verifies ...
    with GatewayClient(domain_url, "owner", OWNER_PASSWORD) as owner:
        admin = owner.action("stockade.audit.query", {"kind": "admin"})["records"]
        verified = owner.action("stockade.audit.verify")
    actions = [(r["user"], r["action"], r["body"]) for r in admin]
    assert (name, "stockade.request_budget",
            {"dataset": "oncology", "epsilon": 2.0, "reason": "Screening trends"}) in actions
    assert ("owner", "stockade.requests.approve", {"id": rid}) in actions
    assert verified["ok"] is True and verified["first_bad_record"] is None
    state = domain_root / "state"
    assert cli_main(["audit", "verify", "--data-dir", str(state)]) == 0

    # ... until a record is altered in the database file: verify names it and exits 1.
    con = sqlite3.connect(state / STATE_FILE)
    (approved,) = con.execute(
        "SELECT id FROM audit_log WHERE details LIKE '%stockade.requests.approve%'").fetchone()
    con.execute("DROP TRIGGER audit_log_append_only_update")
    con.execute("UPDATE audit_log SET details = replace(details, 'owner', 'mallory')"
                " WHERE id = ?", (approved,))
    con.commit()
    con.close()
    assert cli_main(["audit", "verify", "--data-dir", str(state)]) == 1
    with GatewayClient(domain_url, "owner", OWNER_PASSWORD) as owner:
        broken = owner.action("stockade.audit.verify")
    assert broken["ok"] is False and broken["first_bad_record"] == approved


def test_console_refuses_a_bad_gateway_url():  # type: ignore[no-untyped-def]
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "console", "--gateway", "http://127.0.0.1:8815"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert ("error: Bad --gateway 'http://127.0.0.1:8815': use grpc://HOST:PORT or "
            "grpc+tls://HOST:PORT") in proc.stderr

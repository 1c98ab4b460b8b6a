"""Screenshots of every page of the owner's console, for docs/console.md.

    .venv/bin/python scripts/console_screenshots.py [--out docs/console]

Starts a demo domain (the `stockade demo` policy over generated data) in a
temporary directory, gives it some history (queries by analysts and
researchers, a refused query, a failed login, budget and access requests, a
policy change, a dataset cap), starts `stockade console` for it and takes one
PNG per page with headless Chromium (Debian's ``/usr/bin/chromium``).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway.errors import StockadeError  # noqa: E402
from gateway.remote import GatewayClient  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]
OWNER = ("owner", "owner-demo-pw")
ANALYSTS = {"ann": "ann-demo-pw", "bea": "bea-demo-pw"}
WIDTH = 1400


@contextmanager
def demo_domain(root: Path, rows: int) -> Iterator[str]:
    """A demo domain over ``rows`` screenings; yields its URL."""
    from gateway.serving import start_server
    from gateway.settings import load_settings
    from tests.sample_domain import DEMO_POLICY, DEMO_USERS, generate

    generate(root, rows)
    (root / "policy.yaml").write_text(DEMO_POLICY)
    settings = load_settings({"policy": str(root / "policy.yaml"),
                              "data_dir": str(root / "state"), "port": 0}, env={})
    server, domain, url, _ = start_server(settings)
    try:
        for name, role, password, attributes in DEMO_USERS:
            try:
                domain.store.get_user(name)
                domain.store.set_password(name, password)
            except LookupError:
                domain.store.add_user(name, role, password, attributes)
        domain.store.add_user("bea", "analyst", ANALYSTS["bea"], {"team": "epidemiology"})
        yield url
    finally:
        server.shutdown()
        domain.close()


def _queries(url: str, user: str, password: str, queries: list[str]) -> None:
    import adbc_driver_flightsql.dbapi as flight_sql

    conn = flight_sql.connect(url, db_kwargs={"username": user, "password": password},
                              autocommit=True)
    try:
        for sql in queries:
            cur = conn.cursor()
            try:
                cur.execute(sql)
                cur.fetch_arrow_table()
            except Exception as exc:  # noqa: BLE001 - refused queries are part of the history
                print(f"  {user}: refused as expected: {str(exc).splitlines()[0][:90]}")
            finally:
                cur.close()
    finally:
        conn.close()


def history(url: str) -> None:
    """Some weeks of a domain's life, compressed into a few seconds."""
    _queries(url, "ann", ANALYSTS["ann"], [
        "SELECT COUNT(*) AS n FROM oncology.screenings",
        "SELECT site, COUNT(*) AS n FROM oncology.screenings GROUP BY site",
        "SELECT test, AVG(age) AS mean_age FROM oncology.screenings GROUP BY test",
        "SELECT result, COUNT(*) AS n FROM oncology.screenings GROUP BY result",
        "SELECT * FROM oncology.screenings LIMIT 5",  # refused: dp needs aggregates
    ])
    _queries(url, "bea", ANALYSTS["bea"], [
        "SELECT site, COUNT(*) AS n FROM oncology.screenings GROUP BY site",
        "SELECT AVG(age) AS mean_age FROM oncology.screenings",
    ])
    _queries(url, "rita", "rita-demo-pw", [
        "SELECT sex, COUNT(*) AS n FROM oncology.patients GROUP BY sex",
        "SELECT zip, birth_year FROM oncology.patients LIMIT 10",
        "SELECT patient_id FROM oncology.patients",  # refused: hidden column
    ])
    _queries(url, "carl", "carl-demo-pw", [
        "SELECT test, COUNT(*) AS n FROM oncology.screenings GROUP BY test",
    ])
    try:
        GatewayClient(url, "mallory", "guessing-passwords").close()
    except StockadeError:
        pass
    with GatewayClient(url, *OWNER) as owner, \
            GatewayClient(url, "ann", ANALYSTS["ann"]) as ann, \
            GatewayClient(url, "bea", ANALYSTS["bea"]) as bea:
        pilot = ann.action("stockade.request_budget", {
            "dataset": "oncology", "epsilon": 1.0, "reason": "Pilot of the screening report"})
        owner.action("stockade.requests.approve", {"id": pilot["id"],
                                                   "reason": "Fine for the pilot"})
        access = bea.action("stockade.request_access", {
            "dataset": "oncology", "mode": "raw", "reason": "Check outliers in tumour sizes"})
        owner.action("stockade.requests.deny", {
            "id": access["id"], "reason": "Row-level access is for the clinical team only"})
        ann.action("stockade.request_budget", {
            "dataset": "oncology", "epsilon": 1.5,
            "reason": "Quarterly screening report, broken down by site and test"})
        bea.action("stockade.request_budget", {
            "dataset": "oncology", "epsilon": 2.0, "delta": 1e-6,
            "reason": "Survival analysis by age band"})
        live = owner.action("stockade.policy.get")
        changed = live["yaml"].replace(
            "description: One row per screening",
            "description: One row per screening (2019-2024)")
        owner.action("stockade.policy.replace", {
            "yaml": changed, "expected_version": live["version"],
            "comment": "Describe the screenings' years"})
        owner.action("stockade.budget.cap", {"dataset": "oncology", "epsilon": 50.0, "delta": 1e-4})


@contextmanager
def console(url: str) -> Iterator[str]:
    """`stockade console` for ``url``; yields the console's own URL."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "console", "--gateway", url, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    try:
        line = proc.stdout.readline()
        match = re.fullmatch(r"console listening on (http://\S+)\n", line)
        if not match:
            raise SystemExit(f"the console did not start: {line!r}")
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(20)
        proc.stdout.close()


def settle(page: Any) -> None:
    """Wait until Streamlit has finished the current run and drawn everything."""
    page.wait_for_timeout(400)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
        " && !document.querySelector('[data-testid=\"stSkeleton\"]')", timeout=30_000)
    page.wait_for_timeout(600)  # charts draw after the run ends


def shoot(page: Any, path: Path) -> None:
    """A PNG of the whole page (Streamlit scrolls inside its main block, so the
    window is made as tall as the content)."""
    settle(page)
    height = page.evaluate(
        "() => Math.max(...Array.from(document.querySelectorAll("
        "'[data-testid=\"stMain\"], [data-testid=\"stMainBlockContainer\"], "
        "[data-testid=\"stSidebar\"]'), e => e.scrollHeight))")
    page.set_viewport_size({"width": WIDTH, "height": max(800, int(height) + 40)})
    settle(page)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size({"width": WIDTH, "height": 900})
    print(f"  wrote {path}")


def go(page: Any, title: str, heading: str) -> None:
    from playwright.sync_api import expect

    page.get_by_role("link", name=title).click()
    expect(page.get_by_role("heading", name=heading).first).to_be_visible()
    settle(page)


def screenshots(console_url: str, out: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})
        page.set_default_timeout(30_000)
        expect.set_options(timeout=30_000)
        page.goto(console_url)
        page.get_by_label("User", exact=True).fill(OWNER[0])
        page.get_by_label("User", exact=True).blur()
        shoot(page, out / "login.png")
        page.get_by_label("Password", exact=True).fill(OWNER[1])
        page.get_by_role("button", name="Log in").click()
        expect(page.get_by_role("heading", name="st_marys")).to_be_visible()
        shoot(page, out / "overview.png")

        go(page, "Datasets", "Datasets")
        shoot(page, out / "datasets.png")

        go(page, "Policy", "Policy")
        editor = page.locator(".st-key-policy_editor textarea")
        text = editor.input_value()
        editor.fill(text.replace("epsilon_per_query: 0.1", "epsilon_per_query: 0.25"))
        editor.press("Control+Enter")
        settle(page)
        page.locator(".st-key-policy_validate button").click()
        expect(page.get_by_text("The policy is valid.")).to_be_visible()
        page.locator(".st-key-dry_user input").click()
        page.get_by_role("option", name="ann", exact=True).click()
        page.locator(".st-key-dry_query textarea").fill(
            "SELECT site, COUNT(*) AS n FROM oncology.screenings GROUP BY site")
        page.locator(".st-key-dry_use_editor label").click()
        page.locator(".st-key-dry_submit button").click()
        expect(page.get_by_text("Allowed for ann (analyst).")).to_be_visible()
        shoot(page, out / "policy.png")

        go(page, "Users & budgets", "Users & budgets")
        shoot(page, out / "users.png")

        go(page, "Requests", "Requests")
        shoot(page, out / "requests.png")

        go(page, "Audit", "Audit")
        page.get_by_role("button", name="Prepare export").click()
        expect(page.get_by_role("button", name="Download CSV")).to_be_visible()
        shoot(page, out / "audit.png")
        browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "console"),
                        help="where to write the PNGs (default: docs/console)")
    parser.add_argument("--rows", type=int, default=50_000, help="screenings to generate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stockade-screens-") as tmp:
        with demo_domain(Path(tmp), args.rows) as url:
            print(f"demo domain at {url}")
            history(url)
            with console(url) as console_url:
                print(f"console at {console_url}")
                screenshots(console_url, Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

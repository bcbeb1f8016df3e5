"""The usage page on a real hub: a champion sees their group's members' spending with its
chart in Chromium and downloads the table as CSV, a user sees their own rows only (whatever
the filters ask), an admin everyone's, and bad filters get HTTP 400 with a message.

The ledger holds a few days of history written into the hub's own ledger database
(sessions of real servers are tested in tests/usage/test_usage_hub.py).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta

import pytest
import requests
from chromium import ARTIFACTS, needs_chromium
from conftest import needs_default_env, needs_root
from hubtest import Hub, Session, running_hub
from playwright.sync_api import Page, expect
from test_browser import browser, page

from hubstack.usage.ledger import Ledger, Opened
from hubstack.usage.pricing import Rate

pytestmark = [pytest.mark.browser, pytest.mark.e2e, needs_root, needs_default_env, needs_chromium]
__all__ = ["browser", "page"]  # the browser tests' own fixtures

ANN, BOB, EVE, CHAMPION = "up-ann", "up-bob", "up-eve", "up-champ"
FIRST = datetime.now(UTC).date() - timedelta(days=6)
LAST = FIRST + timedelta(days=2)
PERIOD = f"from={FIRST}&to={LAST}"
HOUR = timedelta(hours=1)


def at(day: date, hour: int) -> datetime:
    return datetime.combine(day, time(hour), UTC)


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub(
        {
            "groups": {"optics": {"members": [ANN, BOB], "champions": [CHAMPION]}},
            "usage": {"prices": {"machines": {"small": 2.0, "tiny": 1.0}}},
        }
    ) as running:
        ledger = Ledger(f"sqlite:///{running.data_dir / 'usage.sqlite'}")
        for user, machine, groups, start, hours, cpu in (
            (ANN, "small", {"optics"}, at(FIRST, 22), 4, 3600.0),  # over midnight
            (ANN, "tiny", {"optics"}, at(LAST, 9), 2, None),
            (BOB, "small", {"optics"}, at(LAST, 10), 3, 1800.0),
            (EVE, "small", set(), at(FIRST, 12), 5, None),
        ):
            rate = Rate(2.0 if machine == "small" else 1.0, 1.0, 2**30, 0)
            opened = Opened(user, "", "local", machine, {}, rate, "EUR", frozenset(groups))
            session = ledger.open(opened, start)
            ledger.meter(session, start + hours * HOUR, cpu_seconds=cpu)
            ledger.close(session, start + hours * HOUR)
        ledger.engine.dispose()
        yield running


def log_in(hub: Hub, page: Page, name: str) -> None:
    password = hub.add_user(name)
    page.goto(f"{hub.url}/hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_url("**/hub/spawn")


def table(page: Page) -> list[list[str]]:
    rows = page.locator(".hs-usage-lines tbody tr")
    return [[cell.strip() for cell in row.locator("td").all_inner_texts()] for row in rows.all()]


def test_a_champion_sees_the_groups_spending_with_its_chart_and_csv(hub: Hub, page: Page) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log_in(hub, page, CHAMPION)
    page.get_by_role("link", name="Usage").click()
    page.wait_for_url("**/hub/usage")
    page.fill("#hs-from", str(FIRST))
    page.fill("#hs-to", str(LAST))
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(f"**/hub/usage?{PERIOD}*")

    # ANN's small session: 2 h on the first day, 2 h on the second; the others on the third.
    bars = page.locator(".hs-usage-chart rect.hs-bar")
    expect(bars).to_have_count(4)
    titles = [bar.text_content() for bar in bars.all()]
    assert f"{FIRST} small: 4.00 EUR" in titles and f"{LAST} tiny: 2.00 EUR" in titles
    box = page.get_by_role("img", name="Spending per day in EUR, by machine type").bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 50
    page.screenshot(path=str(ARTIFACTS / "usage-champion.png"), full_page=True)

    shown = table(page)
    assert [row[:3] for row in shown] == [
        [ANN, "small", "1"],
        [BOB, "small", "1"],
        [ANN, "tiny", "1"],
    ]
    assert [row[6] for row in shown] == ["25 %", "17 %", "-"]  # efficiency: used / allocated
    expect(page.locator(".hs-usage-total")).to_have_text("16.00 EUR")
    groups = page.locator(".hs-usage-groups tbody tr td").all_inner_texts()
    assert groups == ["optics", "3", "9.00", "16.00"]

    href = page.locator(".hs-usage-csv").get_attribute("href")
    download = page.request.get(f"{hub.url}{href}")  # the browser's cookies
    assert download.ok and download.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(download.text())))
    assert [
        [
            r["user"],
            r["machine"],
            r["sessions"],
            f"{float(r['hours']):.2f}",
            f"{float(r['cost']):.2f}",
        ]
        for r in rows
    ] == [[row[0], row[1], row[2], row[3], row[7]] for row in shown]

    page.select_option("#hs-user", BOB)
    page.get_by_role("button", name="Show").click()
    expect(page.locator(".hs-usage-lines tbody tr")).to_have_count(1)
    expect(page.locator(".hs-usage-total")).to_have_text("6.00 EUR")


def http_lines(session: Session, query: str) -> list[dict[str, str]]:
    got = session.http.get(f"{session.hub.url}/hub/usage?{query}&format=csv", timeout=30)
    assert got.status_code == 200, got.text
    return list(csv.DictReader(io.StringIO(got.text)))


def test_a_user_sees_their_own_rows_only_and_an_admin_everyones(hub: Hub) -> None:
    eve = hub.new_user(EVE)
    assert [(r["user"], r["machine"]) for r in http_lines(eve, PERIOD)] == [(EVE, "small")]
    for narrowing in (f"user={ANN}", "group=optics", f"user={ANN}&group=optics"):
        assert http_lines(eve, f"{PERIOD}&{narrowing}") == []
    page = eve.http.get(f"{hub.url}/hub/usage?{PERIOD}", timeout=30).text
    assert EVE in page and ANN not in page and BOB not in page and "optics" not in page

    admin = hub.login("admin", hub.admin_password)
    assert {r["user"] for r in http_lines(admin, PERIOD)} == {ANN, BOB, EVE}
    assert http_lines(admin, "from=2000-01-01&to=2000-01-31") == []


def test_bad_filters_get_400_with_a_message(hub: Hub) -> None:
    admin = hub.login("admin", hub.admin_password)
    for query, message in (
        ("from=yesterday", "from: &#39;yesterday&#39; is not a date like 2026-01-31"),
        (f"from={LAST}&to={FIRST}", f"to: {FIRST} is before from: {LAST}"),
        (
            "machine=<b>huge</b>",
            "machine: &#39;&lt;b&gt;huge&lt;/b&gt;&#39; is not one of small, tiny",
        ),
    ):
        got = admin.http.get(f"{hub.url}/hub/usage?{query}", timeout=30)
        assert got.status_code == 400 and message in got.text, (query, got.status_code)
    anonymous = requests.get(f"{hub.url}/hub/usage", timeout=30)
    assert "/hub/login" in anonymous.url

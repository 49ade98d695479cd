"""The web UI in a real browser: Debian's chromium driven by Playwright (``executable_path``,
no browser download), against ``python -m api`` on a free port with a real dataflow child
reading the demo plant. Every request the pages make is recorded: none leaves 127.0.0.1.

Screenshots of the four pages go to ``docs/ui/`` when ``FACTORYFLOW_SCREENSHOTS`` is set.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from dataflows.demo import Plant, demo_config
from dataflows.home import config_path
from tests.flowrun import REPO
from tests.services.process import free_port
from tests.walkthrough import ApiProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = REPO / "docs" / "ui"
SECRET = "hunter2-plant-db"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


class Plantation:
    """The demo plant, a reading every 0.5 s, until stopped."""

    def __init__(self, home: Path) -> None:
        self.plant = Plant(home)
        self.plant.create()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            self.plant.tick()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


@pytest.fixture(scope="module")
def installation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    home = tmp_path_factory.mktemp("ui") / "home"
    api = ApiProcess(home, rate_interval=3)  # a sparkline point every 3 s
    plant = Plantation(home)
    config = demo_config(home)
    config["data_receiver"][0]["connections"][0]["password"] = SECRET  # sqlite ignores it; the UI must not
    assert api.call("POST", "/v1/config", json=config)["success"]
    yield api
    plant.close()
    assert api.stop() == 0  # a clean exit on SIGTERM


class Session:
    """A page of the UI with every request it makes recorded."""

    def __init__(self, browser: Browser, base: str, width: int = 1280) -> None:
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.page: Page = self.context.new_page()
        self.requests: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("dialog", lambda dialog: dialog.accept())  # the restream confirmation
        self.base = base

    def open(self, page: str) -> Page:
        self.page.goto(f"{self.base}/#/{page}")
        return self.page

    def outside(self) -> list[str]:
        """Requests to anywhere but 127.0.0.1."""
        return [url for url in self.requests if urlsplit(url).scheme not in ("data", "blob")
                and urlsplit(url).hostname != "127.0.0.1"]

    def shot(self, name: str) -> None:
        if os.environ.get("FACTORYFLOW_SCREENSHOTS"):
            SHOTS.mkdir(exist_ok=True)
            self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=False)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def session(browser: Browser, installation: ApiProcess) -> Iterator[Session]:
    s = Session(browser, installation.url)
    yield s
    assert s.outside() == []  # nothing loads from the internet
    assert any("/v1/" in url for url in s.requests)
    s.close()


def rename_key(page: Page, old: str, new: str) -> None:
    """Type over the first ``"old":`` key in the editor, as a person would: click its line,
    go to the line's start, select the key's letters, type."""
    page.locator(".cm-line", has_text=f'"{old}"').first.click()
    page.keyboard.press("End")
    page.keyboard.press("Home")  # CodeMirror: the start of the line's text, after the indentation
    page.keyboard.press("ArrowRight")  # past the opening quote
    for _ in old:
        page.keyboard.press("Shift+ArrowRight")
    assert page.evaluate("() => getSelection().toString()") == old
    page.keyboard.type(new)


def test_a_typo_is_marked_at_its_json_path_fixed_and_saved(session: Session, installation: ApiProcess) -> None:
    page = session.open("config")
    editor = page.locator(".cm-content")
    expect(editor).to_contain_text('"poll_interval"')
    expect(editor).to_contain_text('"password": "********"')
    rename_key(page, "poll_interval", "pollinterval")
    page.wait_for_timeout(1000)  # a person's pause: the editor's own lint has run meanwhile
    page.get_by_role("button", name="Validate").click()
    violation = page.locator("#violations li.error")
    expect(violation).to_have_count(1)
    expect(violation).to_contain_text("data_receiver/0/pollinterval")
    expect(violation).to_contain_text("unknown key `pollinterval`")
    marked = page.locator(".cm-lintRange-error")
    expect(marked.first).to_contain_text('"pollinterval"')
    violation.get_by_role("button").click()  # jumps to the place: the key is selected
    assert "pollinterval" in page.evaluate("() => getSelection().toString()")
    session.shot("config")
    rename_key(page, "stream_type", "streamtype")  # a second typo, then a pause, then Save
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#notice")).to_contain_text("Not saved")  # refused with the errors
    expect(page.locator("#violations li.error", has_text="unknown key `streamtype`")).to_have_count(1)
    expect(marked.filter(has_text='"streamtype"')).to_have_count(1)
    expect(marked.filter(has_text='"pollinterval"')).to_have_count(1)
    rename_key(page, "streamtype", "stream_type")
    rename_key(page, "pollinterval", "poll_interval")
    page.get_by_role("button", name="Validate").click()
    expect(page.locator("#violations-summary")).to_have_text("No violations.")
    expect(page.locator(".cm-lintRange-error")).to_have_count(0)
    page.get_by_role("button", name="Save", exact=True).click()
    expect(page.locator("#notice")).to_contain_text("Saved at")
    saved = installation.call("GET", "/v1/config")["response"]
    assert saved["data_receiver"][0]["poll_interval"] == 2 and "pollinterval" not in saved["data_receiver"][0]
    # the secret showed as ******** and survived the save unchanged
    assert SECRET not in page.locator(".cm-content").inner_text() and SECRET not in " ".join(session.requests)
    on_disk = json.loads(config_path(installation.home).read_text())
    assert on_disk["data_receiver"][0]["connections"][0]["password"] == SECRET


def test_templates_are_added_from_the_api(session: Session) -> None:
    page = session.open("config")
    expect(page.locator(".cm-content")).to_contain_text('"data_receiver"')
    page.get_by_label("Add a receiver from a template").select_option(label="Factory I/O")
    page.get_by_role("button", name="Add", exact=True).click()
    expect(page.locator("#notice")).to_contain_text("Added the Factory I/O template")
    page.get_by_role("button", name="Validate").click()
    placeholder = page.locator("#violations li.warning").first
    expect(placeholder).to_contain_text("data_receiver/2/host template placeholder not filled in")
    placeholder.get_by_role("button").click()  # the editor scrolls to the new receiver
    expect(page.locator(".cm-content")).to_contain_text('"protocol": "factoryio"')
    expect(page.locator(".cm-lintRange-warning").first).to_contain_text("<Please input the hostname")


def test_start_watch_counts_rise_and_restream(session: Session, installation: ApiProcess) -> None:
    page = session.open("status")
    page.get_by_role("button", name="Start", exact=True).click()
    expect(page.locator("#status-state")).to_have_text("running", timeout=60_000)
    expect(page.locator("#dataflow-state")).to_have_text("dataflow running")
    page = session.open("streams")
    row = page.locator('tr[data-stream="lasercut:mssql"]')
    received = row.locator("td.received")
    expect(received).not_to_have_text("0", timeout=60_000)
    first = int(received.inner_text())
    page.wait_for_function(f"() => Number(document.querySelector('tr[data-stream=\"lasercut:mssql\"] td.received')"
                           f".textContent) > {first}", timeout=60_000)  # the table refreshes by itself
    expect(row.locator("td.delivered")).to_contain_text("MyTransmit_1")
    expect(row.locator("td.rate polyline")).to_have_attribute("points", re.compile(r"\S+ \S+"), timeout=30_000)
    # lasercut: 6 machines every 0.5 s is 720 a minute. The dataflow reads every 2 s, so one 3 s
    # interval may hold no read's commit (under load) and the next two: wait for a figure in range,
    # which a rate in the wrong unit (per second: 12, per hour: 43,200) never reaches.
    in_range = ("() => { const t = document.querySelector('tr[data-stream=\"lasercut:mssql\"] td.rate');"
                " const n = Number(t && t.textContent); return n >= 60 && n <= 2000; }")
    try:
        page.wait_for_function(in_range, timeout=60_000)
    except PlaywrightTimeoutError:
        pytest.fail(f"the rate never read 60..2000 a minute; last: {row.locator('td.rate').inner_text()!r}")
    session.shot("streams")
    output = installation.home / "components" / "MyTransmit_1" / "lasercut__mssql.jsonl"
    earliest = json.loads(output.read_text().splitlines()[0])
    row.get_by_role("button", name="Restream lasercut:mssql").click()
    expect(page.locator("#notice")).to_contain_text("Restream of lasercut:mssql: ", timeout=60_000)
    expect(page.locator("#notice")).not_to_have_class("error")

    def copies() -> int:
        return sum(1 for line in output.read_text().splitlines() if json.loads(line) == earliest)

    page.wait_for_timeout(500)
    deadline_polls = 120
    while copies() < 2 and deadline_polls:
        page.wait_for_timeout(500)
        deadline_polls -= 1
    assert copies() == 2  # delivered again from the start


def test_status_page_shows_transmits_and_the_machine(session: Session) -> None:
    page = session.open("status")
    expect(page.locator("#transmits tr").first).to_contain_text("MyTransmit_1")
    expect(page.locator("#machine")).to_contain_text("CPU")
    expect(page.locator("#machine")).to_contain_text("GiB")
    session.shot("status")


def test_the_log_tail_grows_and_the_filter_narrows_it(session: Session, installation: ApiProcess) -> None:
    installation.call("POST", "/v1/ftx/start")
    page = session.open("logs")
    log = page.locator("#log")
    expect(log).to_contain_text("lasercut:mssql", timeout=60_000)
    before = int(log.get_attribute("data-lines") or 0)
    last = log.inner_text().splitlines()[-1]
    page.wait_for_function("(last) => !document.getElementById('log').textContent.endsWith(last)", arg=last,
                           timeout=60_000)  # new lines arrive
    session.shot("logs")
    page.get_by_label("follow").uncheck()
    page.get_by_label("Level").select_option("")
    total = int(log.get_attribute("data-lines") or 0)
    page.get_by_label("Filter").fill("diecast:mssql")
    narrowed = log.inner_text().splitlines()
    assert narrowed and all("diecast:mssql" in line.lower() for line in narrowed)
    assert len(narrowed) == int(log.get_attribute("data-lines") or 0) < max(total, before)
    page.get_by_label("Filter").fill("")
    page.get_by_label("Level").select_option("ERROR")
    assert all("ERROR" in line or "CRITICAL" in line for line in log.inner_text().splitlines() if line)


@pytest.mark.parametrize("width", [1280, 800])
def test_readable_at_1280_and_800_pixels(browser: Browser, installation: ApiProcess, width: int) -> None:
    s = Session(browser, installation.url, width)
    for page in ("config", "streams", "status", "logs"):
        p = s.open(page)
        expect(p.locator(f"#page-{page}")).to_be_visible()
        p.wait_for_load_state("networkidle")
        scroll = p.evaluate("() => document.documentElement.scrollWidth")
        wide = p.evaluate(f"""() => [...document.querySelectorAll('body *')]
            .filter((e) => e.getBoundingClientRect().right > {width})
            .slice(0, 5).map((e) => e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))""")
        assert scroll <= width, f"{page} is {scroll} px wide: {wide}"  # no sideways scrolling
    p.keyboard.press("Tab")  # keyboard: the first stop is the first page link
    focused = p.evaluate("() => document.activeElement.outerHTML")
    assert focused.startswith('<a href="#/config"'), focused
    assert s.outside() == []
    s.close()


def test_with_an_api_key_the_ui_asks_for_it_and_loads_nothing_without_it(browser: Browser,
                                                                          tmp_path: Path) -> None:
    api = ApiProcess(tmp_path / "home", api_key="plant-floor-key")
    try:
        assert api.call("POST", "/v1/config", json=demo_config(tmp_path / "home"))["success"]
        s = Session(browser, api.url)
        answers: list[tuple[str, int]] = []
        s.page.on("response", lambda r: answers.append((urlsplit(r.url).path, r.status)))
        page = s.open("config")
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        expect(page.locator(".cm-content")).to_have_count(0)  # no config shown
        assert [status for path, status in answers if path.startswith("/v1/")] \
            and all(status == 401 for path, status in answers if path.startswith("/v1/"))
        page.get_by_role("textbox", name="API key").fill("wrong")
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator("#key-error")).to_have_text("That key was refused.")
        page.get_by_role("textbox", name="API key").fill("plant-floor-key")
        page.get_by_role("button", name="Use this key").click()
        expect(page.locator(".cm-content")).to_contain_text('"data_receiver"')
        assert any(path == "/v1/config" and status == 200 for path, status in answers)
        assert s.outside() == []
        s.close()
    finally:
        assert api.stop() == 0  # a clean exit on SIGTERM


def test_a_restart_waiting_on_a_dead_broker_shows_what_it_waits_for(browser: Browser, tmp_path: Path) -> None:
    """A Kafka transmit whose broker never answers: the Status page shows its last error within
    seconds, and a Restart shows "restarting…" with that error until it is done, in seconds."""
    home = tmp_path / "home"
    api = ApiProcess(home)
    plant = Plantation(home)
    try:
        config = demo_config(home)
        config["data_transmit"].append({"transmit_name": "plant_kafka", "transmit_type": "kafka",
                                        "bootstrap_servers": f"127.0.0.1:{free_port()}", "topic": "plant"})
        assert api.call("POST", "/v1/config", json=config)["success"]
        assert api.call("POST", "/v1/ftx/start")["response"] == "running"
        s = Session(browser, api.url)
        page = s.open("status")
        kafka = page.locator("#transmits tr", has_text="plant_kafka")
        expect(kafka.locator("td.error")).to_contain_text("has acknowledged none of", timeout=60_000)
        page.get_by_role("button", name="Restart", exact=True).click()
        expect(page.locator("#dataflow-state")).to_have_text("dataflow restarting…", timeout=5_000)
        expect(page.locator("#status-state")).to_contain_text("restarting…")
        expect(page.locator("#notice")).to_contain_text("The dataflow is restarting.")
        expect(page.locator("#notice")).to_contain_text(re.compile(r"Transmit errors: plant_kafka: .*broker 127\.0\.0\.1:"))
        s.shot("waiting")
        expect(page.locator("#notice")).to_have_text("restart: running", timeout=30_000)
        expect(page.locator("#dataflow-state")).to_have_text("dataflow running")
        assert s.outside() == []
        s.close()
    finally:
        plant.close()
        assert api.stop() == 0


def test_the_streams_caption_reads_whole_at_390_pixels(browser: Browser, installation: ApiProcess) -> None:
    s = Session(browser, installation.url, 390)
    page = s.open("streams")
    caption = page.locator("#streams-caption")
    expect(caption).to_be_visible()
    right = page.evaluate("() => document.getElementById('streams-caption').getBoundingClientRect().right")
    assert right <= 390 and caption.inner_text().endswith("over the last hour.")
    s.close()

"""The status page in a real browser: headless Chromium (`browser.py`) against a live, secure 3-node local
cluster (mutual TLS, HTTPS, tokens), with a light load running.

- `test_signs_in_and_shows_every_node`: the sign-in link (`/ui/login#token=...`) opens the page; every running
  node has a member row and a card, up; the ring has an arc per token range in every node's colour; a typed-in
  key shows its preference list (the same as `/admin/v1/ring?key=`) and dims the other arcs; request rates
  show; no console error.
- `test_a_killed_node_turns_red_and_green_again`: SIGKILL n3: its row and card turn `down` within a few
  seconds (measured and printed) and a banner names the lost replicas; restarted, it turns `up` again.
- `test_shows_a_join_in_progress`: n4 joins with a slow stream: its card shows the join's progress bar
  while it streams, then it is normal and up.
- `test_laptop_and_phone_widths`: at 1366 and at 390 CSS pixels nothing sticks out sideways, every control has
  a label, every text meets WCAG AA contrast (healthy, and with a node down: banners and red pills too).

Screenshots of each stage go to the test's temporary directory, and to `$RINGKV_UI_SHOTS` when set (`make
ui-screenshots` puts them in docs/img/). Waiting is on conditions with deadlines; the load's pacing sleeps
only set its rate.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ringkv import local
from ringkv.client import Client
from ringkv.local import LocalCluster
from tests.integration import browser
from tests.integration.cluster_helpers import FAST_GOSSIP_S, kill_all, pick_base_port, print_logs, wait_until
from tests.integration.topology_helpers import add_nodes

pytestmark = [pytest.mark.slow, pytest.mark.skipif(browser.available() is not None,
                                                   reason=str(browser.available()))]

DOWN_WITHIN_S = 10.0  # kill -9 to a red card: phi at 0.5 s gossip takes a few seconds, the page polls every 1 s
UP_WITHIN_S = 30.0  # restart (storage replay, ring wait) to a green card
PRELOAD = 1200  # ~1.2 MB of 1 KB values, ~0.9 MB of it n4's: at 0.1 MB/s it streams for several seconds
SLOW_STREAM = ["--stream-mb-s", "0.1"]
PAD = "x" * 1000


class Load:
    """A few puts and gets a second through every node, so the cards show request rates."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster, self.stop, self.requests, self.errors = cluster, threading.Event(), 0, 0
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="load", daemon=True)

    async def _run(self) -> None:
        creds = self.cluster.creds()
        clients = [Client(n.url, timeout_s=3, connections=4, creds=creds) for n in self.cluster.nodes[:3]]
        i = 0
        try:
            while not self.stop.is_set():
                client = clients[i % len(clients)]
                try:
                    await client.put(f"load-{i % 200}", {"i": i}, w=1)
                    await client.get(f"load-{(i * 7) % 200}", r=1)
                    self.requests += 2
                except Exception:  # a node down: the page is what is under test, not the load
                    self.errors += 1
                i += 1
                await asyncio.sleep(0.05)
        finally:
            for c in clients:
                await c.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    data_dir = tmp_path_factory.mktemp("ui")
    c = LocalCluster(str(data_dir), local.plan(str(data_dir), 3, pick_base_port(3), 3), 3, "batch",
                     ["--gossip-interval-s", str(FAST_GOSSIP_S), "--aae-interval-s", "3600"], secure=True)
    try:
        for node in c.nodes:
            c.start(node)
        c.wait_ready(timeout_s=60)
        c.wait_converged(timeout_s=30)

        async def preload() -> None:
            async with Client(c.nodes[0].url, creds=c.creds()) as client:
                for start in range(0, PRELOAD, 50):
                    await asyncio.gather(*(client.put(f"user:{i}", {"name": f"user {i}", "pad": PAD}, w=2)
                                           for i in range(start, min(PRELOAD, start + 50))))

        asyncio.run(preload())
        load = Load(c)
        load.thread.start()
        try:
            yield c
        finally:
            load.stop.set()
            load.thread.join(timeout=10)
    except BaseException:
        print_logs(c)
        raise
    finally:
        kill_all(c)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return [tmp_path_factory.mktemp("shots")] + ([Path(os.environ["RINGKV_UI_SHOTS"])]
                                                 if os.environ.get("RINGKV_UI_SHOTS") else [])


@pytest.fixture(scope="module")
def page(cluster: LocalCluster) -> Iterator[Any]:
    with browser.chromium() as driver:
        n1 = cluster.nodes[0]
        driver.get(f"{n1.url}/ui/login#token={cluster.creds().token}")
        wait_until(lambda: driver.current_url == f"{n1.url}/ui" and cards(driver), 20, "signed in, the page drawn",
                   observe=lambda: (driver.current_url, driver.page_source[:300]))
        yield driver
    # every test checked (and emptied) the console log itself


def admin_json(cluster: LocalCluster, path: str) -> Any:
    """GET `path` of n1 as the admin, over HTTPS checked against the cluster's CA."""
    n1, creds = cluster.nodes[0], cluster.creds()
    assert n1.url.startswith("https://127.0.0.1:") and creds.ca_cert
    request = urllib.request.Request(n1.url + path, headers={"Authorization": f"Bearer {creds.token}"})
    with urllib.request.urlopen(request, timeout=5, context=ssl.create_default_context(cafile=creds.ca_cert)) as r:
        return orjson.loads(r.read())


def cards(driver: Any) -> dict[str, str]:
    """node id -> data-state of its card (up / down / warn), as the page shows them now."""
    return dict(driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#nodes article.node')]"
        ".map((e) => [e.dataset.node, e.dataset.state]))"))


def rows(driver: Any) -> dict[str, str]:
    return dict(driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('#members tbody tr')]"
        ".map((e) => [e.dataset.node, e.dataset.state]))"))


def text(driver: Any, selector: str) -> str:
    return str(driver.execute_script(f"return document.querySelector({selector!r})?.innerText ?? ''"))


def screenshot(driver: Any, shots: list[Path], name: str) -> None:
    """The whole page at the current width (the viewport grown to the page's height for the capture)."""
    width = int(driver.execute_script("return document.documentElement.clientWidth"))
    height = int(driver.execute_script("return document.documentElement.scrollHeight"))
    browser.set_viewport(driver, width, height, mobile=width < 500)
    try:
        for d in shots:
            d.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(d / f"{name}.png"))
    finally:
        browser.set_viewport(driver, width, browser.LAPTOP[1] if width >= 500 else browser.PHONE[1],
                             mobile=width < 500)


def no_console_errors(driver: Any) -> None:
    errors = browser.console_errors(driver)
    assert errors == [], errors


def running(cluster: LocalCluster) -> set[str]:
    return {n.node_id for n in cluster.nodes if n.pid and local._alive(n.pid)}


def test_signs_in_and_shows_every_node(cluster: LocalCluster, page: Any, shots: list[Path]) -> None:
    expected = running(cluster)
    wait_until(lambda: set(cards(page)) == expected and set(cards(page).values()) == {"up"}
               and set(rows(page).values()) == {"up"}, 15, "every node up on the page",
               observe=lambda: (cards(page), rows(page)))
    arcs = page.execute_script("return [...document.querySelectorAll('#ring path.arc')].map((p) => p.dataset.owner)")
    assert set(arcs) == expected and len(arcs) >= 3 * 8, arcs  # every node's vnodes drawn
    wait_until(lambda: "/s" in text(page, "#nodes article.node dd") and " 0.0/s" not in text(page, "#nodes"),
               20, "request rates of the load shown", observe=lambda: text(page, "#nodes"))
    box = page.find_element("id", "key-input")
    box.clear()
    box.send_keys("user:42")
    page.find_element("css selector", "#key-form button").click()
    want = list(admin_json(cluster, "/admin/v1/ring?key=user:42")["key"]["preference_list"])
    shown = lambda: list(page.execute_script(  # noqa: E731
        "return [...document.querySelectorAll('#key-result .replica')].map((e) => e.dataset.node)"))
    wait_until(lambda: shown() == want, 10, f"the key's replicas {want} shown", observe=shown)
    dim = page.execute_script("return [...document.querySelectorAll('#ring path.arc.dim')].map((p) => p.dataset.owner)")
    assert not set(dim) & set(want) and (len(want) == len(expected) or dim), dim
    assert text(page, "#banners") == "", text(page, "#banners")
    screenshot(page, shots, "ui-healthy")
    no_console_errors(page)


def test_a_killed_node_turns_red_and_green_again(cluster: LocalCluster, page: Any, shots: list[Path]) -> None:
    n3 = cluster.nodes[2]
    wait_until(lambda: cards(page).get("n3") == "up", 15, "n3 up on the page first", observe=lambda: cards(page))
    killed = time.monotonic()
    cluster.kill(n3)
    wait_until(lambda: cards(page).get("n3") == "down" and rows(page).get("n3") == "down", DOWN_WITHIN_S,
               "n3 red on the page", poll_s=0.1, observe=lambda: (cards(page), rows(page)))
    red_after = time.monotonic() - killed
    wait_until(lambda: "Replicas down" in text(page, "#banners"), 5, "a banner for the down replicas",
               observe=lambda: text(page, "#banners"))
    assert {k: v for k, v in cards(page).items() if k != "n3"} == {"n1": "up", "n2": "up"}
    screenshot(page, shots, "ui-node-down")
    restarted = time.monotonic()
    cluster.start(n3)
    wait_until(lambda: cards(page).get("n3") == "up" and rows(page).get("n3") == "up", UP_WITHIN_S,
               "n3 green on the page again", poll_s=0.1, observe=lambda: (cards(page), rows(page)))
    green_after = time.monotonic() - restarted
    wait_until(lambda: text(page, "#banners") == "", 15, "the banner gone", observe=lambda: text(page, "#banners"))
    print(f"\nn3 red on the page {red_after:.1f} s after kill -9, green {green_after:.1f} s after its restart")
    no_console_errors(page)


def test_shows_a_join_in_progress(cluster: LocalCluster, page: Any, shots: list[Path]) -> None:
    wait_until(lambda: set(cards(page).values()) == {"up"}, 30, "everyone up first", observe=lambda: cards(page))
    (n4,) = add_nodes(cluster, ["n4"])
    shared = list(cluster.extra_args)
    cluster.extra_args = [*shared, *SLOW_STREAM]
    try:
        cluster.start(n4)
    finally:
        cluster.extra_args = shared
    label = "#nodes article.node[data-node='n4'] .op label"
    ratios: list[float] = []

    def streaming() -> bool:
        shown = text(page, label)
        if "Joining: streaming ranges" in shown:
            ratios.append(float(page.execute_script(
                f"return document.querySelector(\"{label.replace(' label', ' progress')}\").value")))
        return len(set(ratios)) >= 2 and 0 < ratios[-1] < 1  # the bar moved, and the join is not over

    wait_until(streaming, 60, "n4's card showing the join's progress", poll_s=0.1,
               observe=lambda: (cards(page), text(page, "#nodes article.node[data-node='n4']")))
    screenshot(page, shots, "ui-join")
    wait_until(lambda: cards(page).get("n4") == "up"
               and "joining" not in text(page, "#members tbody tr[data-node='n4']")
               and "Joining" not in text(page, "#nodes article.node[data-node='n4']"), 120,
               "n4 normal and up on the page", observe=lambda: text(page, "#nodes article.node[data-node='n4']"))
    wait_until(lambda: text(page, "#banners") == "", 30, "no banner once the ring agrees",
               observe=lambda: text(page, "#banners"))
    print(f"\nn4's progress as the page showed it: {ratios[:3]} ... {ratios[-3:]} ({len(ratios)} polls)")
    assert ratios == sorted(ratios), f"the join's progress went backwards: {ratios}"
    no_console_errors(page)


def _layout_ok(page: Any, where: str) -> None:
    spill = browser.overflow(page)
    assert spill["scroll"] <= 0 and not spill["sticking_out"], f"{where}: wider than the viewport: {spill}"
    assert browser.unlabelled(page) == [], f"{where}: controls without a label"
    assert browser.low_contrast(page) == [], f"{where}: text below WCAG AA contrast"


def test_laptop_and_phone_widths(cluster: LocalCluster, page: Any, shots: list[Path]) -> None:
    wait_until(lambda: set(cards(page)) == running(cluster), 30, "every node on the page")
    _layout_ok(page, "laptop, healthy")
    browser.set_viewport(page, *browser.PHONE, mobile=True)
    try:
        wait_until(lambda: page.execute_script("return document.documentElement.clientWidth") == browser.PHONE[0],
                   5, "the phone viewport applied")
        _layout_ok(page, "phone, healthy")
        screenshot(page, shots, "ui-phone")
        victim = cluster.nodes[1]
        cluster.kill(victim)
        try:
            wait_until(lambda: cards(page).get(victim.node_id) == "down" and text(page, "#banners"), DOWN_WITHIN_S,
                       f"{victim.node_id} red, a banner", observe=lambda: cards(page))
            _layout_ok(page, "phone, a node down")
        finally:
            cluster.start(victim)
        browser.set_viewport(page, *browser.LAPTOP)
        _layout_ok(page, "laptop, a node down")
        wait_until(lambda: cards(page).get(victim.node_id) == "up", UP_WITHIN_S, f"{victim.node_id} back")
    finally:
        browser.set_viewport(page, *browser.LAPTOP)
    no_console_errors(page)


def test_the_login_page_is_labelled_and_readable(cluster: LocalCluster, tmp_path: Path) -> None:
    """A fresh browser (no session): /ui sends it to the sign-in form; a wrong token gets the form again with
    an error, nothing else."""
    with browser.chromium(*browser.PHONE) as driver:
        n1 = cluster.nodes[0]
        driver.get(f"{n1.url}/ui")
        wait_until(lambda: driver.current_url == f"{n1.url}/ui/login", 10, "sent to the sign-in page")
        assert browser.unlabelled(driver) == [] and browser.low_contrast(driver) == []
        driver.find_element("id", "token").send_keys("rkv_not_a_token")
        driver.find_element("css selector", "#login-form button").click()
        wait_until(lambda: "not an admin token" in text(driver, ".error"), 10, "the error shown")
        assert browser.overflow(driver)["scroll"] <= 0
        # a refused sign-in answers 401 by design: the browser logs that one request, nothing else
        errors = browser.console_errors(driver)
        assert all("401" in e["message"] and "/ui/login" in e["message"] for e in errors), errors
    shutil.rmtree(tmp_path, ignore_errors=True)

"""The web console in headless Chromium against both gateways over real Dovecot servers.

Sign-in with API tokens of each role; the overview and the mailboxes table show what the API
shows; seeding progress advances on the page while a mailbox seeds; a cutover started from the
page reaches active-at-dr and the page shows it; a viewer sees no action buttons and a forged
action with a viewer session is refused (403); a POST without the CSRF token is refused (403).
Screenshots of the overview, the mailboxes table and a mailbox page are saved (see
``tests/support/browser.py``).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.support.browser import screenshot_dir, sign_in, wait_for
from tests.support.dovecot import DovecotServer, DovecotUnavailable
from tests.support.environment import unavailable
from tests.support.gateways import GatewayPair

pytestmark = [pytest.mark.dovecot]

USERS = ["alice", "bob", "carol", "dave", "seedy"]
SEED_MESSAGES = 2000


def message(i: int, user: str) -> bytes:
    return (f"From: s{i}@example.org\r\nTo: {user}@example.org\r\nSubject: message {i}\r\n"
            f"Message-ID: <c{i}.{user}@example.org>\r\nDate: Tue, 3 Sep 2024 10:{i % 60:02d}:00 +0200\r\n\r\n"
            f"Body {i}.\r\n" + "y" * 300 + "\r\n").encode()


@pytest.fixture(scope="module")
def env():
    """Primary and standby Dovecot, both gateways; alice, bob, carol protected and in sync;
    ``seedy`` holds SEED_MESSAGES messages and is not protected yet; tokens of each role."""
    servers = []
    tmp = Path(tempfile.mkdtemp(prefix="mailrepl-console-"))
    try:
        try:
            primary = DovecotServer("console-primary", USERS)
            servers.append(primary)
            standby = DovecotServer("console-standby", USERS)
            servers.append(standby)
        except DovecotUnavailable as exc:
            unavailable(str(exc))
        primary.start()
        standby.start()
        for u in ("alice", "bob", "carol"):
            primary.deliver_many(u, [message(i, u) for i in range(5)])
        primary.deliver_many("seedy", [message(i, "seedy") for i in range(SEED_MESSAGES)])
        # seeding paced so that the page sees it under way: capture stops at a copy queue of 300
        # changes and the link is capped, so the queue drains (and capture goes on) in steps
        pair = GatewayPair(tmp, primary, standby, users=USERS, source_state=f"sqlite:///{tmp}/source.sqlite",
                           recovery_state=f"sqlite:///{tmp}/recovery.sqlite", fetch_chunk=20,
                           source_gateway_extra="mailbox_queue_max_changes = 300\n",
                           source_extra="[link]\nrate_mbit = 0.25\n")
        pair.start()
        try:
            pair.protect("alice", "bob", "carol")
            pair.wait_synced(["alice", "bob", "carol"])
            tokens = {}
            for gw in ("source", "recovery"):
                with getattr(pair, gw).api() as c:
                    for role in ("viewer", "operator"):
                        r = c.post("/api/v1/tokens", json={"name": f"{role}-ui", "role": role})
                        assert r.status_code == 201, r.text
                        tokens[(gw, role)] = r.json()["token"]
            yield pair, tokens
        finally:
            pair.stop()
    finally:
        for s in reversed(servers):
            s.cleanup()


def api_get(gw, path: str) -> dict:
    with gw.api() as c:
        r = c.get(path)
        r.raise_for_status()
        return r.json()


def text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def num(value: str) -> int:
    return int(value.replace(",", "").replace("\u202f", "").replace(" ", ""))


def browser_fetch(driver, method: str, path: str, body: dict | None = None, csrf: str | None = "session") -> int:
    """A request from the signed-in page itself (same origin, the session cookie); answers the status."""
    return driver.execute_async_script("""
        const [method, path, body, csrf, done] = arguments;
        (async () => {
          let token = csrf;
          if (csrf === "session") token = (await (await fetch("/ui/session")).json()).csrf;
          const headers = {"Content-Type": "application/json"};
          if (token) headers["X-CSRF-Token"] = token;
          const r = await fetch(path, {method, headers, body: body === null ? undefined : JSON.stringify(body),
                                       credentials: "same-origin"});
          done(r.status);
        })().catch((e) => done(String(e)));
    """, method, path, body, csrf)


def test_sign_in(env, driver):
    from selenium.webdriver.common.by import By

    pair, tokens = env
    driver.delete_all_cookies()
    driver.get(pair.source.url + "/ui/")
    assert driver.current_url.endswith("/ui/login"), "no session: the console sends to the sign-in page"
    driver.find_element(By.ID, "token").send_keys("mrt_not-a-token-at-all-xxxxxxxxxxxxxxxxxxxxxxxxx")
    driver.find_element(By.ID, "sign-in").click()
    wait_for(lambda: "not accepted" in text(driver, "login-error"), 45, "the refusal")
    assert driver.get_cookie("mailrepl_session") is None

    sign_in(driver, pair.source.url, tokens[("source", "viewer")])
    cookie = driver.get_cookie("mailrepl_session")
    assert cookie is not None and cookie["httpOnly"] is True and cookie["sameSite"] == "Strict", cookie
    wait_for(lambda: "viewer" in text(driver, "who"), 45, "who is signed in")
    assert "source gateway hq" in text(driver, "gw")
    # the page cannot read the session cookie (HttpOnly)
    assert "mailrepl_session" not in driver.execute_script("return document.cookie")
    # and the session is not an API credential: the API itself still wants a bearer token
    assert httpx.get(pair.source.url + "/api/v1/mailboxes", cookies={"mailrepl_session": cookie["value"]}).status_code == 401


def test_overview_shows_what_the_api_shows(env, driver):
    pair, tokens = env
    sign_in(driver, pair.source.url, tokens[("source", "viewer")])
    driver.get(pair.source.url + "/ui/#/overview")
    listed = api_get(pair.source, "/api/v1/mailboxes")["mailboxes"]
    wait_for(lambda: text(driver, "ov-total") == str(len(listed)), 45, "the total")
    assert num(text(driver, "ov-protected")) == sum(m["protected"] for m in listed) == 3
    for phase in ("idle", "seeding", "replicating", "error"):
        assert num(text(driver, f"ov-phase-{phase}")) == sum(m["phase"] == phase for m in listed), phase
    assert num(text(driver, "ov-site-primary")) == sum(m["active_site"] == "primary" for m in listed)
    assert num(text(driver, "ov-copy-queue")) == sum(m["copy_queue"] for m in listed)
    wire = sum(m["bytes"]["wire"] for m in listed)
    assert wire > 0 and text(driver, "ov-wire") != "-"
    ov = api_get(pair.source, "/api/v1/overview")
    assert ov["total"] == len(listed) and ov["bytes"]["wire"] == wire
    driver.save_screenshot(str(screenshot_dir() / "console-overview.png"))

    # the recovery gateway's overview: its replicas
    sign_in(driver, pair.recovery.url, tokens[("recovery", "viewer")])
    driver.get(pair.recovery.url + "/ui/#/overview")
    replicas = api_get(pair.recovery, "/api/v1/mailboxes")["mailboxes"]
    wait_for(lambda: text(driver, "ov-total") == str(len(replicas)) == "3", 45, "the recovery gateway's total")
    assert text(driver, "ov-copy-queue") == "n/a"


def test_mailboxes_table_shows_what_the_api_shows(env, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    pair, tokens = env
    sign_in(driver, pair.source.url, tokens[("source", "viewer")])
    driver.get(pair.source.url + "/ui/#/mailboxes")
    listed = {m["address"]: m for m in api_get(pair.source, "/api/v1/mailboxes")["mailboxes"]}

    def rows():
        return {tr.get_attribute("data-address"): (tr.find_element(By.CSS_SELECTOR, ".c-phase").text,
                                                   tr.find_element(By.CSS_SELECTOR, ".c-site").text)
                for tr in driver.find_elements(By.CSS_SELECTOR, "#mb-table tbody tr")}

    got = wait_for(lambda: (r := rows()) and len(r) == len(listed) and r, 45, "every mailbox in the table")
    assert set(got) == set(listed)
    for address, (phase, site) in got.items():
        assert phase == listed[address]["phase"], address
        assert site == listed[address]["site_state"], address
    assert text(driver, "mb-count") == f"1–{len(listed)} of {len(listed)}"
    driver.save_screenshot(str(screenshot_dir() / "console-mailboxes.png"))

    # filters run on the server: protected only, then a search
    Select(driver.find_element(By.ID, "f-protected")).select_by_value("true")
    wait_for(lambda: set(rows()) == {"alice", "bob", "carol"}, 45, "the protected filter")
    driver.find_element(By.ID, "f-q").send_keys("bo")
    wait_for(lambda: set(rows()) == {"bob"}, 45, "the search")
    assert api_get(pair.source, "/api/v1/mailbox-search?protected=true&q=bo")["total"] == 1
    # the viewer has no selection boxes and no action buttons
    assert not driver.find_element(By.ID, "mb-actions").is_displayed()
    assert not any(b.is_displayed() for b in driver.find_elements(By.CSS_SELECTOR, "input.select"))


def test_seeding_progress_advances_on_the_page(env, driver):
    from selenium.webdriver.common.by import By

    pair, tokens = env
    sign_in(driver, pair.source.url, tokens[("source", "operator")])
    # selected in the table, the action offered there names it
    driver.get(pair.source.url + "/ui/#/mailboxes")
    box = wait_for(lambda: driver.find_element(By.CSS_SELECTOR, '#mb-table tr[data-address="seedy"] input.select'),
                   15, "seedy's row")
    box.click()
    driver.find_element(By.ID, "act-protect").click()
    wait_for(lambda: "Start protecting 1 mailbox" in text(driver, "confirm-text"), 5, "the confirmation")
    assert "seedy (primary)" in text(driver, "confirm-list")
    driver.find_element(By.ID, "confirm-cancel").click()
    # protected from the mailbox's own page, which is already refreshing when seeding starts
    driver.get(pair.source.url + "/ui/#/mailbox/primary/seedy")
    wait_for(lambda: (b := driver.find_element(By.ID, "mbx-act-protect")).is_displayed() and b, 15,
             "the Protect button").click()
    wait_for(lambda: "Start protecting 1 mailbox" in text(driver, "confirm-text"), 5, "the confirmation")
    driver.find_element(By.ID, "confirm-go").click()
    wait_for(lambda: "protected" in text(driver, "confirm-result"), 45, "the result")
    driver.find_element(By.ID, "confirm-cancel").click()
    seen: list[tuple[int, int]] = []
    shot: str | bool = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        # the text and the bar, read at one instant (the page refreshes every second)
        done, total, value, top = driver.execute_script(
            "const t = document.getElementById('mbx-progress-text'), b = document.getElementById('mbx-progress');"
            "return [t.dataset.done, t.dataset.total, b.value, b.max];")
        if done is not None and total is not None:
            pair_ = (int(done), int(total))
            if not seen or seen[-1] != pair_:
                seen.append(pair_)
            assert (value, top) == pair_, "the bar shows what the text says"
            # the screenshot: while under way, preferably well into it (rate and time left shown)
            if 0 < pair_[0] < pair_[1] and (not shot or (shot == "early" and pair_[0] >= 0.3 * pair_[1])):
                driver.save_screenshot(str(screenshot_dir() / "console-mailbox.png"))
                shot = "early" if pair_[0] < 0.3 * pair_[1] else "done"
            if pair_[1] and pair_[0] == pair_[1]:
                break
        time.sleep(0.1)
    partial = [d for d, t in seen if 0 < d < t]
    assert seen and seen[-1] == (SEED_MESSAGES, SEED_MESSAGES), seen
    assert partial, f"the page never showed seeding under way: {seen}"
    assert partial == sorted(partial), f"progress went backwards: {seen}"
    assert "done" in text(driver, "mbx-progress-text")
    pair.wait_synced(["seedy"])
    # the page redraws the table on each refresh: rows are read again until one is INBOX's
    wait_for(lambda: any(tr.text.startswith("INBOX")
                         for tr in driver.find_elements(By.CSS_SELECTOR, "#mbx-folders tbody tr")),
             30, "the INBOX row of the folder table")


def test_verify_from_the_page(env, driver):
    from selenium.webdriver.common.by import By

    pair, tokens = env
    sign_in(driver, pair.source.url, tokens[("source", "operator")])
    driver.get(pair.source.url + "/ui/#/mailboxes")
    for who in ("bob", "carol"):
        wait_for(lambda: driver.find_element(By.CSS_SELECTOR, f'#mb-table tr[data-address="{who}"] input.select'),
                 15, f"{who}'s row").click()
    driver.find_element(By.ID, "act-verify").click()
    confirm = wait_for(lambda: text(driver, "confirm-text"), 5, "the confirmation")
    assert confirm.startswith("Verify 2 mailboxes:") and "nothing is changed" in confirm
    driver.find_element(By.ID, "confirm-go").click()
    result = wait_for(lambda: (r := text(driver, "confirm-result")) and "bob" in r and "carol" in r and r, 120,
                      "the verify's result")
    assert result.count("equal") == 2, result
    driver.find_element(By.ID, "confirm-cancel").click()
    # the verdict is the mailbox's last verify, on its page and in the API
    assert api_get(pair.source, "/api/v1/mailboxes/bob")["verify"]["verdict"] == "equal"
    driver.get(pair.source.url + "/ui/#/mailbox/primary/bob")
    wait_for(lambda: text(driver, "mbx-verify") == "equal", 45, "the mailbox page's last verify")
    entries = api_get(pair.source, "/api/v1/audit")["entries"]
    assert any(e["path"] == "/api/v1/verify" and e["principal"] == "operator-ui" and e["status"] == 202
               for e in entries), entries


def test_cutover_from_the_page(env, driver):
    from selenium.webdriver.common.by import By

    pair, tokens = env
    sign_in(driver, pair.recovery.url, tokens[("recovery", "operator")])
    driver.get(pair.recovery.url + "/ui/#/mailboxes")
    wait_for(lambda: driver.find_element(By.CSS_SELECTOR, '#mb-table tr[data-address="alice"] input.select'),
             15, "alice's row").click()
    driver.find_element(By.ID, "act-cutover").click()
    confirm = wait_for(lambda: text(driver, "confirm-text"), 5, "the confirmation")
    assert confirm.startswith("Cut over 1 mailbox:") and "standby" in confirm
    assert "alice (primary)" in text(driver, "confirm-list")
    driver.save_screenshot(str(screenshot_dir() / "console-cutover-confirm.png"))
    driver.find_element(By.ID, "confirm-go").click()
    wait_for(lambda: "active-at-dr" in text(driver, "confirm-result"), 60, "the cutover's result")
    assert "Done in" in text(driver, "confirm-progress")
    driver.find_element(By.ID, "confirm-cancel").click()
    assert api_get(pair.recovery, "/api/v1/mailboxes/alice")["site_state"] == "active-at-dr"
    driver.get(pair.recovery.url + "/ui/#/mailbox/primary/alice")
    wait_for(lambda: text(driver, "mbx-site") == "active-at-dr", 45, "the mailbox page's site")
    rows = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#mbx-transitions tbody tr"), 45, "transitions")
    assert "active-at-dr" in rows[0].text and "admin" in rows[0].text
    # times are the viewer's local time, UTC on hover
    assert driver.find_element(By.CSS_SELECTOR, "#mbx-transitions time").get_attribute("title").startswith("UTC: ")
    # the audit log names the operator's token: the page acted through the API as that token
    entries = api_get(pair.recovery, "/api/v1/audit")["entries"]
    assert any(e["path"] == "/api/v1/cutover" and e["principal"] == "operator-ui" and e["status"] == 200
               for e in entries), entries


def test_viewer_sees_no_actions_and_a_forged_action_is_refused(env, driver):
    from selenium.webdriver.common.by import By

    pair, tokens = env
    sign_in(driver, pair.recovery.url, tokens[("recovery", "viewer")])
    driver.get(pair.recovery.url + "/ui/#/mailboxes")
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, '#mb-table tr[data-address="bob"]'), 45, "bob's row")
    assert not driver.find_element(By.ID, "mb-actions").is_displayed()
    assert not driver.find_elements(By.ID, "act-cutover")
    driver.get(pair.recovery.url + "/ui/#/mailbox/primary/bob")
    wait_for(lambda: text(driver, "mbx-address") == "bob", 45, "bob's page")
    assert not driver.find_element(By.ID, "mbx-actions").is_displayed()
    assert not [b for b in driver.find_elements(By.CSS_SELECTOR, "button[data-action]") if b.is_displayed()]
    # a forged action with the viewer's session and its valid CSRF token: the API's role check refuses it
    assert browser_fetch(driver, "POST", "/ui/api/cutover", {"addresses": ["bob"]}) == 403
    assert browser_fetch(driver, "PUT", "/ui/api/mailboxes/bob/protection", {"enabled": False}) in (403, 404, 405)
    assert api_get(pair.recovery, "/api/v1/mailboxes/bob")["site_state"] == "replicating"
    entries = api_get(pair.recovery, "/api/v1/audit")["entries"]
    assert any(e["path"] == "/api/v1/cutover" and e["principal"] == "viewer-ui" and e["status"] == 403
               for e in entries)


def test_a_post_without_csrf_token_is_refused(env, driver):
    pair, tokens = env
    sign_in(driver, pair.recovery.url, tokens[("recovery", "operator")])
    driver.get(pair.recovery.url + "/ui/#/overview")
    assert browser_fetch(driver, "POST", "/ui/api/cutover", {"addresses": ["bob"]}, csrf=None) == 403
    assert browser_fetch(driver, "POST", "/ui/api/cutover", {"addresses": ["bob"]}, csrf="forged-token") == 403
    assert api_get(pair.recovery, "/api/v1/mailboxes/bob")["site_state"] == "replicating"
    # the same from outside the browser with the stolen cookie value: refused too
    sid = driver.get_cookie("mailrepl_session")["value"]
    r = httpx.post(pair.recovery.url + "/ui/api/cutover", json={"addresses": ["bob"]}, cookies={"mailrepl_session": sid})
    assert r.status_code == 403
    # sign-in without the form's CSRF value
    r = httpx.post(pair.recovery.url + "/ui/login", data={"token": tokens[("recovery", "operator")]})
    assert r.status_code == 403 and "mailrepl_session" not in r.cookies
    # sign-out needs it as well
    assert browser_fetch(driver, "POST", "/ui/logout", None, csrf=None) == 403
    assert browser_fetch(driver, "GET", "/ui/session", None) == 200



def test_failback_from_the_mailbox_page(env, driver):
    """alice, cut over above: failback started and confirmed from her page, back to replicating."""
    from selenium.webdriver.common.by import By

    pair, tokens = env
    assert api_get(pair.recovery, "/api/v1/mailboxes/alice")["site_state"] == "active-at-dr"
    sign_in(driver, pair.recovery.url, tokens[("recovery", "operator")])
    driver.get(pair.recovery.url + "/ui/#/mailbox/primary/alice")
    button = wait_for(lambda: (b := driver.find_element(By.ID, "mbx-act-failback")).is_displayed() and b, 15,
                      "the Fail back button")
    assert not driver.find_element(By.ID, "mbx-act-cutover").is_displayed()  # only what the state allows
    button.click()
    assert text(driver, "confirm-text").startswith("Start failing back 1 mailbox:")
    driver.find_element(By.ID, "confirm-go").click()
    wait_for(lambda: "failing-back" in text(driver, "confirm-result"), 60, "failback under way")
    driver.find_element(By.ID, "confirm-cancel").click()
    confirm = wait_for(lambda: (b := driver.find_element(By.ID, "mbx-act-confirm")).is_displayed() and b, 15,
                       "the Confirm failback button")
    confirm.click()
    assert text(driver, "confirm-text").startswith("Switch back 1 mailbox:")
    driver.find_element(By.ID, "confirm-go").click()
    wait_for(lambda: "Done in" in text(driver, "confirm-progress"), 90, "the confirmation's result")
    driver.find_element(By.ID, "confirm-cancel").click()
    wait_for(lambda: api_get(pair.recovery, "/api/v1/mailboxes/alice")["site_state"] == "replicating", 90,
             "alice replicating again")
    wait_for(lambda: text(driver, "mbx-site") == "replicating", 45, "the page showing it")
    afters = [tr.find_element(By.CSS_SELECTOR, ".c-after").text
              for tr in driver.find_elements(By.CSS_SELECTOR, "#mbx-transitions tbody tr")]
    assert afters[0] == "replicating" and "failing-back" in afters and "active-at-dr" in afters, afters


def test_phone_width_and_keyboard(env, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    pair, tokens = env
    sign_in(driver, pair.source.url, tokens[("source", "viewer")])
    try:
        driver.set_window_size(390, 844)  # a phone
        for page in ("overview", "mailboxes", "mailbox/primary/bob"):
            driver.get(pair.source.url + f"/ui/#/{page}")
            wait_for(lambda: driver.execute_script("return document.querySelector('main section:not([hidden]) h1')"
                                                   ".textContent.trim().length > 1"), 45, f"the {page} page")
            time.sleep(0.5)
            overflow = driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
            assert overflow <= 0, f"{page}: the page is {overflow}px wider than a phone screen"
        # an alarm with a long mailbox name and message (as the overview renders one) still fits
        driver.get(pair.source.url + "/ui/#/overview")
        wait_for(lambda: driver.execute_script("return document.querySelector('main section:not([hidden]) h1')"
                                               ".textContent.trim().length > 1"), 45, "the overview page")
        overflow = driver.execute_script("""
            const t = document.getElementById('ov-alarms'); t.hidden = false;
            const tr = document.createElement('tr');
            for (const text of ['warning', 'copy-queue-near-bound',
                                'a.rather.long.mailbox.name.for.a.phone@departement-exemple.example.org',
                                'copy queue of this mailbox at 95% of its bound (2850 changes / 123456789 bytes)',
                                '2026-12-06 10:00:00']) {
              const td = document.createElement('td'); td.textContent = text; tr.appendChild(td);
            }
            t.tBodies[0].replaceChildren(tr);
            return document.documentElement.scrollWidth - window.innerWidth;""")
        assert overflow <= 0, f"overview with a long alarm: the page is {overflow}px wider than a phone screen"
    finally:
        driver.set_window_size(1366, 900)
    # sorting by keyboard: tab to the Lag column's button, Enter
    driver.get(pair.source.url + "/ui/#/mailboxes")
    wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, "#mb-table tbody tr"), 45, "rows")
    body = driver.find_element(By.TAG_NAME, "body")
    body.send_keys(Keys.TAB)
    for _ in range(30):
        active = driver.switch_to.active_element
        if active.get_attribute("data-sort") == "lag":
            break
        active.send_keys(Keys.TAB)
    assert driver.switch_to.active_element.get_attribute("data-sort") == "lag", "the Lag column is reachable by Tab"
    driver.switch_to.active_element.send_keys(Keys.ENTER)
    wait_for(lambda: driver.find_element(By.CSS_SELECTOR, "button[data-sort=lag]").find_element(By.XPATH, "..")
             .get_attribute("aria-sort") == "descending", 45, "sorted by lag")

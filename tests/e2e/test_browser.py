"""The demo page in real headless Chromium (Debian's chromium + chromedriver, driven by selenium).

Two browsers join one room through the page's own UI flow (?room=&name=&autojoin=1, dev-token
endpoint, getUserMedia with Chromium's fake devices) and each must decode the other's video and
receive its audio, as read from the page's window.kaskade.stats() (RTCPeerConnection.getStats()).
"""

from __future__ import annotations

import json
import uuid

import pytest

from harness import metric_value, page_stats, page_url, receives_media, wait_until

pytestmark = pytest.mark.browser

@pytest.fixture
def browsers(chromium):
    """The shared headless Chromium factory of conftest.py (flags, offline selenium, diagnostics
    on failure)."""
    return chromium


def state_of(d) -> dict:
    return d.execute_script(
        "const k = window.kaskade; return k ? {state: k.state, participantId: k.participantId,"
        " participants: k.participants, lastError: k.lastError, events: k.events.slice(-40)} : null;"
    )


def test_two_browsers_see_and_hear_each_other(browser_bridge, browsers):
    room = "room-" + uuid.uuid4().hex[:8]
    a = browsers("A")
    b = browsers("B")
    a.get(page_url(browser_bridge, room=room, name="Ada", autojoin=1))
    b.get(page_url(browser_bridge, room=room, name="Bob", autojoin=1))

    sa = wait_until("A joined", lambda: (s := state_of(a)) and s["state"] == "joined" and s, 15)
    sb = wait_until("B joined", lambda: (s := state_of(b)) and s["state"] == "joined" and s, 15)
    a_id, b_id = sa["participantId"], sb["participantId"]
    assert a_id and b_id and a_id != b_id

    # each sees the other by name
    wait_until("A knows Bob", lambda: state_of(a)["participants"].get(b_id, {}).get("name") == "Bob", 10)
    wait_until("B knows Ada", lambda: state_of(b)["participants"].get(a_id, {}).get("name") == "Ada", 10)

    # each decodes the other's video and receives its audio
    stats_a = wait_until("A decodes Bob's media", lambda: receives_media(a, b_id), 25, 0.5)
    stats_b = wait_until("B decodes Ada's media", lambda: receives_media(b, a_id), 25, 0.5)
    assert set(stats_a) == {b_id}, f"A receives media of {set(stats_a)}, expected only Bob"
    assert set(stats_b) == {a_id}, f"B receives media of {set(stats_b)}, expected only Ada"

    # the video keeps flowing (frames decoded keep increasing)
    f0 = page_stats(a)[b_id]["video"]["framesDecoded"]
    wait_until("A keeps decoding", lambda: page_stats(a)[b_id]["video"]["framesDecoded"] > f0 + 10, 10, 0.5)

    # What Chromium decodes went out on the lean egress (leg/lean.rs): each subscriber leg
    # verified its keys against rtc's first copy, and none failed to.
    m = browser_bridge.metrics()
    assert metric_value(m, "kaskade_lean_egress_legs_total", outcome="mismatch") == 0
    assert (metric_value(m, "kaskade_lean_egress_legs_total", outcome="verified") or 0) >= 2, m
    assert (metric_value(m, "kaskade_rtp_forwarded_lean_total") or 0) > 0
    assert (metric_value(m, "kaskade_sender_reports_total") or 0) > 0

    # the page shows a tile named after the other participant
    tile_names = a.execute_script(
        "return [...document.querySelectorAll('.tile.remote .name')].map(e => e.textContent);"
    )
    assert tile_names == ["Bob"], tile_names
    print(f"\nA <- Bob: {json.dumps(page_stats(a)[b_id])}\nB <- Ada: {json.dumps(page_stats(b)[a_id])}")

    # chat through the UI: A types a line, B shows it under A's name
    a.find_element("id", "chat-input").send_keys("hi Bob, can you hear me?")
    a.find_element("id", "chat-send").click()
    wait_until(
        "B shows A's chat line",
        lambda: any(
            c["from"] == a_id and c["name"] == "Ada" and c["text"] == "hi Bob, can you hear me?"
            for c in b.execute_script("return window.kaskade.chat;")
        ),
        5,
    )
    assert "hi Bob, can you hear me?" in b.find_element("id", "chat-log").text
    assert a.find_element("id", "chat-input").get_attribute("value") == ""
    assert len(a.execute_script("return window.kaskade.chat;")) == 1  # own line once, no echo

    # A leaves with the button: B is told, its tile goes away
    a.find_element("id", "leave-btn").click()
    wait_until("A left", lambda: state_of(a)["state"] == "left", 5)
    wait_until("B forgets Ada", lambda: a_id not in state_of(b)["participants"], 10)
    wait_until(
        "B's tile of Ada removed",
        lambda: b.execute_script("return document.querySelectorAll('.tile.remote').length === 0;"),
        5,
    )
    assert state_of(b)["state"] == "joined"
    assert state_of(b)["lastError"] is None


def test_page_shows_bridge_errors(browser_bridge, browsers):
    """A bad token: the page ends in state "error" and shows the bridge's code and reason."""
    d = browsers("E")
    d.get(page_url(browser_bridge, room="r-err", name="Eve", token="not-a-jwt", autojoin=1))
    s = wait_until("error state", lambda: (s := state_of(d)) and s["state"] == "error" and s, 15)
    assert s["lastError"]["code"] == "unauthorized", s
    shown = d.find_element("id", "error-code").text
    assert shown == "unauthorized"
    assert d.find_element("id", "error-box").is_displayed()
    assert d.find_element("id", "error-reason").text == s["lastError"]["reason"]
    # the join form is back, so the user can try again
    assert d.find_element("id", "join-panel").is_displayed()


def test_page_loads_without_external_resources(browser_bridge, browsers):
    """The page is self-contained: every resource it loads comes from the bridge itself."""
    d = browsers("P")
    d.get(page_url(browser_bridge, room="r-page", name="Pat"))
    wait_until("page initialised", lambda: (s := state_of(d)) and s["state"] == "idle", 10)
    assert d.find_element("id", "room-input").get_attribute("value") == "r-page"
    assert d.find_element("id", "name-input").get_attribute("value") == "Pat"
    origins = d.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin);"
    )
    own = f"http://127.0.0.1:{browser_bridge.http_port}"
    assert origins and all(o == own for o in origins), origins


def test_page_joins_with_token_from_url(browser_bridge, browsers):
    """Production mode: the page takes ?token= and needs neither ?room= nor the dev endpoint."""
    from harness import make_token

    room = "room-" + uuid.uuid4().hex[:8]
    token = make_token(room, "tok-" + uuid.uuid4().hex[:6], name="Tokyo")
    d = browsers("T")
    d.get(page_url(browser_bridge, token=token, autojoin=1))
    s = wait_until("joined with the URL token", lambda: (s := state_of(d)) and s["state"] == "joined" and s, 15)
    assert d.execute_script("return window.kaskade.room;") == room
    assert d.find_element("id", "room-input").get_attribute("value") == room
    assert s["lastError"] is None
    d.find_element("id", "leave-btn").click()
    wait_until("left", lambda: state_of(d)["state"] == "left", 5)

"""A cascade in real headless Chromium: two bridges configured as Octo peers on loopback carry one
room; browser A is on bridge 1's demo page, browser B on bridge 2's.

Each must decode the other's video and receive its audio (window.kaskade.stats(), i.e.
getStats()), see the other with the other's bridge id, count 2 bridges, and get the other's chat
lines; bridge 1 sends A's two streams once to its one peer, and no Octo packet fails
authentication.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from harness import (
    metric_value,
    page_state,
    page_stats,
    page_url,
    receives_media,
    wait_joined,
    wait_until,
)

pytestmark = pytest.mark.browser


def octo_metrics(b) -> dict:
    m = b.metrics()
    return {
        "streams_out": metric_value(m, "kaskade_octo_streams_out"),
        "dropped_auth": metric_value(m, "kaskade_octo_dropped_total", reason="auth"),
        "dropped_all": metric_value(m, "kaskade_octo_dropped_total"),
        "packets_in": metric_value(m, "kaskade_octo_packets_in_total"),
        "packets_out": metric_value(m, "kaskade_octo_packets_out_total"),
        "rtp_out": metric_value(m, "kaskade_octo_rtp_out_total"),
        "rtp_routed_octo": metric_value(m, "kaskade_rtp_routed_octo_total"),
        "conferences": metric_value(m, "kaskade_octo_conferences"),
        "remote_participants": metric_value(m, "kaskade_octo_remote_participants"),
    }


def test_two_browsers_on_two_bridges(octo_bridges, chromium):
    b1, b2 = octo_bridges
    assert b1.bridge_id != b2.bridge_id
    room = "cascade-" + uuid.uuid4().hex[:8]

    a = chromium("A")
    b = chromium("B")
    a.get(page_url(b1, room=room, name="Ada", autojoin=1))
    sa = wait_joined(a)
    b.get(page_url(b2, room=room, name="Bob", autojoin=1))
    sb = wait_joined(b)
    a_id, b_id = sa["participantId"], sb["participantId"]
    assert a_id and b_id and a_id != b_id

    # each page lists the other, on the other's bridge
    pa = wait_until(
        "A lists Bob",
        lambda: (p := page_state(a)["participants"].get(b_id)) and p.get("name") == "Bob" and p,
        10,
    )
    pb = wait_until(
        "B lists Ada",
        lambda: (p := page_state(b)["participants"].get(a_id)) and p.get("name") == "Ada" and p,
        10,
    )
    assert pa["bridge"] == b2.bridge_id, f"A sees Bob on {pa['bridge']!r}, expected {b2.bridge_id!r}"
    assert pb["bridge"] == b1.bridge_id, f"B sees Ada on {pb['bridge']!r}, expected {b1.bridge_id!r}"
    assert a.execute_script("return window.kaskade.bridge;") == b1.bridge_id
    assert b.execute_script("return window.kaskade.bridge;") == b2.bridge_id

    # each decodes the other's video and receives its audio, across the Octo link
    stats_a = wait_until("A decodes Bob's media (via Octo)", lambda: receives_media(a, b_id), 30, 0.5)
    stats_b = wait_until("B decodes Ada's media (via Octo)", lambda: receives_media(b, a_id), 30, 0.5)
    assert set(stats_a) == {b_id}, f"A receives media of {set(stats_a)}, expected only Bob"
    assert set(stats_b) == {a_id}, f"B receives media of {set(stats_b)}, expected only Ada"
    f0 = page_stats(a)[b_id]["video"]["framesDecoded"]
    wait_until("A keeps decoding Bob", lambda: page_stats(a)[b_id]["video"]["framesDecoded"] > f0 + 10, 10, 0.5)
    print(f"\nA <- Bob: {json.dumps(page_stats(a)[b_id])}\nB <- Ada: {json.dumps(page_stats(b)[a_id])}")

    # the page counts the bridges of the conference, and shows it
    for d in (a, b):
        assert d.execute_script("return window.kaskade.bridges;") == 2
        badge = d.find_element("id", "bridge-count")
        assert badge.is_displayed() and badge.text == "2 bridges", badge.text

    # chat crosses the cascade
    text = "hello from " + b1.bridge_id + " " + uuid.uuid4().hex[:6]
    assert a.execute_script("return window.kaskade.sendMessage(arguments[0]);", text) is True
    wait_until(
        "B receives A's chat line",
        lambda: any(
            c["from"] == a_id and c["name"] == "Ada" and c["text"] == text and not c["self"]
            for c in b.execute_script("return window.kaskade.chat;")
        ),
        5,
    )
    assert text in b.find_element("id", "chat-log").text
    reply = "hi from " + b2.bridge_id
    assert b.execute_script("return window.kaskade.sendMessage(arguments[0]);", reply) is True
    wait_until(
        "A receives B's chat line",
        lambda: any(c["from"] == b_id and c["text"] == reply for c in a.execute_script("return window.kaskade.chat;")),
        5,
    )

    # bridge 1 sends A's audio and video once to its one peer; nothing fails authentication
    m1 = wait_until("bridge 1 sends 2 streams over Octo", lambda: (m := octo_metrics(b1))["streams_out"] == 2 and m, 10)
    time.sleep(1.0)  # a gauge: it must stay at 2 (not grow per subscriber or per packet)
    m1 = octo_metrics(b1)
    m2 = octo_metrics(b2)
    print(f"octo metrics {b1.bridge_id}: {m1}\nocto metrics {b2.bridge_id}: {m2}")
    assert m1["streams_out"] == 2, m1
    assert m1["dropped_auth"] == 0, m1
    assert m1["rtp_out"] > 0 and m1["rtp_routed_octo"] > 0, m1
    assert m2["streams_out"] == 2, m2
    assert m2["dropped_auth"] == 0, m2

    # A leaves: B is told across the cascade and counts one bridge again
    a.find_element("id", "leave-btn").click()
    wait_until("B forgets Ada", lambda: a_id not in page_state(b)["participants"], 10)
    wait_until("B counts 1 bridge", lambda: b.execute_script("return window.kaskade.bridges;") == 1, 5)
    assert b.find_element("id", "bridge-count").text == "1 bridge"
    assert page_state(b)["state"] == "joined" and page_state(b)["lastError"] is None

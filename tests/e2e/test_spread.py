"""A conference bigger than one shard (`media.spread_at`): once its first shard holds that many
of its participants, the next join on another shard, and the shards of the conference link to
each other as bridges do over Octo (in process). Real `kaskade serve`, real WebRTC clients (the
load tool's `rtc` PeerConnections and two headless Chromiums) over real loopback UDP."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from harness import Bridge, ident, kaskade_bin, metric_value, page_url, receives_media, wait_until
from test_admin import Api, admin_token

SHARDS = 4


def shard_participants(bridge: Bridge, shards: int = SHARDS) -> list[float]:
    m = bridge.metrics()
    return [metric_value(m, "kaskade_shard_participants", shard=str(i)) or 0 for i in range(shards)]


def call(bridge: Bridge, room: str, tag: int, subscribers: int, duration: str, report) -> subprocess.Popen:
    """One publisher of audio and video and `subscribers` receivers, its streams tagged `tag`."""
    return subprocess.Popen(
        [str(kaskade_bin()), "loadtest", "--url", bridge.http_url, "--room", room,
         "--video-publishers", "1", "--audio-publishers", "1", "--subscribers", str(subscribers),
         "--resolution", "180p", "--join-rate", "20", "--duration", duration, "--quiet",
         "--ssrc-tag", str(tag), "--json", str(report)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def finished(p: subprocess.Popen, report) -> dict:
    out, _ = p.communicate(timeout=90)
    assert p.returncode == 0, f"loadtest failed:\n{out}"
    return json.loads(report.read_text())


def assert_receives(report: dict, tags: set[int]) -> None:
    """Every receiver of a load report got audio and video of each publisher in `tags`,
    without loss."""
    for c in report["clients"]:
        assert c["connected"] and not c["errors"], c
        if c["role"] != "subscriber":
            continue
        # The load tool expects its own publisher's tracks; the other calls' come on top.
        assert c["tracks_received"] == 2 * len(tags), c
        for tag in tags:
            got = [s for s in c["streams"] if s["publisher_tag"] == tag and s["kind"]]
            assert sorted(s["kind"] for s in got) == ["audio", "video"], (c["name"], tag, c["streams"])
            for s in got:
                assert s["packets_received"] > 0 and s["packets_lost"] == 0, (c["name"], s)


def test_a_conference_over_three_shards(tmp_path):
    """Three a shard: the first call's publisher and receivers fill the room's first shard, the
    second call's publisher lands on the next one with a receiver, its other receivers on the
    one after. Everyone receives both publishers, whichever shard each is on; the node counts
    the room once."""
    b = Bridge(tmp_path / "node.log", env={"KASKADE_SHARDS": str(SHARDS), "KASKADE_SPREAD_AT": "3"}).start()
    loads = []
    try:
        room = ident("spread")
        r1, r2 = tmp_path / "one.json", tmp_path / "two.json"
        loads.append(call(b, room, 1, 2, "14s", r1))
        wait_until("the first call joined", lambda: metric_value(b.metrics(), "kaskade_participants") == 3, 20)
        loads.append(call(b, room, 2, 4, "9s", r2))
        wait_until("the second call joined", lambda: metric_value(b.metrics(), "kaskade_participants") == 8, 20)
        m = b.metrics()
        per_shard = sorted(shard_participants(b), reverse=True)
        assert per_shard == [3, 3, 2, 0], per_shard
        assert metric_value(m, "kaskade_conferences") == 1
        assert metric_value(m, "kaskade_spread_conferences") == 1
        assert metric_value(m, "kaskade_spread_placements_total") == 5
        assert metric_value(m, "kaskade_tracks") == 4, "each publisher's two tracks, once"

        # The admin API shows each participant once, from the shard it is connected to.
        api = Api(b)
        auth = "Bearer " + admin_token(b)
        status, body = api.call("get", "/admin/v1/conferences/{room}/participants", params={"room": room}, auth=auth)
        assert status == 200, body
        ids = [p["id"] for p in body["participants"]]
        assert len(ids) == 8 and len(set(ids)) == 8, body
        assert all(p["local"] for p in body["participants"]), body
        # A message reaches each participant once, whatever shard it is on.
        status, body = api.call("post", "/admin/v1/conferences/{room}/messages", params={"room": room},
                                body={"text": "hello, every shard"}, auth=auth)
        assert status == 202 and body["delivered"] == 8, body

        two = finished(loads[1], r2)
        one = finished(loads[0], r1)
        # Receivers on the first shard get the second publisher from another shard, and the
        # other way round.
        assert_receives(one, {1, 2})
        assert_receives(two, {1, 2})
        m = b.metrics()
        assert (metric_value(m, "kaskade_shard_sibling_packets_total") or 0) > 0
        # What crossed between shards is the node's own publishers' media, not another bridge's.
        assert (metric_value(m, "kaskade_rtp_routed_local_total") or 0) > 0
        assert (metric_value(m, "kaskade_rtp_routed_octo_total") or 0) == 0
        assert (metric_value(m, "kaskade_octo_dropped_total", reason="handoff_full") or 0) == 0
        assert (metric_value(m, "kaskade_udp_dropped_total", reason="handoff_full") or 0) == 0
        wait_until("everyone gone", lambda: metric_value(b.metrics(), "kaskade_participants") == 0, 10)
        m = b.metrics()
        assert metric_value(m, "kaskade_spread_conferences") == 0
        assert metric_value(m, "kaskade_conferences") == 0 and metric_value(m, "kaskade_tracks") == 0
        assert shard_participants(b) == [0] * SHARDS
    finally:
        for p in loads:
            if p.poll() is None:
                p.kill()
        b.stop()


def test_a_spread_conference_in_a_cascade(tmp_path):
    """Bridge A (2 shards, two a shard) carries one call on the room's first shard and another
    on the second; bridge B carries a third. Every receiver gets the other two publishers: B's
    over Octo on both of A's shards, A's second shard's through A's gateway to B. B's call is
    there before A spreads: A's second shard hears of it from A's first at once."""
    from harness import start_octo_mesh

    bridges = start_octo_mesh(tmp_path, [("sp-a", 1, "eu"), ("sp-b", 2, "us")],
                              {"KASKADE_SHARDS": "2", "KASKADE_SPREAD_AT": "2"})
    loads: list[subprocess.Popen] = []
    try:
        a, b = bridges
        room = ident("spc")
        reports = [tmp_path / f"load-{i}.json" for i in range(3)]
        loads.append(call(a, room, 1, 1, "14s", reports[0]))
        wait_until("A's first call joined", lambda: metric_value(a.metrics(), "kaskade_participants") == 2, 20)
        loads.append(call(b, room, 3, 1, "14s", reports[1]))
        wait_until("A heard of B's call", lambda: metric_value(a.metrics(), "kaskade_participants") == 4, 20)
        loads.append(call(a, room, 2, 1, "11s", reports[2]))
        wait_until("A spans two shards", lambda: metric_value(a.metrics(), "kaskade_spread_conferences") == 1, 20)
        # Each shard counts its own two; B's two are counted once, by the room's first shard.
        wait_until("A's shards' shares", lambda: sorted(shard_participants(a, 2)) == [2, 4], 20)
        assert metric_value(a.metrics(), "kaskade_participants") == 6
        # Mid-call, with keyframe requests and NACKs about each shard's publisher gone both
        # ways: feedback routed to a shard without the track would show as unknown_track.
        time.sleep(4)
        for bridge in bridges:
            m = bridge.metrics()
            for reason in ("unknown_track", "endpoint_conflict", "bad_message"):
                assert (metric_value(m, "kaskade_octo_dropped_total", reason=reason) or 0) == 0, (bridge.log_path, reason)
        # Waiting for B's next announcement instead would drop up to a second of B's ~100
        # packets/s on A's second shard. What may remain: B's packets that reach the second
        # shard in the microseconds between its Span and the first shard's relay, when the
        # second shard is the gateway.
        not_announced = metric_value(a.metrics(), "kaskade_octo_dropped_total", reason="not_announced") or 0
        assert not_announced <= 3, (a.log_path, not_announced)
        results = [finished(p, r) for p, r in zip(loads, reports)]
        for r in results:
            assert_receives(r, {1, 2, 3})
        for bridge in bridges:
            m = bridge.metrics()
            # What was in flight about participants who just left counts as track_ended.
            for reason in ("handoff_full", "replay", "auth", "unknown_track"):
                assert (metric_value(m, "kaskade_octo_dropped_total", reason=reason) or 0) == 0, (bridge.log_path, reason)
        # B sees A as one bridge with four participants, never A's shards.
        status, body, _ = b.get("/health")
        assert status == 200
    finally:
        for p in loads:
            if p.poll() is None:
                p.kill()
        for bridge in bridges:
            bridge.stop()


@pytest.mark.browser
def test_two_browsers_on_two_shards_of_one_conference(tmp_path, chromium):
    """One participant a shard: Chromium's simulcast video and audio cross between the shards
    of the conference, and each page decodes the other."""
    from conftest import browser_advertise_ip

    b = Bridge(tmp_path / "node.log", env={"KASKADE_SHARDS": "2", "KASKADE_SPREAD_AT": "1"},
               advertise_ip=browser_advertise_ip(), bind_ip=None).start()
    try:
        room = ident("spb")
        a, c = chromium("A"), chromium("C")
        a.get(page_url(b, room=room, name="Ada", autojoin=1))

        def joined(d):
            s = d.execute_script("const k = window.kaskade; return k ? [k.state, k.participantId] : null;")
            return s if s and s[0] == "joined" else None

        a_id = wait_until("A joined", lambda: joined(a), 15)[1]
        c.get(page_url(b, room=room, name="Cy", autojoin=1))
        c_id = wait_until("C joined", lambda: joined(c), 15)[1]
        wait_until("one on each shard", lambda: sorted(shard_participants(b, 2)) == [1, 1], 10)
        assert metric_value(b.metrics(), "kaskade_spread_conferences") == 1
        wait_until("A decodes C", lambda: receives_media(a, c_id), 25, 0.5)
        wait_until("C decodes A", lambda: receives_media(c, a_id), 25, 0.5)
        assert (metric_value(b.metrics(), "kaskade_shard_sibling_packets_total") or 0) > 0
    finally:
        b.stop()

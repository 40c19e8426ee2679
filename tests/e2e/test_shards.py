"""Several media shards on one port (`media.shards`, SO_REUSEPORT): conferences spread over the
shards, every datagram the kernel gives the wrong shard's socket reaches its leg's shard, and
the node answers as one (metrics, admin API). Real `kaskade serve`, real WebRTC clients (the
load tool's `rtc` PeerConnections, and two headless Chromiums) over real loopback UDP."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from harness import Bridge, kaskade_bin, metric_value, page_url, receives_media, wait_until
from test_admin import Api, admin_token

SHARDS = 4


@pytest.fixture
def sharded(tmp_path):
    # More shards than this machine has cores: placement and hand-off do not depend on cores.
    b = Bridge(tmp_path / "node.log", env={"KASKADE_SHARDS": str(SHARDS)}).start()
    try:
        yield b
    finally:
        b.stop()


def shard_participants(bridge: Bridge) -> list[float]:
    m = bridge.metrics()
    return [metric_value(m, "kaskade_shard_participants", shard=str(i)) or 0 for i in range(SHARDS)]


def test_rooms_spread_over_shards_and_misdelivered_datagrams_reach_their_shard(sharded, tmp_path):
    prefix = "sh-" + uuid.uuid4().hex[:6]
    rooms, per_room = 8, 3  # one publisher of audio and video, two receivers
    report_path = tmp_path / "load.json"
    load = subprocess.Popen(
        [str(kaskade_bin()), "loadtest", "--url", sharded.http_url, "--room", prefix,
         "--rooms", str(rooms), "--video-publishers", "1", "--audio-publishers", "1",
         "--subscribers", "2", "--resolution", "180p", "--join-rate", "20", "--duration", "10s",
         "--quiet", "--json", str(report_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_until("everyone joined", lambda: metric_value(sharded.metrics(), "kaskade_participants") == rooms * per_room, 30)
        m = sharded.metrics()
        assert metric_value(m, "kaskade_shards") == SHARDS
        # 8 rooms over 4 shards by the hash of their names: all on one shard has odds of 4^-7.
        per_shard = shard_participants(sharded)
        assert sum(1 for n in per_shard if n > 0) >= 2, per_shard
        assert sum(per_shard) == rooms * per_room, per_shard

        # The admin API answers for every shard: all rooms listed (from the heartbeat, made of
        # every shard's snapshot), and each room's participants found on whichever shard has it.
        api = Api(sharded)
        auth = "Bearer " + admin_token(sharded)

        def listed():
            status, body = api.call("get", "/admin/v1/conferences", auth=auth)
            assert status == 200, body
            return {c["room"] for c in body["conferences"] if c["room"].startswith(prefix)}

        want = {f"{prefix}-{i}" for i in range(1, rooms + 1)}
        wait_until("every room listed", lambda: listed() == want, 5)
        for room in sorted(want):
            status, body = api.call("get", "/admin/v1/conferences/{room}/participants", params={"room": room},
                                    auth=auth)
            assert status == 200 and len(body["participants"]) == per_room, (room, body)
        status, body = api.call("get", "/admin/v1/conferences/{room}/participants",
                                params={"room": prefix + "-none"}, auth=auth)
        assert status == 404 and body["error"]["code"] == "conference_not_found", body
        out, _ = load.communicate(timeout=90)
    finally:
        if load.poll() is None:
            load.kill()
    assert load.returncode == 0, f"loadtest failed:\n{out}"
    report = json.loads(report_path.read_text())
    assert report["ok"], report["total"]
    for c in report["clients"]:
        assert c["connected"] and not c["errors"], c
        assert c["tracks_received"] == c["tracks_expected"], c
        if c["tracks_expected"]:
            assert c["packets_received"] > 0 and c["packets_lost"] == 0, c

    m = sharded.metrics()
    # The kernel spreads the 48 legs' 4-tuples over 4 sockets: most reach a socket that is not
    # their shard's, and every one of those was passed on, none dropped on the way.
    handed_out = metric_value(m, "kaskade_shard_handoffs_out_total") or 0
    handed_in = metric_value(m, "kaskade_shard_handoffs_in_total") or 0
    assert handed_out > 0 and handed_in == handed_out, (handed_out, handed_in)
    assert (metric_value(m, "kaskade_udp_dropped_total", reason="handoff_full") or 0) == 0

    # Everyone gone: the gauges every shard adds its share to are back to zero.
    wait_until("participants back to 0", lambda: metric_value(sharded.metrics(), "kaskade_participants") == 0, 10)
    assert shard_participants(sharded) == [0] * SHARDS


@pytest.mark.browser
def test_two_browsers_on_a_sharded_node(tmp_path, chromium):
    """Chromium's datagrams reach whichever shard's socket the kernel picks for them; the page
    must see and hear the other participant as on a node of one shard."""
    from conftest import browser_advertise_ip

    b = Bridge(tmp_path / "node.log", env={"KASKADE_SHARDS": str(SHARDS)},
               advertise_ip=browser_advertise_ip(), bind_ip=None).start()
    try:
        room = "shb-" + uuid.uuid4().hex[:8]
        a, c = chromium("A"), chromium("C")
        a.get(page_url(b, room=room, name="Ada", autojoin=1))
        c.get(page_url(b, room=room, name="Cy", autojoin=1))

        def joined(d):
            s = d.execute_script("const k = window.kaskade; return k ? [k.state, k.participantId] : null;")
            return s if s and s[0] == "joined" else None

        a_id = wait_until("A joined", lambda: joined(a), 15)[1]
        c_id = wait_until("C joined", lambda: joined(c), 15)[1]
        wait_until("A decodes C", lambda: receives_media(a, c_id), 25, 0.5)
        wait_until("C decodes A", lambda: receives_media(c, a_id), 25, 0.5)
        m = b.metrics()
        assert metric_value(m, "kaskade_shards") == SHARDS
        assert (metric_value(m, "kaskade_udp_dropped_total", reason="handoff_full") or 0) == 0
    finally:
        b.stop()


def test_a_cascade_between_two_sharded_bridges(tmp_path):
    """Two Octo peers of 4 shards each, 4 rooms spanning both: each bridge's shard 0 carries
    the links (seals, opens, answers pings) for all its shards, and media crosses in both
    directions for rooms on every shard, without loss."""
    from harness import start_octo_mesh

    bridges = start_octo_mesh(tmp_path, [("sh-a", 1, "eu"), ("sh-b", 2, "us")], {"KASKADE_SHARDS": str(SHARDS)})
    loads: list[subprocess.Popen] = []
    try:
        prefix = "shc-" + uuid.uuid4().hex[:6]
        rooms = 4
        reports = [tmp_path / f"load-{i}.json" for i in range(2)]
        for i, (b, report) in enumerate(zip(bridges, reports)):
            loads.append(subprocess.Popen(
                [str(kaskade_bin()), "loadtest", "--url", b.http_url, "--room", prefix, "--rooms", str(rooms),
                 "--video-publishers", "1", "--audio-publishers", "1", "--subscribers", "1",
                 "--resolution", "180p", "--join-rate", "20", "--duration", "8s", "--quiet",
                 "--ssrc-tag", str(i + 1), "--json", str(report)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            ))
        outs = [p.communicate(timeout=90)[0] for p in loads]
        for p, out in zip(loads, outs):
            assert p.returncode == 0, f"loadtest failed:\n{out}"
        for i, report in enumerate(reports):
            other = 2 - i  # the other process's tag
            r = json.loads(report.read_text())
            for c in r["clients"]:
                assert c["connected"] and not c["errors"], c
                # Each client receives the other bridge's publisher of its room (audio and
                # video), whichever shard the room is on at either end.
                remote = [s for s in c["streams"] if s["publisher_tag"] == other and s["kind"]]
                assert sorted(s["kind"] for s in remote) == ["audio", "video"], (c["name"], c["streams"])
                for s in remote:
                    assert s["packets_received"] > 0 and s["packets_lost"] == 0, s
        for b in bridges:
            m = b.metrics()
            assert metric_value(m, "kaskade_shards") == SHARDS
            per_shard = shard_participants(b)
            assert sum(1 for n in per_shard if n > 0) >= 2, per_shard
            # Octo packets of rooms on shards 1-3 crossed to and from the gateway.
            assert (metric_value(m, "kaskade_shard_handoffs_in_total") or 0) > 0
            assert (metric_value(m, "kaskade_octo_dropped_total", reason="handoff_full") or 0) == 0
            assert (metric_value(m, "kaskade_octo_dropped_total", reason="replay") or 0) == 0
            assert (metric_value(m, "kaskade_octo_dropped_total", reason="auth") or 0) == 0
    finally:
        for p in loads:
            if p.poll() is None:
                p.kill()
        for b in bridges:
            b.stop()

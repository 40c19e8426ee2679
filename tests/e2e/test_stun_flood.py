"""A STUN flood at a real leg: checks naming a real ufrag reach the leg only at the rate allowed
per source address and per leg (limits.stun_per_address_per_sec, limits.stun_per_leg_per_sec);
the rest are dropped and counted, and the media of everyone in the room keeps flowing."""

from __future__ import annotations

import os
import re
import socket
import struct
import time

from harness import (
    Bridge,
    SignalClient,
    call_summary,
    ident,
    make_token,
    metric_value,
    run,
    start_call,
    stop_call,
    wait_until,
)



def binding_request(username: str) -> bytes:
    """A STUN Binding request with USERNAME and no MESSAGE-INTEGRITY (it can never pass)."""
    name = username.encode()
    attr = struct.pack("!HH", 0x0006, len(name)) + name + b"\0" * (-len(name) % 4)
    return struct.pack("!HHI", 0x0001, len(attr), 0x2112A442) + os.urandom(12) + attr


def test_a_stun_flood_is_cut_at_the_leg_and_the_room_does_not_notice(tmp_path):
    b = Bridge(tmp_path / "flood.log").start()
    room = ident("flood")
    # Everyone else in the room: a publisher and two subscribers, counting loss.
    load = start_call(b, room, "12s", subscribers=2)
    try:
        async def ufrag_of_a_subscriber_leg() -> str:
            # The attacker joins the room: the bridge offers it the room's tracks, and the
            # offer names the leg's ICE username fragment.
            sig = await SignalClient.connect(b.ws_url, "attacker")
            await sig.join(room, make_token(room, ident("attacker")), "Attacker")
            offer = await sig.wait_for("offer", timeout=15)
            m = re.search(r"a=ice-ufrag:(\S+)", offer["sdp"])
            assert m, offer["sdp"]
            return m.group(1)

        ufrag = run(ufrag_of_a_subscriber_leg(), timeout=30)
        wait_until("media flowing", lambda: (metric_value(b.metrics(), "kaskade_rtp_forwarded_total") or 0) > 200, 15)
        before = b.metrics()
        sent = 0
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            end = time.monotonic() + 3
            while time.monotonic() < end:
                for _ in range(200):
                    s.sendto(binding_request(f"{ufrag}:evil"), ("127.0.0.1", b.media_port))
                    sent += 1
                time.sleep(0.01)
        after = wait_until(
            "the flood counted",
            lambda: (m := b.metrics())
            and (metric_value(m, "kaskade_udp_dropped_total", reason="stun_rate") or 0) > 0
            and m,
            5,
        )
        dropped = metric_value(after, "kaskade_udp_dropped_total", reason="stun_rate") or 0
        admitted = sent - dropped
        print(f"\nSTUN flood: {sent} sent in 3 s, {dropped:.0f} dropped, {admitted:.0f} reached the leg")
        # 3 s at 50/s from one address, with a 2 s burst: at most ~250 reached the leg.
        assert admitted <= 300, f"{sent} sent, {dropped} dropped"
        assert dropped >= sent - 300
        # What reached the leg failed its integrity check there; nothing else was dropped.
        for reason in ("unknown_source", "unknown_ufrag", "malformed_stun"):
            assert metric_value(after, "kaskade_udp_dropped_total", reason=reason) == metric_value(
                before, "kaskade_udp_dropped_total", reason=reason
            ), reason
        assert (metric_value(after, "kaskade_limit_hits_total", limit="stun_per_address") or 0) > 0
        # The same leg from 20 source ports at once, each under its own address's limit: the
        # leg's own limit cuts them.
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(20)]
        try:
            for _ in range(40):
                for s in socks:
                    s.sendto(binding_request(f"{ufrag}:evil"), ("127.0.0.1", b.media_port))
        finally:
            for s in socks:
                s.close()
        def settled_per_leg():
            # Counted once the shard has read every queued datagram: two reads that agree.
            first = metric_value(b.metrics(), "kaskade_limit_hits_total", limit="stun_per_leg") or 0
            time.sleep(0.3)
            second = metric_value(b.metrics(), "kaskade_limit_hits_total", limit="stun_per_leg") or 0
            return first == second and second > 0 and second

        per_leg = wait_until("the per-leg limit counted", settled_per_leg, 5)
        print(f"20 ports x 40 checks at one leg: {per_leg:.0f} cut by the per-leg limit")
        # 800 sent, a bucket of 200 (and 100 a second): most are cut.
        assert per_leg >= 400, per_leg
        connected, total, loss, out = call_summary(load, 30)
        assert connected == total == 3, out
        assert loss == 0.0, f"the room noticed the flood:\n{out}"
        assert b.alive()
    finally:
        stop_call(load)
        b.stop()

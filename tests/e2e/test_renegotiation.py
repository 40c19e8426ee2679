"""A client that renegotiates in a loop (issue 14): an aiortc publisher re-offers its audio 300
times on one session, each answered by the bridge, while a load-client call goes on in another
room. Nothing may pile up: the call loses nothing, and once the renegotiating client leaves,
every gauge is back to where it was and the node's RSS is within a bound of its level before.
"""

from __future__ import annotations

import re

from aiortc import RTCPeerConnection, RTCSessionDescription

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

CYCLES = 300
GAUGES = ("kaskade_participants", "kaskade_conferences", "kaskade_tracks", "kaskade_webrtc_legs",
          "kaskade_signaling_sessions")



def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def gauges(b: Bridge) -> dict[str, float]:
    m = b.metrics()
    return {g: metric_value(m, g) or 0.0 for g in GAUGES}


def test_a_renegotiation_loop_leaves_nothing_behind(tmp_path):
    # The loop runs faster than limits.max_messages_per_sec allows (that limit has its own
    # test): off here, so that the bridge's state is what is tested.
    cfg = tmp_path / "reneg.toml"
    cfg.write_text("dev = true\n[limits]\nmax_messages_per_sec = 0\n")
    b = Bridge(tmp_path / "reneg.log", args=["--config", str(cfg)]).start()
    assert b.proc is not None
    call = ident("call")
    load = start_call(b, call, "40s")
    try:
        wait_until("the call's media flowing",
                   lambda: (metric_value(b.metrics(), "kaskade_rtp_forwarded_total") or 0) > 100, 15)
        during_call = gauges(b)

        rss: dict[int, int] = {}

        async def loop() -> int:
            room = ident("reneg")
            sig = await SignalClient.connect(b.ws_url, "reneg")
            await sig.join(room, make_token(room, ident("reneg")), "Reneg")
            pc = RTCPeerConnection()
            pc.addTransceiver("audio", direction="sendonly")
            answered = 0
            try:
                for _ in range(CYCLES):
                    await pc.setLocalDescription(await pc.createOffer())
                    await sig.send({"type": "offer", "target": "publisher", "sdp": pc.localDescription.sdp})
                    answer = await sig.wait_for("answer", timeout=10)
                    assert re.search(r"^m=audio ", answer["sdp"], re.M), answer["sdp"]
                    await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
                    answered += 1
                    if answered in (50, CYCLES):
                        rss[answered] = rss_kib(b.proc.pid)
                await sig.send({"type": "leave"})
                await sig.expect_closed(timeout=5, after_leave=True)
            finally:
                await pc.close()
            return answered

        assert run(loop(), timeout=240) == CYCLES
        wait_until("the gauges back to the call's", lambda: gauges(b) == during_call, 10)
        print(f"\nRSS after 50 renegotiations {rss[50]} KiB, after {CYCLES} {rss[CYCLES]} KiB")
        # Each offer and answer is an SDP of a few KiB, held as text and parsed: kept per cycle,
        # 250 more would be well over a MiB.
        assert rss[CYCLES] - rss[50] < 512, rss
        connected, total, loss, out = call_summary(load, 60)
        assert connected == total == 2 and loss == 0.0, out
    finally:
        stop_call(load)
        b.stop()

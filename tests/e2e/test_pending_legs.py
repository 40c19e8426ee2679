"""A burst of offers: at most limits.max_pending_legs legs are set up (ICE and DTLS in flight)
at a time on a real bridge; one more gets a fatal `unavailable` and the count goes to
/metrics, while the legs already being set up are answered and a room already in a call keeps
its media."""

from __future__ import annotations

import re

from aiortc import RTCPeerConnection

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



async def audio_offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


def test_offers_beyond_the_pending_leg_limit_are_turned_away(tmp_path):
    cfg = tmp_path / "pending.toml"
    cfg.write_text("dev = true\n[limits]\nmax_pending_legs = 4\nmax_participants = 50\n")
    b = Bridge(tmp_path / "pending.log", args=["--config", str(cfg)]).start()
    # A call already going on: its three legs connected, so they do not count.
    call = ident("call")
    load = start_call(b, call, "10s")
    try:
        wait_until("the call's media flowing",
                   lambda: (metric_value(b.metrics(), "kaskade_rtp_forwarded_total") or 0) > 100, 15)
        room = ident("burst")

        async def burst():
            pcs, clients = [], []
            for i in range(5):
                sig = await SignalClient.connect(b.ws_url, f"p{i}")
                await sig.join(room, make_token(room, ident(f"p{i}")), f"P{i}")
                pc, sdp = await audio_offer()
                pcs.append(pc)
                clients.append(sig)
                # Never answered by ICE: these legs stay pending.
                await sig.send({"type": "offer", "target": "publisher", "sdp": sdp})
            answered = 0
            for sig in clients[:4]:
                answer = await sig.wait_for("answer", timeout=10)
                assert re.search(r"a=ice-ufrag:", answer["sdp"])
                answered += 1
            err = await clients[4].expect_fatal("unavailable", timeout=10)
            assert "being set up" in err["reason"], err
            for pc in pcs:
                await pc.close()
            for sig in clients:
                await sig.close()
            return answered

        assert run(burst(), timeout=60) == 4
        m = b.metrics()
        assert metric_value(m, "kaskade_limit_hits_total", limit="pending_legs") == 1
        connected, total, loss, out = call_summary(load, 30)
        assert connected == total == 2 and loss == 0.0, out
    finally:
        stop_call(load)
        b.stop()

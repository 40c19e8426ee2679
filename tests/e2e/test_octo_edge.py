"""The Octo port facing strangers, against the real binary: forged and garbled datagrams are
dropped, each counted under its reason in kaskade_octo_dropped_total (proto/octo.md section 6),
never answered, and a flood of packets naming unknown senders costs no memory (no state is
created for a sender id that is not a peer). Signaling keeps working throughout."""

from __future__ import annotations

import random
import socket
import struct
import time

import pytest

from harness import SignalClient, free_udp_port, make_token, metric_value, octo_config_text, run, wait_until
from test_faults import rss_bytes

OCTO_ID, PEER_ID = 1, 2
VERSION_BYTE = 0x61
PLAINTEXT = 0x02


@pytest.fixture(scope="module")
def octo_bridge(tmp_path_factory):
    from conftest import _start_bridge, _stop_bridge

    port = free_udp_port()
    cfg = tmp_path_factory.mktemp("cfg") / "kaskade.toml"
    # One peer that never runs: the bridge knows its id, nothing answers on its port.
    cfg.write_text(octo_config_text(
        bridge_id="edge-1", region="local", octo_id=OCTO_ID, octo_port=port,
        peers=[{"id": PEER_ID, "name": "edge-2", "region": "local", "port": free_udp_port()}],
    ))
    b = _start_bridge(tmp_path_factory, "octo_edge", args=["--config", str(cfg)])
    b.octo_port = port
    yield b
    _stop_bridge(b)


def header(sender: int, flags: int = 0, counter: int = 1, version: int = VERSION_BYTE) -> bytes:
    # type 0 (RTP), media 0 (audio), flags, sender, conference, endpoint, counter
    return struct.pack("!BBBBIIIQ", version, 0, 0, flags, sender, 7, 9, counter)


def dropped(bridge, reason: str) -> float:
    v = metric_value(bridge.metrics(), "kaskade_octo_dropped_total", reason=reason)
    assert v is not None, f"no kaskade_octo_dropped_total{{reason={reason!r}}}"
    return v


def test_forged_octo_datagrams_are_dropped_and_counted(octo_bridge, room):
    bridge = octo_bridge
    rng = random.Random(14)
    tag = bytes(16)
    rtp = bytes([0x80, 0x6F]) + bytes(10) + b"payload"
    cases = {
        "truncated": [b"hello"],
        "bad_version": [header(PEER_ID, version=0x00) + rtp + tag, b"\x16\xfe\xfd" + bytes(40)],
        "unknown_sender": [header(99) + rtp + tag, header(OCTO_ID) + rtp + tag],
        # a known peer's id, but not its key: the tag fails
        "auth": [header(PEER_ID, counter=c) + rtp + tag for c in (5, 6)],
        "plaintext_refused": [header(PEER_ID, flags=PLAINTEXT) + rtp],
        "oversized": [header(PEER_ID) + bytes(1500)],
    }
    repeat = 20
    before = {r: dropped(bridge, r) for r in cases}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    try:
        for _ in range(repeat):
            for datagrams in cases.values():
                for d in datagrams:
                    sock.sendto(d, ("127.0.0.1", bridge.octo_port))
        want = {r: before[r] + repeat * len(d) for r, d in cases.items()}
        wait_until("every datagram counted under its reason",
                   lambda: all(dropped(bridge, r) >= want[r] for r in cases), 10)
        assert {r: dropped(bridge, r) for r in cases} == want
        # Never answered: a reflector would send something back.
        with pytest.raises(BlockingIOError):
            sock.recvfrom(2048)

        # 20 000 datagrams naming random unknown senders: counted, and no state kept for them.
        rss0 = rss_bytes(bridge.proc.pid)
        n0 = dropped(bridge, "unknown_sender")
        for i in range(20_000):
            sender = rng.randrange(3, 2**32)
            sock.sendto(header(sender, counter=i + 1) + rtp + tag, ("127.0.0.1", bridge.octo_port))
            if i % 100 == 99:
                time.sleep(0.002)  # a flood, but within the socket buffer of a debug build
        wait_until("the flood counted", lambda: dropped(bridge, "unknown_sender") >= n0 + 20_000 * 0.9, 20)
        grew = rss_bytes(bridge.proc.pid) - rss0
        assert grew < 2 << 20, f"RSS grew {grew / 2**20:.1f} MiB under a flood of unknown senders"
    finally:
        sock.close()

    async def signaling_still_works():
        c = await SignalClient.connect(bridge.ws_url, "after")
        await c.join(room, make_token(room, "after-1"), "After")
        await c.ping()
        await c.close()

    run(signaling_still_works(), 20)
    assert bridge.alive()

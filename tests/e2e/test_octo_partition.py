"""An Octo partition between two bridges for 10 s, then healed, with real processes.

Each direction of the Octo link crosses its own `kaskade-netsim` relay. A publisher
(`kaskade loadtest`) is on bridge A, a subscriber on bridge B. The partition stops both relays
(datagrams to their ports are lost); the heal starts them again on the same ports. Both bridges
must recover the cascade by themselves: media reaches B's subscriber again within 2 s of the
heal, and each bridge knows exactly the other's one participant (none stale, none doubled)."""

from __future__ import annotations

import subprocess
import time

from conftest import _start_octo_pair, _stop_all
from harness import RelayProcess, free_udp_port, kaskade_bin, metric_value, wait_until

PARTITION_SECS = 10


def loadtest(bridge, room: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(kaskade_bin()), "loadtest", "--url", bridge.http_url, "--room", room,
         "--resolution", "180p", "--quiet", "--duration", "0", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def value(bridge, name: str, **labels: str) -> float:
    v = metric_value(bridge.metrics(), name, **labels)
    assert v is not None, f"{name} is not exported"
    return v


def test_octo_partition_heals_by_itself(tmp_path, room):
    relays: dict[tuple[int, int], RelayProcess] = {}
    specs: dict[tuple[int, int], tuple[str, str]] = {}

    def via_relay(i: int, j: int, port: int) -> int:
        listen = f"127.0.0.1:{free_udp_port()}"
        specs[(i, j)] = (listen, f"127.0.0.1:{port}")
        relays[(i, j)] = RelayProcess(tmp_path / f"netsim-{i}{j}.log", listen=listen,
                                      upstream=f"127.0.0.1:{port}", args=[]).start()
        return int(listen.rsplit(":", 1)[1])

    a, b = _start_octo_pair(tmp_path, via_relay)
    procs: list[subprocess.Popen] = []
    try:
        procs.append(loadtest(a, room, "--video-publishers", "1", "--audio-publishers", "1",
                              "--subscribers", "0"))
        wait_until("the publisher on A", lambda: value(a, "kaskade_tracks") == 2, 20)
        procs.append(loadtest(b, room, "--video-publishers", "0", "--audio-publishers", "0",
                              "--subscribers", "1"))
        wait_until("media reaches B's subscriber",
                   lambda: value(b, "kaskade_rtp_forwarded_total") > 200, 20)

        wait_until("each bridge knows the other's one participant",
                   lambda: value(a, "kaskade_octo_remote_participants") == 1
                   and value(b, "kaskade_octo_remote_participants") == 1, 5)
        gauges = ("kaskade_participants", "kaskade_tracks", "kaskade_octo_remote_participants")
        before = {(n, g): value(x, g) for n, x in (("A", a), ("B", b)) for g in gauges}

        for r in relays.values():
            r.stop()
        time.sleep(PARTITION_SECS)
        # Both sides have given up on the other's participants by now (soft state, 3 s).
        assert value(a, "kaskade_octo_remote_participants") == 0
        assert value(b, "kaskade_octo_remote_participants") == 0
        for key, (listen, upstream) in specs.items():
            relays[key] = RelayProcess(tmp_path / f"netsim-{key[0]}{key[1]}-healed.log",
                                       listen=listen, upstream=upstream, args=[]).start()
        healed = time.monotonic()
        base = value(b, "kaskade_rtp_forwarded_total")
        wait_until("media flows to B's subscriber again",
                   lambda: value(b, "kaskade_rtp_forwarded_total") > base + 20, 10, interval=0.05)
        resumed = time.monotonic() - healed
        assert resumed <= 2.0, f"media resumed {resumed:.2f} s after the heal"
        wait_until("each bridge knows the other's one participant",
                   lambda: value(a, "kaskade_octo_remote_participants") == 1
                   and value(b, "kaskade_octo_remote_participants") == 1, 5)
        # Gauges refresh at the shard's housekeeping pass (1 s).
        wait_until("the same participants and tracks as before the partition",
                   lambda: {(n, g): value(x, g) for n, x in (("A", a), ("B", b)) for g in gauges} == before, 5)
        print(f"media resumed {resumed:.2f} s after the heal")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        try:
            _stop_all([a, b])
        finally:
            for r in relays.values():
                r.stop()

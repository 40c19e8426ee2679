"""A bridge of a cascade killed (SIGKILL) and restarted with the same Octo id, real processes.

Bridge A hosts a publisher (`kaskade loadtest`), bridge B a subscriber of it: media crosses the
Octo link. B is killed: A must forget B's participant within the soft-state expiry (no stale
participant lingers). B is started again with the same configuration (same Octo id and port,
a fresh process whose link counters restart from its clock): A must accept the new counter
epoch (no replay-window lockout) and a new subscriber on B must receive A's media again."""

from __future__ import annotations

import json
import subprocess
import time

from harness import kaskade_bin, metric_value, wait_until

REMOTE_EXPIRY = 3  # crates/bridge/src/shard/cascade.rs


def loadtest(bridge, room: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(kaskade_bin()), "loadtest", "--url", bridge.http_url, "--room", room,
         "--resolution", "180p", "--quiet", "--json", "-", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def gauge(bridge, name: str, **labels: str) -> float:
    v = metric_value(bridge.metrics(), name, **labels)
    assert v is not None, f"{name} is not exported"
    return v


def test_bridge_restarted_with_the_same_octo_id(tmp_path, room):
    from conftest import _start_octo_pair, _stop_all

    a, b = _start_octo_pair(tmp_path)
    procs: list[subprocess.Popen] = []
    try:
        pub = loadtest(a, room, "--video-publishers", "1", "--audio-publishers", "1",
                       "--subscribers", "0", "--duration", "0")
        procs.append(pub)
        wait_until("the publisher on A", lambda: gauge(a, "kaskade_tracks") == 2, 20)
        sub1 = loadtest(b, room, "--video-publishers", "0", "--audio-publishers", "0",
                        "--subscribers", "1", "--duration", "0")
        procs.append(sub1)
        wait_until("A knows B's subscriber", lambda: gauge(a, "kaskade_octo_remote_participants") == 1, 20)
        wait_until("media crosses the link", lambda: gauge(b, "kaskade_octo_packets_in_total") > 200, 20)

        # B dies without a word; its subscriber with it.
        b.proc.kill()
        b.proc.wait(10)
        sub1.kill()
        sub1.wait(10)
        t0 = time.monotonic()
        wait_until("A forgets B's participant",
                   lambda: gauge(a, "kaskade_octo_remote_participants") == 0, REMOTE_EXPIRY + 7, interval=0.1)
        forgot = time.monotonic() - t0
        assert gauge(a, "kaskade_participants") == 1  # the publisher, unaffected

        # B again, same Octo id and port, a new process (new counters from its clock).
        b.stop()
        b.start()
        replay0 = gauge(a, "kaskade_octo_dropped_total", reason="replay")
        auth0 = gauge(a, "kaskade_octo_dropped_total", reason="auth")
        sub2 = loadtest(b, room, "--video-publishers", "0", "--audio-publishers", "0",
                        "--subscribers", "1", "--duration", "6s")
        procs.append(sub2)
        out, err = sub2.communicate(timeout=60)
        assert sub2.returncode == 0, f"the new subscriber failed:\n{err}\n{out[-2000:]}"
        report = json.loads(out)
        figures = report["clients"][0]  # the figures are fields of the row
        assert figures["tracks_received"] == 2, {k: figures[k] for k in ("tracks_received", "packets_received", "errors")}
        assert figures["packets_received"] > 100, figures
        assert gauge(a, "kaskade_octo_dropped_total", reason="replay") - replay0 < 10
        assert gauge(a, "kaskade_octo_dropped_total", reason="auth") == auth0
        print(f"A forgot B's participant {forgot:.1f} s after B died; "
              f"after the restart B's subscriber got {figures['packets_received']} packets")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        _stop_all([a, b])

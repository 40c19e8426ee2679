"""Fault tests with real processes: clients that vanish, and sessions that come and go.

Two `kaskade loadtest` processes (Rust WebRTC clients) share a room: the *victim* (a publisher
of audio and video, and a subscriber) and the *witness* (a subscriber, receiving the victim's
tracks). Then the victim

- is frozen with SIGSTOP: its sockets stay open but nothing more is sent, not even a close or
  an ICE consent check, which is what a client that loses its network looks like. The bridge
  must end both its participants on the documented timeout (`media.leg_timeout_secs`), not
  before;
- or is killed with SIGKILL: the kernel closes its WebSockets without a `leave`, and the bridge
  must clean up at once.

Either way the witness carries on to the end of its run without an error (its exit status),
and once it is done every gauge of /metrics is back to its idle value.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import pytest

from harness import SignalClient, kaskade_bin, make_token, metric_value, run, wait_until

LEG_TIMEOUT = 3
WITNESS_SECS = 25
IDLE_GAUGES = (
    "kaskade_participants",
    "kaskade_conferences",
    "kaskade_tracks",
    "kaskade_webrtc_legs",
    "kaskade_signaling_sessions",
)


@pytest.fixture(scope="module")
def bridge_fault(tmp_path_factory):
    from conftest import _start_bridge, _stop_bridge

    cfg = tmp_path_factory.mktemp("cfg") / "kaskade.toml"
    cfg.write_text(f"[media]\nleg_timeout_secs = {LEG_TIMEOUT}\n")
    b = _start_bridge(tmp_path_factory, "bridge_fault", args=["--config", str(cfg), "--dev"])
    yield b
    _stop_bridge(b)


def gauges(bridge) -> dict[str, float]:
    m = bridge.metrics()
    out = {}
    for name in IDLE_GAUGES:
        v = metric_value(m, name)
        assert v is not None, f"{name} is not exported"
        out[name] = v
    return out


def loadtest(bridge, room: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(kaskade_bin()), "loadtest", "--url", bridge.http_url, "--room", room,
         "--resolution", "180p", "--quiet", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.mark.parametrize("how", ["sigstop", "sigkill"])
def test_vanishing_client_is_cleaned_up(bridge_fault, room, how):
    bridge = bridge_fault
    wait_until("an idle bridge", lambda: all(v == 0 for v in gauges(bridge).values()), 15)
    victim = loadtest(bridge, room, "--video-publishers", "1", "--audio-publishers", "1",
                      "--subscribers", "1", "--duration", "0")
    witness = None
    try:
        wait_until("the victim joined and publishes",
                   lambda: (g := gauges(bridge))["kaskade_participants"] == 2 and g["kaskade_tracks"] == 2, 20)
        witness = loadtest(bridge, room, "--video-publishers", "0", "--audio-publishers", "0",
                           "--subscribers", "1", "--duration", f"{WITNESS_SECS}s")
        # legs: the victim's publisher's and its subscriber's, and the witness's
        wait_until("the witness joined and receives",
                   lambda: (g := gauges(bridge))["kaskade_participants"] == 3
                   and g["kaskade_webrtc_legs"] == 3, 20)

        t0 = time.monotonic()
        os.kill(victim.pid, signal.SIGSTOP if how == "sigstop" else signal.SIGKILL)
        # The gauges follow at the shard's housekeeping pass (1 s).
        wait_until("the victim's participants gone",
                   lambda: (g := gauges(bridge))["kaskade_participants"] == 1
                   and g["kaskade_tracks"] == 0 and g["kaskade_webrtc_legs"] == 1,
                   LEG_TIMEOUT + 10, interval=0.1)
        took = time.monotonic() - t0
        if how == "sigstop":
            # Silent: only the timeout can tell, and it must not fire early.
            assert LEG_TIMEOUT - 0.5 <= took <= LEG_TIMEOUT + 4, f"cleaned up after {took:.1f} s"
        else:
            # The kernel closed the WebSockets: no waiting for the timeout.
            assert took < LEG_TIMEOUT, f"cleaned up after {took:.1f} s"
        hit = metric_value(bridge.metrics(), "kaskade_signaling_errors_total", code="media_timeout") or 0

        out, _ = witness.communicate(timeout=WITNESS_SECS + 30)
        assert witness.returncode == 0, f"the witness saw an error:\n{out}"
        wait_until("every gauge back to idle", lambda: all(v == 0 for v in gauges(bridge).values()), 10)
        if how == "sigstop":
            assert hit >= 2, "the frozen participants were not ended with media_timeout"
        assert bridge.alive()
    finally:
        for p in (victim, witness):
            if p is not None and p.poll() is None:
                p.kill()  # a stopped process dies on SIGKILL too
                p.wait(10)


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_join_leave_1000_times_leaks_nothing(bridge_fault, room):
    """1000 sessions join a room and leave it (10 at a time), after 200 to warm up: the
    bridge's RSS stays within a bound, and every gauge is back to idle."""
    bridge = bridge_fault
    wait_until("an idle bridge", lambda: all(v == 0 for v in gauges(bridge).values()), 15)
    pid = bridge.proc.pid

    async def cycle(i: int) -> None:
        c = await SignalClient.connect(bridge.ws_url, f"cycle-{i}")
        try:
            await c.join(room, make_token(room, f"cycler-{i}"), f"Cycler {i}")
            await c.send({"type": "leave"})
            await c.expect_closed(5, after_leave=True)
        finally:
            await c.close()

    async def cycles(first: int, count: int) -> None:
        for start in range(first, first + count, 10):
            await asyncio.gather(*(cycle(i) for i in range(start, start + 10)))

    run(cycles(0, 200), 120)
    wait_until("idle after the warm-up", lambda: all(v == 0 for v in gauges(bridge).values()), 10)
    before = rss_bytes(pid)
    t0 = time.monotonic()
    run(cycles(200, 1000), 300)
    took = time.monotonic() - t0
    wait_until("every gauge back to idle", lambda: all(v == 0 for v in gauges(bridge).values()), 10)
    after = rss_bytes(pid)
    # 8 KiB kept per session would be 8 MiB: a leak of any per-session state shows.
    assert after - before < 8 << 20, (
        f"RSS grew {(after - before) / 2**20:.1f} MiB over 1000 join/leave cycles ({took:.0f} s)"
    )
    print(f"1000 join/leave cycles in {took:.1f} s; RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB")

"""Draining a real `kaskade serve` process: SIGTERM and POST /admin/drain stop new joins,
keep the calls in progress, answer /health with 503, and end the process when it is empty
or when drain.timeout_secs has passed. Also: the cluster metrics a fleet scales on."""

from __future__ import annotations

import base64
import signal
import time
import urllib.request

from harness import Bridge, SignalClient, http_get, ident, make_token, metric_value, run



def start(tmp_path, name: str, config: str | None = None) -> Bridge:
    args = []
    if config is not None:
        path = tmp_path / f"{name}.toml"
        path.write_text(config)
        args = ["--config", str(path)]
    return Bridge(tmp_path / f"{name}.log", args=args).start()


def wait_exit(b: Bridge, timeout: float) -> int:
    assert b.proc is not None
    try:
        return b.proc.wait(timeout)
    except Exception as e:  # subprocess.TimeoutExpired
        raise AssertionError(f"the bridge did not exit within {timeout}s\n{b.log_tail(40)}") from e


def health(b: Bridge) -> tuple[int, bytes]:
    status, body, _ = http_get(b.http_url + "/health", timeout=3)
    return status, body


def admin_drain(b: Bridge) -> int:
    req = urllib.request.Request(b.http_url + "/admin/drain", method="POST", data=b"")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"devkey:devsecret-change-me").decode())
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status


def test_sigterm_drains_then_exits_when_the_last_participant_leaves(tmp_path):
    b = start(tmp_path, "sigterm")
    room = ident("drain")

    async def scenario():
        alice = await SignalClient.connect(b.ws_url, "alice")
        await alice.join(room, make_token(room, ident("alice")), "Alice")
        assert b.proc is not None
        b.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while health(b)[0] != 503:
            assert time.monotonic() < deadline, "/health still 200 after SIGTERM"
            time.sleep(0.1)
        status, body = health(b)
        assert b'"draining"' in body, body
        m = b.metrics()
        assert metric_value(m, "kaskade_draining") == 1.0
        # A new participant is refused with the protocol's code; alice keeps her call.
        bob = await SignalClient.connect(b.ws_url, "bob")
        await bob.send({"type": "join", "room": room, "token": make_token(room, ident("bob"))})
        await bob.expect_fatal("draining")
        await alice.ping()
        assert b.alive(), "the bridge exited while a participant was still there"
        await alice.send({"type": "leave"})
        await alice.expect_closed(5, after_leave=True)

    run(scenario(), timeout=30)
    assert wait_exit(b, 5) == 0
    assert "drained" in b.log_text()


def test_admin_drain_of_an_empty_node_exits(tmp_path):
    b = start(tmp_path, "admin")
    assert admin_drain(b) == 200
    assert wait_exit(b, 5) == 0


def test_drain_timeout_ends_the_node_with_participants_still_there(tmp_path):
    b = start(tmp_path, "timeout", config="dev = true\n[drain]\ntimeout_secs = 2\n")
    room = ident("stuck")

    async def scenario():
        alice = await SignalClient.connect(b.ws_url, "alice")
        await alice.join(room, make_token(room, ident("alice")), "Alice")
        assert b.proc is not None
        t0 = time.monotonic()
        b.proc.send_signal(signal.SIGTERM)
        code = wait_exit(b, 8)
        took = time.monotonic() - t0
        assert code == 0
        assert took >= 1.5, f"exited after {took:.1f}s, before the 2 s drain timeout"
        await alice.close()

    run(scenario(), timeout=30)
    assert "drain timeout" in b.log_text()


def test_cluster_metrics_and_health(tmp_path):
    b = start(tmp_path, "metrics")
    room = ident("load")

    async def scenario():
        c = await SignalClient.connect(b.ws_url, "c")
        await c.join(room, make_token(room, ident("c")), "C")
        time.sleep(2.5)  # two heartbeats
        m = b.metrics()
        stress = metric_value(m, "kaskade_stress")
        assert stress is not None and 0.0 <= stress < 0.8, stress
        assert metric_value(m, "kaskade_draining") == 0.0
        assert (metric_value(m, "kaskade_directory_operations_total", op="publish") or 0) >= 2
        assert (metric_value(m, "kaskade_directory_operations_total", op="conference") or 0) >= 1
        assert (metric_value(m, "kaskade_directory_errors_total", kind="unavailable") or 0) == 0
        # One node: every join is placed here, by the first rule that admits it.
        decided = sum(
            metric_value(m, "kaskade_bridge_selections_total", rule=r) or 0
            for r in ("in_region", "conference_in_region", "not_overloaded")
        )
        assert decided >= 1, "the join did not go through bridge selection"
        assert (metric_value(m, "kaskade_redirects_total") or 0) == 0
        heartbeat_age = metric_value(m, "kaskade_heartbeat_age_seconds")
        assert heartbeat_age is not None and heartbeat_age < 2.0, heartbeat_age
        status, body = health(b)
        assert status == 200 and b'"stress"' in body and b'"memory"' in body, body
        await c.close()

    try:
        run(scenario(), timeout=30)
    finally:
        b.stop()

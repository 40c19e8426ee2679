"""docker/haproxy.cfg with the real Debian haproxy in front of three real bridges running the
`single` strategy: every participant of a room lands on one bridge, rooms spread over the
bridges, and a draining bridge (its /health answers 503) gets no new rooms."""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import urllib.request

import pytest

from harness import Bridge, REPO_ROOT, SignalClient, free_tcp_port, http_get, ident, make_token, run

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"



def haproxy_config(port: int, bridges: list[Bridge]) -> str:
    """The shipped config, with only the bind address and the server list replaced."""
    text = (REPO_ROOT / "docker" / "haproxy.cfg").read_text()
    head, rest = text.split("    # kaskade-servers-begin\n", 1)
    _old, tail = rest.split("    # kaskade-servers-end\n", 1)
    servers = "".join(
        f"    server {b.bridge_id} 127.0.0.1:{b.http_port} check\n" for b in bridges
    )
    assert "    bind :8080\n" in head
    head = head.replace("    bind :8080\n", f"    bind 127.0.0.1:{port}\n")
    return head + servers + tail


@pytest.fixture
def fleet(tmp_path):
    if not shutil.which(HAPROXY) and not (REPO_ROOT / HAPROXY).exists():
        pytest.fail("haproxy is not installed: tests/run.sh installs Debian's haproxy")
    cfg = tmp_path / "single.toml"
    cfg.write_text('dev = true\n[cluster]\nstrategy = "single"\n')
    bridges = []
    for i in range(3):
        b = Bridge(tmp_path / f"b{i + 1}.log", args=["--config", str(cfg), "--bridge-id", f"bridge-{i + 1}"])
        b.bridge_id = f"bridge-{i + 1}"
        bridges.append(b.start())
    port = free_tcp_port()
    path = tmp_path / "haproxy.cfg"
    path.write_text(haproxy_config(port, bridges))
    log = open(tmp_path / "haproxy.log", "wb")
    proc = subprocess.Popen([HAPROXY, "-db", "-f", str(path)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                if http_get(f"http://127.0.0.1:{port}/health?room=x", timeout=1)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "haproxy.log").read_text()
            assert time.monotonic() < deadline, "haproxy did not serve within 10 s"
            time.sleep(0.1)
        yield port, bridges
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        for b in bridges:
            b.stop()


async def join_via(port: int, room: str, label: str) -> tuple[SignalClient, str]:
    c = await SignalClient.connect(f"ws://127.0.0.1:{port}/ws?room={room}", label)
    joined = await c.join(room, make_token(room, ident(label)), label)
    return c, joined["bridge"]["id"]


def test_a_room_lands_on_one_bridge_and_drained_bridges_get_no_new_rooms(fleet):
    port, bridges = fleet

    async def scenario():
        clients = []
        placed: dict[str, set[str]] = {}
        rooms = [ident("room") for _ in range(9)]
        for room in rooms:
            for k in range(3):
                c, bridge = await join_via(port, room, f"p{k}")
                clients.append(c)
                placed.setdefault(room, set()).add(bridge)
        split = {r: b for r, b in placed.items() if len(b) != 1}
        assert not split, f"rooms split over bridges through HAProxy: {split}"
        used = {next(iter(b)) for b in placed.values()}
        assert len(used) >= 2, f"9 rooms all hashed to {used}: no sharding"

        # Drain one bridge that hosts rooms: HAProxy's health check takes it out.
        target = next(b for b in bridges if b.bridge_id in used)
        req = urllib.request.Request(target.http_url + "/admin/drain", method="POST", data=b"")
        req.add_header("Authorization", "Basic " + base64.b64encode(b"devkey:devsecret-change-me").decode())
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200
        time.sleep(3.5)  # inter 1s, fall 2
        late = []
        for i in range(9):
            room = ident("late")
            c, bridge = await join_via(port, room, f"late{i}")
            late.append((room, bridge))
            clients.append(c)
        assert all(b != target.bridge_id for _, b in late), f"joins reached the draining {target.bridge_id}: {late}"
        # Its calls go on: its participants still answer.
        assert target.alive()
        for c in clients[:3]:
            await c.ping()
        for c in clients:
            await c.close()

    run(scenario(), timeout=90)

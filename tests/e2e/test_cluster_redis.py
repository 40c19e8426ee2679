"""Three real bridges sharing a real redis-server: bridge selection by region with redirects,
Octo links from the directory (no static peer list), joins spread under a burst, and a
SIGKILLed bridge dropping out of selection and out of its conferences."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time

import pytest

from harness import (
    Bridge,
    OCTO_SECRET,
    SignalClient,
    free_tcp_port,
    free_udp_port,
    ident,
    make_token,
    metric_value,
    page_state,
    page_url,
    receives_media,
    run,
    wait_joined,
    wait_until,
)

REGIONS = ("eu", "us", "ap")



class Redis:
    """A redis-server on a free loopback port, stopped by PID."""

    def __init__(self, tmp_path):
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed: tests/run.sh installs Debian's redis-server")
        self.port = free_tcp_port()
        self.log = open(tmp_path / "redis.log", "wb")
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(tmp_path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout.strip() != b"PONG":
            assert self.proc.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
            time.sleep(0.1)

    def kill(self):
        self.proc.kill()
        self.proc.wait(5)

    def restart(self):
        """The same port, empty: what a Redis without persistence comes back as."""
        self.proc = subprocess.Popen(self.proc.args, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while subprocess.run(["redis-cli", "-p", str(self.port), "ping"], capture_output=True).stdout.strip() != b"PONG":
            assert time.monotonic() < deadline, "redis-server did not come back"
            time.sleep(0.1)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def cluster_config(redis_port: int, i: int, region: str, octo_port: int, strategy: str = "region") -> str:
    return "\n".join([
        "dev = true",
        "[bridge]",
        f'id = "b-{region}"',
        f'region = "{region}"',
        "[octo]",
        f"bridge_id = {i + 1}",
        'bind_ip = "127.0.0.1"',
        f"port = {octo_port}",
        f'secret = "{OCTO_SECRET}"',
        "[redis]",
        f'address = "127.0.0.1:{redis_port}"',
        "[cluster]",
        f'strategy = "{strategy}"',
    ]) + "\n"


def start_cluster_bridge(tmp_path, redis_port: int, i: int, region: str, *, strategy: str = "region",
                         extra: str = "") -> Bridge:
    """Bridge `i` of a cluster on the redis-server at `redis_port`, in `region` (id `b-<region>`),
    started; its config file and log in tmp_path. `extra` is appended to its config."""
    path = tmp_path / f"{region}.toml"
    path.write_text(cluster_config(redis_port, i, region, free_udp_port(), strategy=strategy) + extra)
    b = Bridge(tmp_path / f"{region}.log", args=["--config", str(path)])
    b.bridge_id = f"b-{region}"
    return b.start()


@pytest.fixture
def fleet(tmp_path):
    redis = Redis(tmp_path)
    bridges: list[Bridge] = []
    try:
        for i, region in enumerate(REGIONS):
            bridges.append(start_cluster_bridge(tmp_path, redis.port, i, region))
        time.sleep(2.5)  # every bridge has heartbeated and seen the others
        yield redis, bridges
    finally:
        for b in bridges:
            b.stop()
        redis.stop()


async def join_through(entry: Bridge, room: str, label: str, region: str | None) -> tuple[SignalClient, str | None]:
    """Joins at `entry` and follows a redirect like the demo page; (client, redirected from)."""
    sig = await SignalClient.connect(entry.ws_url, label)
    token = make_token(room, ident(label))
    msg = {"type": "join", "room": room, "token": token, "name": label}
    if region:
        msg["region"] = region
    await sig.send(msg)
    first = await sig.recv(10)
    if first["type"] == "joined":
        sig.joined, sig.participant_id = first, first["participant"]["id"]
        return sig, None
    assert first["type"] == "redirect", first
    await sig.close()
    sig2 = await SignalClient.connect(first["url"], label)
    msg2 = dict(msg, token=first["token"], redirected=True)
    await sig2.send(msg2)
    joined = await sig2.wait_for("joined", 10)
    sig2.joined, sig2.participant_id = joined, joined["participant"]["id"]
    return sig2, entry.bridge_id


@pytest.mark.browser
def test_regions_redirects_and_media_across_the_directory_cascade(fleet, chromium):
    """Two Chromium pages open the eu bridge's demo page; the one from region us is redirected
    to the us bridge. A signaling client from ap joins through eu too and lands on ap: one
    conference over three bridges that no static peer list links."""
    _redis, bridges = fleet
    eu = bridges[0]
    room = ident("world")
    a = chromium("A")
    b = chromium("B")
    a.get(page_url(eu, room=room, name="Ada", region="eu", autojoin=1))
    sa = wait_joined(a)
    b.get(page_url(eu, room=room, name="Bob", region="us", autojoin=1))
    sb = wait_joined(b)
    assert a.execute_script("return window.kaskade.bridge;") == "b-eu"
    assert b.execute_script("return window.kaskade.bridge;") == "b-us", "the us page was not placed on b-us"
    assert b.execute_script("return window.kaskade.redirectedTo;") == "b-us"
    assert a.execute_script("return window.kaskade.redirectedTo || null;") is None
    a_id, b_id = sa["participantId"], sb["participantId"]

    async def ap_joins():
        sig, redirected_from = await join_through(eu, room, "c-ap", "ap")
        assert sig.joined["bridge"]["id"] == "b-ap" and redirected_from == "b-eu"
        others = {p["id"]: p["bridge"] for p in sig.joined["participants"]}
        assert others == {a_id: "b-eu", b_id: "b-us"}, others
        # The page learns of it over the Octo link ap -> eu (blocking polls are fine here).
        pa = wait_until("A lists the ap participant", lambda: page_state(a)["participants"].get(sig.participant_id), 10)
        assert pa["bridge"] == "b-ap"
        await sig.close()

    run(ap_joins(), timeout=30)
    wait_until("A decodes Bob's media (eu <- us, Octo from the directory)", lambda: receives_media(a, b_id), 30, 0.5)
    wait_until("B decodes Ada's media (us <- eu)", lambda: receives_media(b, a_id), 30, 0.5)
    assert (metric_value(eu.metrics(), "kaskade_redirects_total") or 0) >= 2
    for br in bridges:
        assert (metric_value(br.metrics(), "kaskade_octo_dropped_total", reason="auth") or 0) == 0


def test_a_burst_spreads_a_killed_bridge_drops_out_and_redis_loss_is_survived(fleet):
    redis, bridges = fleet
    entry = bridges[0]

    async def scenario():
        clients = []
        placed: dict[str, int] = {}
        t0 = time.monotonic()
        for i in range(30):
            # A region no bridge has: rule 4 (any bridge not overloaded) decides.
            sig, _ = await join_through(entry, ident("burst"), f"j{i}", "mars")
            clients.append(sig)
            b = sig.joined["bridge"]["id"]
            placed[b] = placed.get(b, 0) + 1
        took = time.monotonic() - t0
        assert all(placed.get(b.bridge_id, 0) >= 5 for b in bridges), f"herding: {placed} in {took:.1f}s"

        # SIGKILL the ap bridge while a conference spans it.
        room = ident("kill")
        eu, _ = await join_through(entry, room, "k-eu", "eu")
        ap, _ = await join_through(entry, room, "k-ap", "ap")
        assert ap.joined["bridge"]["id"] == "b-ap"
        await eu.wait_for("participant_joined", 10, lambda m: m["participant"]["id"] == ap.participant_id)
        victim = next(b for b in bridges if b.bridge_id == "b-ap")
        assert victim.proc is not None
        victim.proc.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        await eu.wait_for("participant_left", 8, lambda m: m["participant_id"] == ap.participant_id)
        assert time.monotonic() - killed < 6
        await asyncio.sleep(max(0.0, 5.5 - (time.monotonic() - killed)))
        # Its record is stale: a new ap participant is placed elsewhere.
        late, _ = await join_through(entry, room, "k-ap2", "ap")
        assert late.joined["bridge"]["id"] != "b-ap"
        await eu.ping()

        # Redis lost: the call goes on, a new join gets `unavailable`; Redis back (empty): the
        # bridges re-register by themselves and joins are placed again.
        redis.kill()
        await eu.ping()
        refused = await SignalClient.connect(entry.ws_url, "refused")
        await refused.send({"type": "join", "room": room, "token": make_token(room, ident("r"))})
        await refused.expect_fatal("unavailable")
        redis.restart()
        deadline = time.monotonic() + 10
        while True:
            c = await SignalClient.connect(entry.ws_url, "back")
            await c.send({"type": "join", "room": "back-room", "token": make_token("back-room", ident("b")), "region": "us"})
            m = await c.recv(5)
            await c.close()
            if m["type"] == "redirect":
                assert m["bridge"] == "b-us", m
                break
            assert time.monotonic() < deadline, f"no placement 10 s after Redis returned: {m}"
            await asyncio.sleep(0.5)
        await eu.ping()
        # The entry bridge saw the directory fail (the refused join) and come back.
        assert (metric_value(entry.metrics(), "kaskade_directory_reconnects_total") or 0) >= 1
        for c in clients + [eu, late]:
            await c.close()

    run(scenario(), timeout=120)


class SentinelSet:
    """1 master + 1 replica + 3 sentinels on loopback, each stopped by PID."""

    MASTER = "kaskade-e2e"

    def __init__(self, tmp_path):
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed: tests/run.sh installs Debian's redis-server")
        self.log = open(tmp_path / "sentinel-set.log", "wb")
        common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
        self.master_port, self.replica_port = free_tcp_port(), free_tcp_port()
        self.master = self._spawn([exe, "--port", str(self.master_port), *common])
        self.replica = self._spawn(
            [exe, "--port", str(self.replica_port), "--replicaof", "127.0.0.1", str(self.master_port), *common]
        )
        self._wait("replica in sync", lambda: b"master_link_status:up" in self._cli(self.replica_port, "INFO", "replication"))
        self.sentinel_ports = []
        self.sentinels = []
        for i in range(3):
            port = free_tcp_port()
            conf = tmp_path / f"sentinel-{i}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\nsentinel monitor {self.MASTER} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {self.MASTER} 1000\nsentinel failover-timeout {self.MASTER} 3000\n"
            )
            self.sentinels.append(self._spawn([exe, str(conf), "--sentinel"]))
            self.sentinel_ports.append(port)
        for p in self.sentinel_ports:
            self._wait("sentinels see each other", lambda p=p: self._cli(p, "SENTINEL", "sentinels", self.MASTER).count(b"127.0.0.1") >= 2)

    def _spawn(self, cmd):
        return subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    @staticmethod
    def _cli(port, *args) -> bytes:
        return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True).stdout

    @staticmethod
    def _wait(what, fn, timeout=15.0):
        deadline = time.monotonic() + timeout
        while not fn():
            assert time.monotonic() < deadline, f"{what} within {timeout}s"
            time.sleep(0.1)

    def kill_master(self):
        self.master.kill()
        self.master.wait(5)

    def promoted(self) -> bool:
        return str(self.replica_port).encode() in self._cli(
            self.sentinel_ports[0], "SENTINEL", "get-master-addr-by-name", self.MASTER
        )

    def stop(self):
        for p in [self.master, self.replica, *self.sentinels]:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        self.log.close()


def test_sentinel_failover_during_a_call(tmp_path):
    """Two bridges on a Sentinel-managed Redis, a conference across both; the master is
    SIGKILLed: nobody is lost, and the cluster places joins on the promoted replica."""
    sentinel = SentinelSet(tmp_path)
    bridges: list[Bridge] = []
    try:
        for i, region in enumerate(("eu", "us")):
            text = cluster_config(0, i, region, free_udp_port())
            text = text.replace(
                '[redis]\naddress = "127.0.0.1:0"\n',
                f'[redis]\nsentinel_master_name = "{SentinelSet.MASTER}"\nsentinel_addresses = '
                + "[" + ", ".join(f'"127.0.0.1:{p}"' for p in sentinel.sentinel_ports) + "]\n",
            )
            assert "sentinel_master_name" in text
            path = tmp_path / f"{region}.toml"
            path.write_text(text)
            b = Bridge(tmp_path / f"{region}.log", args=["--config", str(path)])
            b.bridge_id = f"b-{region}"
            bridges.append(b.start())
        time.sleep(2.5)
        eu_bridge = bridges[0]
        room = ident("failover")

        async def scenario():
            eu, _ = await join_through(eu_bridge, room, "f-eu", "eu")
            us, moved = await join_through(eu_bridge, room, "f-us", "us")
            assert us.joined["bridge"]["id"] == "b-us" and moved == "b-eu"
            await eu.wait_for("participant_joined", 10, lambda m: m["participant"]["id"] == us.participant_id)
            sentinel.kill_master()
            killed = time.monotonic()
            # Joins are placed again once the replica is promoted.
            while True:
                c = await SignalClient.connect(eu_bridge.ws_url, "after")
                await c.send({"type": "join", "room": room, "token": make_token(room, ident("a")), "region": "us"})
                m = await c.recv(5)
                await c.close()
                if m["type"] == "redirect":
                    assert m["bridge"] == "b-us", m
                    break
                assert m.get("code") == "unavailable", m
                assert time.monotonic() - killed < 30, "no placement 30 s after the master was killed"
                await asyncio.sleep(0.5)
            assert sentinel.promoted()
            # Nobody was lost: both still answer and neither saw the other leave.
            await eu.ping()
            await us.ping()
            left = [m for m in eu.received + us.received if m["type"] == "participant_left"]
            assert not left, left
            await eu.close()
            await us.close()

        run(scenario(), timeout=60)
    finally:
        for b in bridges:
            b.stop()
        sentinel.stop()


def test_rust_load_clients_follow_redirects_into_a_split_conference(tmp_path):
    """`kaskade loadtest` (the Rust clients) opens only the eu bridge; with the `split`
    strategy selection spreads the room over all three bridges, so most clients are redirected,
    and every client still receives every track, across Octo links from the directory."""
    import json

    from harness import kaskade_bin

    redis = Redis(tmp_path)
    bridges: list[Bridge] = []
    try:
        for i, region in enumerate(REGIONS):
            bridges.append(start_cluster_bridge(tmp_path, redis.port, i, region, strategy="split"))
        time.sleep(2.5)
        eu = bridges[0]
        report_path = tmp_path / "load.json"
        out = subprocess.run(
            [str(kaskade_bin()), "loadtest", "--url", eu.http_url, "--room", ident("split"),
             "--video-publishers", "2", "--audio-publishers", "2", "--subscribers", "4",
             "--resolution", "180p", "--join-rate", "10", "--duration", "6s", "--quiet",
             "--json", str(report_path)],
            capture_output=True, text=True, timeout=90,
        )
        assert out.returncode == 0, f"loadtest failed:\n{out.stdout}\n{out.stderr}"
        report = json.loads(report_path.read_text())
        assert report["ok"], report["total"]
        for c in report["clients"]:
            assert c["connected"] and c["tracks_received"] == c["tracks_expected"] > 0, c
            assert c["packets_received"] > 0, c
        m = eu.metrics()
        spread = metric_value(m, "kaskade_bridge_selections_total", rule="spread") or 0
        redirects = metric_value(m, "kaskade_redirects_total") or 0
        assert spread >= 6 and redirects >= 3, f"spread {spread}, redirects {redirects}"
        routed_octo = [metric_value(b.metrics(), "kaskade_rtp_routed_octo_total") or 0 for b in bridges]
        assert sum(1 for r in routed_octo if r > 0) >= 2, f"media did not cross Octo: {routed_octo}"
    finally:
        for b in bridges:
            b.stop()
        redis.stop()


def test_drain_with_migration_moves_a_call_to_another_bridge(tmp_path):
    """`drain.migrate = true`: a draining bridge tells each participant to move (`migrate`),
    selection sends them to the other bridge, media resumes there within 3 s, and the drained
    bridge exits once empty. The clients are `kaskade loadtest`'s, which follow `migrate`."""
    import base64
    import json
    import urllib.request

    from harness import kaskade_bin

    redis = Redis(tmp_path)
    bridges: list[Bridge] = []
    try:
        for i, region in enumerate(("eu", "us")):
            bridges.append(start_cluster_bridge(tmp_path, redis.port, i, region, extra="[drain]\nmigrate = true\n"))
        eu, us = bridges
        time.sleep(2.5)
        report_path = tmp_path / "load.json"
        load = subprocess.Popen(
            [str(kaskade_bin()), "loadtest", "--url", eu.http_url, "--room", ident("move"),
             # 4 clients: one publishes video and audio, one audio, two only receive.
             "--video-publishers", "1", "--audio-publishers", "2", "--subscribers", "2",
             "--resolution", "180p", "--join-rate", "10", "--duration", "14s", "--quiet",
             "--json", str(report_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            # No region in the joins: they land on the bridge they opened, eu.
            wait_until("4 participants on eu", lambda: metric_value(eu.metrics(), "kaskade_participants") == 4, 20)
            time.sleep(2)  # media flowing for a while before the move
            req = urllib.request.Request(eu.http_url + "/admin/drain", method="POST", data=b"")
            req.add_header("Authorization", "Basic " + base64.b64encode(b"devkey:devsecret-change-me").decode())
            with urllib.request.urlopen(req, timeout=5) as r:
                assert r.status == 200
            assert eu.proc is not None
            try:
                code = eu.proc.wait(15)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"the drained bridge did not exit once empty\n{eu.log_tail(40)}")
            assert code == 0 and "drained" in eu.log_text(), eu.log_tail(40)
            wait_until("the call on us", lambda: metric_value(us.metrics(), "kaskade_participants") == 4, 5)
            out, _ = load.communicate(timeout=60)
        finally:
            if load.poll() is None:
                load.kill()
        assert load.returncode == 0, f"loadtest failed:\n{out}"
        report = json.loads(report_path.read_text())
        for c in report["clients"]:
            f = c  # the figures are fields of the row
            assert c["connected"] and not c["errors"], c
            assert f["migrations"] == 1, c
            # Media from every other participant again after the move (the old bridge's
            # streams are retired, not counted as tracks).
            assert f["tracks_received"] == f["tracks_expected"] > 0, c
            # The longest time with no media at all: the move, leave to media on the new bridge.
            assert f["max_gap_ms"] is not None and f["max_gap_ms"] < 3000, c
        assert report["total"]["migrations"] == 4
    finally:
        for b in bridges:
            b.stop()
        redis.stop()


@pytest.mark.browser
def test_the_demo_page_follows_a_migration(tmp_path, chromium):
    """Two Chromium demo pages in a call on eu; eu drains with `drain.migrate`: both pages
    move to us by themselves (`migrate`), and each decodes the other's media again there."""
    import base64
    import urllib.request

    redis = Redis(tmp_path)
    bridges: list[Bridge] = []
    try:
        for i, region in enumerate(("eu", "us")):
            bridges.append(start_cluster_bridge(tmp_path, redis.port, i, region, extra="[drain]\nmigrate = true\n"))
        eu, us = bridges
        time.sleep(2.5)
        room = ident("move")
        a = chromium("A")
        b = chromium("B")
        a.get(page_url(eu, room=room, name="Ada", autojoin=1))
        b.get(page_url(eu, room=room, name="Bob", autojoin=1))
        sa, sb = wait_joined(a), wait_joined(b)
        assert a.execute_script("return window.kaskade.bridge;") == "b-eu"
        wait_until("A decodes Bob on eu", lambda: receives_media(a, sb["participantId"]), 30, 0.5)
        wait_until("B decodes Ada on eu", lambda: receives_media(b, sa["participantId"]), 30, 0.5)

        req = urllib.request.Request(eu.http_url + "/admin/drain", method="POST", data=b"")
        req.add_header("Authorization", "Basic " + base64.b64encode(b"devkey:devsecret-change-me").decode())
        with urllib.request.urlopen(req, timeout=5) as r:
            assert r.status == 200

        def moved(d):
            k = d.execute_script(
                "const k = window.kaskade; return {bridge: k.bridge, migrations: k.migrations,"
                " state: k.state, id: k.participantId};"
            )
            return k if k["bridge"] == "b-us" and k["migrations"] == 1 and k["state"] == "joined" else None

        ka = wait_until("page A on us", lambda: moved(a), 15)
        kb = wait_until("page B on us", lambda: moved(b), 15)
        assert ka["id"] != sa["participantId"], "a new participant id on the new bridge"
        wait_until("A decodes Bob on us", lambda: receives_media(a, kb["id"]), 30, 0.5)
        wait_until("B decodes Ada on us", lambda: receives_media(b, ka["id"]), 30, 0.5)
        assert eu.proc is not None
        assert eu.proc.wait(15) == 0, eu.log_tail(40)
    finally:
        for br in bridges:
            br.stop()
        redis.stop()

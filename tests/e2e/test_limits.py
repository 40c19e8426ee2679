"""Edge limits against the real binary: a client over a limit gets an error code and is closed,
the hit is counted in /metrics, and another participant of the same room notices nothing."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from websockets.asyncio.client import connect

from harness import SignalClient, make_token, metric_value, run
from test_signaling import assert_unaffected, joined_client

MESSAGES_PER_SEC = 5  # bursts of 10
CHAT_PER_SEC = 1  # bursts of 2


@pytest.fixture(scope="module")
def bridge_low_limits(tmp_path_factory):
    from conftest import _start_bridge, _stop_bridge

    cfg = tmp_path_factory.mktemp("cfg") / "kaskade.toml"
    cfg.write_text(
        f"[limits]\nmax_messages_per_sec = {MESSAGES_PER_SEC}\nmax_chat_per_sec = {CHAT_PER_SEC}\n"
    )
    b = _start_bridge(tmp_path_factory, "bridge_low_limits", args=["--config", str(cfg), "--dev"])
    yield b
    _stop_bridge(b)


def limit_hits(bridge, limit: str) -> float:
    v = metric_value(bridge.metrics(), "kaskade_limit_hits_total", limit=limit)
    assert v is not None, f"kaskade_limit_hits_total{{limit={limit!r}}} is not exported"
    return v


async def _flood(bad: SignalClient, msg: dict, count: int) -> None:
    for _ in range(count):
        try:
            await bad.send(msg)
        except Exception:  # noqa: BLE001 - the bridge may close the socket mid-flood
            break


def test_message_rate_closes_only_the_flooder(bridge_low_limits, room):
    bridge = bridge_low_limits
    before = limit_hits(bridge, "message_rate")

    async def scenario():
        good = await joined_client(bridge, room, "good", name="Good")
        bad = await joined_client(bridge, room, "flooder", name="Flooder")
        try:
            await good.wait_for("participant_joined", 5, lambda m: m["participant"]["id"] == bad.participant_id)
            # Within the rate a client is never limited: 3 pings a second for 2.5 s.
            for _ in range(8):
                await good.ping()
                await asyncio.sleep(0.33)
            await _flood(bad, {"type": "ping"}, 40)
            err = await bad.expect_fatal("rate_limited", 5)
            assert str(MESSAGES_PER_SEC) in err["reason"], err
            pongs = sum(1 for m in bad.received if m["type"] == "pong")
            # The burst (10, one token spent on the join) passes, the rest does not.
            assert 5 <= pongs <= 12, f"{pongs} pongs before the limit"
            await good.wait_for("participant_left", 5, lambda m: m["participant_id"] == bad.participant_id)
            await assert_unaffected(bridge, room, good)
        finally:
            await good.close()
            await bad.close()

    run(scenario(), 40)
    assert limit_hits(bridge, "message_rate") == before + 1


def test_chat_rate_closes_only_the_spammer(bridge_low_limits, room):
    bridge = bridge_low_limits
    before = limit_hits(bridge, "chat_rate")

    async def scenario():
        good = await joined_client(bridge, room, "good", name="Good")
        bad = await joined_client(bridge, room, "spammer", name="Spammer")
        try:
            await good.wait_for("participant_joined", 5, lambda m: m["participant"]["id"] == bad.participant_id)
            await _flood(bad, {"type": "message", "text": "buy now"}, 6)
            await bad.expect_fatal("rate_limited", 5)
            await good.wait_for("participant_left", 5, lambda m: m["participant_id"] == bad.participant_id)
            got = [m for m in good.received if m["type"] == "message"]
            assert 1 <= len(got) <= 3, f"good got {len(got)} chat lines of the spammer"
            # Chat itself still works for everyone else.
            other = await joined_client(bridge, room, "other", name="Other")
            await other.send({"type": "message", "text": "still here?"})
            line = await good.wait_for("message", 5, lambda m: m["from"] == other.participant_id)
            assert line["text"] == "still here?"
            await other.close()
            await assert_unaffected(bridge, room, good)
        finally:
            await good.close()
            await bad.close()

    run(scenario(), 40)
    assert limit_hits(bridge, "chat_rate") == before + 1


JOINS_PER_SEC = 2  # bursts of 4


@pytest.fixture(scope="module")
def bridge_join_limit(tmp_path_factory):
    from conftest import _start_bridge, _stop_bridge

    cfg = tmp_path_factory.mktemp("cfg") / "kaskade.toml"
    cfg.write_text(f"[limits]\nmax_joins_per_ip_per_sec = {JOINS_PER_SEC}\n")
    b = _start_bridge(tmp_path_factory, "bridge_join_limit", args=["--config", str(cfg), "--dev"])
    yield b
    _stop_bridge(b)


async def connect_from(bridge, source_ip: str, label: str) -> SignalClient:
    ws = await connect(bridge.ws_url, compression=None, ping_interval=None, open_timeout=5,
                       local_addr=(source_ip, 0))
    return SignalClient(ws, label)


def test_joins_per_source_ip(bridge_join_limit, room):
    """Eight joins at once from 127.0.0.1: the burst (4) joins, the rest get `rate_limited` and
    are closed; a join from 127.0.0.2 at the same moment is not affected; those who joined keep
    working; a second later 127.0.0.1 may join again."""
    bridge = bridge_join_limit
    before = limit_hits(bridge, "join_rate")
    hits: list[int] = []

    async def one(source_ip: str, i: int) -> tuple[SignalClient, dict | None]:
        c = await connect_from(bridge, source_ip, f"{source_ip}-{i}")
        await c.send({"type": "join", "room": room, "token": make_token(room, f"j-{source_ip}-{i}")})
        m = await c.recv(5)
        return c, m

    async def scenario():
        results = await asyncio.gather(*(one("127.0.0.1", i) for i in range(8)), one("127.0.0.2", 0))
        clients = [c for c, _ in results]
        try:
            local = results[:8]
            joined = [c for c, m in local if m["type"] == "joined"]
            limited = [(c, m) for c, m in local if m["type"] == "error"]
            hits.append(len(limited))
            assert 3 <= len(joined) <= 5, [m for _, m in local]
            assert len(joined) + len(limited) == 8
            for c, m in limited:
                assert m["code"] == "rate_limited" and m["fatal"] is True, m
                await c.expect_closed(5)
            other, m = results[8]
            assert m["type"] == "joined", f"a join from another address was refused: {m}"
            await asyncio.sleep(1.5)  # tokens for the probe join of assert_unaffected
            await assert_unaffected(bridge, room, joined[0])
            await asyncio.sleep(1.0)
            again = await connect_from(bridge, "127.0.0.1", "again")
            clients.append(again)
            await again.join(room, make_token(room, "j-again"), "Again")
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    run(scenario(), 40)
    assert limit_hits(bridge, "join_rate") == before + hits[0]


@pytest.fixture(scope="module")
def bridge_node_cap(tmp_path_factory):
    from conftest import _start_bridge, _stop_bridge

    cfg = tmp_path_factory.mktemp("cfg") / "kaskade.toml"
    cfg.write_text("[limits]\nmax_participants_per_node = 3\n")
    b = _start_bridge(tmp_path_factory, "bridge_node_cap", args=["--config", str(cfg), "--dev"])
    yield b
    _stop_bridge(b)


def test_participants_per_node(bridge_node_cap):
    """Three participants in two rooms fill a node capped at 3: the fourth join, in either
    room, gets `node_full` and is closed; the others carry on; once one leaves, a join fits."""
    bridge = bridge_node_cap
    room_a, room_b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    before = limit_hits(bridge, "node_participants")

    async def scenario():
        a1 = await joined_client(bridge, room_a, "a1")
        a2 = await joined_client(bridge, room_a, "a2")
        b1 = await joined_client(bridge, room_b, "b1")
        clients = [a1, a2, b1]
        try:
            late = await SignalClient.connect(bridge.ws_url, "late")
            clients.append(late)
            await late.send({"type": "join", "room": room_b, "token": make_token(room_b, "late-1")})
            err = await late.expect_fatal("node_full", 5)
            assert "3" in err["reason"], err
            await a1.ping()
            await b1.ping()
            await a2.send({"type": "leave"})
            await a2.expect_closed(5, after_leave=True)
            await a1.wait_for("participant_left", 5, lambda m: m["participant_id"] == a2.participant_id)
            again = await joined_client(bridge, room_b, "again")
            clients.append(again)
            await b1.wait_for("participant_joined", 5, lambda m: m["participant"]["id"] == again.participant_id)
        finally:
            await asyncio.gather(*(c.close() for c in clients))

    run(scenario(), 40)
    assert limit_hits(bridge, "node_participants") == before + 1

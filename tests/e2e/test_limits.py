"""Edge limits against the real binary: a client over a limit gets `rate_limited` and is closed,
the hit is counted in /metrics, and another participant of the same room notices nothing."""

from __future__ import annotations

import asyncio

import pytest

from harness import SignalClient, metric_value, run
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

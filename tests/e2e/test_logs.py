"""Structured logs of a real `kaskade serve`: JSON by default when the output is not a
terminal (a collector's pipe), one object per line with the session's bridge, room and
participant as fields; text when asked; per-target filters."""

from __future__ import annotations

import json

from harness import Bridge, SignalClient, ident, make_token, run, wait_until



def records(b: Bridge) -> list[dict]:
    """Every line of the node's log as JSON (the harness's own first line, `$ command`, aside)."""
    out = []
    for line in b.log_text().splitlines():
        if line.startswith("$ ") or not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise AssertionError(f"a log line is not JSON: {line!r}") from e
    return out


def start(tmp_path, name: str, log: str) -> Bridge:
    path = tmp_path / f"{name}.toml"
    path.write_text("dev = true\n[bridge]\nid = \"b-logs\"\n[log]\n" + log)
    return Bridge(tmp_path / f"{name}.log", args=["--config", str(path)]).start()


def join_and_leave(b: Bridge, room: str) -> str:
    async def scenario():
        c = await SignalClient.connect(b.ws_url, "logs")
        await c.join(room, make_token(room, ident("ada")), "Ada")
        pid = c.participant_id
        await c.send({"type": "leave"})
        await c.expect_closed(5, after_leave=True)
        return pid

    return run(scenario(), timeout=30)


def test_json_by_default_with_session_fields(tmp_path):
    # No log.format: the harness captures stdout to a file, so the node picks JSON.
    b = start(tmp_path, "json", 'level = "info,kaskade_bridge::signaling=debug"\n')
    try:
        room = ident("logs")
        pid = join_and_leave(b, room)

        def joined_lines():
            rs = records(b)
            return [r for r in rs if r.get("message") == "participant joined" and r.get("room") == room] and rs

        rs = wait_until("the join logged", joined_lines, 5)
        for r in rs:
            assert {"timestamp", "level", "target", "message"} <= set(r), r
        joined = next(r for r in rs if r.get("message") == "participant joined" and r.get("room") == room)
        # The media thread's lines name the bridge (its span) and the participant.
        assert joined["endpoint"] == pid and joined["conference"] and joined["span"]["bridge"] == "b-logs", joined
        # Signaling's lines carry the session span: bridge, room, participant.
        session = [r for r in rs if r.get("span", {}).get("name") == "session" and r["span"].get("room") == room]
        assert session, "no signaling line of the session"
        assert any(r["span"].get("participant") == pid for r in session), session
        assert all(r["span"]["bridge"] == "b-logs" for r in session), session
        left = wait_until("the leave logged", lambda: [r for r in records(b) if r.get("message") == "participant left"
                                                       and r.get("endpoint") == pid], 5)
        assert left[0]["conference"] == joined["conference"]
        # Nothing per packet: a handful of lines for a whole session.
        assert len([r for r in records(b) if r.get("endpoint") == pid]) < 20
    finally:
        b.stop()


def test_text_when_asked_and_per_target_filters(tmp_path):
    b = start(tmp_path, "text", 'format = "text"\nlevel = "warn,kaskade_bridge::shard=info"\n')
    try:
        room = ident("logs")
        join_and_leave(b, room)
        wait_until("the join logged", lambda: "participant joined" in b.log_text(), 5)
        lines = [line for line in b.log_text().splitlines() if line.strip() and not line.startswith("$ ")]
        assert not any(line.lstrip().startswith("{") for line in lines), "text format wrote JSON"
        # The filter: the shard's info lines pass, other targets' info lines do not.
        assert any("kaskade_bridge::shard" in line and " INFO " in line for line in lines), lines
        assert not any(" INFO " in line and "kaskade_bridge::shard" not in line for line in lines), lines
    finally:
        b.stop()


def test_small_kernel_udp_buffers_are_reported(tmp_path):
    """Ask for more than the kernel allows (net.core.rmem_max): the node says so with the
    sysctl to raise, and exports what it got."""
    from pathlib import Path

    from harness import metric_value

    rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    want = min(rmem_max * 4, 1 << 30)
    b = start(tmp_path, "buf", f'format = "json"\n[media]\nudp_buffer_bytes = {want}\n')
    try:
        rs = records(b)
        short = [r for r in rs if r["level"] == "WARN" and r.get("socket") == "media" and r.get("dir") == "recv"]
        assert short, [r.get("message") for r in rs]
        assert "net.core.rmem_max" in short[0]["message"] and short[0]["wanted"] == want, short[0]
        got = metric_value(b.metrics(), "kaskade_udp_buffer_bytes", socket="media", dir="recv")
        assert got is not None and 0 < got < want and got == short[0]["granted"], (got, short[0])
    finally:
        b.stop()


def test_joins_log_no_warnings(tmp_path):
    """A call of 30 receivers joining at once logs no warning: in particular a subscriber's
    connectivity checks that beat its answer to the node are held until the answer (counted
    by kaskade_early_stun_total), not refused by `rtc` with "password is empty" at WARN
    (about one receiver in ten did)."""
    from harness import call_summary, metric_value, start_call

    b = start(tmp_path, "warn", "")  # the default filter, as operators run it
    try:
        connected, clients, _, out = call_summary(start_call(b, ident("warn"), "4s", subscribers=30), 60)
        assert connected == clients == 31, out
        warnings = [r for r in records(b) if r["level"] in ("WARN", "ERROR")
                    and not r["message"].startswith("DEV MODE")]
        assert not warnings, warnings
        m = b.metrics()
        assert (metric_value(m, "kaskade_udp_dropped_total", reason="early_stun") or 0) == 0
        assert (metric_value(m, "kaskade_leg_read_errors_total") or 0) == 0
    finally:
        b.stop()

"""Signaling against a real bridge: the contract of proto/signaling.md, message by message.

Every bad input must get an `error` with the documented code (schema-valid), fatal ones followed
by a clean close (a WebSocket close frame from the bridge), and a well-behaved participant in the
same room must be unaffected: still connected, still answering pings, still getting events.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import time

import pytest
from websockets.protocol import State

from harness import (
    BRIDGE_VALIDATOR,
    MAX_MESSAGE_BYTES,
    SignalClient,
    decode_token,
    ident,
    make_token,
    metric_value,
    run,
    schema_errors,
    verify_hs256,
)
from media import AiortcParticipant, make_publisher_offer

# ---------------------------------------------------------------------------------------------
# helpers



async def joined_client(bridge, room: str, label: str, name: str | None = None, **claims) -> SignalClient:
    c = await SignalClient.connect(bridge.ws_url, label)
    await c.join(room, make_token(room, ident(label), **claims), name if name is not None else label)
    return c


async def assert_unaffected(bridge, room: str, good: SignalClient) -> None:
    """The well-behaved participant is still connected, answers pings and still gets events."""
    assert good.ws.state is State.OPEN, f"good participant was disconnected: {good.ws.close_code}"
    await good.ping()
    probe = await joined_client(bridge, room, "probe", name="Probe")
    ev = await good.wait_for(
        "participant_joined", 5, lambda m: m["participant"]["id"] == probe.participant_id
    )
    assert ev["participant"]["name"] == "Probe"
    await probe.send({"type": "leave"})
    await probe.expect_closed(5, after_leave=True)
    await good.wait_for("participant_left", 5, lambda m: m["participant_id"] == probe.participant_id)
    await good.ping()
    assert good.ws.state is State.OPEN
    assert not good.schema_violations, f"bridge sent schema-invalid messages: {good.schema_violations}"
    err = [m for m in good.received if m["type"] == "error"]
    assert not err, f"the good participant got errors caused by someone else: {err}"
    status, _, _ = bridge.get("/health")
    assert status == 200


async def misbehave_then_check(bridge, room: str, phase: str, attack) -> dict:
    """`good` joins; `bad` connects (and joins when phase == 'after_join'), runs `attack(bad)`,
    which must return the error it got; then `good` must be unaffected and, if `bad` had joined
    and the error was fatal, must see it leave."""
    good = await joined_client(bridge, room, "good", name="Good")
    bad = await SignalClient.connect(bridge.ws_url, "bad")
    try:
        if phase == "after_join":
            await bad.join(room, make_token(room, ident("bad")), "Bad")
            await good.wait_for(
                "participant_joined", 5, lambda m: m["participant"]["id"] == bad.participant_id
            )
        err = await attack(bad)
        if phase == "after_join" and err["fatal"]:
            await good.wait_for("participant_left", 5, lambda m: m["participant_id"] == bad.participant_id)
        await assert_unaffected(bridge, room, good)
        return err
    finally:
        await bad.close()
        await good.close()


def fatal(payload, code: str):
    """An attack: send `payload` (str / bytes / dict) and expect a fatal `code` and a clean close."""

    async def attack(bad: SignalClient) -> dict:
        data = json.dumps(payload) if isinstance(payload, dict) else payload
        await bad.send_raw(data)
        return await bad.expect_fatal(code)

    return attack


# ---------------------------------------------------------------------------------------------
# the HTTP side and tokens


def test_health_and_metrics(bridge):
    status, _body, _ = bridge.get("/health")
    assert status == 200
    status, body, headers = bridge.get("/metrics")
    assert status == 200
    text = body.decode()
    assert "kaskade_" in text, f"no kaskade_ metrics in /metrics:\n{text[:2000]}"
    ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    assert ctype.startswith("text/plain"), f"/metrics content-type {ctype!r}"


def test_demo_page_is_served(bridge):
    for path, must_contain, ctype_prefix in [
        ("/", "app.js", "text/html"),
        ("/app.js", "window.kaskade", "text/javascript"),
        ("/style.css", "{", "text/css"),
    ]:
        status, body, headers = bridge.get(path)
        assert status == 200, f"{path}: {status}"
        assert must_contain in body.decode(), f"{path} does not contain {must_contain!r}"
        ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
        assert ctype.startswith(ctype_prefix) or (
            path == "/app.js" and ctype.startswith("application/javascript")
        ), f"{path}: content-type {ctype!r}"


def test_dev_token_endpoint(bridge, room):
    status, body, _ = bridge.get(f"/api/dev-token?room={room}&identity=devuser&name=Dev%20User")
    assert status == 200, body
    data = json.loads(body)
    assert set(data) >= {"token", "url"}, data
    assert data["url"].startswith("ws://") and data["url"].endswith("/ws"), data["url"]
    assert verify_hs256(data["token"]), "dev token is not HS256-signed with the dev secret"
    head, claims = decode_token(data["token"])
    assert head["alg"] == "HS256"
    assert claims["room"] == room and claims["identity"] == "devuser"
    assert claims["exp"] > time.time()

    async def scenario():
        c = await SignalClient.connect(bridge.ws_url, "dev")
        joined = await c.join(room, data["token"], "Dev User")
        assert joined["participant"]["name"] == "Dev User"
        await c.close()

    run(scenario(), 20)


def test_cli_token(bridge, room):
    tok = bridge.cli_token(room, "cli-user", "--name", "Cli User", "--ttl", "120")
    assert verify_hs256(tok), "`kaskade token` output is not signed with the given secret"
    head, claims = decode_token(tok)
    assert head["alg"] == "HS256" and head["kid"] == "devkey", head
    assert claims["iss"] == "devkey"
    assert claims["room"] == room and claims["identity"] == "cli-user"
    assert claims.get("name") == "Cli User"
    assert abs(claims["exp"] - (time.time() + 120)) < 30
    assert claims.get("can_publish", True) is True

    no_pub = bridge.cli_token(room, "viewer", "--no-publish", "--no-subscribe")
    _, c2 = decode_token(no_pub)
    assert c2["can_publish"] is False and c2["can_subscribe"] is False

    async def scenario():
        c = await SignalClient.connect(bridge.ws_url, "cli")
        joined = await c.join(room, tok)  # no join.name: the token's name is used
        assert joined["participant"]["name"] == "Cli User"
        assert joined["room"] == room
        await c.close()

    run(scenario(), 20)


# ---------------------------------------------------------------------------------------------
# a normal session: every message the bridge sends validates against the schema


def test_normal_session_messages_match_schema(bridge, room):
    async def scenario():
        a_sig = await SignalClient.connect(bridge.ws_url, "alice")
        ja = await a_sig.join(room, make_token(room, ident("alice")), "Alice")
        assert ja["room"] == room and ja["participant"]["name"] == "Alice"
        assert ja["participants"] == [], f"empty room, yet joined lists {ja['participants']}"
        alice = AiortcParticipant(a_sig)
        await alice.publish()

        b_sig = await SignalClient.connect(bridge.ws_url, "bob")
        jb = await b_sig.join(room, make_token(room, ident("bob")), "Bob")
        bob = AiortcParticipant(b_sig)
        try:
            others = {p["id"]: p for p in jb["participants"]}
            assert list(others) == [a_sig.participant_id], jb
            assert others[a_sig.participant_id]["name"] == "Alice"
            assert jb["participant"]["id"] != a_sig.participant_id

            ev = await a_sig.wait_for(
                "participant_joined", 5, lambda m: m["participant"]["id"] == b_sig.participant_id
            )
            assert ev["participant"]["name"] == "Bob" and ev["participant"]["tracks"] == []

            # Alice's two tracks: listed in joined, or announced by track_published afterwards.
            kinds = {t["id"]: t["kind"] for t in others[a_sig.participant_id]["tracks"]}
            deadline = time.monotonic() + 10
            while sorted(kinds.values()) != ["audio", "video"]:
                tp = await b_sig.wait_for(
                    "track_published",
                    max(0.1, deadline - time.monotonic()),
                    lambda m: m["participant_id"] == a_sig.participant_id,
                )
                kinds[tp["track"]["id"]] = tp["track"]["kind"]

            # The subscriber offer labels Alice's streams with her participant id.
            # (an earlier offer without her tracks is allowed; answer offers until hers arrives)
            deadline = time.monotonic() + 10
            while True:
                offer = await bob.answer_subscriber_offer(max(0.1, deadline - time.monotonic()))
                if f"a=msid:{a_sig.participant_id} " in offer["sdp"]:
                    break

            # every participant entry names its bridge: here, the only one
            bridge_id = jb["bridge"]["id"]
            assert jb["participant"]["bridge"] == bridge_id
            assert all(p["bridge"] == bridge_id for p in jb["participants"]), jb["participants"]

            # chat: a line from alice reaches bob, attributed to her
            await a_sig.send({"type": "message", "text": "hello, Bob"})
            chat = await b_sig.wait_for("message", 5, lambda m: m["from"] == a_sig.participant_id)
            assert chat["name"] == "Alice" and chat["text"] == "hello, Bob"

            # A non-fatal error is also part of the bridge's vocabulary.
            await b_sig.send(
                {
                    "type": "candidate",
                    "target": "subscriber",
                    "candidate": {"candidate": "candidate:garbage", "sdpMid": "0", "sdpMLineIndex": 0},
                }
            )
            nf = await b_sig.expect_error("bad_candidate")
            assert nf["fatal"] is False
            await b_sig.ping()

            await a_sig.send({"type": "leave"})
            await a_sig.expect_closed(5, after_leave=True)
            await b_sig.wait_for("participant_left", 5, lambda m: m["participant_id"] == a_sig.participant_id)
            gone = set()
            while gone != set(kinds):
                tu = await b_sig.wait_for(
                    "track_unpublished", 5, lambda m: m["participant_id"] == a_sig.participant_id
                )
                gone.add(tu["track_id"])

            seen = {m["type"] for m in a_sig.received + b_sig.received}
            want = {
                "joined", "answer", "offer", "participant_joined", "participant_left",
                "track_published", "track_unpublished", "pong", "error", "message",
            }
            assert want <= seen, f"not exercised: {want - seen}"
            for c in (a_sig, b_sig):
                assert not c.schema_violations, f"{c.label}: schema violations: {c.schema_violations}"
                for m in c.received:
                    assert not schema_errors(BRIDGE_VALIDATOR, m)
        finally:
            await alice.close()
            await bob.close()

    run(scenario(), 60)


# ---------------------------------------------------------------------------------------------
# malformed frames


@pytest.mark.parametrize("phase", ["before_join", "after_join"])
@pytest.mark.parametrize(
    "payload",
    ['{"type": "join",', "hello", "", '{"type": "ping"} trailing', "{'type': 'ping'}"],
    ids=["truncated", "text", "empty", "trailing", "single_quotes"],
)
def test_malformed_json(bridge, room, phase, payload):
    run(misbehave_then_check(bridge, room, phase, fatal(payload, "bad_json")), 30)


@pytest.mark.parametrize(
    "payload",
    ["[]", '["join"]', '"ping"', "42", "null", "true", "{}", '{"type": 5}', '{"type": null}', '{"room": "x"}'],
    ids=["array", "array2", "string", "number", "null", "bool", "empty_object", "type_number", "type_null", "no_type"],
)
def test_not_a_message_object(bridge, room, payload):
    run(misbehave_then_check(bridge, room, "after_join", fatal(payload, "bad_json")), 30)


@pytest.mark.parametrize("mtype", ["subscribe", "JOIN", "Ping", "offer_v2", ""])
def test_unknown_type(bridge, room, mtype):
    run(misbehave_then_check(bridge, room, "after_join", fatal({"type": mtype}, "unknown_type")), 30)


BAD_JOINS = {
    "no_token": {"type": "join", "room": "ROOM"},
    "no_room": {"type": "join", "token": "TOKEN"},
    "room_number": {"type": "join", "room": 5, "token": "TOKEN"},
    "token_number": {"type": "join", "room": "ROOM", "token": 12345},
    "name_number": {"type": "join", "room": "ROOM", "token": "TOKEN", "name": 7},
    "room_empty": {"type": "join", "room": "", "token": "TOKEN"},
    "room_129_chars": {"type": "join", "room": "r" * 129, "token": "TOKEN"},
    "name_65_chars": {"type": "join", "room": "ROOM", "token": "TOKEN", "name": "n" * 65},
}


@pytest.mark.parametrize("case", list(BAD_JOINS))
def test_join_missing_or_wrong_fields(bridge, room, case):
    tok = make_token(room, ident("bad"))
    msg = {k: (room if v == "ROOM" else tok if v == "TOKEN" else v) for k, v in BAD_JOINS[case].items()}
    run(misbehave_then_check(bridge, room, "before_join", fatal(msg, "bad_message")), 30)


BAD_AFTER_JOIN = {
    "offer_no_sdp": {"type": "offer", "target": "publisher"},
    "offer_no_target": {"type": "offer", "sdp": "v=0\r\n"},
    "offer_target_subscriber": {"type": "offer", "target": "subscriber", "sdp": "v=0\r\n"},
    "offer_target_bogus": {"type": "offer", "target": "both", "sdp": "v=0\r\n"},
    "offer_sdp_number": {"type": "offer", "target": "publisher", "sdp": 42},
    "answer_no_sdp": {"type": "answer", "target": "subscriber"},
    "answer_target_publisher": {"type": "answer", "target": "publisher", "sdp": "v=0\r\n"},
    "candidate_no_target": {"type": "candidate", "candidate": None},
    "candidate_missing": {"type": "candidate", "target": "publisher"},
    "candidate_is_string": {"type": "candidate", "target": "publisher", "candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host"},
    "candidate_target_bogus": {"type": "candidate", "target": "sideways", "candidate": None},
    "message_no_text": {"type": "message"},
    "message_empty_text": {"type": "message", "text": ""},
    "message_1001_chars": {"type": "message", "text": "x" * 1001},
    "message_text_number": {"type": "message", "text": 5},
    "constraints_not_a_track": {"type": "video_constraints", "tracks": {"EP00000001": 180}},
    "constraints_over_8k": {"type": "video_constraints", "max_height": 5000},
    "constraints_track_over_8k": {"type": "video_constraints", "tracks": {"TR00000001": 4321}},
    "constraints_negative": {"type": "video_constraints", "max_height": -1},
    "constraints_fraction": {"type": "video_constraints", "tracks": {"TR00000001": 180.5}},
    "constraints_list": {"type": "video_constraints", "tracks": ["TR00000001"]},
    "constraints_unknown_field": {"type": "video_constraints", "max_layer": 2},
}


@pytest.mark.parametrize("case", list(BAD_AFTER_JOIN))
def test_message_missing_or_wrong_fields(bridge, room, case):
    run(misbehave_then_check(bridge, room, "after_join", fatal(BAD_AFTER_JOIN[case], "bad_message")), 30)


@pytest.mark.parametrize("phase", ["before_join", "after_join"])
@pytest.mark.parametrize("size", [MAX_MESSAGE_BYTES + 1, 200_000, 1_000_000])
def test_message_too_large(bridge, room, phase, size):
    head = '{"type": "ping", "pad": "'
    payload = head + "x" * (size - len(head) - 2) + '"}'
    assert len(payload.encode()) == size
    run(misbehave_then_check(bridge, room, phase, fatal(payload, "message_too_large")), 30)


def test_message_of_exactly_the_limit_is_not_too_large(bridge, room):
    """A 65536-byte candidate message is within the limit: a (non-fatal) bad_candidate, no more."""

    async def attack(bad: SignalClient) -> dict:
        prefix = '{"type":"candidate","target":"publisher","candidate":{"candidate":"candidate:'
        suffix = '","sdpMid":"0","sdpMLineIndex":0}}'
        payload = prefix + "x" * (MAX_MESSAGE_BYTES - len(prefix) - len(suffix)) + suffix
        assert len(payload.encode()) == MAX_MESSAGE_BYTES
        await bad.send_raw(payload)
        err = await bad.expect_error("bad_candidate")
        assert err["fatal"] is False
        await bad.ping()
        return err

    run(misbehave_then_check(bridge, room, "after_join", attack), 30)


@pytest.mark.parametrize("phase", ["before_join", "after_join"])
@pytest.mark.parametrize("data", [b'{"type": "ping"}', b"\x00\x01\x02\xff" * 10, b""], ids=["json", "noise", "empty"])
def test_binary_frame(bridge, room, phase, data):
    run(misbehave_then_check(bridge, room, phase, fatal(data, "binary_frame")), 30)


# ---------------------------------------------------------------------------------------------
# order of a session


@pytest.mark.parametrize(
    "msg",
    [
        {"type": "ping"},
        {"type": "leave"},
        {"type": "offer", "target": "publisher", "sdp": "v=0\r\n"},
        {"type": "answer", "target": "subscriber", "sdp": "v=0\r\n"},
        {"type": "candidate", "target": "publisher", "candidate": None},
        {"type": "message", "text": "hello?"},
    ],
    ids=lambda m: m["type"],
)
def test_anything_before_join(bridge, room, msg):
    run(misbehave_then_check(bridge, room, "before_join", fatal(msg, "not_joined")), 30)


@pytest.mark.parametrize("same_token", [True, False])
def test_second_join(bridge, room, same_token):
    async def attack(bad: SignalClient) -> dict:
        other_room = room if same_token else room + "-other"
        tok = make_token(other_room, ident("bad2"))
        await bad.send({"type": "join", "room": other_room, "token": tok, "name": "Again"})
        return await bad.expect_fatal("already_joined")

    err = run(misbehave_then_check(bridge, room, "after_join", attack), 30)
    assert err["code"] == "already_joined"


# ---------------------------------------------------------------------------------------------
# tokens


def _tampered(room: str) -> str:
    tok = make_token(room + "-elsewhere", ident("bad"))
    head, _payload, sig = tok.split(".")
    forged = make_token(room, ident("bad")).split(".")[1]
    return f"{head}.{forged}.{sig}"


BAD_TOKENS = {
    "wrong_secret": lambda room: make_token(room, ident("bad"), secret="not-the-secret"),
    "alg_none": lambda room: make_token(room, ident("bad"), alg="none"),
    "alg_hs512": lambda room: make_token(room, ident("bad"), alg="HS512"),
    "unknown_api_key": lambda room: make_token(room, ident("bad"), api_key="nosuchkey"),
    "tampered_payload": _tampered,
    "garbage": lambda room: "not-a-jwt",
    "three_garbage_parts": lambda room: "a.b.c",
    "missing_exp": lambda room: make_token(room, ident("bad"), omit=("exp",)),
    "missing_identity": lambda room: make_token(room, ident("bad"), omit=("identity",)),
    # Longer than auth.max_token_ttl_secs (24 h by default), however well signed.
    "lifetime_30_days": lambda room: make_token(room, ident("bad"), ttl=30 * 86400),
    # kid picks the key; naming another than iss is refused.
    "kid_names_another_key": lambda room: make_token(room, ident("bad"), kid="otherkey"),
    "kid_of_unknown_key": lambda room: make_token(room, ident("bad"), kid="nosuchkey", api_key="nosuchkey"),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
def test_bad_token(bridge, room, case):
    msg = {"type": "join", "room": room, "token": BAD_TOKENS[case](room), "name": "Bad"}
    run(misbehave_then_check(bridge, room, "before_join", fatal(msg, "unauthorized")), 30)


@pytest.mark.parametrize(
    "claims",
    [{"exp": -60}, {"exp": -3600}, {"nbf": 60, "exp": 3600}, {"nbf": 3600, "exp": 7200}],
    ids=["exp_60s_ago", "exp_1h_ago", "nbf_in_60s", "nbf_in_1h"],
)
def test_token_expired_or_not_yet_valid(bridge, room, claims):
    now = int(time.time())
    tok = make_token(room, ident("bad"), **{k: now + v for k, v in claims.items()})
    msg = {"type": "join", "room": room, "token": tok, "name": "Bad"}
    run(misbehave_then_check(bridge, room, "before_join", fatal(msg, "token_expired")), 30)


@pytest.mark.parametrize("claims", [{"exp": -3}, {"nbf": 3}], ids=["exp_3s_ago", "nbf_in_3s"])
def test_token_clock_skew_is_tolerated(bridge, room, claims):
    """signaling.md: a clock skew of 10 s is tolerated on exp and nbf."""
    now = int(time.time())
    extra = {k: now + v for k, v in claims.items()}

    async def scenario():
        c = await SignalClient.connect(bridge.ws_url, "skew")
        await c.join(room, make_token(room, ident("skew"), **extra), "Skew")
        await c.ping()
        await c.close()

    run(scenario(), 20)


def test_wrong_room(bridge, room):
    msg = {"type": "join", "room": room, "token": make_token(room + "-b", ident("bad")), "name": "Bad"}
    run(misbehave_then_check(bridge, room, "before_join", fatal(msg, "wrong_room")), 30)


def test_room_full(bridge_cap2, room):
    """KASKADE_MAX_PARTICIPANTS=2: the third join is refused; a freed seat can be taken again."""

    async def scenario():
        good = await joined_client(bridge_cap2, room, "good", name="Good")
        second = await joined_client(bridge_cap2, room, "second", name="Second")
        third = await SignalClient.connect(bridge_cap2.ws_url, "third")
        try:
            await good.wait_for("participant_joined", 5, lambda m: m["participant"]["id"] == second.participant_id)
            await third.send({"type": "join", "room": room, "token": make_token(room, ident("third")), "name": "Third"})
            await third.expect_fatal("room_full")
            # other rooms are not affected by this room being full
            other = await joined_client(bridge_cap2, room + "-other", "other")
            await other.close()
            # the good participant is unaffected and saw nobody else join
            await good.ping()
            assert not [m for m in good.received if m["type"] == "error"]
            joined_ids = {m["participant"]["id"] for m in good.received if m["type"] == "participant_joined"}
            assert joined_ids == {second.participant_id}, joined_ids
            # free a seat: a new participant fits again, and good sees the whole story
            await second.send({"type": "leave"})
            await second.expect_closed(after_leave=True)
            await good.wait_for("participant_left", 5, lambda m: m["participant_id"] == second.participant_id)
            fourth = await joined_client(bridge_cap2, room, "fourth", name="Fourth")
            await good.wait_for("participant_joined", 5, lambda m: m["participant"]["id"] == fourth.participant_id)
            await fourth.close()
            await good.wait_for("participant_left", 10, lambda m: m["participant_id"] == fourth.participant_id)
            await good.ping()
            assert not good.schema_violations
        finally:
            for c in (good, second, third):
                await c.close()

    run(scenario(), 45)


# ---------------------------------------------------------------------------------------------
# publishing and SDP


def test_publish_without_can_publish(bridge, room):
    async def scenario():
        good = await joined_client(bridge, room, "good", name="Good")
        viewer = await SignalClient.connect(bridge.ws_url, "viewer")
        pc, sdp = await make_publisher_offer()
        try:
            await viewer.join(room, bridge.cli_token(room, ident("viewer"), "--no-publish"), "Viewer")
            await good.wait_for("participant_joined", 5, lambda m: m["participant"]["id"] == viewer.participant_id)
            await viewer.send({"type": "offer", "target": "publisher", "sdp": sdp})
            await viewer.expect_fatal("forbidden")
            await good.wait_for("participant_left", 5, lambda m: m["participant_id"] == viewer.participant_id)
            published = [m for m in good.received if m["type"] == "track_published"]
            assert not published, f"a forbidden publisher's tracks were announced: {published}"
            await assert_unaffected(bridge, room, good)
        finally:
            await pc.close()
            await viewer.close()
            await good.close()

    run(scenario(), 30)


def test_valid_publish_is_answered(bridge, room):
    """Control case for the SDP tests: a real aiortc offer gets a publisher answer, ICE-lite."""

    async def scenario():
        c = await joined_client(bridge, room, "pub")
        pc, sdp = await make_publisher_offer()
        try:
            await c.send({"type": "offer", "target": "publisher", "sdp": sdp})
            ans = await c.wait_for("answer", 10, lambda m: m["target"] == "publisher")
            lines = ans["sdp"].splitlines()
            assert "a=ice-lite" in lines, "the bridge is ICE-lite and must say so"
            cands = [ln for ln in lines if ln.startswith("a=candidate:")]
            assert cands, "the answer carries the bridge's host candidate"
            assert all(f" {bridge.media_port} typ host" in ln for ln in cands), cands
            assert all(f" {bridge.advertise_ip} " in ln for ln in cands), cands
            assert len(ans["sdp"].encode()) <= 32768
        finally:
            await pc.close()
            await c.close()

    run(scenario(), 30)


def _sdp_with_sections(n: int) -> str:
    """A syntactically valid offer with n minimal audio sections (transport at session level)."""
    lines = [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE " + " ".join(str(i) for i in range(n)),
        "a=ice-ufrag:Ab3d",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        "a=fingerprint:sha-256 " + ":".join(["5A"] * 32),
        "a=setup:actpass",
    ]
    for i in range(n):
        lines += [
            "m=audio 9 UDP/TLS/RTP/SAVPF 111",
            "c=IN IP4 0.0.0.0",
            f"a=mid:{i}",
            "a=sendonly",
            "a=rtcp-mux",
            "a=rtpmap:111 opus/48000/2",
        ]
    return "\r\n".join(lines) + "\r\n"


async def _real_offer_sdp() -> str:
    pc, sdp = await make_publisher_offer()
    await pc.close()
    return sdp


def _insert_after_first_mline(sdp: str, extra: list[str]) -> str:
    lines = sdp.split("\r\n")
    idx = next(i for i, ln in enumerate(lines) if ln.startswith("m="))
    return "\r\n".join(lines[: idx + 1] + extra + lines[idx + 1 :])


def _insert_after_video_mline(sdp: str, extra: list[str]) -> str:
    lines = sdp.split("\r\n")
    idx = next((i for i, ln in enumerate(lines) if ln.startswith("m=video")), None)
    if idx is None:  # an audio-only offer: give it a video section to carry the lines
        lines += ["m=video 9 UDP/TLS/RTP/SAVPF 96", "a=mid:v", "a=rtpmap:96 VP8/90000"]
        idx = len(lines) - 1
    return "\r\n".join(lines[: idx + 1] + extra + lines[idx + 1 :])


HOSTILE_SDP = {
    "not_sdp": lambda real: "hello, I am not an SDP",
    "only_version": lambda real: "v=0\r\n",
    "binary_noise": lambda real: "".join(chr(b) for b in random.Random(7).randbytes(3000)),
    "huge_40k": lambda real: _insert_after_first_mline(real, [f"a=x-pad-{i}:" + "p" * 60 for i in range(600)]),
    "100_mlines": lambda real: _sdp_with_sections(100),
    "17_mlines": lambda real: _sdp_with_sections(17),
    "garbage_lines": lambda real: _insert_after_first_mline(
        real, ["this line has no equals sign", "zz=two-letter type", "=novalue", "\x00\x01\x02\x7f"]
    ),
    "bad_mline": lambda real: real.replace("m=audio ", "m=audio notaport ", 1),
    "no_codec_we_take": lambda real: _sdp_with_sections(1).replace("opus/48000/2", "x-nonsense/8000"),
    "no_ice_credentials": lambda real: "\r\n".join(
        ln for ln in real.split("\r\n") if not ln.startswith(("a=ice-ufrag", "a=ice-pwd"))
    ),
    "no_fingerprint": lambda real: "\r\n".join(
        ln for ln in real.split("\r\n") if not ln.startswith("a=fingerprint")
    ),
    # SSRC-group simulcast is not parsed by rtc: refused with a reason that names it.
    "ssrc_group_simulcast": lambda real: _insert_after_video_mline(
        real, ["a=ssrc-group:SIM 1001 1002 1003"]
    ),
    "four_simulcast_layers": lambda real: _insert_after_video_mline(
        real, [f"a=rid:{r} send" for r in "abcd"] + ["a=simulcast:send a;b;c;d"]
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_SDP))
def test_bad_or_hostile_sdp(bridge, room, case):
    async def attack(bad: SignalClient) -> dict:
        sdp = HOSTILE_SDP[case](await _real_offer_sdp())
        msg = json.dumps({"type": "offer", "target": "publisher", "sdp": sdp})
        assert len(msg.encode()) <= MAX_MESSAGE_BYTES, "the SDP case must fit in one message"
        await bad.send_raw(msg)
        err = await bad.expect_fatal("bad_sdp", timeout=10)
        if case == "ssrc_group_simulcast":
            assert "ssrc-group" in err["reason"] and "rid" in err["reason"], err
        if case == "four_simulcast_layers":
            assert "at most 3" in err["reason"], err
        return err

    run(misbehave_then_check(bridge, room, "after_join", attack), 40)


def test_100_mline_sdp_size_is_under_the_sdp_limit():
    """The 100-m-line case must be refused for its section count, not its size."""
    assert len(_sdp_with_sections(100).encode()) < 32768


# ---------------------------------------------------------------------------------------------
# candidates (non-fatal)

BAD_CANDIDATES = {
    "garbage": {"candidate": "candidate:garbage", "sdpMid": "0", "sdpMLineIndex": 0},
    "bad_ip": {"candidate": "candidate:1 1 udp 2130706431 999.1.2.3 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0},
    "bad_port": {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 99999 typ host", "sdpMid": "0", "sdpMLineIndex": 0},
    "no_typ": {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000", "sdpMid": "0", "sdpMLineIndex": 0},
    "huge": {"candidate": "candidate:" + "9" * 30000, "sdpMid": "0", "sdpMLineIndex": 0},
}


@pytest.mark.parametrize("case", list(BAD_CANDIDATES))
def test_bad_candidate_is_not_fatal(bridge, room, case):
    async def attack(bad: SignalClient) -> dict:
        pc = None
        try:
            pc, sdp = await make_publisher_offer()
            await bad.send({"type": "offer", "target": "publisher", "sdp": sdp})
            await bad.wait_for("answer", 10, lambda m: m["target"] == "publisher")
            await bad.send({"type": "candidate", "target": "publisher", "candidate": BAD_CANDIDATES[case]})
            err = await bad.expect_error("bad_candidate")
            assert err["fatal"] is False
            # still connected and served; the end-of-candidates forms are not errors
            await bad.send({"type": "candidate", "target": "publisher", "candidate": None})
            await bad.send(
                {
                    "type": "candidate",
                    "target": "publisher",
                    "candidate": {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0},
                }
            )
            await bad.ping()
            assert bad.ws.state is State.OPEN
            assert [m["code"] for m in bad.received if m["type"] == "error"] == ["bad_candidate"]
            return err
        finally:
            if pc is not None:
                await pc.close()

    run(misbehave_then_check(bridge, room, "after_join", attack), 30)


def test_leave_closes_socket_and_others_see_it(bridge, room):
    async def scenario():
        good = await joined_client(bridge, room, "good")
        other = await joined_client(bridge, room, "other", name="Other")
        await good.wait_for("participant_joined", 5, lambda m: m["participant"]["id"] == other.participant_id)
        await other.send({"type": "leave"})
        await other.expect_closed(5, after_leave=True)
        await good.wait_for("participant_left", 5, lambda m: m["participant_id"] == other.participant_id)
        # closing the socket without leave is also a leave
        third = await joined_client(bridge, room, "third")
        await good.wait_for("participant_joined", 5, lambda m: m["participant"]["id"] == third.participant_id)
        await third.ws.close()
        await good.wait_for("participant_left", 5, lambda m: m["participant_id"] == third.participant_id)
        await good.ping()
        await good.close()

    run(scenario(), 30)


# ---------------------------------------------------------------------------------------------
# chat, replaced sessions, media timeout


def test_chat_reaches_everyone_else(bridge, room):
    async def scenario():
        a = await joined_client(bridge, room, "a", name="Ana")
        b = await joined_client(bridge, room, "b", name="Ben")
        c = await joined_client(bridge, room, "c", name="Cy")
        try:
            text = "héllo wörld ✓ " + "z" * 986  # multi-byte characters, 1000 characters in all
            assert len(text) == 1000
            await a.send({"type": "message", "text": text})
            for other in (b, c):
                m = await other.wait_for("message", 5, lambda m: m["from"] == a.participant_id)
                assert m["name"] == "Ana" and m["text"] == text
            # another room hears nothing
            elsewhere = await joined_client(bridge, room + "-x", "x")
            await a.send({"type": "message", "text": "second"})
            await b.wait_for("message", 5, lambda m: m["text"] == "second")
            await elsewhere.ping()
            assert not [m for m in elsewhere.received if m["type"] == "message"]
            await elsewhere.close()
            for cl in (a, b, c):
                assert not cl.schema_violations, cl.schema_violations
        finally:
            for cl in (a, b, c):
                await cl.close()

    run(scenario(), 30)


def test_same_identity_replaces_the_first_session(bridge, room):
    """signaling.md: a second join with the same identity replaces the first session, which
    gets the fatal error `replaced`."""

    async def scenario():
        good = await joined_client(bridge, room, "good", name="Good")
        identity = ident("twice")
        first = await SignalClient.connect(bridge.ws_url, "first")
        second = await SignalClient.connect(bridge.ws_url, "second")
        try:
            await first.join(room, make_token(room, identity), "Twice")
            await good.wait_for("participant_joined", 5, lambda m: m["participant"]["id"] == first.participant_id)
            await second.join(room, make_token(room, identity), "Twice")
            await first.expect_fatal("replaced")
            await second.ping()
            if second.participant_id != first.participant_id:
                await good.wait_for("participant_left", 5, lambda m: m["participant_id"] == first.participant_id)
                await good.wait_for(
                    "participant_joined", 5, lambda m: m["participant"]["id"] == second.participant_id
                )
            await assert_unaffected(bridge, room, good)
        finally:
            for c in (good, first, second):
                await c.close()

    run(scenario(), 30)


@pytest.fixture(scope="module")
def bridge_short_leg_timeout(tmp_path_factory):
    from conftest import _start_bridge, _stop_bridge

    cfg = tmp_path_factory.mktemp("cfg") / "kaskade.toml"
    cfg.write_text("[media]\nleg_timeout_secs = 2\n")
    b = _start_bridge(tmp_path_factory, "bridge_short_leg_timeout", args=["--config", str(cfg), "--dev"])
    yield b
    _stop_bridge(b)


def test_media_timeout(bridge_short_leg_timeout, room):
    """A publisher PeerConnection that never gets a single ICE check ends its session with
    `media_timeout` after media.leg_timeout_secs (2 s here); the others stay."""
    bridge = bridge_short_leg_timeout

    async def scenario():
        good = await joined_client(bridge, room, "good", name="Good")
        bad = await joined_client(bridge, room, "silent", name="Silent")
        pc, sdp = await make_publisher_offer()
        await pc.close()  # the offer is real, but nothing will ever answer the bridge's candidate
        try:
            await good.wait_for("participant_joined", 5, lambda m: m["participant"]["id"] == bad.participant_id)
            await bad.send({"type": "offer", "target": "publisher", "sdp": sdp})
            await bad.wait_for("answer", 10, lambda m: m["target"] == "publisher")
            t0 = time.monotonic()
            # keep the signaling socket itself busy, so only the media side is silent
            while time.monotonic() - t0 < 15:
                try:
                    await bad.send({"type": "ping"})
                except Exception:  # noqa: BLE001 - the bridge may close it any moment now
                    break
                try:
                    await bad.wait_for("error", 1)
                    break
                except TimeoutError:
                    continue
                except Exception:  # noqa: BLE001
                    break
            errs = [m for m in bad.received if m["type"] == "error"]
            assert errs and errs[0]["code"] == "media_timeout", f"errors: {errs}"
            assert errs[0]["fatal"] is True
            assert 1.5 <= time.monotonic() - t0 <= 12, f"after {time.monotonic() - t0:.1f} s"
            await bad.expect_closed(5)
            await good.wait_for("participant_left", 5, lambda m: m["participant_id"] == bad.participant_id)
            await assert_unaffected(bridge, room, good)
        finally:
            await bad.close()
            await good.close()

    run(scenario(), 40)


# ---------------------------------------------------------------------------------------------
# the media port under garbage

UNKNOWN_SOURCE_METRIC = ("kaskade_udp_dropped_total", {"reason": "unknown_source"})


def _stun_header(msg_type: int, length: int) -> bytes:
    return struct.pack("!HHI", msg_type, length, 0x2112A442) + os.urandom(12)


def _stun_binding_with_username(username: bytes) -> bytes:
    pad = (-len(username)) % 4
    attr = struct.pack("!HH", 0x0006, len(username)) + username + b"\0" * pad
    mi = struct.pack("!HH", 0x0008, 20) + os.urandom(20)  # MESSAGE-INTEGRITY that cannot verify
    body = attr + mi
    return _stun_header(0x0001, len(body)) + body


def _fake_rtp(rng: random.Random, seq: int) -> bytes:
    pt = rng.choice([96, 111, 100, 0])
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, seq * 960, 0xDEADBEEF) + rng.randbytes(rng.randint(10, 1100))


def _fake_rtcp(rng: random.Random) -> bytes:
    # an RTCP receiver report header followed by noise
    return struct.pack("!BBHI", 0x81, 201, 7, 0xCAFEBABE) + rng.randbytes(28)


def test_udp_garbage_does_not_hurt_the_bridge(bridge, room):
    rng = random.Random(20240611)
    kinds: dict[str, list[bytes]] = {
        "random": [rng.randbytes(rng.randint(1, 1400)) for _ in range(200)],
        "truncated_stun": [_stun_header(0x0001, 48)[: rng.randint(1, 19)] for _ in range(50)]
        + [_stun_header(0x0001, 200) + b"\x00\x06" for _ in range(50)],
        "stun_unknown_ufrag": [_stun_binding_with_username(b"nosuch:ufrag") for _ in range(50)],
        "rtp": [_fake_rtp(rng, i) for i in range(300)],
        "rtcp": [_fake_rtcp(rng) for _ in range(50)],
        "dtls": [bytes([22, 0xFE, 0xFD]) + rng.randbytes(100) for _ in range(50)],
        "empty": [b""] * 10,
        "max_size": [rng.randbytes(65507) for _ in range(5)],
    }
    metric, labels = UNKNOWN_SOURCE_METRIC
    m0 = bridge.metrics()
    before = metric_value(m0, metric, **labels) or 0.0
    before_all = metric_value(m0, metric) or 0.0

    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    try:
        sent = 0
        order = [(k, p) for k, ps in kinds.items() for p in ps]
        rng.shuffle(order)
        for i, (_kind, pkt) in enumerate(order):
            socks[i % len(socks)].sendto(pkt, ("127.0.0.1", bridge.media_port))
            sent += 1
            if i % 25 == 0:
                time.sleep(0.002)  # paced, so the socket buffer does not overflow
            if i == len(order) // 2:
                status, _, _ = bridge.get("/health", timeout=3)
                assert status == 200, "bridge stalled during the flood"
    finally:
        for s in socks:
            s.close()

    time.sleep(0.5)
    assert bridge.alive(), "the bridge died from garbage datagrams"
    status, _, _ = bridge.get("/health", timeout=3)
    assert status == 200

    # Not stalled: a join and a publish negotiation still work right away.
    async def scenario():
        c = await joined_client(bridge, room, "after-flood")
        pc, sdp = await make_publisher_offer()
        try:
            await c.send({"type": "offer", "target": "publisher", "sdp": sdp})
            await c.wait_for("answer", 10, lambda m: m["target"] == "publisher")
            await c.ping()
        finally:
            await pc.close()
            await c.close()

    run(scenario(), 30)

    metrics = bridge.metrics()
    after = metric_value(metrics, metric, **labels)
    assert after is not None, (
        f"metric {metric}{labels} not found; udp metrics: "
        f"{ {k: v for k, v in metrics.items() if 'udp' in k} }"
    )
    media_like = len(kinds["rtp"]) + len(kinds["rtcp"])
    assert after - before >= 0.9 * media_like, (
        f"{metric}{labels} rose by {after - before}, expected >= {0.9 * media_like} "
        f"(sent {sent} datagrams, {media_like} RTP/RTCP from unknown sources)"
    )
    # every datagram sent was garbage: each must be counted as dropped, for some reason
    after_all = metric_value(metrics, metric) or 0.0
    assert after_all - before_all >= 0.9 * sent, (
        f"{metric} (all reasons) rose by {after_all - before_all}, expected >= {0.9 * sent}"
    )

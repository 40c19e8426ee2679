"""proto/signaling.schema.json against the message tables of proto/signaling.md (no bridge)."""

from __future__ import annotations

import re

import pytest

from harness import ANY_VALIDATOR, BRIDGE_VALIDATOR, CLIENT_VALIDATOR, REPO_ROOT, load_schema, schema_errors

SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
TRACK = {"id": "TR1", "kind": "video"}
PARTICIPANT = {"id": "EP1", "name": "Ada", "bridge": "bridge-2", "tracks": [TRACK]}

VALID_CLIENT = [
    {"type": "join", "room": "r", "token": "a.b.c"},
    {"type": "join", "room": "r" * 128, "token": "a.b.c", "name": "n" * 64},
    {"type": "join", "room": "r", "token": "a.b.c", "name": ""},
    {"type": "join", "room": "r", "token": "a.b.c", "region": "eu-west", "redirected": True},
    {"type": "offer", "target": "publisher", "sdp": SDP},
    {"type": "answer", "target": "subscriber", "sdp": SDP},
    {"type": "candidate", "target": "publisher", "candidate": None},
    {"type": "candidate", "target": "subscriber", "candidate": {"candidate": ""}},
    {
        "type": "candidate",
        "target": "publisher",
        "candidate": {
            "candidate": "candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host",
            "sdpMid": "0",
            "sdpMLineIndex": 0,
            "usernameFragment": "abcd",
        },
    },
    {
        "type": "candidate",
        "target": "publisher",
        "candidate": {"candidate": "candidate:x", "sdpMid": None, "sdpMLineIndex": None, "usernameFragment": None},
    },
    {"type": "message", "text": "hello"},
    {"type": "message", "text": "x" * 1000},
    {"type": "video_constraints", "max_height": 720, "tracks": {"TR01000002": 180, "TR01000004": 0}},
    {"type": "video_constraints", "max_height": None},
    {"type": "video_constraints", "tracks": {}},
    {"type": "leave"},
    {"type": "ping"},
]

VALID_BRIDGE = [
    {
        "type": "joined",
        "room": "r",
        "participant": {"id": "EP2", "name": "Bob", "bridge": "bridge-1", "tracks": []},
        "participants": [PARTICIPANT],
        "bridge": {"id": "bridge-1", "region": "eu"},
    },
    {"type": "answer", "target": "publisher", "sdp": SDP},
    {"type": "offer", "target": "subscriber", "sdp": SDP},
    {"type": "participant_joined", "participant": {"id": "EP3", "name": "", "bridge": "bridge-1", "tracks": []}},
    {"type": "participant_left", "participant_id": "EP3"},
    {"type": "track_published", "participant_id": "EP1", "track": {"id": "TR2", "kind": "audio"}},
    {"type": "track_unpublished", "participant_id": "EP1", "track_id": "TR2"},
    {"type": "track_muted", "participant_id": "EP1", "track_id": "TR2", "muted": True},
    {"type": "track_published", "participant_id": "EP1", "track": {"id": "TR3", "kind": "video", "muted": True}},
    {"type": "redirect", "url": "wss://b2.example/ws", "token": "a.b.c", "bridge": "bridge-2"},
    {"type": "migrate", "url": "ws://10.0.0.2:7880/ws", "token": "a.b.c", "bridge": "bridge-2"},
    {"type": "message", "from": "EP1", "name": "Ada", "text": "hi all"},
    {"type": "dominant_speaker", "participant_id": "EP1", "recent": ["EP1", "EP3"]},
    {"type": "dominant_speaker", "participant_id": None, "recent": []},
    {"type": "pong"},
    {"type": "error", "code": "replaced", "reason": "joined elsewhere", "fatal": True},
    {"type": "error", "code": "media_timeout", "reason": "no media for 30 s", "fatal": True},
    {"type": "error", "code": "bad_candidate", "reason": "unparsable", "fatal": False},
    {"type": "error", "code": "room_full", "reason": "max 2", "fatal": True},
]

INVALID_CLIENT = {
    "join_without_token": {"type": "join", "room": "r"},
    "join_room_empty": {"type": "join", "room": "", "token": "t"},
    "join_room_129": {"type": "join", "room": "r" * 129, "token": "t"},
    "join_name_65": {"type": "join", "room": "r", "token": "t", "name": "n" * 65},
    "join_region_65": {"type": "join", "room": "r", "token": "t", "region": "r" * 65},
    "join_extra_field": {"type": "join", "room": "r", "token": "t", "admin": True},
    "offer_to_subscriber": {"type": "offer", "target": "subscriber", "sdp": SDP},
    "answer_to_publisher": {"type": "answer", "target": "publisher", "sdp": SDP},
    "offer_sdp_too_long": {"type": "offer", "target": "publisher", "sdp": "v" * 32769},
    "candidate_missing": {"type": "candidate", "target": "publisher"},
    "candidate_string": {"type": "candidate", "target": "publisher", "candidate": "candidate:x"},
    "candidate_bad_target": {"type": "candidate", "target": "both", "candidate": None},
    "candidate_negative_index": {
        "type": "candidate",
        "target": "publisher",
        "candidate": {"candidate": "c", "sdpMLineIndex": -1},
    },
    "ping_with_payload": {"type": "ping", "x": 1},
    "message_empty": {"type": "message", "text": ""},
    "message_1001": {"type": "message", "text": "x" * 1001},
    "message_not_string": {"type": "message", "text": 5},
    "message_with_from": {"type": "message", "text": "hi", "from": "EP1"},
    "constraints_negative": {"type": "video_constraints", "max_height": -1},
    "constraints_over_8k": {"type": "video_constraints", "tracks": {"TR01000002": 4321}},
    "constraints_not_a_track": {"type": "video_constraints", "tracks": {"EP1": 180}},
    "constraints_fraction": {"type": "video_constraints", "tracks": {"TR01000002": 180.5}},
    "constraints_list": {"type": "video_constraints", "tracks": ["TR01000002"]},
    "constraints_extra": {"type": "video_constraints", "max_layer": 2},
    "pong_from_client": {"type": "pong"},
    "no_type": {"room": "r"},
    "unknown_type": {"type": "subscribe"},
}

INVALID_BRIDGE = {
    "redirect_http_url": {"type": "redirect", "url": "http://b2/ws", "token": "t", "bridge": "b2"},
    "migrate_without_token": {"type": "migrate", "url": "ws://b2/ws", "bridge": "b2"},
    "track_muted_without_muted": {"type": "track_muted", "participant_id": "EP1", "track_id": "TR2"},
    "joined_without_bridge": {
        "type": "joined",
        "room": "r",
        "participant": {"id": "a", "name": "", "bridge": "b1", "tracks": []},
        "participants": [],
    },
    "joined_participant_without_tracks": {
        "type": "joined",
        "room": "r",
        "participant": {"id": "a", "name": "", "bridge": "b1", "tracks": []},
        "participants": [{"id": "b", "name": "", "bridge": "b1"}],
        "bridge": {"id": "x", "region": "y"},
    },
    "participant_without_bridge": {"type": "participant_joined", "participant": {"id": "b", "name": "", "tracks": []}},
    "chat_without_from": {"type": "message", "name": "Ada", "text": "hi"},
    "dominant_speaker_without_recent": {"type": "dominant_speaker", "participant_id": "EP1"},
    "dominant_speaker_number_id": {"type": "dominant_speaker", "participant_id": 1, "recent": []},
    "track_kind_data": {"type": "track_published", "participant_id": "a", "track": {"id": "t", "kind": "data"}},
    "error_unknown_code": {"type": "error", "code": "oops", "reason": "", "fatal": True},
    "error_without_fatal": {"type": "error", "code": "internal", "reason": ""},
    "error_fatal_bad_candidate": {"type": "error", "code": "bad_candidate", "reason": "", "fatal": True},
    "error_nonfatal_bad_json": {"type": "error", "code": "bad_json", "reason": "", "fatal": False},
    "participant_left_without_id": {"type": "participant_left"},
    "ping_from_bridge": {"type": "ping"},
}


@pytest.mark.parametrize("msg", VALID_CLIENT, ids=lambda m: m["type"])
def test_valid_client_messages(msg):
    assert not schema_errors(CLIENT_VALIDATOR, msg)
    assert not schema_errors(ANY_VALIDATOR, msg)


@pytest.mark.parametrize("msg", VALID_BRIDGE, ids=lambda m: m["type"])
def test_valid_bridge_messages(msg):
    assert not schema_errors(BRIDGE_VALIDATOR, msg)
    assert not schema_errors(ANY_VALIDATOR, msg)


@pytest.mark.parametrize("case", list(INVALID_CLIENT))
def test_invalid_client_messages(case):
    assert schema_errors(CLIENT_VALIDATOR, INVALID_CLIENT[case])


@pytest.mark.parametrize("case", list(INVALID_BRIDGE))
def test_invalid_bridge_messages(case):
    assert schema_errors(BRIDGE_VALIDATOR, INVALID_BRIDGE[case])


def _md_table_first_column(md: str, heading: str) -> list[str]:
    section = md.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.M)


def test_schema_covers_every_message_and_code_of_the_spec():
    md = (REPO_ROOT / "proto" / "signaling.md").read_text("utf-8")
    schema = load_schema()
    client_types = set(schema["$defs"]["client_message"]["properties"]["type"]["enum"])
    bridge_types = set(schema["$defs"]["bridge_message"]["properties"]["type"]["enum"])
    codes = set(schema["$defs"]["error_code"]["enum"])
    assert set(_md_table_first_column(md, "Client → bridge")) == client_types
    assert set(_md_table_first_column(md, "Bridge → client")) == bridge_types
    assert set(_md_table_first_column(md, "Errors")) == codes
    # each listed type is exercised by the valid examples above
    assert {m["type"] for m in VALID_CLIENT} == client_types
    assert {m["type"] for m in VALID_BRIDGE} == bridge_types

"""The admin API (/admin/v1) against a real `kaskade serve`: every endpoint on a live
conference (Rust load clients publishing, a signaling client watching), every rejection, every
response validated against proto/admin.openapi.yaml, and a schemathesis contract run driven
by that document."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from harness import (
    Bridge,
    DEV_API_KEY,
    DEV_API_SECRET,
    REPO_ROOT,
    SignalClient,
    ident,
    kaskade_bin,
    make_token,
    metric_value,
    run,
    start_call,
    stop_call,
    wait_until,
)

SPEC_PATH = REPO_ROOT / "proto" / "admin.openapi.yaml"
SPEC = yaml.safe_load(SPEC_PATH.read_text())
REGISTRY = Registry().with_resource("urn:admin", Resource.from_contents(SPEC, default_specification=DRAFT202012))



def pointer(*parts: str) -> str:
    return "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)


def response_schema(path: str, method: str, status: int) -> dict | None:
    """The documented schema of a response (None: documented without a body); fails when the
    status is not documented at all."""
    op = SPEC["paths"][path][method]
    resp = op["responses"].get(str(status))
    assert resp is not None, f"{method.upper()} {path} answered {status}, which the spec does not document"
    ref = None
    if "$ref" in resp:
        name = resp["$ref"].rsplit("/", 1)[-1]
        resp = SPEC["components"]["responses"][name]
        ref = f"urn:admin#/{pointer('components', 'responses', name, 'content', 'application/json', 'schema')}"
    if "content" not in resp:
        return None
    return {"$ref": ref or f"urn:admin#/{pointer('paths', path, method, 'responses', str(status), 'content', 'application/json', 'schema')}"}


def check(path: str, method: str, status: int, body) -> None:
    schema = response_schema(path, method, status)
    if schema is None:
        assert body is None, f"{status} documented without a body, got {body!r}"
        return
    jsonschema.Draft202012Validator(schema, registry=REGISTRY).validate(body)


class Api:
    """Calls one node's admin API and validates every answer against the spec."""

    def __init__(self, bridge: Bridge):
        self.base = bridge.http_url

    def call(self, method: str, template: str, *, params: dict | None = None, auth: str | None = None,
             body=None, raw_body: bytes | None = None, query: str = "") -> tuple[int, dict | None]:
        path = template.format(**{k: urllib.parse.quote(v, safe="") for k, v in (params or {}).items()})
        data = raw_body if raw_body is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base + path + query, method=method.upper(), data=data)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if auth:
            req.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
        parsed = None
        if raw:
            assert ctype.startswith("application/json"), f"{status} {path}: not JSON ({ctype}): {raw[:200]!r}"
            parsed = json.loads(raw)
        check(template, method.lower(), status, parsed)
        return status, parsed


def admin_token(bridge: Bridge) -> str:
    """Minted the way operators do: `kaskade token --admin`."""
    res = subprocess.run(
        [str(kaskade_bin()), "token", "--admin", "--identity", "ops-test",
         "--api-key", DEV_API_KEY, "--api-secret", DEV_API_SECRET],
        capture_output=True, text=True, timeout=20,
    )
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip()
    payload = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert payload["admin"] is True and payload["sub"] == "ops-test" and "room" not in payload, payload
    return token


def basic(key: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()


@pytest.fixture
def node(tmp_path):
    b = Bridge(tmp_path / "node.log").start()
    try:
        yield b
    finally:
        b.stop()


def test_rejections_are_json_with_the_right_status(node):
    api = Api(node)
    good = "Bearer " + admin_token(node)
    node_path = "/admin/v1/node"
    cases = [
        (None, 401, "unauthorized"),
        ("Bearer not-a-jwt", 401, "invalid_token"),
        ("Bearer " + make_token("r", "x", secret="wrong-secret", admin=True), 401, "invalid_token"),
        ("Bearer " + make_token("r", "x", ttl=-3600, admin=True), 401, "token_expired"),
        # A participant's token is valid, but carries no admin grant.
        ("Bearer " + make_token("r", "alice"), 403, "forbidden"),
        ("Bearer " + make_token("r", "alice", admin=False), 403, "forbidden"),
        (basic(DEV_API_KEY, "wrong"), 401, "unauthorized"),
        ("Digest abc", 401, "unauthorized"),
    ]
    for auth, status, code in cases:
        got, body = api.call("get", node_path, auth=auth)
        assert (got, body["error"]["code"]) == (status, code), (auth, got, body)
    # The same gate on every endpoint, the old ones too.
    for method, template, params in [
        ("post", "/admin/v1/drain", {}),
        ("get", "/admin/v1/conferences", {}),
        ("get", "/admin/v1/conferences/{room}/participants", {"room": "r"}),
        ("delete", "/admin/v1/conferences/{room}/participants/{participant}", {"room": "r", "participant": "p"}),
        ("post", "/admin/v1/conferences/{room}/messages", {"room": "r"}),
    ]:
        got, body = api.call(method, template, params=params)
        assert got == 401 and body["error"]["code"] == "unauthorized", (template, got, body)
    assert not node.metrics().get("kaskade_draining"), "an unauthenticated drain drained the node"

    # Well authenticated, badly asked.
    got, body = api.call("get", "/admin/v1/conferences", auth=good, query="?limit=0")
    assert got == 400 and "limit" in body["error"]["message"], body
    got, body = api.call("get", "/admin/v1/conferences/{room}/participants", params={"room": "nowhere"}, auth=good)
    assert got == 404 and body["error"]["code"] == "conference_not_found", body
    got, body = api.call("get", "/admin/v1/conferences/{room}/participants", params={"room": "x" * 129}, auth=good)
    assert got == 400 and "room" in body["error"]["message"], body
    mute = "/admin/v1/conferences/{room}/participants/{participant}/tracks/{track}/mute"
    ids = {"room": "nowhere", "participant": "EP01000001", "track": "TR01000001"}
    for raw, field in [(b"{}", "muted"), (b'{"muted": "yes"}', "muted"), (b'{"muted": true, "x": 1}', "x"), (b"{", "")]:
        got, body = api.call("post", mute, params=ids, auth=good, raw_body=raw)
        assert got == 400 and body["error"]["code"] == "bad_request" and field in body["error"]["message"], (raw, body)
    got, body = api.call("post", "/admin/v1/conferences/{room}/messages", params={"room": "r"}, auth=good, body={"text": ""})
    assert got == 400 and "text" in body["error"]["message"], body
    got, body = api.call("post", "/admin/v1/conferences/{room}/messages", params={"room": "r"}, auth=good, body={"txt": "hi"})
    assert got == 400 and "text" in body["error"]["message"], body
    # Basic auth still works by default.
    got, body = api.call("get", node_path, auth=basic(DEV_API_KEY, DEV_API_SECRET))
    assert got == 200 and body["bridge"] and body["directory"] == "memory", body


def test_basic_auth_can_be_turned_off(tmp_path):
    path = tmp_path / "nobasic.toml"
    path.write_text("dev = true\n[admin]\nbasic_auth = false\n")
    b = Bridge(tmp_path / "nobasic.log", args=["--config", str(path)]).start()
    try:
        api = Api(b)
        got, body = api.call("get", "/admin/v1/node", auth=basic(DEV_API_KEY, DEV_API_SECRET))
        assert got == 401 and "basic_auth" in body["error"]["message"], body
        got, body = api.call("get", "/admin/v1/node", auth="Bearer " + admin_token(b))
        assert got == 200, body
    finally:
        b.stop()


def test_an_operator_runs_a_live_conference(node):
    """Rust load clients publish and receive in a room; a signaling client watches. The API
    lists the conference, shows who receives what, mutes and unmutes a track (the bridge stops
    forwarding it and everyone hears of it), sends a message, and kicks the watcher."""
    api = Api(node)
    auth = "Bearer " + admin_token(node)
    room = ident("ops")
    # One publisher (video and audio) and one subscriber.
    load = start_call(node, room, "20s")
    parts = "/admin/v1/conferences/{room}/participants"
    try:
        async def scenario():
            watcher = await SignalClient.connect(node.ws_url, "watcher")
            await watcher.join(room, make_token(room, ident("watcher")), "Watcher")

            def listing():
                status, body = api.call("get", parts, params={"room": room}, auth=auth)
                assert status == 200, body
                sub = [p for p in body["participants"] if p["identity"].endswith("-sub-0")]
                return len(body["participants"]) == 3 and sub and len(sub[0]["receiving"]) == 2 and body

            body = wait_until("3 participants, the subscriber receiving 2 tracks", listing, 20)
            # Load clients are lt-<run>-pub-0 / lt-<run>-sub-0.
            ps = {(p["identity"].split("-", 2)[2] if p["identity"].startswith("lt-") else "watcher"): p
                  for p in body["participants"]}
            assert set(ps) == {"pub-0", "sub-0", "watcher"}, ps
            bridge = api.call("get", "/admin/v1/node", auth=auth)[1]["bridge"]
            pub = ps["pub-0"]
            assert pub["local"] and pub["bridge"] == bridge
            kinds = sorted(t["kind"] for t in pub["tracks"])
            assert kinds == ["audio", "video"] and not any(t["muted"] for t in pub["tracks"]), pub
            video = next(t for t in pub["tracks"] if t["kind"] == "video")
            audio = next(t for t in pub["tracks"] if t["kind"] == "audio")
            # The subscriber receives both, the video at a layer.
            received = {r["track"]: r for r in ps["sub-0"]["receiving"]}
            assert set(received) == {video["id"], audio["id"]}, received
            wait_until("the subscriber's video layer", lambda: any(
                r.get("layer") is not None
                for p in api.call("get", parts, params={"room": room}, auth=auth)[1]["participants"]
                if p["identity"].endswith("sub-0") for r in p["receiving"] if r["track"] == video["id"]), 10)

            # The cluster-wide list (the embedded directory here) has the room after a heartbeat.
            def listed():
                status, b = api.call("get", "/admin/v1/conferences", auth=auth)
                return [c for c in b["conferences"] if c["room"] == room and c["participants"] == 3]
            conf = wait_until("the room in the conference list", listed, 5)[0]
            assert conf["bridges"] == [{"id": bridge, "participants": 3}], conf

            # Mute the publisher's audio: everyone is told, and no copy of it leaves the bridge.
            mute = parts + "/{participant}/tracks/{track}/mute"
            ids = {"room": room, "participant": pub["id"], "track": audio["id"]}
            status, b = api.call("post", mute, params=ids, auth=auth, body={"muted": True})
            assert (status, b) == (200, {"track": audio["id"], "muted": True})
            m = await watcher.wait_for("track_muted", 5)
            assert (m["participant_id"], m["track_id"], m["muted"]) == (pub["id"], audio["id"], True)
            before = metric_value(node.metrics(), "kaskade_rtp_muted_dropped_total") or 0
            await watcher.ping()
            time.sleep(1.0)
            after = metric_value(node.metrics(), "kaskade_rtp_muted_dropped_total") or 0
            assert after - before >= 30, f"audio at ~50 pps was not held back: {before} -> {after}"
            status, b = api.call("get", parts, params={"room": room}, auth=auth)
            muted = {t["id"]: t["muted"] for p in b["participants"] for t in p["tracks"]}
            assert muted[audio["id"]] is True and muted[video["id"]] is False, muted
            status, b = api.call("post", mute, params=ids, auth=auth, body={"muted": False})
            assert (status, b["muted"]) == (200, False)
            m = await watcher.wait_for("track_muted", 5)
            assert m["muted"] is False
            held = metric_value(node.metrics(), "kaskade_rtp_muted_dropped_total") or 0
            time.sleep(0.5)
            assert (metric_value(node.metrics(), "kaskade_rtp_muted_dropped_total") or 0) == held, "still muted"
            # Unknown track, and a track of another participant.
            status, b = api.call("post", mute, params=dict(ids, track="TR0badbad"), auth=auth, body={"muted": True})
            assert status == 404 and b["error"]["code"] == "track_not_found", b
            status, b = api.call("post", mute, params=dict(ids, participant=ps["sub-0"]["id"]), auth=auth, body={"muted": True})
            assert status == 404 and b["error"]["code"] == "track_not_found", b

            # A message from the server reaches everyone here.
            status, b = api.call("post", "/admin/v1/conferences/{room}/messages", params={"room": room},
                                 auth=auth, body={"text": "maintenance at noon"})
            assert (status, b) == (202, {"delivered": 3})
            m = await watcher.wait_for("message", 5)
            assert (m["from"], m["text"]) == ("server", "maintenance at noon"), m

            # Kick the watcher: it gets `kicked`, and it is gone from the list.
            kick = parts + "/{participant}"
            status, b = api.call("delete", kick, params={"room": room, "participant": ps["watcher"]["id"]}, auth=auth)
            assert (status, b) == (204, None)
            await watcher.expect_fatal("kicked")
            status, b = api.call("get", parts, params={"room": room}, auth=auth)
            assert ps["watcher"]["id"] not in {p["id"] for p in b["participants"]}
            status, b = api.call("delete", kick, params={"room": room, "participant": ps["watcher"]["id"]}, auth=auth)
            assert status == 404 and b["error"]["code"] == "participant_not_found", b

            # The node's gauges follow (they are sampled, not instant).
            b = wait_until("2 participants in the node stats",
                           lambda: (r := api.call("get", "/admin/v1/node", auth=auth)[1])["participants"] == 2 and r, 5)
            assert b["conferences"] == 1 and not b["draining"], b
            assert b["webrtc_legs"] >= 2, b

        run(scenario(), timeout=60)
    finally:
        stop_call(load)
    # The old endpoint answers the admin token too.
    status, _, _ = node.get("/admin/conferences")
    assert status == 401
    # Drain through the API: the node reports it and stops once empty.
    status, b = Api(node).call("post", "/admin/v1/drain", auth=auth)
    assert (status, b) == (200, {"draining": True})
    assert node.proc is not None
    assert node.proc.wait(15) == 0


def test_contract_schemathesis(node, tmp_path):
    """schemathesis generates requests from proto/admin.openapi.yaml (valid and invalid ones)
    and checks every answer of the real binary against it: no 5xx, only documented statuses,
    content types and bodies. A room with a participant is live meanwhile, and the document's
    room examples name it, so the calls reach the shard and not only the 404 path."""
    exe = REPO_ROOT / ".venv" / "bin" / "schemathesis"
    if not exe.exists():
        pytest.fail("schemathesis is not installed: tests/run.sh installs tests/e2e/requirements.txt")
    room = ident("contract")
    spec = yaml.safe_load(SPEC_PATH.read_text())
    spec["components"]["parameters"]["Room"]["example"] = room
    live_spec = tmp_path / "admin.openapi.yaml"
    live_spec.write_text(yaml.safe_dump(spec))
    token = admin_token(node)

    async def scenario():
        c = await SignalClient.connect(node.ws_url, "contract")
        await c.join(room, make_token(room, ident("c")), "C")
        spec["components"]["parameters"]["Participant"]["example"] = c.participant_id
        live_spec.write_text(yaml.safe_dump(spec))
        res = subprocess.run(
            [str(exe), "run", str(live_spec), "--url", node.http_url,
             "-H", f"Authorization: Bearer {token}",
             # Draining would end the node mid-run; test_an_operator_runs_a_live_conference drains.
             "--exclude-operation-id", "drainNode",
             "--checks", "all", "--max-examples", "25", "--seed", "20261207",
             "--request-timeout", "5"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )
        assert res.returncode == 0, f"schemathesis found problems:\n{res.stdout[-6000:]}\n{res.stderr[-2000:]}"
        assert "passed" in res.stdout, res.stdout[-2000:]
        await c.close()

    run(scenario(), timeout=700)
    assert node.alive(), "the node died under the contract run"


def test_across_a_cascade(octo_bridges):
    """Two bridges linked by Octo: a publisher on the first, a watcher on the second. The
    second lists the publisher as remote, refuses to act on it (409 naming its bridge); the
    first mutes its track and the watcher on the other bridge is told; the server's message
    reaches it too."""
    first, second = octo_bridges
    api1, api2 = Api(first), Api(second)
    auth = "Bearer " + admin_token(first)
    room = ident("cascade")
    load = subprocess.Popen(
        [str(kaskade_bin()), "loadtest", "--url", first.http_url, "--room", room,
         "--video-publishers", "1", "--audio-publishers", "1", "--subscribers", "0",
         "--resolution", "180p", "--duration", "30s", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    parts = "/admin/v1/conferences/{room}/participants"
    try:
        async def scenario():
            watcher = await SignalClient.connect(second.ws_url, "watcher")
            await watcher.join(room, make_token(room, ident("watcher")), "Watcher")

            def remote_publisher():
                status, b = api2.call("get", parts, params={"room": room}, auth=auth)
                pubs = [p for p in b.get("participants", []) if not p["local"] and len(p["tracks"]) == 2]
                return pubs[0] if status == 200 and pubs else None

            pub = wait_until("the publisher listed on the second bridge", remote_publisher, 15)
            assert pub["bridge"] == first.bridge_id and pub["receiving"] == [], pub
            audio = next(t for t in pub["tracks"] if t["kind"] == "audio")
            mute = parts + "/{participant}/tracks/{track}/mute"
            ids = {"room": room, "participant": pub["id"], "track": audio["id"]}
            status, b = api2.call("post", mute, params=ids, auth=auth, body={"muted": True})
            assert status == 409 and b["error"]["code"] == "participant_on_another_bridge", b
            assert first.bridge_id in b["error"]["message"], b
            status, b = api2.call("delete", parts + "/{participant}", params={"room": room, "participant": pub["id"]}, auth=auth)
            assert status == 409, b

            status, b = api1.call("post", mute, params=ids, auth=auth, body={"muted": True})
            assert status == 200, b
            m = await watcher.wait_for("track_muted", 5)
            assert (m["participant_id"], m["track_id"], m["muted"]) == (pub["id"], audio["id"], True), m
            status, b = api2.call("get", parts, params={"room": room}, auth=auth)
            seen = {t["id"]: t["muted"] for p in b["participants"] for t in p["tracks"]}
            assert seen[audio["id"]] is True, seen
            status, b = api1.call("post", mute, params=ids, auth=auth, body={"muted": False})
            assert status == 200, b
            m = await watcher.wait_for("track_muted", 5)
            assert m["muted"] is False, m

            status, b = api1.call("post", "/admin/v1/conferences/{room}/messages", params={"room": room},
                                  auth=auth, body={"text": "from the first bridge"})
            assert status == 202, b
            m = await watcher.wait_for("message", 5)
            assert (m["from"], m["text"]) == ("server", "from the first bridge"), m
            await watcher.close()

        run(scenario(), timeout=60)
    finally:
        load.kill()
        load.wait(10)

"""Helpers for the kaskade end-to-end tests: a bridge process, tokens, a signaling client.

Everything here talks to loopback (or this machine's own address) only, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

import jsonschema
import websockets
from websockets.asyncio.client import ClientConnection, connect

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "proto" / "signaling.schema.json"

DEV_API_KEY = "devkey"
DEV_API_SECRET = "devsecret-change-me"

MAX_MESSAGE_BYTES = 65536

# ---------------------------------------------------------------------------------------------
# schema


def load_schema() -> dict:
    with open(SCHEMA_PATH, encoding="utf-8") as f:
        return json.load(f)


def _validator_for(defname: str | None) -> jsonschema.Draft202012Validator:
    schema = load_schema()
    if defname is not None:
        schema = {
            "$schema": schema["$schema"],
            "$defs": schema["$defs"],
            "$ref": f"#/$defs/{defname}",
        }
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


ANY_VALIDATOR = _validator_for(None)
CLIENT_VALIDATOR = _validator_for("client_message")
BRIDGE_VALIDATOR = _validator_for("bridge_message")


def schema_errors(validator: jsonschema.Draft202012Validator, msg: Any) -> list[str]:
    """Readable errors, descending into oneOf branches that match the message's type."""
    out = []
    for err in validator.iter_errors(msg):
        best = jsonschema.exceptions.best_match([err])
        out.append(f"{best.json_path}: {best.message}")
    return out


# ---------------------------------------------------------------------------------------------
# tokens


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_token(
    room: str,
    identity: str,
    *,
    secret: str = DEV_API_SECRET,
    api_key: str = DEV_API_KEY,
    ttl: int = 3600,
    alg: str = "HS256",
    omit: tuple[str, ...] = (),
    kid: str | None = None,
    **claims: Any,
) -> str:
    """An HS256 JWT with kaskade's claims (signaling.md, Tokens). Extra claims override defaults."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": api_key,
        "identity": identity,
        "room": room,
        "exp": now + ttl,
        "nbf": now - 1,
    }
    payload.update(claims)
    for key in omit:
        payload.pop(key, None)
    header = {"alg": alg, "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(payload, separators=(",", ":")).encode())
    )
    if alg == "none":
        return signing_input + "."
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    sig = hmac.new(secret.encode(), signing_input.encode(), digest).digest()
    return signing_input + "." + _b64url(sig)


def decode_token(token: str) -> tuple[dict, dict]:
    head, payload, _sig = token.split(".")
    return json.loads(b64url_decode(head)), json.loads(b64url_decode(payload))


def verify_hs256(token: str, secret: str = DEV_API_SECRET) -> bool:
    head, payload, sig = token.split(".")
    want = hmac.new(secret.encode(), f"{head}.{payload}".encode(), hashlib.sha256).digest()
    return hmac.compare_digest(want, b64url_decode(sig))


# ---------------------------------------------------------------------------------------------
# the bridge process


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", 0))  # free on every address, whichever the bridge binds
        return s.getsockname()[1]


def kaskade_bin() -> Path:
    p = Path(os.environ.get("KASKADE_BIN", "target/debug/kaskade"))
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p


def machine_ipv4() -> str | None:
    """This machine's first non-loopback IPv4 address (as `hostname -I` lists it), if any."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for word in out.split():
        if re.fullmatch(r"\d+\.\d+\.\d+\.\d+", word) and not word.startswith("127."):
            return word
    return None


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> {'name{labels}': value} (labels as printed)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", m.group(3)
        try:
            out[name + labels] = float(value)
        except ValueError:
            continue
    return out


def metric_value(metrics: dict[str, float], name: str, **labels: str) -> float | None:
    """Sum of the series of `name` whose labels include all of `labels`."""
    total = None
    for key, value in metrics.items():
        if not (key == name or key.startswith(name + "{")):
            continue
        ok = all(f'{k}="{v}"' in key for k, v in labels.items())
        if ok:
            total = (total or 0.0) + value
    return total


class Bridge:
    """One `kaskade serve` process on free ports, its log captured to a file."""

    all_started: list["Bridge"] = []

    def __init__(
        self,
        log_path: Path,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        advertise_ip: str = "127.0.0.1",
        bind_ip: str | None = "advertised",
    ):
        self.bin = kaskade_bin()
        self.log_path = log_path
        self.extra_env = dict(env or {})
        self.extra_args = list(args or [])
        self.advertise_ip = advertise_ip
        # By default the media socket is bound to the advertised address, so replies leave from
        # the address the client checks against (a socket on 0.0.0.0 answers a client at
        # 192.0.2.x from 192.0.2.x, not from 127.0.0.1). None: the bridge's own default.
        self.bind_ip = advertise_ip if bind_ip == "advertised" else bind_ip
        self.http_port = 0
        self.media_port = 0
        self.proc: subprocess.Popen | None = None
        self._log_file = None

    # -- lifecycle

    def start(self, timeout: float = 20.0) -> "Bridge":
        if not self.bin.exists():
            raise RuntimeError(
                f"kaskade binary not found at {self.bin}; build it with "
                "`cargo build -p kaskade` or set KASKADE_BIN"
            )
        last_err = None
        for _attempt in range(3):  # free ports can be raced; retry with new ones
            self.http_port = free_tcp_port()
            self.media_port = free_udp_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("KASKADE_")}
            env.setdefault("RUST_BACKTRACE", "1")
            env.setdefault("NO_COLOR", "1")
            env.update(self.extra_env)
            cmd = [
                str(self.bin),
                "serve",
                "--http-port",
                str(self.http_port),
                "--media-port",
                str(self.media_port),
                "--advertise-ip",
                self.advertise_ip,
                *(["--bind-ip", self.bind_ip] if self.bind_ip else []),
                *self.extra_args,
            ]
            self._log_file = open(self.log_path, "ab")
            self._log_file.write(f"$ {' '.join(cmd)}\n".encode())
            self._log_file.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdout=self._log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=REPO_ROOT,
            )
            Bridge.all_started.append(self)
            try:
                self._wait_healthy(timeout)
                return self
            except RuntimeError as e:
                last_err = e
                self.stop()
        raise RuntimeError(f"bridge did not become healthy: {last_err}\n{self.log_tail()}")

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"bridge exited early with code {self.proc and self.proc.returncode}")
            try:
                status, _body, _h = http_get(self.http_url + "/health", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"/health did not answer 200 within {timeout}s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> int | None:
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
            code = self.proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return code

    # -- access

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.http_port}/ws"

    def get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes, dict]:
        return http_get(self.http_url + path, timeout=timeout)

    def metrics(self) -> dict[str, float]:
        status, body, _ = self.get("/metrics")
        assert status == 200, f"/metrics answered {status}"
        return parse_metrics(body.decode("utf-8", "replace"))

    def metrics_text(self) -> str:
        return self.get("/metrics")[1].decode("utf-8", "replace")

    def cli_token(self, room: str, identity: str, *extra: str) -> str:
        """A token minted by `kaskade token` (the CLI operators use)."""
        cmd = [
            str(self.bin),
            "token",
            "--api-key",
            DEV_API_KEY,
            "--api-secret",
            DEV_API_SECRET,
            "--room",
            room,
            "--identity",
            identity,
            *extra,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        assert res.returncode == 0, f"`kaskade token` failed: {res.stderr}"
        token = res.stdout.strip()
        assert token.count(".") == 2, f"`kaskade token` printed no JWT: {res.stdout!r}"
        return token

    def log_text(self) -> str:
        try:
            return self.log_path.read_text("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 200) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------
# a cascade: bridges configured as Octo peers of each other

OCTO_SECRET = "kaskade-e2e-cluster-secret-0123456789"  # the cluster secret (>= 16 bytes)


class RelayProcess:
    """A `kaskade-netsim` impairment relay process (built next to the kaskade binary)."""

    def __init__(self, log_path: Path, *, listen: str, upstream: str, args: list[str]):
        self.bin = kaskade_bin().with_name("kaskade-netsim")
        self.log_path = log_path
        self.cmd = [str(self.bin), "--listen", listen, "--upstream", upstream, *args]
        self.proc: subprocess.Popen | None = None
        self.exit_line: str | None = None

    def start(self, timeout: float = 10.0) -> "RelayProcess":
        if not self.bin.exists():
            raise RuntimeError(f"{self.bin} not found; build it with `cargo build -p kaskade-netsim`")
        self.proc = subprocess.Popen(
            self.cmd,
            stdout=subprocess.PIPE,
            stderr=open(self.log_path, "ab"),
            stdin=subprocess.DEVNULL,
            text=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kaskade-netsim exited: {self.log_path.read_text()}")
            if "listening on" in self.log_path.read_text(errors="replace"):
                return self
            time.sleep(0.05)
        raise RuntimeError("kaskade-netsim did not start listening")

    def stop(self) -> dict:
        """Stops it (SIGINT) and returns its counters (the JSON line it prints on exit)."""
        if self.proc is None:
            return {}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            out, _ = self.proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.proc = None
        for line in reversed((out or "").splitlines()):
            if line.startswith("{"):
                self.exit_line = line
                return json.loads(line)
        return {}


def _toml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string of plain ASCII is a TOML basic string


def octo_config_text(
    *,
    bridge_id: str,
    region: str,
    octo_id: int,
    octo_port: int,
    peers: list[dict],
    secret: str = OCTO_SECRET,
    bind_ip: str = "127.0.0.1",
) -> str:
    """A `kaskade serve --config` file: dev mode, `[bridge] id`, and `[octo]` with its peers
    (each peer: {id, name, region, port}; every address is on loopback)."""
    lines = [
        "dev = true",
        "",
        "[bridge]",
        f"id = {_toml_str(bridge_id)}",
        f"region = {_toml_str(region)}",
        "",
        "[http]",
        f"bind_ip = {_toml_str(bind_ip)}",
        "",
        "[octo]",
        f"bridge_id = {octo_id}",
        f"bind_ip = {_toml_str(bind_ip)}",
        f"port = {octo_port}",
        f"secret = {_toml_str(secret)}",
    ]
    for peer in peers:
        lines += [
            "",
            "[[octo.peers]]",
            f"id = {peer['id']}",
            f"name = {_toml_str(peer['name'])}",
            f"region = {_toml_str(peer['region'])}",
            f"address = {_toml_str(bind_ip + ':' + str(peer['port']))}",
        ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the demo page in a browser (selenium WebDriver objects)


def start_octo_mesh(tmp_path: Path, specs: list[tuple[str, int, str]], env: dict[str, str]) -> list["Bridge"]:
    """Bridges linked in a full Octo mesh on loopback, one per (name, Octo id, region), each
    with `env`, in the order given. Stop them with Bridge.stop (the caller's `finally`); a
    bridge that fails to start stops the ones already running."""
    ports = [free_udp_port() for _ in specs]
    bridges: list[Bridge] = []
    try:
        for (name, octo_id, region), port in zip(specs, ports):
            peers = [{"id": o, "name": n, "region": r, "port": p}
                     for (n, o, r), p in zip(specs, ports) if n != name]
            cfg = tmp_path / f"{name}.toml"
            cfg.write_text(octo_config_text(bridge_id=name, region=region, octo_id=octo_id, octo_port=port,
                                            peers=peers))
            bridges.append(Bridge(tmp_path / f"{name}.log", args=["--config", str(cfg)], env=env).start())
    except BaseException:
        for b in bridges:
            b.stop()
        raise
    return bridges


def page_url(bridge: "Bridge", **params) -> str:
    from urllib.parse import urlencode

    return f"http://127.0.0.1:{bridge.http_port}/?{urlencode(params)}"


def page_state(d) -> dict | None:
    """The page's window.kaskade, reduced to plain data."""
    return d.execute_script(
        "const k = window.kaskade; return k ? {state: k.state, participantId: k.participantId,"
        " participants: k.participants, lastError: k.lastError, chat: k.chat,"
        " dominantSpeaker: k.dominantSpeaker, bridges: k.bridges, events: k.events.slice(-40)} : null;"
    )


def page_stats(d) -> dict:
    """window.kaskade.stats(): per remote participant id, {name, video, audio} inbound stats."""
    return d.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "window.kaskade.stats().then(done, e => done({__error: String(e)}));"
    )


def wait_until(what: str, fn: Callable[[], Any], timeout: float, interval: float = 0.25):
    """fn()'s first truthy value, polled for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def wait_joined(d, timeout: float = 15.0) -> dict:
    return wait_until(
        f"page {getattr(d, 'kaskade_label', '?')} joined",
        lambda: (s := page_state(d)) and s["state"] == "joined" and s,
        timeout,
    )


def receives_media(d, other_id: str) -> dict | None:
    """The page's stats once it decodes other_id's video and receives its audio, else None."""
    s = page_stats(d)
    p = s.get(other_id) if isinstance(s, dict) else None
    if not p or not p.get("video") or not p.get("audio"):
        return None
    v, a = p["video"], p["audio"]
    if v["framesDecoded"] > 0 and v["frameWidth"] > 0 and a["packetsReceived"] > 0:
        return s
    return None


# ---------------------------------------------------------------------------------------------
# signaling client


class Closed(Exception):
    """The bridge closed the WebSocket while we waited for a message."""


class SignalClient:
    """A WebSocket signaling client that schema-checks everything it sends and receives."""

    def __init__(self, ws: ClientConnection, label: str = "client"):
        self.ws = ws
        self.label = label
        self.received: list[dict] = []  # every message received, in order
        self.pending: list[dict] = []  # received but not yet consumed by wait_for
        self.schema_violations: list[tuple[dict, list[str]]] = []
        self.participant_id: str | None = None
        self.joined: dict | None = None

    @classmethod
    async def connect(cls, url: str, label: str = "client", timeout: float = 5.0) -> "SignalClient":
        ws = await asyncio.wait_for(
            connect(url, compression=None, ping_interval=None, max_size=4 * 1024 * 1024, open_timeout=timeout),
            timeout,
        )
        return cls(ws, label)

    # -- sending

    async def send(self, msg: dict) -> None:
        errors = schema_errors(CLIENT_VALIDATOR, msg)
        assert not errors, f"test bug: {msg.get('type')} does not match the client schema: {errors}"
        await self.ws.send(json.dumps(msg))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    # -- receiving

    async def _recv_one(self, timeout: float) -> dict:
        try:
            raw = await asyncio.wait_for(self.ws.recv(), timeout)
        except websockets.ConnectionClosed as e:
            raise Closed(f"{self.label}: connection closed: {e}") from e
        except TimeoutError:  # (a subclass of OSError)
            raise
        except OSError as e:
            raise Closed(f"{self.label}: connection broken (no close frame): {e!r}") from e
        return self._ingest(raw)

    def _ingest(self, raw: str | bytes) -> dict:
        assert isinstance(raw, str), f"{self.label}: bridge sent a binary frame: {raw[:64]!r}"
        assert len(raw.encode()) <= MAX_MESSAGE_BYTES, f"{self.label}: bridge sent {len(raw)} bytes"
        msg = json.loads(raw)
        assert isinstance(msg, dict) and isinstance(msg.get("type"), str), f"not a message: {raw[:200]}"
        errors = schema_errors(BRIDGE_VALIDATOR, msg)
        if errors:
            self.schema_violations.append((msg, errors))
        self.received.append(msg)
        return msg

    async def recv(self, timeout: float = 5.0) -> dict:
        if self.pending:
            return self.pending.pop(0)
        return await self._recv_one(timeout)

    async def wait_for(
        self,
        mtype: str,
        timeout: float = 5.0,
        pred: Callable[[dict], bool] | None = None,
    ) -> dict:
        """The first message of `mtype` (matching pred); other messages stay pending."""
        for i, m in enumerate(self.pending):
            if m["type"] == mtype and (pred is None or pred(m)):
                return self.pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(
                    f"{self.label}: no {mtype!r} within {timeout}s; pending: "
                    f"{[m['type'] for m in self.pending]}"
                )
            try:
                m = await self._recv_one(left)
            except asyncio.TimeoutError:
                continue
            if m["type"] == mtype and (pred is None or pred(m)):
                return m
            if m["type"] == "error" and mtype != "error":
                raise AssertionError(f"{self.label}: unexpected error while waiting for {mtype}: {m}")
            self.pending.append(m)

    async def expect_error(self, code: str, timeout: float = 5.0) -> dict:
        """The next error (other messages allowed before it); checks its code and schema."""
        err = await self.wait_for("error", timeout)
        assert err["code"] == code, f"{self.label}: expected error {code!r}, got {err}"
        errors = schema_errors(BRIDGE_VALIDATOR, err)
        assert not errors, f"error message violates the schema: {errors}"
        return err

    async def expect_fatal(self, code: str, timeout: float = 5.0) -> dict:
        """An error `code` with fatal=true, then a clean close (a close frame from the bridge)."""
        err = await self.expect_error(code, timeout)
        assert err["fatal"] is True, f"{code} must be fatal: {err}"
        await self.expect_closed(timeout)
        return err

    async def expect_closed(self, timeout: float = 5.0, after_leave: bool = False) -> None:
        """The bridge closes the socket with a close frame. After a fatal error no message may
        come first; after `leave`, messages already under way are read and kept."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.label}: the bridge did not close the socket within {timeout}s")
            try:
                m = await asyncio.wait_for(self.ws.recv(), left)
            except asyncio.TimeoutError:
                continue
            except websockets.ConnectionClosed:
                break
            except OSError as e:
                raise AssertionError(f"{self.label}: connection broken without a close frame: {e!r}") from e
            if after_leave:
                self.pending.append(self._ingest(m))
                continue
            raise AssertionError(f"{self.label}: message after a fatal error: {m!r:.300}")
        assert self.ws.protocol.close_rcvd is not None, (
            f"{self.label}: connection dropped without a close frame (not a clean close)"
        )

    # -- conveniences

    async def join(self, room: str, token: str, name: str | None = None, timeout: float = 5.0) -> dict:
        msg: dict[str, Any] = {"type": "join", "room": room, "token": token}
        if name is not None:
            msg["name"] = name
        await self.send(msg)
        joined = await self.wait_for("joined", timeout)
        self.joined = joined
        self.participant_id = joined["participant"]["id"]
        return joined

    async def ping(self, timeout: float = 5.0) -> None:
        await self.send({"type": "ping"})
        await self.wait_for("pong", timeout)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.ws.close(), 3)
        except (asyncio.TimeoutError, websockets.WebSocketException, OSError):
            pass


def run(coro, timeout: float = 60.0):
    """Run a coroutine to completion with an overall bound."""

    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


# ---------------------------------------------------------------------------------------------
# a call beside the test: `kaskade loadtest` clients


def ident(prefix: str) -> str:
    """A fresh room or identity name: `prefix` and 8 random hex digits."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def start_call(bridge: "Bridge", room: str, duration: str, *, subscribers: int = 1,
               extra: tuple[str, ...] = ()) -> subprocess.Popen:
    """`kaskade loadtest` in the background: one 180p publisher of video and audio and
    `subscribers` receivers in `room`, for `duration` (e.g. "12s"). Read it with call_summary."""
    return subprocess.Popen(
        [str(kaskade_bin()), "loadtest", "--url", bridge.http_url, "--room", room,
         "--video-publishers", "1", "--audio-publishers", "1", "--subscribers", str(subscribers),
         "--resolution", "180p", "--duration", duration, "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def call_summary(load: subprocess.Popen, timeout: float) -> tuple[int, int, float, str]:
    """Waits for a start_call to end and asserts it ended well; (clients connected, clients,
    loss %, its output) from the load tool's summary line."""
    out, _ = load.communicate(timeout=timeout)
    assert load.returncode == 0, f"loadtest failed:\n{out}"
    m = re.search(r"(\d+) of (\d+) clients connected.*loss ([\d.]+)%", out)
    assert m, f"no summary line:\n{out}"
    return int(m.group(1)), int(m.group(2)), float(m.group(3)), out


def stop_call(load: subprocess.Popen) -> None:
    """Kills a start_call still running (a test that failed midway)."""
    if load.poll() is None:
        load.kill()
        load.wait()


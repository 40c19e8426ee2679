#!/usr/bin/env python3
"""The cascade study (issue 16): star against cascade for a room split between two regions.

Builds the topology of topology.toml on loopback out of kaskade-netsim relays (one relay per
link of every path), runs the same room of 2 + 2 `kaskade loadtest` participants on two
deployments back to back (star: one bridge in region A; cascade: a bridge per region linked by
Octo) several times, and writes per direction (A->A, A->B, B->A, B->B) one-way latency, repair
delay and residual loss as a markdown table, a JSON summary and a PNG plot.

Unless --no-chromium (and not in --smoke), two headless Chromium browsers per region join each
deployment, each through a relay chain of its own, after the load run, and report getStats
figures for the video they receive from each other.

Every process it starts is tracked by PID and stopped (SIGINT, then SIGKILL) on the way out.
Run it through run.sh; `study.py --help` lists the options (environment variables set their
defaults).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DIRECTIONS = ["A->A", "A->B", "B->A", "B->B"]
DEPLOYMENTS = ["star", "cascade"]
OCTO_SECRET = "cascade-study-octo-secret-0123456789"


# ---------------------------------------------------------------------------------------------
# topology


@dataclass
class Link:
    """One direction-symmetric link: a kaskade-netsim relay."""

    delay_ms: float
    jitter_ms: float
    loss: float

    def scaled(self, loss_scale: float) -> "Link":
        return Link(self.delay_ms, self.jitter_ms, self.loss * loss_scale)

    def netsim_args(self) -> list[str]:
        return [
            "--symmetric",
            "--delay-ms", f"{self.delay_ms:g}",
            "--jitter-ms", f"{self.jitter_ms:g}",
            "--loss", f"{self.loss:g}",
        ]

    def describe(self) -> str:
        return f"{self.delay_ms:g} ms +-{self.jitter_ms:g}, {100 * self.loss:g}% loss"


@dataclass
class Participant:
    name: str
    region: str
    access: Link
    tag: int  # the SSRC tag of its load process


@dataclass
class Topology:
    inter_region: Link
    participants: list[Participant]
    resolution: str
    simulcast: bool
    smoke_duration_s: float
    loss_scale: float
    raw: dict = field(default_factory=dict)

    def link(self, d: dict) -> Link:
        return Link(float(d["delay_ms"]), float(d.get("jitter_ms", 0.0)), float(d.get("loss", 0.0))).scaled(
            self.loss_scale)

    @staticmethod
    def load(path: Path, smoke: bool) -> "Topology":
        raw = tomllib.loads(path.read_text())
        smoke_cfg = raw.get("smoke", {})
        scale = float(smoke_cfg.get("loss_scale", 1.0)) if smoke else 1.0
        media = dict(raw.get("media", {}))
        if smoke:
            media.update({k: v for k, v in smoke_cfg.items() if k in ("resolution", "simulcast")})

        def link(d: dict) -> Link:
            return Link(float(d["delay_ms"]), float(d.get("jitter_ms", 0.0)), float(d.get("loss", 0.0))).scaled(scale)

        parts = [
            Participant(p["name"], p["region"], link(p["access"]), tag=i + 1)
            for i, p in enumerate(raw["participants"])
        ]
        regions = {p.region for p in parts}
        if regions != {"A", "B"}:
            raise SystemExit(f"{path}: participants must be in regions A and B, got {sorted(regions)}")
        return Topology(
            inter_region=link(raw["inter_region"]),
            participants=parts,
            resolution=str(media.get("resolution", "720p")),
            simulcast=bool(media.get("simulcast", True)),
            smoke_duration_s=float(smoke_cfg.get("duration_s", 5.0)),
            loss_scale=scale,
            raw=raw,
        )


# ---------------------------------------------------------------------------------------------
# processes


class Procs:
    """Every process the study starts, stopped by PID."""

    def __init__(self, logdir: Path):
        self.logdir = logdir
        self.running: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], stdout=None) -> subprocess.Popen:
        log = open(self.logdir / f"{name}.log", "ab")
        log.write(f"$ {' '.join(cmd)}\n".encode())
        log.flush()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KASKADE_")}
        env.setdefault("NO_COLOR", "1")
        p = subprocess.Popen(
            cmd,
            stdout=stdout if stdout is not None else log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=ROOT,
        )
        self.running.append((name, p))
        return p

    def stop(self, p: subprocess.Popen, timeout: float = 5.0) -> None:
        if p.poll() is None:
            try:
                os.kill(p.pid, signal.SIGINT)
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
            except ProcessLookupError:
                pass
        self.running = [(n, q) for n, q in self.running if q is not p]

    def stop_all(self) -> None:
        for _name, p in reversed(list(self.running)):
            self.stop(p)

    def log(self, name: str) -> str:
        path = self.logdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_relay(procs: Procs, netsim: Path, name: str, upstream: str, link: Link, seed: int,
                up_only: bool = False) -> str:
    """A relay on a free loopback port in front of `upstream`; returns its listen address."""
    args = link.netsim_args()
    if up_only:  # an Octo link: one relay per direction, each carrying one way only
        args = [a.replace("--", "--up-", 1) if a.startswith("--") and a != "--symmetric" else a
                for a in args if a != "--symmetric"]
    cmd = [str(netsim), "--listen", "127.0.0.1:0", "--upstream", upstream, "--seed", str(seed), *args]
    # Its exit line (stdout, JSON) holds what it dropped and delayed: into its log.
    p = procs.start(name, cmd)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"relay {name} exited:\n{procs.log(name)}")
        for line in procs.log(name).splitlines():
            if line.startswith("kaskade-netsim listening on "):
                return line.split()[3]
        time.sleep(0.05)
    raise RuntimeError(f"relay {name} did not start")


def chain(procs: Procs, netsim: Path, name: str, target: str, links: list[Link], seed: int) -> str:
    """Relays in series in front of `target`, the first link nearest the client: returns the
    address the client sends to."""
    upstream = target
    for i, link in reversed(list(enumerate(links))):
        upstream = start_relay(procs, netsim, f"{name}-{i}", upstream, link, seed + i)
    return upstream


@dataclass
class BridgeProc:
    name: str
    region: str
    http_port: int
    media_port: int
    octo_port: int
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def media(self) -> str:
        return f"127.0.0.1:{self.media_port}"


def bridge_config(b: BridgeProc, octo_id: int, peers: list[tuple[int, BridgeProc, str]]) -> str:
    lines = [
        "dev = true", "",
        "[bridge]", f'id = "{b.name}"', f'region = "{b.region}"', "",
        "[http]", 'bind_ip = "127.0.0.1"',
    ]
    if peers:
        lines += ["", "[octo]", f"bridge_id = {octo_id}", 'bind_ip = "127.0.0.1"',
                  f"port = {b.octo_port}", f'secret = "{OCTO_SECRET}"']
        for pid, peer, address in peers:
            lines += ["", "[[octo.peers]]", f"id = {pid}", f'name = "{peer.name}"',
                      f'region = "{peer.region}"', f'address = "{address}"']
    return "\n".join(lines) + "\n"


def start_bridge(procs: Procs, kaskade: Path, b: BridgeProc, config: str) -> None:
    path = procs.logdir / f"{b.name}.toml"
    path.write_text(config)
    b.proc = procs.start(b.name, [
        str(kaskade), "serve", "--config", str(path),
        "--http-port", str(b.http_port), "--media-port", str(b.media_port),
        "--advertise-ip", "127.0.0.1", "--bind-ip", "127.0.0.1",
    ])


def wait_healthy(procs: Procs, b: BridgeProc, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if b.proc is None or b.proc.poll() is not None:
            raise RuntimeError(f"bridge {b.name} exited:\n{procs.log(b.name)[-3000:]}")
        try:
            with urllib.request.urlopen(b.url + "/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"bridge {b.name} not healthy:\n{procs.log(b.name)[-3000:]}")


# ---------------------------------------------------------------------------------------------
# one deployment


def wait_octo_up(b: BridgeProc, timeout: float = 5.0) -> None:
    """Until the bridge has measured the round trip to its Octo peer (pings answered through
    the relays), or the timeout: Octo needs no handshake, this only avoids starting the load
    while the first pings are in flight."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(b.url + "/metrics", timeout=1) as r:
                text = r.read().decode()
            for line in text.splitlines():
                if line.startswith("kaskade_octo_rtt_seconds") and float(line.split()[-1]) > 0:
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.2)


def run_deployment(args, topo: Topology, deployment: str, rep: int, outdir: Path) -> dict:
    """Sets up one deployment, runs the room, tears it all down; returns the raw results."""
    logdir = outdir / f"{deployment}-{rep}"
    logdir.mkdir(parents=True, exist_ok=True)
    procs = Procs(logdir)
    seed = 1000 * (rep + 1)
    result: dict = {"deployment": deployment, "rep": rep, "reports": {}, "browsers": {}}
    try:
        bridges: dict[str, BridgeProc] = {}
        regions = ["A"] if deployment == "star" else ["A", "B"]
        for region in regions:
            bridges[region] = BridgeProc(f"bridge-{region.lower()}", region, free_port(socket.SOCK_STREAM),
                                         free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM))
        if deployment == "cascade":
            a, b = bridges["A"], bridges["B"]
            # One relay per direction of the Octo link, in front of the receiving bridge.
            a_to_b = start_relay(procs, args.netsim, "octo-a-to-b", f"127.0.0.1:{b.octo_port}",
                                 topo.inter_region, seed + 900, up_only=True)
            b_to_a = start_relay(procs, args.netsim, "octo-b-to-a", f"127.0.0.1:{a.octo_port}",
                                 topo.inter_region, seed + 950, up_only=True)
            start_bridge(procs, args.kaskade, a, bridge_config(a, 1, [(2, b, a_to_b)]))
            start_bridge(procs, args.kaskade, b, bridge_config(b, 2, [(1, a, b_to_a)]))
        else:
            start_bridge(procs, args.kaskade, bridges["A"], bridge_config(bridges["A"], 1, []))
        for b in bridges.values():
            wait_healthy(procs, b)
        if deployment == "cascade":
            for b in bridges.values():
                wait_octo_up(b)

        # Each participant's path to its bridge: its access link, and in the star deployment
        # the inter-region link too for the B participants.
        vias: dict[str, tuple[BridgeProc, str]] = {}
        for i, p in enumerate(topo.participants):
            bridge = bridges.get(p.region, bridges["A"])
            links = [p.access]
            if bridge.region != p.region:
                links.append(topo.inter_region)
            vias[p.name] = (bridge, chain(procs, args.netsim, f"path-{p.name}", bridge.media, links,
                                          seed + 10 * (i + 1)))

        room = f"study-{deployment}-{rep}-{os.getpid()}"
        loads = {}
        for p in topo.participants:
            bridge, via = vias[p.name]
            out = logdir / f"load-{p.name}.json"
            cmd = [
                str(args.kaskade), "loadtest", "--url", bridge.url, "--room", room,
                "--video-publishers", "1", "--audio-publishers", "1", "--subscribers", "0",
                "--resolution", topo.resolution, "--duration", f"{args.duration:g}s",
                "--media-via", via, "--ssrc-tag", str(p.tag), "--json", str(out), "-q",
            ]
            if topo.simulcast:
                cmd.append("--simulcast")
            loads[p.name] = (procs.start(f"load-{p.name}", cmd), out)
        deadline = time.monotonic() + args.duration + 60
        for name, (proc, out) in loads.items():
            try:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"load client {name} did not finish:\n{procs.log('load-' + name)[-2000:]}")
            if not out.exists():
                raise RuntimeError(f"load client {name} wrote no report:\n{procs.log('load-' + name)[-2000:]}")
            result["reports"][name] = json.loads(out.read_text())
        if args.chromium:
            # After the load run, in a room of their own: browsers cannot decode the load
            # clients' shaped media, and three browsers beside four load clients would starve
            # the load clients of CPU on a small machine.
            from browsers import run_browsers  # selenium: only when asked for

            result["browsers"] = run_browsers(procs, args, topo.raw, bridges, chain, topo.link, seed,
                                              room + "-browsers", args.duration)
        for name, b in bridges.items():
            if b.proc is not None and b.proc.poll() is not None:
                raise RuntimeError(f"bridge {b.name} died:\n{procs.log(b.name)[-3000:]}")
    finally:
        procs.stop_all()
    return result


# ---------------------------------------------------------------------------------------------
# analysis


class Hist:
    """A merged histogram of (microseconds, count) pairs."""

    def __init__(self):
        self.counts: dict[int, int] = {}

    def add(self, pairs) -> None:
        for us, n in pairs:
            self.counts[us] = self.counts.get(us, 0) + n

    @property
    def n(self) -> int:
        return sum(self.counts.values())

    def pct(self, p: float) -> float | None:
        n = self.n
        if n == 0:
            return None
        rank = round(p / 100 * (n - 1))
        seen = 0
        for us in sorted(self.counts):
            seen += self.counts[us]
            if seen > rank:
                return us / 1000.0
        return max(self.counts) / 1000.0


def incomplete(topo: Topology, result: dict) -> list[str]:
    """The participants that did not receive the video of every other one in a run, as
    "receiver<-publisher": their directions then have fewer streams, and the table says so."""
    names = {p.tag: p.name for p in topo.participants}
    out = []
    for name, report in result["reports"].items():
        got = {names.get(s.get("publisher_tag")) for c in report["clients"] for s in c.get("streams", [])
               if s.get("kind") == "video" and s.get("packets_received", 0) > 0}
        missing = [f"{name}<-{p.name}" for p in topo.participants if p.name != name and p.name not in got]
        if missing and len(missing) == len(topo.participants) - 1:
            # Nothing at all: say whether its subscriber leg ever came up (and when).
            ms = [c.get("subscriber_ms") for c in report["clients"]]
            up = ", ".join("never" if m is None else f"{m} ms" for m in ms)
            missing.append(f"{name}'s subscriber leg up: {up}")
        out += missing
    return out


def region_of(topo: Topology) -> dict[int, str]:
    return {p.tag: p.region for p in topo.participants}


def summarize(topo: Topology, results: list[dict], kind: str) -> dict:
    """Per deployment and direction, for the streams of one kind (`video`: NACK-repaired;
    `audio`: never repaired, as with browsers): merged latency and repair-delay histograms
    over every stream of every repetition, residual loss over the packet sums, and per
    repetition the latency p50 (to show the spread)."""
    tags = region_of(topo)
    regions = {p.name: p.region for p in topo.participants}
    out: dict = {}
    for dep in DEPLOYMENTS:
        for d in DIRECTIONS:
            src, dst = d.split("->")
            lat, rep_h = Hist(), Hist()
            lost = expected = repaired = streams = 0
            per_rep = []
            for r in results:
                if r["deployment"] != dep:
                    continue
                rl = Hist()
                for name, report in r["reports"].items():
                    if regions[name] != dst:
                        continue
                    for c in report["clients"]:
                        for s in c.get("streams", []):
                            if tags.get(s.get("publisher_tag")) != src or s.get("kind") != kind:
                                continue
                            streams += 1
                            lat.add(s["latency_hist_us"])
                            rl.add(s["latency_hist_us"])
                            rep_h.add(s["repair_hist_us"])
                            lost += s["packets_lost"]
                            expected += s["packets_expected"]
                            repaired += s["repaired"]
                per_rep.append(rl.pct(50))
            browsers = [b for r in results if r["deployment"] == dep
                        for b in r.get("browsers", {}).values() if b.get("direction") == d]
            out[f"{dep} {d}"] = {
                "deployment": dep,
                "direction": d,
                "streams": streams,
                "packets": lat.n,
                "latency_p50_ms": lat.pct(50),
                "latency_p95_ms": lat.pct(95),
                "latency_p50_per_rep_ms": per_rep,
                "repaired": repaired,
                "repaired_pct": round(100 * repaired / expected, 3) if expected else None,
                "repair_p50_ms": rep_h.pct(50),
                "repair_p95_ms": rep_h.pct(95),
                "residual_loss_pct": round(100 * lost / expected, 4) if expected else None,
                "browser": merge_browsers(browsers) if kind == "video" else None,
            }
    return out


def merge_browsers(samples: list[dict]) -> dict | None:
    """Chromium figures over the measurement window, summed over repetitions."""
    if not samples:
        return None
    keys = ["jitterBufferDelay", "jitterBufferEmittedCount", "freezeCount", "totalFreezesDuration",
            "packetsLost", "packetsReceived", "nackCount", "framesDecoded"]
    tot = {k: sum(float(s.get(k) or 0) for s in samples) for k in keys}
    emitted = tot["jitterBufferEmittedCount"]
    return {
        "runs": len(samples),
        "jitter_buffer_ms": round(1000 * tot["jitterBufferDelay"] / emitted, 1) if emitted else None,
        "freeze_count": int(tot["freezeCount"]),
        "freeze_s": round(tot["totalFreezesDuration"], 2),
        "packets_lost": int(tot["packetsLost"]),
        "packets_received": int(tot["packetsReceived"]),
        "nack_count": int(tot["nackCount"]),
        "frames_decoded": int(tot["framesDecoded"]),
    }


def fmt(v, digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def table(summaries: dict, meta: dict) -> str:
    summary = summaries["video"]
    lines = [
        f"Cascade study: {meta['reps']} repetition(s) x {meta['duration_s']:g} s per deployment, "
        f"{meta['resolution']}{' simulcast' if meta['simulcast'] else ''}, loss scale {meta['loss_scale']:g}"
        f"{' (smoke)' if meta['smoke'] else ''}; {meta['started']}",
        "",
        "Video (NACK-repaired at every hop):",
        "",
        "| deployment | direction | streams | packets | latency p50 ms | latency p95 ms "
        "| p50 per run ms | repaired | repair p50 ms | repair p95 ms | residual loss |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for key, s in summary.items():
        runs = ", ".join(fmt(v) for v in s["latency_p50_per_rep_ms"])
        lines.append(
            f"| {s['deployment']} | {s['direction']} | {s['streams']} | {s['packets']} "
            f"| {fmt(s['latency_p50_ms'])} | {fmt(s['latency_p95_ms'])} | {runs} "
            f"| {s['repaired']} ({fmt(s['repaired_pct'], 2)}%) | {fmt(s['repair_p50_ms'])} "
            f"| {fmt(s['repair_p95_ms'])} | {fmt(s['residual_loss_pct'], 3)}% |"
        )
    missing = [f"{r['deployment']} run {r['rep'] + 1}: {', '.join(r['incomplete'])}"
               for r in meta.get("runs", []) if r.get("incomplete")]
    if missing:
        lines += ["", "Video never received (receiver<-publisher; those directions have fewer streams): "
                  + "; ".join(missing) + "."]
    lines += [
        "",
        "Audio (no retransmission: a lost packet stays lost, as for browsers' Opus):",
        "",
        "| deployment | direction | streams | packets | latency p50 ms | latency p95 ms | residual loss |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in summaries["audio"].values():
        lines.append(
            f"| {s['deployment']} | {s['direction']} | {s['streams']} | {s['packets']} "
            f"| {fmt(s['latency_p50_ms'])} | {fmt(s['latency_p95_ms'])} | {fmt(s['residual_loss_pct'], 3)}% |"
        )
    if any(s["browser"] for s in summary.values()):
        lines += [
            "",
            "Chromium receivers (getStats of the inbound video of every browser pair in that "
            "direction, over the measurement window, summed over repetitions):",
            "",
            "| deployment | direction | jitter buffer ms | freezes | freeze s | packets lost "
            "| packets received | NACKs | frames decoded |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for s in summary.values():
            b = s["browser"]
            if not b:
                continue
            lines.append(
                f"| {s['deployment']} | {s['direction']} | {fmt(b['jitter_buffer_ms'])} | {b['freeze_count']} "
                f"| {b['freeze_s']:.2f} | {b['packets_lost']} | {b['packets_received']} | {b['nack_count']} "
                f"| {b['frames_decoded']} |"
            )
    return "\n".join(lines) + "\n"


def write_csv(summaries: dict, path: Path) -> None:
    """One row per media kind, deployment and direction; the browser figures flattened."""
    rows = []
    for kind, summary in summaries.items():
        for s in summary.values():
            row = {"kind": kind, **{k: v for k, v in s.items() if k not in ("browser", "latency_p50_per_rep_ms")}}
            row["latency_p50_per_rep_ms"] = " ".join(fmt(v) for v in s["latency_p50_per_rep_ms"])
            for k, v in (s.get("browser") or {}).items():
                row[f"chromium_{k}"] = v
            rows.append(row)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def plot(summary: dict, path: Path, title: str) -> bool:
    try:
        import matplotlib
    except ImportError:
        req = HERE / "requirements.txt"
        if sys.prefix == sys.base_prefix:
            # Not a venv: installing into the system's Python is not this script's call.
            print(f"matplotlib is not installed: no plot (run.sh makes .venv; or pip install -r {req})",
                  file=sys.stderr)
            return False
        print(f"installing the plot's pins ({req}) into {sys.prefix}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                        "-q", "-r", str(req)], check=True)
        import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38
    colors = {"star": "#c0504d", "cascade": "#4f81bd"}
    for ax, (metric, label) in zip(axes, [("latency", "one-way latency (ms)"), ("repair", "repair delay (ms)")]):
        for k, dep in enumerate(DEPLOYMENTS):
            p50 = [summary[f"{dep} {d}"][f"{metric}_p50_ms"] or 0 for d in DIRECTIONS]
            p95 = [summary[f"{dep} {d}"][f"{metric}_p95_ms"] or 0 for d in DIRECTIONS]
            xs = [i + (k - 0.5) * width for i in range(len(DIRECTIONS))]
            ax.bar(xs, p50, width, color=colors[dep], label=f"{dep} p50")
            ax.bar(xs, [b - a for a, b in zip(p50, p95)], width, bottom=p50, color=colors[dep], alpha=0.35,
                   label=f"{dep} p95")
            for x, v in zip(xs, p50):
                ax.text(x, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(DIRECTIONS)), DIRECTIONS)
        ax.set_xlabel("publisher region -> receiver region")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------


def main() -> int:
    env = os.environ
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--topology", type=Path, default=Path(env.get("STUDY_TOPOLOGY", HERE / "topology.toml")))
    ap.add_argument("--reps", type=int, default=int(env.get("STUDY_REPS", "3")),
                    help="repetitions of each deployment (STUDY_REPS, default 3)")
    ap.add_argument("--duration", type=float, default=float(env["STUDY_DURATION"]) if "STUDY_DURATION" in env else None,
                    help="seconds of load per run (STUDY_DURATION, default 20; smoke: the topology's)")
    ap.add_argument("--smoke", action="store_true", default=env.get("STUDY_SMOKE") == "1",
                    help="the short run of the test suite: scaled-down loss, smaller video (STUDY_SMOKE=1)")
    ap.add_argument("--chromium", action=argparse.BooleanOptionalAction,
                    default={"1": True, "0": False}.get(env.get("STUDY_CHROMIUM", "")),
                    help="headless Chromium receivers, two per region (STUDY_CHROMIUM=1/0; default: on, "
                         "off with --smoke)")
    ap.add_argument("--kaskade", type=Path,
                    default=Path(env.get("STUDY_KASKADE_BIN", ROOT / "target" / "release" / "kaskade")))
    ap.add_argument("--out", type=Path, default=Path(env.get("STUDY_OUT", HERE / "out")))
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--first-rep", type=int, default=0,
                    help="number of the first repetition: the relays' seeds follow from it, so a run "
                         "is replayed with its number (run N of the output is --first-rep N-1 --reps 1)")
    ap.add_argument("--deployments", type=lambda v: v.split(","), default=DEPLOYMENTS,
                    help="which deployments to run, comma-separated (default: star,cascade)")
    args = ap.parse_args()
    if unknown := set(args.deployments) - set(DEPLOYMENTS):
        raise SystemExit(f"--deployments: unknown {sorted(unknown)}; known: {DEPLOYMENTS}")
    args.kaskade = args.kaskade.resolve()
    args.netsim = args.kaskade.with_name("kaskade-netsim")
    for b in (args.kaskade, args.netsim):
        if not b.exists():
            raise SystemExit(f"{b} not found: cargo build --release -p kaskade -p kaskade-netsim")
    if args.chromium is None:
        args.chromium = not args.smoke
    topo = Topology.load(args.topology, args.smoke)
    if args.duration is None:
        args.duration = topo.smoke_duration_s if args.smoke else 20.0
    args.out.mkdir(parents=True, exist_ok=True)

    # A SIGTERM (a test timeout, a CI cancel) unwinds like Ctrl-C: every `finally` stops its
    # processes.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    print(f"topology {args.topology}: inter-region {topo.inter_region.describe()}; "
          + "; ".join(f"{p.name} ({p.region}) {p.access.describe()}" for p in topo.participants), flush=True)
    results = []
    t0 = time.monotonic()
    for rep in range(args.first_rep, args.first_rep + args.reps):
        for dep in args.deployments:
            t = time.monotonic()
            r = run_deployment(args, topo, dep, rep, args.out)
            results.append(r)
            bad = [f"{n}: {c['errors']}" for n, rep_ in r["reports"].items() for c in rep_["clients"] if c["errors"]]
            r["incomplete"] = incomplete(topo, r)
            print(f"run {rep + 1}/{args.first_rep + args.reps} {dep}: {time.monotonic() - t:.1f} s"
                  + (f"; client errors: {bad}" if bad else "")
                  + (f"; MISSING video: {r['incomplete']}" if r["incomplete"] else ""), flush=True)
    raw = args.out / "raw.json"
    raw.write_text(json.dumps(results))
    summary = {kind: summarize(topo, results, kind) for kind in ("video", "audio")}
    meta = {"reps": args.reps, "duration_s": args.duration, "resolution": topo.resolution,
            "simulcast": topo.simulcast, "smoke": args.smoke, "started": started,
            "loss_scale": topo.loss_scale, "elapsed_s": round(time.monotonic() - t0, 1),
            "runs": [{"deployment": r["deployment"], "rep": r["rep"], "incomplete": r["incomplete"]}
                     for r in results]}
    text = table(summary, meta)
    (args.out / "table.md").write_text(text)
    (args.out / "summary.json").write_text(json.dumps({"meta": meta, "rows": summary}, indent=1))
    write_csv(summary, args.out / "summary.csv")
    print()
    print(text, end="")
    if not args.no_plot and plot(summary["video"], args.out / "cascade-study.png",
                                 f"star vs cascade, video ({topo.resolution}), {args.reps} x {args.duration:g} s per deployment"):
        print(f"plot: {args.out / 'cascade-study.png'}")
    print(f"table: {args.out / 'table.md'}; summary: {args.out / 'summary.json'}, {args.out / 'summary.csv'}; "
          f"{meta['elapsed_s']} s in all")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)

#!/usr/bin/env python3
"""Soak benchmark: a 10 x 6 meeting and a 1 -> 100 room on one node for a long time, through
`kaskade loadtest`, sampling the node every 10 s (RSS, open file descriptors, every gauge of
/metrics) into a CSV, with a PNG plot of RSS over time and a verdict:

  pass = RSS grew less than 2% over the last 20 minutes (the median of the first and of the
         last minute of that window) and the load tools counted no loss.

    benches/soak/soak.py                       # 30 minutes, the release binary
    benches/soak/soak.py --minutes 3 --window 2   # a short run (window: the growth window)
    KASKADE_BIN=/tmp/kaskade-X benches/soak/soak.py --out /tmp/soak

The node runs on CPU 0, the two load tools on CPU 1 (taskset), as in docs/benchmarks.md.
Plotting needs matplotlib (`.venv/bin/pip install -r benches/cascade-study/requirements.txt`);
without it the CSV and the verdict are still written.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_secs(pid: int) -> float:
    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def gauges(url: str) -> dict[str, float]:
    """Every gauge series of /metrics (name with labels -> value)."""
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    kinds: dict[str, str] = {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            kinds[name] = kind
        elif line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            name = series.split("{", 1)[0]
            if kinds.get(name) == "gauge":
                try:
                    out[series] = float(value)
                except ValueError:
                    pass
    return out


def plot(out: Path, rows: list[dict], start: float, end: float, growth: float, args) -> None:
    """RSS (and open descriptors) over time, the judged window shaded."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot (pip install matplotlib)", file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(8, 4))
    minutes = [r["t"] / 60 for r in rows]
    rss = [r["rss"] / 1024 for r in rows]
    ax.plot(minutes, rss, label="node RSS (MiB)")
    ax.axvspan(start / 60, end / 60, alpha=0.1, label=f"last {args.window:g} min: {growth:+.2f}%")
    ax.set_xlabel("minutes")
    ax.set_ylabel("MiB")
    ax.set_ylim(0, max(rss) * 1.2)
    fds = ax.twinx()
    fds.plot(minutes, [r["fds"] for r in rows], color="tab:gray", linestyle=":", label="open fds")
    fds.set_ylabel("open file descriptors")
    fds.set_ylim(0, max(r["fds"] for r in rows) * 1.2)
    ax.set_title("kaskade soak: 10 x 6 meeting + 1 -> 100, sampled every %gs" % args.interval)
    lines = ax.get_legend_handles_labels()
    more = fds.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="lower right")
    fig.tight_layout()
    fig.savefig(out / "rss.png", dpi=100)
    print("plot:", out / "rss.png")


def replot(out: Path, args) -> None:
    """The plot again from a run's soak.csv and summary.json."""
    with open(out / "soak.csv") as f:
        rows = [{"t": float(r["t_secs"]), "rss": int(r["rss_kib"]), "fds": int(r["open_fds"])}
                for r in csv.DictReader(f)]
    summary = json.loads((out / "summary.json").read_text())
    end = rows[-1]["t"]
    plot(out, rows, max(0.0, end - args.window * 60), end, summary["rss_growth_pct"], args)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--window", type=float, default=20.0, help="minutes at the end over which RSS growth is judged")
    ap.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--out", type=Path, default=Path("soak-out"))
    ap.add_argument("--bin", type=Path, default=Path(os.environ.get("KASKADE_BIN", ROOT / "target/release/kaskade")))
    ap.add_argument("--replot", action="store_true", help="only redraw rss.png from --out's CSV")
    args = ap.parse_args()
    if args.replot:
        replot(args.out, args)
        return 0
    if not args.bin.exists():
        print(f"no binary at {args.bin}: cargo build --release -p kaskade", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    http, media = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_DGRAM)
    url = f"http://127.0.0.1:{http}"
    pin = ["taskset", "-c"] if shutil.which("taskset") else None
    node_log = open(args.out / "node.log", "w")
    node = subprocess.Popen(
        (pin + ["0"] if pin else []) + [str(args.bin), "serve", "--dev", "--http-port", str(http),
         "--media-port", str(media), "--max-participants", "300"],
        stdout=node_log, stderr=subprocess.STDOUT,
    )
    loads: list[subprocess.Popen] = []
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or node.poll() is not None:
                    print("the node did not start; see", args.out / "node.log", file=sys.stderr)
                    return 2
                time.sleep(0.2)
        time.sleep(1)
        idle_rss = rss_kib(node.pid)
        # The load runs a little longer than the sampling, so that the last samples are loaded.
        run_secs = int(args.minutes * 60) + 30
        common = ["loadtest", "--url", url, "--join-rate", "20", "--duration", f"{run_secs}s", "--quiet"]
        shapes = {
            "meeting": ["--rooms", "10", "--video-publishers", "6", "--audio-publishers", "6",
                        "--subscribers", "0", "--resolution", "360p"],
            "fanout": ["--room", "fan", "--video-publishers", "1", "--audio-publishers", "1",
                       "--subscribers", "100", "--resolution", "360p"],
        }
        for name, shape in shapes.items():
            loads.append(subprocess.Popen(
                (pin + ["1"] if pin else []) + [str(args.bin)] + common + shape
                + ["--json", str(args.out / f"{name}.json")],
                stdout=open(args.out / f"{name}.out", "w"), stderr=subprocess.STDOUT,
            ))
        time.sleep(15)  # joins (161 participants at 20 a second per tool)
        rows: list[dict] = []
        names: list[str] | None = None
        t0 = time.monotonic()
        cpu0 = cpu_secs(node.pid)
        with open(args.out / "soak.csv", "w", newline="") as f:
            w = None
            while time.monotonic() - t0 < args.minutes * 60:
                g = gauges(url)
                if names is None:
                    names = sorted(g)
                    w = csv.writer(f)
                    w.writerow(["t_secs", "rss_kib", "open_fds", "cpu_secs"] + names)
                row = {"t": time.monotonic() - t0, "rss": rss_kib(node.pid), "fds": fds(node.pid),
                       "cpu": cpu_secs(node.pid) - cpu0}
                w.writerow([f"{row['t']:.1f}", row["rss"], row["fds"], f"{row['cpu']:.2f}"]
                           + [g.get(n, "") for n in names])
                f.flush()
                rows.append(row)
                time.sleep(args.interval)
        for p in loads:
            p.wait(timeout=120)
        reports = {name: json.loads((args.out / f"{name}.json").read_text()) for name in shapes}
    finally:
        for p in loads:
            if p.poll() is None:
                p.kill()
        node.terminate()
        try:
            node.wait(10)
        except subprocess.TimeoutExpired:
            node.kill()

    window = args.window * 60
    end = rows[-1]["t"]
    start = max(0.0, end - window)
    first = [r["rss"] for r in rows if start <= r["t"] < start + 60] or [rows[0]["rss"]]
    last = [r["rss"] for r in rows if r["t"] >= end - 60] or [rows[-1]["rss"]]
    a, b = statistics.median(first), statistics.median(last)
    growth = (b - a) / a * 100
    lost = sum(r["total"]["packets_lost"] for r in reports.values())
    received = sum(r["total"]["packets_received"] for r in reports.values())
    connected = sum(r["total"]["connected"] for r in reports.values())
    clients = sum(r["total"]["clients"] for r in reports.values())
    verdict = growth < 2.0 and lost == 0 and connected == clients
    summary = {
        "minutes": args.minutes, "window_minutes": args.window, "samples": len(rows),
        "idle_rss_kib": idle_rss, "rss_window_start_kib": a, "rss_end_kib": b,
        "rss_growth_pct": round(growth, 3), "rss_max_kib": max(r["rss"] for r in rows),
        "open_fds_first": rows[0]["fds"], "open_fds_last": rows[-1]["fds"],
        "node_cpu_secs": round(rows[-1]["cpu"], 1), "clients": clients, "connected": connected,
        "packets_received": received, "packets_lost": lost, "pass": verdict,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    plot(args.out, rows, start, end, growth, args)
    print("PASS" if verdict else "FAIL")
    return 0 if verdict else 1


if __name__ == "__main__":
    sys.exit(main())

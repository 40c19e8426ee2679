"""The cascade study (benches/cascade-study, docs/cascade-study.md) in its smoke form, so that it
cannot rot: the real script, the real binaries, the real relays of topology.toml (loss scaled
down, a smaller video, a few seconds), one repetition of each deployment, no browser, no plot.

It checks that the script produced a summary for both deployments and the four directions, and
that the latencies it measured follow the configured delays: 10 ms access links and a 50 ms
inter-region link make A->A about 20 ms in both deployments, A->B and B->A about 70 ms in both,
and B->B about 120 ms in the star (twice across) against about 20 ms in the cascade.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from harness import REPO_ROOT, kaskade_bin

STUDY = REPO_ROOT / "benches" / "cascade-study" / "study.py"
DIRECTIONS = ["A->A", "A->B", "B->A", "B->B"]


def run_smoke(out) -> tuple[dict, str]:
    cmd = [sys.executable, str(STUDY), "--smoke", "--reps", "1", "--no-plot",
           "--kaskade", str(kaskade_bin()), "--out", str(out)]
    # study.py stops every process it started on SIGTERM; the timeout keeps the test under 90 s.
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT)
    try:
        text, _ = p.communicate(timeout=80)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        text, _ = p.communicate(timeout=10)
        raise AssertionError(f"the smoke study took over 80 s:\n{text}")
    assert p.returncode == 0, f"study.py exited {p.returncode}:\n{text}"
    return json.loads((out / "summary.json").read_text()), text


def test_smoke_study_measures_star_and_cascade_per_direction(tmp_path):
    summary, text = run_smoke(tmp_path)
    assert summary["meta"]["smoke"] is True
    video = summary["rows"]["video"]
    for dep in ("star", "cascade"):
        for d in DIRECTIONS:
            row = video[f"{dep} {d}"]
            # Each of the two receivers of a region sees the video of the two publishers of the
            # other region (of the one other publisher of its own): 2 or 4 streams. At least one:
            # in 1 of 6 full-study runs a star participant received nothing (docs/cascade-study.md,
            # an open finding), and study.py names such receivers.
            assert row["streams"] >= 1, (dep, d, row, text)
            assert row["packets"] > 100, (dep, d, row, text)
            assert row["latency_p50_ms"] is not None and row["latency_p95_ms"] >= row["latency_p50_ms"]
            # Loss is scaled down but not zero: NACKs repair most of it, and the repairs
            # arrive after at least a round trip on the lossy hop.
            assert row["residual_loss_pct"] is not None and row["residual_loss_pct"] < 5.0, (dep, d, row)
    lat = {k: v["latency_p50_ms"] for k, v in video.items()}
    # Minimum one-way delays (fixed delay minus the jitter bound of each link) are lower
    # bounds; CPU (a debug build on a shared machine) only adds.
    for dep in ("star", "cascade"):
        assert lat[f"{dep} A->A"] >= 16, lat
        assert lat[f"{dep} A->B"] >= 65, lat
        assert lat[f"{dep} B->A"] >= 65, lat
    assert lat["star B->B"] >= 112, lat
    assert lat["cascade B->B"] >= 16, lat
    # The point of the cascade: B's participants no longer cross the ocean twice to meet.
    assert lat["cascade B->B"] < lat["star B->B"] - 60, lat
    # Star A->A never leaves region A: it must not pay the inter-region delay either.
    assert lat["star A->A"] < lat["star A->B"] - 25, lat
    repaired = sum(v["repaired"] for v in video.values())
    assert repaired > 0, f"no packet was repaired under loss: {video}"
    audio = summary["rows"]["audio"]
    assert all(audio[f"{dep} {d}"]["packets"] > 0 for dep in ("star", "cascade") for d in DIRECTIONS), audio
    table = (tmp_path / "table.md").read_text()
    assert "| star | B->B |" in table and "| cascade | B->B |" in table
    # Every process it started is gone: the relays and bridges print their exit lines.
    leftovers = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True).stdout.split()
    assert [pid for pid in leftovers if int(pid) != os.getpid()] == [], leftovers

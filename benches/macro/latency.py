#!/usr/bin/env python3
"""Quantiles of a Prometheus histogram over a window, from two scrapes of /metrics.

    benches/macro/latency.py before.txt after.txt [metric]

metric defaults to kaskade_forwarding_delay_seconds (docs/benchmarks.md, "Time inside one
bridge"). For each label set the script differences the cumulative buckets (after - before),
then prints the window's count, mean, p50 / p90 / p99 / p99.9 and the share of samples at or
under 1 ms and 2 ms. A quantile is interpolated linearly inside its bucket, as Prometheus'
histogram_quantile does (from 0 for the first bucket); one that falls in +Inf is printed as
"> <last bound>". So a quantile is exact only to its bucket: the shares at 1 and 2 ms, which
are bucket bounds, are exact.
"""

import math
import re
import sys

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)')
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def parse(path, metric):
    """{labels without le: {"buckets": {le: cum}, "sum": x, "count": n}}"""
    out = {}
    with open(path) as f:
        for line in f:
            m = LINE.match(line)
            if not m:
                continue
            name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
            if not name.startswith(metric + "_"):
                continue
            kv = dict(LABEL.findall(labels))
            le = kv.pop("le", None)
            key = ",".join(f'{k}="{v}"' for k, v in sorted(kv.items()))
            h = out.setdefault(key, {"buckets": {}, "sum": 0.0, "count": 0.0})
            suffix = name[len(metric) + 1:]
            if suffix == "bucket" and le is not None:
                h["buckets"][math.inf if le == "+Inf" else float(le)] = value
            elif suffix == "sum":
                h["sum"] = value
            elif suffix == "count":
                h["count"] = value
    return out


def quantile(q, bounds, cum):
    total = cum[-1]
    if total <= 0:
        return None
    rank = q * total
    for i, (b, c) in enumerate(zip(bounds, cum)):
        if c >= rank:
            if math.isinf(b):
                return -bounds[i - 1] if i > 0 else None  # negative: "above the last bound"
            lo = bounds[i - 1] if i > 0 else 0.0
            below = cum[i - 1] if i > 0 else 0.0
            inside = c - below
            return lo + (b - lo) * ((rank - below) / inside if inside > 0 else 1.0)
    return None


def fmt(v):
    if v is None:
        return "-"
    if v < 0:
        return f"> {-v * 1e3:.2f} ms"
    return f"{v * 1e3:.3f} ms"


def share_at(bound, bounds, cum):
    for b, c in zip(bounds, cum):
        if b == bound:
            return c / cum[-1] if cum[-1] > 0 else None
    return None


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    metric = sys.argv[3] if len(sys.argv) > 3 else "kaskade_forwarding_delay_seconds"
    before, after = parse(sys.argv[1], metric), parse(sys.argv[2], metric)
    if not after:
        sys.exit(f"no {metric} in {sys.argv[2]}")
    for key, h in sorted(after.items()):
        b0 = before.get(key, {"buckets": {}, "sum": 0.0, "count": 0.0})
        bounds = sorted(h["buckets"])
        cum = [h["buckets"][b] - b0["buckets"].get(b, 0.0) for b in bounds]
        n = h["count"] - b0["count"]
        mean = (h["sum"] - b0["sum"]) / n if n > 0 else None
        qs = " ".join(f"p{q * 100:g}={fmt(quantile(q, bounds, cum))}" for q in (0.5, 0.9, 0.99, 0.999))
        s1, s2 = share_at(0.001, bounds, cum), share_at(0.002, bounds, cum)
        shares = " ".join(
            f"<={ms}ms={s * 100:.2f}%" for ms, s in ((1, s1), (2, s2)) if s is not None
        )
        print(f"{{{key}}} count={n:.0f} mean={fmt(mean)} {qs} {shares}")


if __name__ == "__main__":
    main()

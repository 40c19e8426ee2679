"""Fixtures for the kaskade end-to-end suite.

A real `kaskade serve` process is started on free ports (binary from $KASKADE_BIN, default
target/debug/kaskade); its log goes to a file that is attached to every failing test's report.

Markers: `browser` (headless Chromium via selenium), `aiortc` (aiortc media clients).
Select with e.g. `pytest -m browser tests/e2e` or deselect with `-m "not browser"`.
"""

from __future__ import annotations

import os
import uuid

import pytest

from harness import Bridge, machine_ipv4


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


@pytest.fixture(autouse=True)
def _bridge_must_survive(request):
    """After every test, each bridge it used must still be running."""
    yield
    for name in ("bridge", "bridge_cap2", "browser_bridge"):
        if name in request.fixturenames:
            b = request.getfixturevalue(name)
            if not b.alive():
                pytest.fail(f"bridge {name} died during this test (exit {b.proc.returncode})", pytrace=False)


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
    for name in ("bridge", "bridge_cap2", "browser_bridge"):
        b = item.funcargs.get(name) if hasattr(item, "funcargs") else None
        if isinstance(b, Bridge) and id(b) not in seen:
            seen.add(id(b))
            state = "running" if b.alive() else f"exited {b.proc.returncode if b.proc else '?'}"
            rep.sections.append(
                (f"kaskade log ({name}, {state}, {b.log_path})", b.log_tail(300))
            )

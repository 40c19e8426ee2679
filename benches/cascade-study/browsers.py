"""Headless Chromium receivers for the cascade study (study.py --chromium, the default).

Each browser joins the demo page of its region's bridge (the one bridge in A for the star)
through a relay chain of its own: a script injected before the page runs rewrites the host
candidate of every remote description to the first relay of the chain, the browser-side
counterpart of `kaskade loadtest --media-via` (the bridge advertises one media address for
everyone). Nothing in the bridge or the page changes.

The browsers publish their fake microphone, some their fake camera too (`camera` in
topology.toml), and receive each other: the load clients' media is shaped, not encoded, so a
browser cannot decode it. Per received video
the getStats counters over the measurement window are returned.
"""

from __future__ import annotations

import json
import os
import time
from urllib.parse import urlencode

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required", "--window-size=1280,800",
]
COUNTERS = ["jitterBufferDelay", "jitterBufferEmittedCount", "freezeCount", "totalFreezesDuration",
            "packetsLost", "packetsReceived", "nackCount", "framesDecoded"]

VIA_JS = """
(() => {
  const VIA_IP = %(ip)s, VIA_PORT = %(port)s;
  const rewrite = (sdp) => sdp.replace(
    /^(a=candidate:\\S+ \\d+ udp \\d+ )(\\S+) (\\d+)( typ host.*)$/gim,
    (_m, head, _ip, _port, tail) => head + VIA_IP + " " + VIA_PORT + tail);
  const srd = RTCPeerConnection.prototype.setRemoteDescription;
  RTCPeerConnection.prototype.setRemoteDescription = function (desc, ...rest) {
    if (desc && desc.sdp) desc = { type: desc.type, sdp: rewrite(desc.sdp) };
    return srd.call(this, desc, ...rest);
  };
  const aic = RTCPeerConnection.prototype.addIceCandidate;
  RTCPeerConnection.prototype.addIceCandidate = function (c, ...rest) {
    if (c && c.candidate) c = { ...(c.toJSON ? c.toJSON() : c), candidate: rewrite("a=" + c.candidate).slice(2) };
    return aic.call(this, c, ...rest);
  };
})();
"""

STATS_JS = (
    "const done = arguments[arguments.length - 1];"
    "window.kaskade.stats().then(done, e => done({__error: String(e)}));"
)
STATE_JS = "const k = window.kaskade; return k ? {state: k.state, participantId: k.participantId} : null;"


def run_browsers(procs, args, topo_raw: dict, bridges: dict, chain, link_of, seed: int, room: str,
                 duration: float) -> dict:
    """Starts the browsers, lets them exchange media for `duration` seconds after every one
    decodes every other, and returns {"<receiver><-<sender>": counters + direction}."""
    os.environ["SE_OFFLINE"] = "true"  # selenium must never fetch drivers or browsers
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    specs = topo_raw.get("browsers", [])
    drivers: dict[str, object] = {}
    regions: dict[str, str] = {}
    # Encoding 720p is what a small machine cannot do four times over beside the bridges: only
    # the browsers with `camera` (default true) send video, every browser receives it.
    cameras: set[str] = set()
    try:
        for i, b in enumerate(specs):
            name, region = b["name"], b["region"]
            bridge = bridges.get(region, bridges["A"])
            links = [link_of(b["access"])]
            if bridge.region != region:
                links.append(link_of(topo_raw["inter_region"]))
            via = chain(procs, args.netsim, f"path-{name}", bridge.media, links, seed + 500 + 10 * i)
            ip, port = via.rsplit(":", 1)
            opts = webdriver.ChromeOptions()
            opts.binary_location = CHROMIUM
            for flag in CHROME_FLAGS:
                opts.add_argument(flag)
            profile = procs.logdir / f"profile-{name}"
            profile.mkdir(exist_ok=True)
            opts.add_argument(f"--user-data-dir={profile}")
            service = Service(executable_path=CHROMEDRIVER, log_output=str(procs.logdir / f"chromedriver-{name}.log"))
            d = webdriver.Chrome(service=service, options=opts)
            drivers[name] = d
            regions[name] = region
            d.set_page_load_timeout(20)
            d.set_script_timeout(10)
            d.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument",
                              {"source": VIA_JS % {"ip": json.dumps(ip), "port": int(port)}})
            params = {"room": room, "name": name, "autojoin": 1, "simulcast": 0}
            if not b.get("camera", True):
                params["cam"] = 0
            else:
                cameras.add(name)
            q = urlencode(params)
            d.get(f"{bridge.url}/?{q}")
        ids = {}
        deadline = time.monotonic() + 30
        for name, d in drivers.items():
            while True:
                s = d.execute_script(STATE_JS)
                if s and s.get("state") == "joined" and s.get("participantId"):
                    ids[s["participantId"]] = name
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"browser {name} did not join: {s}")
                time.sleep(0.25)

        def snapshot() -> dict:
            out = {}
            for name, d in drivers.items():
                stats = d.execute_async_script(STATS_JS) or {}
                for pid, entry in stats.items():
                    sender = ids.get(pid)
                    if sender and isinstance(entry, dict) and entry.get("video"):
                        out[f"{name}<-{sender}"] = entry["video"]
            return out

        want = {f"{r}<-{s}" for r in drivers for s in cameras if r != s}
        deadline = time.monotonic() + 40
        while True:
            snap = snapshot()
            if all(snap.get(k, {}).get("framesDecoded", 0) > 0 for k in want):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"browsers do not all decode each other: {snap}")
            time.sleep(0.5)
        time.sleep(2)  # past the first key frame and the layer ramp-up
        s0 = snapshot()
        time.sleep(duration)
        s1 = snapshot()
        out = {}
        for k in want:
            r, s = k.split("<-")
            a, b = s0.get(k, {}), s1.get(k, {})
            row = {c: float(b.get(c, 0)) - float(a.get(c, 0)) for c in COUNTERS}
            row["direction"] = f"{regions[s]}->{regions[r]}"
            row["frame_height"] = b.get("frameHeight")
            out[k] = row
        return out
    finally:
        for d in drivers.values():
            pid = getattr(getattr(d, "service", None), "process", None)
            try:
                d.quit()
            except Exception:  # noqa: BLE001 - whatever went wrong, the processes must go
                pass
            if pid is not None and pid.poll() is None:
                pid.kill()

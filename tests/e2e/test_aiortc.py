"""Media through a real bridge, with aiortc (an independent WebRTC stack) on both ends.

The publisher sends a 440 Hz tone and grey 320x240 video; the subscriber must decode both and
the decoded content must resemble what was sent (frequency, level, luma), which only holds when
the bridge forwards real, decodable media.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from harness import Bridge, SignalClient, ident, make_token, run
from media import (
    AUDIO_RATE,
    TONE_HZ,
    VIDEO_H,
    VIDEO_LUMA,
    VIDEO_W,
    AiortcParticipant,
    mean_luma,
    recv_frames,
    rms_s16,
    s16_samples,
)

pytestmark = pytest.mark.aiortc



async def join(bridge: Bridge, room: str, label: str, name: str) -> AiortcParticipant:
    sig = await SignalClient.connect(bridge.ws_url, label)
    await sig.join(room, make_token(room, ident(label)), name)
    return AiortcParticipant(sig)


async def receive_tracks_of(sub: AiortcParticipant, publisher_id: str, timeout: float) -> dict:
    """Answer subscriber offers until the audio and video tracks of `publisher_id` arrived."""
    deadline = time.monotonic() + timeout
    while True:
        have = {t.kind: t for sid, t in sub.tracks if sid == publisher_id}
        if {"audio", "video"} <= set(have):
            return have
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(
                f"{sub.sig.label}: tracks of {publisher_id} not received; got "
                f"{[(sid, t.kind) for sid, t in sub.tracks]} after {sub.offers_answered} offers"
            )
        # an offer may be pending, or the tracks may arrive on the first RTP packet
        try:
            await sub.answer_subscriber_offer(min(left, 1.0))
        except TimeoutError:
            pass


def tone_frequency(frames) -> float:
    """Zero-crossing estimate of the tone frequency over decoded audio frames (first channel)."""
    crossings = 0
    samples = 0
    prev = None
    for f in frames:
        pcm = s16_samples(f, channel=0)
        for s in pcm:
            if prev is not None and (prev < 0) != (s < 0):
                crossings += 1
            prev = s
        samples += len(pcm)
    return crossings / 2 / (samples / AUDIO_RATE) if samples else 0.0


async def check_media(tracks: dict, label: str) -> None:
    video, audio = tracks["video"], tracks["audio"]
    vframes, aframes = await asyncio.gather(
        recv_frames(video, 10, timeout=20), recv_frames(audio, 100, timeout=20)
    )
    last = vframes[-1]
    assert (last.width, last.height) == (VIDEO_W, VIDEO_H), f"{label}: decoded {last.width}x{last.height}"
    luma = mean_luma(last)
    # grey 180 with a dark 32x32 square: the mean stays close to 180 after VP8
    assert abs(luma - VIDEO_LUMA) < 20, f"{label}: decoded luma {luma:.1f}, sent ~{VIDEO_LUMA}"
    assert aframes[-1].sample_rate == AUDIO_RATE
    tail = aframes[-50:]  # the last second: past any start-up silence
    rms = max(rms_s16(f) for f in tail)
    assert rms > 1500, f"{label}: decoded audio RMS {rms:.0f}: the tone did not come through"
    freq = tone_frequency(tail)
    assert abs(freq - TONE_HZ) < 25, f"{label}: decoded tone ~{freq:.0f} Hz, sent {TONE_HZ} Hz"


def test_publish_subscribe_and_leave(bridge, room):
    async def scenario():
        alice = await join(bridge, room, "alice", "Alice")
        bob = None
        try:
            await alice.publish()
            bob = await join(bridge, room, "bob", "Bob")
            a_id = alice.sig.participant_id

            tracks = await receive_tracks_of(bob, a_id, timeout=15)
            await check_media(tracks, "bob <- alice")

            # what bob was told about alice's tracks matches what he receives
            announced = {
                t["id"]: t["kind"]
                for p in bob.sig.joined["participants"]
                if p["id"] == a_id
                for t in p["tracks"]
            }
            announced.update(
                {
                    m["track"]["id"]: m["track"]["kind"]
                    for m in bob.sig.received
                    if m["type"] == "track_published" and m["participant_id"] == a_id
                }
            )
            assert sorted(announced.values()) == ["audio", "video"], announced

            # alice leaves: bob is told, per track and per participant, and re-offered
            offers_before = bob.offers_answered
            await alice.sig.send({"type": "leave"})
            await alice.sig.expect_closed(5, after_leave=True)
            await bob.sig.wait_for("participant_left", 5, lambda m: m["participant_id"] == a_id)
            gone = set()
            while gone != set(announced):
                m = await bob.sig.wait_for("track_unpublished", 5, lambda m: m["participant_id"] == a_id)
                gone.add(m["track_id"])
            # changes made while an offer is unanswered are folded into the next offer, so
            # answer re-offers until one no longer sends alice's media (bounded)
            deadline = time.monotonic() + 8
            offer = None
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"after alice left, {bob.offers_answered - offers_before} re-offer(s) in 8 s "
                        "and the last still sends her media:\n" + (offer["sdp"] if offer else "(no offer)")
                    )
                try:
                    offer = await bob.answer_subscriber_offer(left)
                except TimeoutError:
                    continue
                if not _active_sections_of(offer["sdp"], a_id):
                    break
            await bob.sig.ping()
        finally:
            await alice.close()
            if bob is not None:
                await bob.close()

    run(scenario(), 90)


def _active_sections_of(sdp: str, participant_id: str) -> list[str]:
    """mids of m-sections that still carry participant_id's media (msid and not inactive/port 0)."""
    active = []
    sections = sdp.split("\r\nm=")[1:]
    for sec in sections:
        lines = ("m=" + sec).split("\r\n")
        port = lines[0].split()[1] if len(lines[0].split()) > 1 else "0"
        mid = next((ln[6:] for ln in lines if ln.startswith("a=mid:")), "?")
        has_msid = any(ln.startswith(f"a=msid:{participant_id} ") for ln in lines)
        inactive = "a=inactive" in lines or "a=recvonly" in lines or port == "0"
        if has_msid and not inactive:
            active.append(mid)
    return active


def test_two_publishers_receive_each_other(bridge, room):
    async def scenario():
        alice = await join(bridge, room, "alice", "Alice")
        bob = await join(bridge, room, "bob", "Bob")
        try:
            await alice.publish()
            await bob.publish()
            a_tracks, b_tracks = await asyncio.gather(
                receive_tracks_of(bob, alice.sig.participant_id, 20),
                receive_tracks_of(alice, bob.sig.participant_id, 20),
            )
            await asyncio.gather(check_media(a_tracks, "bob <- alice"), check_media(b_tracks, "alice <- bob"))
            # nobody receives their own media back
            assert all(sid != alice.sig.participant_id for sid, _ in alice.tracks)
            assert all(sid != bob.sig.participant_id for sid, _ in bob.tracks)
            m = bridge.metrics()
            assert m.get("kaskade_rtp_forwarded_total", 0) > 0
        finally:
            await alice.close()
            await bob.close()

    run(scenario(), 90)


def test_late_joiner_gets_existing_tracks(bridge, room):
    """A subscriber joining after media flows gets a keyframe soon (decodes within the timeout)."""

    async def scenario():
        alice = await join(bridge, room, "alice", "Alice")
        carol = None
        try:
            await alice.publish()
            await asyncio.sleep(3)  # media flows for a while with nobody subscribed
            carol = await join(bridge, room, "carol", "Carol")
            tracks = await receive_tracks_of(carol, alice.sig.participant_id, 15)
            await check_media(tracks, "carol <- alice (late)")
        finally:
            await alice.close()
            if carol is not None:
                await carol.close()

    run(scenario(), 60)


def test_default_bind_address_works_for_a_loopback_client(tmp_path):
    """`kaskade serve` with its default bind (all addresses) and advertise-ip 127.0.0.1 — what a new
    user runs — must connect a client whose checks come from this machine's LAN address: ICE
    needs the answer to come from the address the check was sent to (RFC 8445 7.2.5.2.1)."""
    b = Bridge(tmp_path / "kaskade.log", advertise_ip="127.0.0.1", bind_ip=None).start()
    try:

        async def scenario():
            r = "room-" + uuid.uuid4().hex[:8]
            alice = await join(b, r, "alice", "Alice")
            bob = await join(b, r, "bob", "Bob")
            try:
                await alice.publish()
                tracks = await receive_tracks_of(bob, alice.sig.participant_id, 15)
                await check_media(tracks, "bob <- alice (default bind)")
            finally:
                await alice.close()
                await bob.close()

        try:
            run(scenario(), 60)
        except BaseException:
            print(b.log_tail(200))
            raise
    finally:
        b.stop()

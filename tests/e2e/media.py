"""aiortc-side helpers: synthetic media tracks and a two-PeerConnection kaskade client."""

from __future__ import annotations

import asyncio
import fractions
import math
import struct
import time
from typing import Any

from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame, VideoFrame

from harness import SignalClient

AUDIO_RATE = 48000
AUDIO_PTIME = 0.020
TONE_HZ = 440.0
TONE_AMPLITUDE = 8000  # of 32767

VIDEO_W, VIDEO_H = 320, 240
VIDEO_LUMA = 180  # the publisher's frames are a flat grey of this luma


class ToneTrack(MediaStreamTrack):
    """A 440 Hz sine, mono s16 at 48 kHz, 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self):
        super().__init__()
        self._pts = 0
        self._start: float | None = None
        self._samples = int(AUDIO_RATE * AUDIO_PTIME)

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            wait = self._start + self._pts / AUDIO_RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        pcm = struct.pack(
            f"<{self._samples}h",
            *(
                int(TONE_AMPLITUDE * math.sin(2 * math.pi * TONE_HZ * (self._pts + i) / AUDIO_RATE))
                for i in range(self._samples)
            ),
        )
        frame = AudioFrame(format="s16", layout="mono", samples=self._samples)
        frame.planes[0].update(pcm)
        frame.sample_rate = AUDIO_RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, AUDIO_RATE)
        self._pts += self._samples
        return frame


class GreyVideoTrack(VideoStreamTrack):
    """Flat grey frames (luma VIDEO_LUMA) with a small moving square, 30 fps."""

    def __init__(self):
        super().__init__()
        self._n = 0

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame(width=VIDEO_W, height=VIDEO_H, format="yuv420p")
        y = frame.planes[0]
        luma = bytearray([VIDEO_LUMA]) * y.buffer_size
        x = (self._n * 4) % (VIDEO_W - 32)
        for row in range(100, 132):  # a dark moving square, so the encoder has motion
            start = row * y.line_size + x
            luma[start : start + 32] = bytes([40]) * 32
        y.update(bytes(luma))
        for chroma in frame.planes[1:]:
            chroma.update(bytes([128]) * chroma.buffer_size)
        self._n += 1
        frame.pts = pts
        frame.time_base = time_base
        return frame


async def make_publisher_offer(audio: bool = True, video: bool = True) -> tuple[RTCPeerConnection, str]:
    """A real publisher offer (sendonly audio/video) from aiortc; the caller closes the PC."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    if audio:
        pc.addTransceiver(ToneTrack(), direction="sendonly")
    if video:
        pc.addTransceiver(GreyVideoTrack(), direction="sendonly")
    offer = await pc.createOffer()
    await pc.setLocalDescription(offer)
    return pc, pc.localDescription.sdp


class AiortcParticipant:
    """A kaskade participant built on aiortc: a publisher PC it offers, a subscriber PC it answers."""

    def __init__(self, sig: SignalClient):
        self.sig = sig
        self.publisher: RTCPeerConnection | None = None
        self.subscriber: RTCPeerConnection | None = None
        self.tracks: list[tuple[str, MediaStreamTrack]] = []  # (stream id = participant id, track)
        self.track_event = asyncio.Event()
        self._unresolved: list[MediaStreamTrack] = []
        self.offers_answered = 0

    async def publish(self, audio: bool = True, video: bool = True, timeout: float = 10.0) -> dict:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.publisher = pc
        if audio:
            pc.addTransceiver(ToneTrack(), direction="sendonly")
        if video:
            pc.addTransceiver(GreyVideoTrack(), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        await self.sig.send({"type": "offer", "target": "publisher", "sdp": pc.localDescription.sdp})
        answer = await self.sig.wait_for("answer", timeout, lambda m: m["target"] == "publisher")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type="answer"))
        # aiortc puts its candidates in the SDP; tell the bridge there are no more.
        await self.sig.send({"type": "candidate", "target": "publisher", "candidate": None})
        return answer

    def _ensure_subscriber(self) -> RTCPeerConnection:
        if self.subscriber is None:
            pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

            @pc.on("track")
            def on_track(track):  # noqa: ANN001
                # aiortc has no RTCTrackEvent.streams: the stream id (= the publishing
                # participant's id) is read from the offer's a=msid once it is applied.
                self._unresolved.append(track)
                self.track_event.set()

            self.subscriber = pc
        return self.subscriber

    @staticmethod
    def msid_by_mid(sdp: str) -> dict[str, str]:
        """mid -> msid stream id, from an SDP."""
        out: dict[str, str] = {}
        mid = stream = None
        for line in sdp.splitlines() + ["m=end"]:
            if line.startswith("m="):
                if mid is not None and stream is not None:
                    out[mid] = stream
                mid = stream = None
            elif line.startswith("a=mid:"):
                mid = line[6:].strip()
            elif line.startswith("a=msid:"):
                stream = line[7:].split()[0]
        return out

    def _resolve_tracks(self, sdp: str) -> None:
        by_mid = self.msid_by_mid(sdp)
        mid_of = {t.receiver.track: t.mid for t in self.subscriber.getTransceivers() if t.receiver.track}
        still = []
        for track in self._unresolved:
            sid = by_mid.get(mid_of.get(track))
            if sid is None:
                still.append(track)
            else:
                self.tracks.append((sid, track))
        self._unresolved = still

    async def answer_subscriber_offer(self, timeout: float = 10.0) -> dict:
        offer = await self.sig.wait_for("offer", timeout, lambda m: m["target"] == "subscriber")
        pc = self._ensure_subscriber()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        self._resolve_tracks(offer["sdp"])
        await pc.setLocalDescription(await pc.createAnswer())
        await self.sig.send({"type": "answer", "target": "subscriber", "sdp": pc.localDescription.sdp})
        await self.sig.send({"type": "candidate", "target": "subscriber", "candidate": None})
        self.offers_answered += 1
        return offer

    async def close(self) -> None:
        for pc in (self.publisher, self.subscriber):
            if pc is not None:
                try:
                    await asyncio.wait_for(pc.close(), 5)
                except Exception:  # noqa: BLE001 - teardown must go on
                    pass
        await self.sig.close()


async def recv_frames(track: MediaStreamTrack, count: int, timeout: float) -> list[Any]:
    frames = []
    deadline = time.monotonic() + timeout
    while len(frames) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{track.kind}: {len(frames)} of {count} frames within {timeout}s")
        frames.append(await asyncio.wait_for(track.recv(), left))
    return frames


def mean_luma(frame: VideoFrame) -> float:
    """Mean of the Y plane of a decoded frame (visible pixels only)."""
    if frame.format.name != "yuv420p":
        frame = frame.reformat(format="yuv420p")
    y = frame.planes[0]
    data = bytes(y)
    total = 0
    for row in range(frame.height):
        start = row * y.line_size
        total += sum(data[start : start + frame.width])
    return total / (frame.width * frame.height)


def rms_s16(frame: AudioFrame) -> float:
    """RMS of a decoded audio frame as signed 16-bit samples (all channels)."""
    if frame.format.name != "s16":
        from av.audio.resampler import AudioResampler

        frame = AudioResampler(format="s16", layout=frame.layout.name, rate=frame.sample_rate).resample(frame)[0]
    samples = s16_samples(frame)
    return math.sqrt(sum(s * s for s in samples) / max(1, len(samples)))


def s16_samples(frame: AudioFrame, channel: int | None = None) -> tuple[int, ...]:
    """The samples of a packed s16 frame (the plane's buffer is padded past them), optionally
    of one channel only."""
    assert frame.format.name == "s16", frame.format.name
    chans = len(frame.layout.channels)
    n = frame.samples * chans
    samples = struct.unpack(f"<{n}h", bytes(frame.planes[0])[: n * 2])
    return samples if channel is None else samples[channel::chans]

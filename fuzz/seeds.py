"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/) from real traffic.

Every seed is what a real peer puts on the wire: aiortc's own offers, encoders, packetizers,
STUN and RTCP classes (the same library the end-to-end suite publishes with), the Octo packets
of proto/octo-vectors (checked against the Rust implementation by crates/octo's tests), and
the client messages of proto/signaling.md. Deterministic apart from aiortc's random ids, so
re-running it changes file contents but not what the seeds cover.

Run with the end-to-end venv: .venv/bin/python fuzz/seeds.py
"""

import asyncio
import fractions
import hashlib
import json
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from aioice import stun  # noqa: E402
from aiortc.codecs.opus import OpusEncoder  # noqa: E402
from aiortc.codecs.vpx import Vp8Encoder  # noqa: E402
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters  # noqa: E402
from aiortc.rtp import (  # noqa: E402
    HeaderExtensionsMap,
    RtcpByePacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    RtcpSenderInfo,
    RtpPacket,
    pack_remb_fci,
)
from av import AudioFrame, VideoFrame  # noqa: E402

from media import make_publisher_offer, GreyVideoTrack, ToneTrack  # noqa: E402

CORPUS = ROOT / "fuzz" / "corpus"
OCTO_SEP = b"\xffOCTO\xff"
RTP_SEP = b"\xffRTP\xff"


def put(target: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


def ext_map() -> HeaderExtensionsMap:
    m = HeaderExtensionsMap()
    m.configure(
        RTCRtpParameters(
            headerExtensions=[
                RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
                RTCRtpHeaderExtensionParameters(id=2, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
                RTCRtpHeaderExtensionParameters(id=3, uri="urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id"),
                RTCRtpHeaderExtensionParameters(
                    id=4, uri="http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
                ),
                RTCRtpHeaderExtensionParameters(
                    id=5, uri="http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time"
                ),
            ]
        )
    )
    return m


async def frames():
    video, audio = GreyVideoTrack(), ToneTrack()
    vf = [await video.recv() for _ in range(3)]
    af = [await audio.recv() for _ in range(3)]
    return vf, af


def rtp_packets(vf, af) -> tuple[list[bytes], list[bytes]]:
    """Real VP8 (keyframe, then deltas) and Opus packets with the extensions browsers send."""
    m = ext_map()
    enc = Vp8Encoder()
    video, seq = [], 1000
    for i, f in enumerate(vf):
        payloads, ts = enc.encode(f, force_keyframe=(i == 0))
        for j, p in enumerate(payloads[:3]):
            pkt = RtpPacket(payload_type=96, sequence_number=seq, timestamp=ts, ssrc=0x1234, payload=p)
            pkt.marker = int(j == len(payloads) - 1)
            pkt.extensions.mid = "1"
            pkt.extensions.rtp_stream_id = "h" if i % 2 else "q"
            pkt.extensions.transport_sequence_number = seq
            pkt.extensions.abs_send_time = 0x123456
            video.append(pkt.serialize(m))
            seq += 1
    opus = OpusEncoder()
    audio = []
    for i, f in enumerate(af):
        payloads, ts = opus.encode(f)
        for p in payloads:
            pkt = RtpPacket(payload_type=111, sequence_number=500 + i, timestamp=ts, ssrc=0x5678, payload=p)
            pkt.extensions.audio_level = (False, 30 + i)
            pkt.extensions.mid = "0"
            audio.append(pkt.serialize(m))
    return video, audio


def rtcp_packets() -> list[bytes]:
    rr = RtcpRrPacket(
        ssrc=1,
        reports=[
            RtcpReceiverInfo(
                ssrc=0x1234, fraction_lost=12, packets_lost=3, highest_sequence=1010,
                jitter=40, lsr=0x11223344, dlsr=655,
            )
        ],
    )
    sr = RtcpSrPacket(
        ssrc=0x1234,
        sender_info=RtcpSenderInfo(ntp_timestamp=1 << 40, rtp_timestamp=9000, packet_count=10, octet_count=9000),
    )
    nack = RtcpRtpfbPacket(fmt=1, ssrc=1, media_ssrc=0x1234, lost=[1001, 1003, 1004, 1030])
    pli = RtcpPsfbPacket(fmt=1, ssrc=1, media_ssrc=0x1234)
    fir = RtcpPsfbPacket(fmt=4, ssrc=1, media_ssrc=0, fci=struct.pack("!LBxxx", 0x1234, 7))
    remb = RtcpPsfbPacket(fmt=15, ssrc=1, media_ssrc=0, fci=pack_remb_fci(1_500_000, [0x1234, 0x5678]))
    bye = RtcpByePacket(sources=[0x1234])
    # Transport-wide CC (RTPFB fmt 15) as Chromium sends it: base seq 1000, 4 packets, one
    # run-length chunk "received, small delta", four 1-byte deltas.
    twcc_fci = struct.pack("!HHLH", 1000, 4, (123 << 8) | 5, 0x2004) + bytes([4, 8, 4, 4]) + b"\x00\x00"
    twcc = struct.pack("!BBH", 0x80 | 15, 205, (8 + len(twcc_fci)) // 4) + struct.pack("!LL", 1, 0x1234) + twcc_fci
    singles = [bytes(p) for p in (rr, sr, nack, pli, fir, remb, bye)] + [twcc]
    return singles + [bytes(rr) + bytes(nack) + bytes(pli), bytes(sr) + bytes(remb) + twcc]


def stun_packets() -> list[bytes]:
    req = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    req.attributes["USERNAME"] = "ufragA:remote"
    req.attributes["PRIORITY"] = 1853817087
    req.attributes["ICE-CONTROLLING"] = 12345
    req.attributes["USE-CANDIDATE"] = None
    req.add_message_integrity(b"fuzzpasswordfuzzpassword")
    req.add_fingerprint()
    resp = stun.Message(stun.Method.BINDING, stun.Class.RESPONSE, transaction_id=req.transaction_id)
    resp.attributes["XOR-MAPPED-ADDRESS"] = ("192.0.2.1", 5000)
    resp.add_message_integrity(b"fuzzpasswordfuzzpassword")
    resp.add_fingerprint()
    other = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    other.attributes["USERNAME"] = "nobody:remote"
    return [bytes(req), bytes(resp), bytes(other)]


def signaling_messages(offer: str) -> list[dict]:
    cand = {"candidate": "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}
    return [
        {"type": "join", "room": "demo", "token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln", "name": "Ada"},
        {"type": "join", "room": "demo", "token": "t", "region": "eu", "redirected": True},
        {"type": "offer", "target": "publisher", "sdp": offer},
        {"type": "answer", "target": "subscriber", "sdp": offer},
        {"type": "candidate", "target": "publisher", "candidate": cand},
        {"type": "candidate", "target": "subscriber", "candidate": None},
        {"type": "message", "text": "hello, room"},
        {"type": "video_constraints", "max_height": 360, "tracks": {"t0000002a": 180}},
        {"type": "leave"},
        {"type": "ping"},
    ]


def simulcast_offer(offer: str) -> str:
    lines = offer.split("\r\n")
    idx = next(i for i, ln in enumerate(lines) if ln.startswith("m=video"))
    extra = [
        "a=extmap:3 urn:ietf:params:rtp-hdrext:sdes:rtp-stream-id",
        "a=rid:q send", "a=rid:h send", "a=rid:f send", "a=simulcast:send q;h;f",
    ]
    return "\r\n".join(lines[: idx + 1] + extra + lines[idx + 1 :])


async def main() -> None:
    offers = []
    for audio, video in ((True, True), (True, False), (False, True)):
        pc, sdp = await make_publisher_offer(audio=audio, video=video)
        offers.append(sdp)
        await pc.close()
    offers.append(simulcast_offer(offers[0]))
    for sdp in offers:
        put("sdp_offer", sdp.encode())
    for msg in signaling_messages(offers[0]):
        put("signaling", json.dumps(msg).encode())

    vf, af = await frames()
    video, audio = rtp_packets(vf, af)
    for i, p in enumerate(video + audio):
        put("rtp_vp8", bytes([i % 3]) + p)
    put("rtp_vp8", RTP_SEP.join(bytes([1]) + p for p in video[:6]))
    for p in rtcp_packets():
        put("rtcp", p)

    # The media port: byte 0 picks the source (0 = learned, 1 = unknown), then the datagram.
    for p in stun_packets() + video[:2] + audio[:1] + rtcp_packets()[:2]:
        put("demux", b"\x00" + p)
        put("demux", b"\x01" + p)
    # A DTLS 1.2 ClientHello record header (content type 22) with a short body.
    put("demux", b"\x01" + bytes([22, 0xFE, 0xFD, 0, 0]) + bytes(6) + struct.pack("!H", 4) + b"\x01\x00\x00\x00")

    vectors = json.loads((ROOT / "proto" / "octo-vectors" / "octo-v1.json").read_text())
    mode_byte = {"plaintext": 0, "aes128gcm": 1, "chacha20poly1305": 2}
    by_mode: dict[str, list[bytes]] = {}
    for v in vectors["packets"]:
        if v.get("receiver") not in (34, None) or "packet" not in v:
            continue
        pkt = bytes.fromhex(v["packet"])
        by_mode.setdefault(v["mode"], []).append(pkt)
        put("octo_open", bytes([mode_byte[v["mode"]]]) + pkt)
    for mode, pkts in by_mode.items():
        # The same packet twice in one run: the replay window must refuse the second.
        put("octo_open", bytes([mode_byte[mode]]) + OCTO_SEP.join(pkts + pkts[:1]))

    def rec(mode: int, counter: int) -> bytes:
        return bytes([mode]) + struct.pack("!Q", counter)

    put("octo_replay", b"\x00" + b"".join(rec(0, c) for c in (1_700_000_000_000_000, 1_700_000_000_000_001)))
    put("octo_replay", b"\x01" + b"".join(rec(1, c) for c in (5, 2000, 1, 7)) + rec(2, 3))
    put("octo_replay", b"\x00" + rec(3, 0) + rec(3, 1) + rec(2, 1))

    # Octo messages from peer 2: records [flags, endpoint, step, len (2 bytes LE), JSON].
    track = {"id": "TR02000001", "kind": "video", "ssrc": 7, "layers": [
        {"rid": "0", "ssrc": 7, "height": 180, "bitrate": 100000, "active": True},
        {"rid": "1", "ssrc": 8, "height": 360, "bitrate": 500000, "active": True}]}
    audio_track = {"id": "TR02000002", "kind": "audio", "ssrc": 9}
    msgs = [
        {"type": "participant", "room": "fuzz", "name": "bob", "tracks": [track, audio_track]},
        {"type": "participant", "room": "fuzz", "name": "bob", "tracks": [dict(audio_track, muted=True)]},
        {"type": "chat", "name": "bob", "text": "hello"},
        {"type": "layer_demand", "tracks": [{"id": "TR01000001", "max_layer": 1}]},
        {"type": "bye"},
    ]

    def msg(flags: int, ep: int, step: int, m: dict) -> bytes:
        b = json.dumps(m, separators=(",", ":")).encode()
        return bytes([flags, ep, step]) + struct.pack("<H", len(b)) + b

    put("octo_message", b"".join(msg(0, 1, 1, m) for m in msgs))
    put("octo_message", msg(0, 1, 1, msgs[0]) + msg(0, 1, 60, msgs[0]) + msg(0, 2, 1, msgs[2]))
    put("octo_message", msg(1, 3, 1, msgs[0]) + msg(0, 3, 1, msgs[3]))
    put("octo_message", msg(0, 4, 1, msgs[1]) + msg(0, 4, 50, msgs[4]))


asyncio.run(main())

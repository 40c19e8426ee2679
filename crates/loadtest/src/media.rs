//! What a publishing client sends: rates and sizes per kind, and the probe at the head of
//! every payload.
//!
//! The payload is opaque to the bridge (it forwards it untouched), so the client puts there
//! what the receiver needs to measure: which publisher stream it came from, its index in that
//! stream (loss by gaps, independent of any sequence-number rewriting in the bridge) and its
//! send time (one-way latency; publisher and receivers share the host clock).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Publishing rates. A kind with 0 packets per second is not published.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaProfile {
    /// Opus sends one packet per 20 ms frame: 50 pps.
    pub audio_pps: u32,
    /// RTP payload bytes per audio packet; 80 B at 50 pps is ~32 kbps, a typical Opus voice rate.
    pub audio_payload: usize,
    /// Video packets per second; 720p at ~2.5 Mbps is ~250 pps (DESIGN.md section 8).
    pub video_pps: u32,
    /// Video frames per second: a frame's packets leave back to back, as an encoder emits them.
    pub video_fps: u32,
    /// RTP payload bytes per video packet; ~1100 B is what browsers send for large frames.
    pub video_payload: usize,
    /// When the audio "speaks", as (milliseconds since the first audio packet, speaking) steps;
    /// non-empty makes the audio carry the RFC 6464 audio level (for dominant speaker tests).
    pub speech: Vec<(u64, bool)>,
    /// Encoder-shaped VP8 video (bitrate per layer, key frames, simulcast); when set it
    /// replaces the fixed-rate `video_pps` / `video_fps` / `video_payload` stream.
    pub video: Option<VideoProfile>,
}

/// The video resolutions a load publisher can send, with the bitrate and simulcast rid a
/// browser would use for each (Chrome's three-layer ladder for a 720p camera).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resolution {
    /// 320x180, ~150 kbps, rid `q`.
    Low,
    /// 640x360, ~500 kbps, rid `h`.
    Medium,
    /// 1280x720, ~2500 kbps, rid `f`.
    High,
}

impl Resolution {
    pub const ALL: [Resolution; 3] = [Resolution::Low, Resolution::Medium, Resolution::High];

    /// Accepts `180p`/`360p`/`720p` and `low`/`medium`/`high` (also `q`/`h`/`f`).
    pub fn parse(s: &str) -> Option<Resolution> {
        match s.trim().to_ascii_lowercase().as_str() {
            "180p" | "180" | "low" | "q" => Some(Resolution::Low),
            "360p" | "360" | "medium" | "h" => Some(Resolution::Medium),
            "720p" | "720" | "high" | "f" => Some(Resolution::High),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Resolution::Low => "180p",
            Resolution::Medium => "360p",
            Resolution::High => "720p",
        }
    }

    pub fn rid(self) -> &'static str {
        match self {
            Resolution::Low => "q",
            Resolution::Medium => "h",
            Resolution::High => "f",
        }
    }

    pub fn width_height(self) -> (u16, u16) {
        match self {
            Resolution::Low => (320, 180),
            Resolution::Medium => (640, 360),
            Resolution::High => (1280, 720),
        }
    }

    /// The target bitrate of this layer, in kbps (payload, key frames included).
    pub fn kbps(self) -> u32 {
        match self {
            Resolution::Low => 150,
            Resolution::Medium => 500,
            Resolution::High => 2500,
        }
    }
}

/// Largest RTP payload of a video packet: what browsers packetize large frames into.
pub const MAX_VIDEO_PAYLOAD: usize = 1100;

/// Encoder-shaped video: VP8 frames at a frame rate and a bitrate per layer, a key frame
/// every `keyframe_interval` (and on every PLI/FIR), packetized into [`MAX_VIDEO_PAYLOAD`]
/// payloads that each start with a real VP8 payload descriptor (RFC 7741), so a bridge that
/// parses VP8 sees key frames, picture ids and frame starts.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoProfile {
    /// The highest layer; without simulcast the only one.
    pub resolution: Resolution,
    /// Send every layer from 180p up to `resolution` as rid simulcast (`q`, `h`, `f`).
    pub simulcast: bool,
    pub fps: u32,
    pub keyframe_interval: Duration,
    /// A key frame's size over a delta frame's.
    pub keyframe_factor: u32,
}

impl VideoProfile {
    pub fn new(resolution: Resolution, simulcast: bool) -> Self {
        Self {
            resolution,
            simulcast,
            fps: 30,
            keyframe_interval: Duration::from_secs(3),
            keyframe_factor: 5,
        }
    }

    /// The layers sent, lowest first.
    pub fn layers(&self) -> Vec<Resolution> {
        if self.simulcast {
            Resolution::ALL
                .into_iter()
                .filter(|r| *r <= self.resolution)
                .collect()
        } else {
            vec![self.resolution]
        }
    }

    /// Frames from one key frame to the next.
    pub fn gop_frames(&self) -> u64 {
        ((self.keyframe_interval.as_secs_f64() * f64::from(self.fps)).round() as u64).max(1)
    }

    /// (delta frame bytes, key frame bytes) of a layer, so that the average over a group of
    /// pictures meets the layer's bitrate.
    pub fn frame_bytes(&self, layer: Resolution) -> (usize, usize) {
        let avg = f64::from(layer.kbps()) * 1000.0 / 8.0 / f64::from(self.fps.max(1));
        let g = self.gop_frames() as f64;
        let k = f64::from(self.keyframe_factor.max(1));
        let delta = avg * g / (g - 1.0 + k);
        (delta.round() as usize, (delta * k).round() as usize)
    }

    /// Average packets per second over all layers.
    pub fn pps(&self) -> u32 {
        let g = self.gop_frames();
        self.layers()
            .into_iter()
            .map(|l| {
                let (delta, key) = self.frame_bytes(l);
                let per_gop = packets_for(key) as u64 + (g - 1) * packets_for(delta) as u64;
                (per_gop * u64::from(self.fps) / g) as u32
            })
            .sum()
    }

    /// Sum of the layers' bitrates, kbps.
    pub fn kbps(&self) -> u32 {
        self.layers().into_iter().map(Resolution::kbps).sum()
    }
}

/// Packets a video frame of `bytes` takes.
pub fn packets_for(bytes: usize) -> usize {
    bytes.div_ceil(MAX_VIDEO_PAYLOAD).max(1)
}

/// The RFC 6464 level (-dBov, 127 = silence) of the `n`th audio packet at `ms` into the script:
/// speech varies, with a quiet frame every 10 so the noise floor has something to settle on.
pub fn speech_level(speech: &[(u64, bool)], ms: u64, n: u64) -> u8 {
    const SPEECH: [u8; 10] = [80, 25, 20, 30, 22, 28, 24, 26, 21, 29];
    let speaking = speech
        .iter()
        .rev()
        .find(|(from, _)| *from <= ms)
        .is_some_and(|(_, on)| *on);
    if speaking {
        SPEECH[(n % 10) as usize]
    } else {
        127
    }
}

impl MediaProfile {
    /// Audio 32 kbps + 720p-like video (250 pps of 1100 B, ~2.2 Mbps, 30 fps).
    pub fn hd() -> Self {
        Self {
            audio_pps: 50,
            audio_payload: 80,
            video_pps: 250,
            video_fps: 30,
            video_payload: 1100,
            speech: Vec::new(),
            video: None,
        }
    }

    /// A light load for functional tests: 50 pps of each kind, small payloads.
    pub fn light() -> Self {
        Self {
            audio_pps: 50,
            audio_payload: 80,
            video_pps: 50,
            video_fps: 50,
            video_payload: 200,
            speech: Vec::new(),
            video: None,
        }
    }

    /// What `kaskade loadtest` publishes: Opus-shaped audio (50 pps of 80 B, ~32 kbps) when
    /// `audio`, encoder-shaped VP8 video when `video` is set.
    pub fn load(audio: bool, video: Option<VideoProfile>) -> Self {
        Self {
            audio_pps: if audio { 50 } else { 0 },
            audio_payload: 80,
            video_pps: 0,
            video_fps: 30,
            video_payload: MAX_VIDEO_PAYLOAD,
            speech: Vec::new(),
            video,
        }
    }

    /// Packets per second of the video, whichever shape it has.
    pub fn video_pps(&self) -> u32 {
        match &self.video {
            Some(v) => v.pps(),
            None => self.video_pps,
        }
    }

    /// Packets per second over both kinds.
    pub fn total_pps(&self) -> u32 {
        self.audio_pps + self.video_pps()
    }

    pub fn publishes_audio(&self) -> bool {
        self.audio_pps > 0
    }

    pub fn publishes_video(&self) -> bool {
        self.video.is_some() || self.video_pps > 0
    }
}

impl Default for MediaProfile {
    fn default() -> Self {
        Self::hd()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Audio,
    Video,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Audio => b'a',
            Kind::Video => b'v',
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
        }
    }
}

/// The head of every payload the client publishes.
///
/// Layout (29 bytes, then zero padding up to the configured payload size):
///
/// | bytes | content |
/// |---|---|
/// | 0..9 | the publisher's SSRC as 8 lowercase hex digits and `:` (readable in a capture, and it tells a test which stream a payload came from) |
/// | 9..12 | `KLT` |
/// | 12 | `a` (audio) or `v` (video) |
/// | 13..21 | index of the packet in its stream, from 0, big-endian u64 |
/// | 21..29 | send time, microseconds since the Unix epoch, big-endian u64 |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub publisher_ssrc: u32,
    pub kind: Kind,
    pub index: u64,
    pub sent_us: u64,
}

const MAGIC: &[u8; 3] = b"KLT";

impl Probe {
    pub const LEN: usize = 29;

    /// Writes the probe and pads to `size` bytes (at least [`Probe::LEN`]).
    pub fn encode(&self, size: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(size.max(Self::LEN));
        out.extend_from_slice(format!("{:08x}:", self.publisher_ssrc).as_bytes());
        out.extend_from_slice(MAGIC);
        out.push(self.kind.tag());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.sent_us.to_be_bytes());
        out.resize(size.max(Self::LEN), 0);
        out
    }

    /// Writes the probe after `head` (a VP8 payload descriptor and frame header) and pads
    /// the whole payload to `size` bytes.
    pub fn encode_after(&self, head: &[u8], size: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(size.max(head.len() + Self::LEN));
        out.extend_from_slice(head);
        out.extend_from_slice(&self.encode(0));
        out.resize(size.max(head.len() + Self::LEN), 0);
        out
    }

    /// Finds a probe at the start of a payload or behind a VP8 payload descriptor and frame
    /// header (at most [`Probe::MAX_OFFSET`] bytes in).
    pub fn find(payload: &[u8]) -> Option<Probe> {
        if let Some(p) = Self::decode(payload) {
            return Some(p);
        }
        let last = Self::MAX_OFFSET.min(payload.len().saturating_sub(Self::LEN));
        (1..=last).find_map(|off| Self::decode(payload.get(off..)?))
    }

    /// How far into a payload [`Probe::find`] looks: a VP8 descriptor (up to 6 bytes) and a
    /// key frame header (10 bytes) fit.
    pub const MAX_OFFSET: usize = 24;

    /// Reads a probe at the start of `payload`; `None` for anything else (a payload from
    /// another kind of client).
    pub fn decode(payload: &[u8]) -> Option<Probe> {
        let head = payload.get(..Self::LEN)?;
        if head[8] != b':' || &head[9..12] != MAGIC {
            return None;
        }
        let hex = std::str::from_utf8(&head[..8]).ok()?;
        let publisher_ssrc = u32::from_str_radix(hex, 16).ok()?;
        let kind = match head[12] {
            b'a' => Kind::Audio,
            b'v' => Kind::Video,
            _ => return None,
        };
        let index = u64::from_be_bytes(head[13..21].try_into().ok()?);
        let sent_us = u64::from_be_bytes(head[21..29].try_into().ok()?);
        Some(Probe {
            publisher_ssrc,
            kind,
            index,
            sent_us,
        })
    }
}

/// The VP8 payload descriptor (RFC 7741 section 4.2) as Chrome writes it: extended, with a
/// 15-bit picture id, TL0PICIDX and TID (0, layer sync); S marks a frame's first packet.
/// 6 bytes.
pub fn vp8_descriptor(out: &mut Vec<u8>, start_of_frame: bool, picture_id: u16, tl0: u8) {
    out.push(0x80 | if start_of_frame { 0x10 } else { 0 }); // X, S, PID 0
    out.push(0xe0); // I, L, T
    out.push(0x80 | ((picture_id >> 8) as u8 & 0x7f)); // M: 15-bit picture id
    out.push(picture_id as u8);
    out.push(tl0);
    out.push(0x20); // TID 0, Y
}

/// The start of a VP8 frame (RFC 6386 section 9.1): the 3-byte frame tag, and for a key
/// frame the start code and the dimensions. The first partition size is left 0: nothing
/// on the path decodes the frame.
pub fn vp8_frame_header(out: &mut Vec<u8>, key: bool, width: u16, height: u16) {
    // frame type (0 = key) in bit 0, version 0, show_frame in bit 4.
    out.push(if key { 0x10 } else { 0x11 });
    out.extend_from_slice(&[0, 0]);
    if key {
        out.extend_from_slice(&[0x9d, 0x01, 0x2a]);
        out.extend_from_slice(&(width & 0x3fff).to_le_bytes());
        out.extend_from_slice(&(height & 0x3fff).to_le_bytes());
    }
}

/// What a VP8 RTP payload says about itself: (start of a frame, key frame, picture id).
/// `None` when the descriptor is truncated.
pub fn parse_vp8(payload: &[u8]) -> Option<(bool, bool, Option<u16>)> {
    let b0 = *payload.first()?;
    let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
    let mut i = 1;
    let mut picture_id = None;
    if b0 & 0x80 != 0 {
        let x = *payload.get(i)?;
        i += 1;
        if x & 0x80 != 0 {
            let m = *payload.get(i)?;
            if m & 0x80 != 0 {
                picture_id = Some(u16::from(m & 0x7f) << 8 | u16::from(*payload.get(i + 1)?));
                i += 2;
            } else {
                picture_id = Some(u16::from(m));
                i += 1;
            }
        }
        if x & 0x40 != 0 {
            i += 1;
        }
        if x & 0x30 != 0 {
            i += 1;
        }
    }
    let key = start && payload.get(i).is_some_and(|tag| tag & 0x01 == 0);
    Some((start, key, picture_id))
}

/// Wall-clock microseconds since the Unix epoch: the one clock publisher and receivers share,
/// even across processes on one host.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_round_trip_and_padding() {
        let p = Probe {
            publisher_ssrc: 0x2222_0002,
            kind: Kind::Video,
            index: 123_456_789,
            sent_us: 1_700_000_000_000_000,
        };
        let bytes = p.encode(1100);
        assert_eq!(bytes.len(), 1100);
        assert!(bytes.starts_with(b"22220002:KLTv"));
        assert_eq!(Probe::decode(&bytes), Some(p));
        // Too small a size still carries the whole probe.
        assert_eq!(p.encode(4).len(), Probe::LEN);
    }

    #[test]
    fn vp8_framing_round_trip() {
        let p = Probe {
            publisher_ssrc: 0x2222_0010,
            kind: Kind::Video,
            index: 7,
            sent_us: 42,
        };
        let mut head = Vec::new();
        vp8_descriptor(&mut head, true, 0x1234, 9);
        vp8_frame_header(&mut head, true, 1280, 720);
        assert_eq!(head.len(), 16);
        let key = p.encode_after(&head, 1000);
        assert_eq!(key.len(), 1000);
        assert_eq!(parse_vp8(&key), Some((true, true, Some(0x1234))));
        assert_eq!(Probe::find(&key), Some(p));
        assert_eq!(Probe::decode(&key), None, "not at the start");

        let mut head = Vec::new();
        vp8_descriptor(&mut head, true, 0x7fff, 0);
        vp8_frame_header(&mut head, false, 0, 0);
        assert_eq!(
            parse_vp8(&p.encode_after(&head, 100)),
            Some((true, false, Some(0x7fff)))
        );
        let mut head = Vec::new();
        vp8_descriptor(&mut head, false, 3, 0);
        let cont = p.encode_after(&head, 100);
        assert_eq!(parse_vp8(&cont), Some((false, false, Some(3))));
        assert_eq!(Probe::find(&cont), Some(p));
        assert_eq!(parse_vp8(&[0x90]), None);
    }

    #[test]
    fn video_profiles() {
        assert_eq!(Resolution::parse("720p"), Some(Resolution::High));
        assert_eq!(Resolution::parse("Medium"), Some(Resolution::Medium));
        assert_eq!(Resolution::parse("1080p"), None);
        let v = VideoProfile::new(Resolution::High, true);
        assert_eq!(v.layers(), Resolution::ALL.to_vec());
        assert_eq!(v.kbps(), 3150);
        assert_eq!(
            VideoProfile::new(Resolution::Medium, false).layers(),
            vec![Resolution::Medium]
        );
        assert_eq!(
            VideoProfile::new(Resolution::Medium, true).layers(),
            vec![Resolution::Low, Resolution::Medium]
        );
        // The average over a group of pictures meets the bitrate.
        for layer in Resolution::ALL {
            let (delta, key) = v.frame_bytes(layer);
            let g = v.gop_frames() as usize;
            let bits_per_sec = (key + (g - 1) * delta) * 8 * v.fps as usize / g;
            let want = layer.kbps() as usize * 1000;
            assert!(
                bits_per_sec.abs_diff(want) < want / 100,
                "{layer:?}: {bits_per_sec}"
            );
            assert!(key > delta);
        }
        // 720p: ~10 packets per delta frame at 30 fps.
        let one = VideoProfile::new(Resolution::High, false);
        assert!((250..=350).contains(&one.pps()), "{}", one.pps());
        let p = MediaProfile::load(true, Some(one));
        assert!(p.publishes_audio() && p.publishes_video());
        assert_eq!(p.total_pps(), 50 + p.video_pps());
        assert!(!MediaProfile::load(true, None).publishes_video());
    }

    #[test]
    fn foreign_payloads_are_not_probes() {
        assert_eq!(Probe::decode(b""), None);
        assert_eq!(Probe::decode(&[0u8; 200]), None);
        let mut bytes = Probe {
            publisher_ssrc: 1,
            kind: Kind::Audio,
            index: 0,
            sent_us: 0,
        }
        .encode(80);
        bytes[12] = b'x';
        assert_eq!(Probe::decode(&bytes), None);
    }
}

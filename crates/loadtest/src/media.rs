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
        }
    }

    /// Packets per second over both kinds.
    pub fn total_pps(&self) -> u32 {
        self.audio_pps + self.video_pps
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

    /// Reads a probe; `None` for anything else (a payload from another kind of client).
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

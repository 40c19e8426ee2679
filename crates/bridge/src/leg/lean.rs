//! The lean egress of a subscriber leg: forwarded RTP encrypted with the leg's SRTP keys straight
//! into the datagram that is sent, instead of a trip through `rtc`'s write pipeline per copy
//! (which moves each packet by value through a queue per stage and flushes the pipeline once
//! per poll; docs/benchmarks.md, "Where the ~10 us of a copy go").
//!
//! `rtc` keeps everything else of the leg: ICE, DTLS, RTCP both ways, and the first copy. That
//! copy is the proof: the keys the [`KeyTap`] saw are used only once encrypting that packet
//! ourselves gave, byte for byte, the datagram `rtc` produced. Until then, and for good if it
//! never does, copies take `rtc`'s path. Nothing `rtc`'s interceptors would add to an outgoing
//! packet is lost: the comparison covers the whole datagram. Sender reports, which `rtc`
//! counts from the packets it sees, are written by the shard for every sender either way
//! ([`SenderStats`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use rtc::rtcp::sender_report::SenderReport;
use rtc::shared::marshal::{Marshal, MarshalSize};
use rtc::srtp::context::Context;
use rtc::srtp::protection_profile::ProtectionProfile;

use super::keytap::KeyTap;

/// How many copies may go through `rtc` while the keys are not known yet (the handshake's last
/// flight still in progress) before the leg gives up on the lean path.
const MAX_WAIT_FOR_KEYS: u16 = 200;
/// How many datagrams may fail to match before the leg gives up.
const MAX_MISMATCHES: u8 = 3;

/// How a leg's attempt at the lean egress ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Our encryption matched `rtc`'s: later copies take the lean path.
    Verified,
    /// It did not: `rtc`'s path for good.
    Mismatch,
    /// No key derivation was seen: `rtc`'s path for good.
    NoKeys,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Verified => "verified",
            Outcome::Mismatch => "mismatch",
            Outcome::NoKeys => "no_keys",
        }
    }
}

enum State {
    Probing { waited: u16, mismatches: u8 },
    Active { ctx: Box<Context>, addr: SocketAddr },
    Off,
}

pub struct LeanEgress {
    tap: Arc<KeyTap>,
    profiles: Vec<ProtectionProfile>,
    state: State,
    /// The marshalled packet before encryption, reused for every copy.
    scratch: Vec<u8>,
}

/// Candidate encryptions of one packet, made before `rtc` writes it.
pub struct Probe {
    candidates: Vec<(Box<Context>, BytesMut)>,
}

impl LeanEgress {
    /// `profiles`: the SRTP profiles the leg may negotiate (the keys' length and the profile
    /// tell which one it was only together; the comparison settles it).
    pub fn new(tap: Arc<KeyTap>, profiles: Vec<ProtectionProfile>, enabled: bool) -> Self {
        Self {
            tap,
            profiles,
            state: if enabled {
                State::Probing {
                    waited: 0,
                    mismatches: 0,
                }
            } else {
                State::Off
            },
            scratch: Vec::new(),
        }
    }

    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Active { .. })
    }

    /// Encrypts `packet` for the leg: the datagram and its destination, when the lean path is
    /// active (`None` otherwise: write it through `rtc`).
    pub fn protect(&mut self, packet: &rtc::rtp::Packet) -> Option<(SocketAddr, BytesMut)> {
        let State::Active { ctx, addr } = &mut self.state else {
            return None;
        };
        let n = packet.marshal_size();
        self.scratch.resize(n, 0);
        let written = packet.marshal_to(&mut self.scratch).ok()?;
        let plain = self.scratch.get(..written)?;
        let out = ctx.encrypt_rtp_with_header(plain, &packet.header).ok()?;
        Some((*addr, out))
    }

    /// The address datagrams of this leg go to: `rtc` may move it (ICE picks another pair), so
    /// every datagram it sends updates it.
    pub fn on_rtc_datagram(&mut self, to: SocketAddr) {
        if let State::Active { addr, .. } = &mut self.state {
            *addr = to;
        }
    }

    /// Before `rtc` writes `packet`: our candidate encryptions of it, if the leg is still
    /// probing and the keys are known. `Err` once, when it gives up waiting for keys.
    pub fn begin_probe(&mut self, packet: &rtc::rtp::Packet) -> Result<Option<Probe>, Outcome> {
        let State::Probing { waited, .. } = &mut self.state else {
            return Ok(None);
        };
        let Some(input) = self.tap.first_derivation() else {
            *waited = waited.saturating_add(1);
            if *waited >= MAX_WAIT_FOR_KEYS {
                self.state = State::Off;
                return Err(Outcome::NoKeys);
            }
            return Ok(None);
        };
        let n = packet.marshal_size();
        self.scratch.resize(n, 0);
        let Ok(written) = packet.marshal_to(&mut self.scratch) else {
            return Ok(None);
        };
        let Some(plain) = self.scratch.get(..written) else {
            return Ok(None);
        };
        let crypto = self.tap.inner_crypto();
        let mut candidates = Vec::new();
        for &profile in &self.profiles {
            if profile.key_len() != input.master_key.len() {
                continue;
            }
            let Some(salt) = input.salt(profile.salt_len()) else {
                continue;
            };
            let Ok(mut ctx) = Context::new(&input.master_key, salt, profile, None, None, crypto)
            else {
                continue;
            };
            if let Ok(out) = ctx.encrypt_rtp_with_header(plain, &packet.header) {
                candidates.push((Box::new(ctx), out));
            }
        }
        Ok(Some(Probe { candidates }))
    }

    /// After `rtc` wrote the probed packet: `sent` is what it produced. Returns the outcome when
    /// the probing ended.
    pub fn end_probe(&mut self, probe: Probe, sent: &[(SocketAddr, BytesMut)]) -> Option<Outcome> {
        let State::Probing { mismatches, .. } = &mut self.state else {
            return None;
        };
        for (ctx, ours) in probe.candidates {
            if let Some((addr, _)) = sent.iter().find(|(_, theirs)| theirs[..] == ours[..]) {
                self.state = State::Active { ctx, addr: *addr };
                return Some(Outcome::Verified);
            }
        }
        *mismatches += 1;
        if *mismatches >= MAX_MISMATCHES {
            self.state = State::Off;
            return Some(Outcome::Mismatch);
        }
        None
    }
}

/// What a sender report says of one outgoing stream, counted by the shard for every copy
/// (`rtc`'s sender-report interceptor sees only the copies that take its path).
#[derive(Clone, Copy, Debug, Default)]
pub struct SenderStats {
    packets: u32,
    octets: u32,
    last_timestamp: u32,
    last_sent: Option<Instant>,
}

impl SenderStats {
    pub fn on_sent(&mut self, now: Instant, packet: &rtc::rtp::Packet) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(packet.payload.len() as u32);
        // The newest timestamp maps wall clock to media time; a reordered older packet would
        // bend the mapping.
        let newer = self.last_sent.is_none()
            || (packet.header.timestamp.wrapping_sub(self.last_timestamp) as i32) >= 0;
        if newer {
            self.last_timestamp = packet.header.timestamp;
            self.last_sent = Some(now);
        }
    }

    /// The report for `ssrc` at `now`, media time extrapolated from the newest packet at
    /// `clock_rate`; `None` before the first packet.
    pub fn report(&self, ssrc: u32, clock_rate: u32, now: Instant) -> Option<SenderReport> {
        let sent = self.last_sent?;
        let since = now.saturating_duration_since(sent);
        let advance = (since.as_secs_f64() * f64::from(clock_rate)) as u32;
        Some(SenderReport {
            ssrc,
            ntp_time: ntp(SystemTime::now()),
            rtp_time: self.last_timestamp.wrapping_add(advance),
            packet_count: self.packets,
            octet_count: self.octets,
            reports: Vec::new(),
            profile_extensions: Default::default(),
        })
    }
}

/// The 64-bit NTP form of a wall-clock time (RFC 3550 4).
fn ntp(t: SystemTime) -> u64 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

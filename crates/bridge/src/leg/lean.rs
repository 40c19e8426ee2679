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
    /// A verified leg derived new keys (a new handshake): `rtc`'s path from then on.
    Rekeyed,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Verified => "verified",
            Outcome::Mismatch => "mismatch",
            Outcome::NoKeys => "no_keys",
            Outcome::Rekeyed => "rekeyed",
        }
    }
}

enum State {
    Probing {
        waited: u16,
        mismatches: u8,
    },
    Active {
        ctx: Box<Context>,
        addr: SocketAddr,
        /// The tap's derivation count when the keys were verified.
        derivations: u32,
    },
    Off,
}

pub struct LeanEgress {
    tap: Arc<KeyTap>,
    profiles: Vec<ProtectionProfile>,
    state: State,
    /// The marshalled packet before encryption, reused for every copy.
    scratch: Vec<u8>,
    /// Set when new keys ended the lean path, until the caller takes the outcome.
    rekeyed: bool,
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
            rekeyed: false,
        }
    }

    /// [`Outcome::Rekeyed`] once, after new keys ended the lean path.
    pub fn take_rekeyed(&mut self) -> Option<Outcome> {
        std::mem::take(&mut self.rekeyed).then_some(Outcome::Rekeyed)
    }

    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Active { .. })
    }

    /// Encrypts `packet` for the leg: the datagram and its destination, when the lean path is
    /// active (`None` otherwise: write it through `rtc`).
    pub fn protect(&mut self, packet: &rtc::rtp::Packet) -> Option<(SocketAddr, BytesMut)> {
        let State::Active {
            ctx,
            addr,
            derivations,
        } = &mut self.state
        else {
            return None;
        };
        if self.tap.derivations() != *derivations {
            self.state = State::Off;
            self.rekeyed = true;
            return None;
        }
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
                self.state = State::Active {
                    ctx,
                    addr: *addr,
                    derivations: self.tap.derivations(),
                };
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

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::crypto::RTCCryptoProvider;

    fn packet(seq: u16, ts: u32, len: usize) -> rtc::rtp::Packet {
        rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 96,
                sequence_number: seq,
                timestamp: ts,
                ssrc: 0x1234_5678,
                marker: true,
                ..Default::default()
            },
            payload: bytes::Bytes::from(vec![0xab; len]),
        }
    }

    /// What `rtc` does at the end of a handshake: a sending context from the master key and
    /// salt, its key derivation on the leg's provider (the tap); then a receiving one.
    fn handshake(tap: &KeyTap, profile: ProtectionProfile, key: &[u8], salt: &[u8]) -> Context {
        let local =
            Context::new(key, salt, profile, None, None, tap.crypto()).expect("sending context");
        let other_key: Vec<u8> = key.iter().map(|b| b ^ 0x5a).collect();
        Context::new(&other_key, salt, profile, None, None, tap.crypto())
            .expect("receiving context");
        local
    }

    #[test]
    fn a_leg_goes_lean_only_once_its_keys_encrypt_a_packet_as_rtc_did() {
        let profiles = [
            (ProtectionProfile::AeadAes128Gcm, 16, 12),
            (ProtectionProfile::AeadAes256Gcm, 32, 12),
            (ProtectionProfile::Aes128CmHmacSha1_80, 16, 14),
        ];
        for (profile, key_len, salt_len) in profiles {
            let tap = Arc::new(KeyTap::new(
                rtc::crypto::default_provider().expect("provider"),
            ));
            // All three profiles are allowed: the comparison tells which one the leg uses.
            let mut lean =
                LeanEgress::new(tap.clone(), profiles.iter().map(|p| p.0).collect(), true);
            // Before the handshake: no keys, no probe, nothing lean.
            let first = packet(100, 9000, 1000);
            assert!(matches!(lean.begin_probe(&first), Ok(None)));
            assert!(lean.protect(&first).is_none());

            let key: Vec<u8> = (0..key_len as u8).collect();
            let salt: Vec<u8> = (100..100 + salt_len as u8).collect();
            let mut rtc_side = handshake(&tap, profile, &key, &salt);
            let addr: SocketAddr = "192.0.2.7:5000".parse().expect("addr");

            let probe = lean.begin_probe(&first).expect("keys").expect("a probe");
            let plain = first.marshal().expect("marshal");
            let theirs = rtc_side
                .encrypt_rtp_with_header(&plain, &first.header)
                .expect("rtc's datagram");
            // Among what the write produced (a sender report first, say), the packet is found.
            let sent = vec![(addr, BytesMut::from(&b"not it"[..])), (addr, theirs)];
            assert_eq!(
                lean.end_probe(probe, &sent),
                Some(Outcome::Verified),
                "{profile:?}"
            );
            assert!(lean.is_active());

            // From now on copies are ours, and the receiver's context opens them.
            let mut receiver = Context::new(&key, &salt, profile, None, None, tap.inner_crypto())
                .expect("receiver");
            for seq in 101..110u16 {
                let p = packet(seq, 9000 + 3000 * u32::from(seq), 900);
                let (to, dgram) = lean.protect(&p).expect("lean");
                assert_eq!(to, addr);
                let opened = receiver.decrypt_rtp(&dgram).expect("decrypts");
                assert_eq!(&opened[..], &p.marshal().expect("marshal")[..]);
            }
            // ICE moved the leg: later datagrams follow rtc's.
            let moved: SocketAddr = "192.0.2.8:6000".parse().expect("addr");
            lean.on_rtc_datagram(moved);
            assert_eq!(lean.protect(&packet(110, 1, 10)).map(|d| d.0), Some(moved));
        }
    }

    #[test]
    fn new_keys_end_the_lean_path() {
        let tap = Arc::new(KeyTap::new(
            rtc::crypto::default_provider().expect("provider"),
        ));
        let profile = ProtectionProfile::AeadAes128Gcm;
        let mut lean = LeanEgress::new(tap.clone(), vec![profile], true);
        let mut rtc_side = handshake(&tap, profile, &[7; 16], &[9; 12]);
        let p = packet(1, 0, 100);
        let probe = lean.begin_probe(&p).expect("keys").expect("probe");
        let theirs = rtc_side
            .encrypt_rtp_with_header(&p.marshal().expect("marshal"), &p.header)
            .expect("encrypt");
        let addr: SocketAddr = "192.0.2.7:5000".parse().expect("addr");
        assert_eq!(
            lean.end_probe(probe, &[(addr, theirs)]),
            Some(Outcome::Verified)
        );
        assert!(lean.protect(&packet(2, 0, 100)).is_some());
        assert_eq!(lean.take_rekeyed(), None);
        // A second handshake on the leg derives new keys.
        handshake(&tap, profile, &[3; 16], &[4; 12]);
        assert!(lean.protect(&packet(3, 0, 100)).is_none());
        assert_eq!(lean.take_rekeyed(), Some(Outcome::Rekeyed));
        assert_eq!(lean.take_rekeyed(), None, "reported once");
        assert!(lean.protect(&packet(4, 0, 100)).is_none());
    }

    #[test]
    fn keys_that_do_not_reproduce_rtc_leave_the_leg_on_rtc() {
        let tap = Arc::new(KeyTap::new(
            rtc::crypto::default_provider().expect("provider"),
        ));
        let profile = ProtectionProfile::AeadAes128Gcm;
        let mut lean = LeanEgress::new(tap.clone(), vec![profile], true);
        handshake(&tap, profile, &[7; 16], &[9; 12]);
        // rtc encrypted with something else (as if its derivation order had changed).
        let mut elsewhere =
            Context::new(&[8; 16], &[9; 12], profile, None, None, tap.inner_crypto())
                .expect("context");
        let addr: SocketAddr = "192.0.2.7:5000".parse().expect("addr");
        let mut outcome = None;
        for seq in 0..MAX_MISMATCHES as u16 {
            let p = packet(seq, 0, 100);
            let probe = lean.begin_probe(&p).expect("keys").expect("probe");
            let theirs = elsewhere
                .encrypt_rtp_with_header(&p.marshal().expect("marshal"), &p.header)
                .expect("encrypt");
            outcome = lean.end_probe(probe, &[(addr, theirs)]);
        }
        assert_eq!(outcome, Some(Outcome::Mismatch));
        assert!(!lean.is_active());
        assert!(lean.protect(&packet(50, 0, 100)).is_none());
        assert!(matches!(lean.begin_probe(&packet(51, 0, 100)), Ok(None)));
    }

    #[test]
    fn a_leg_that_never_sees_keys_gives_up_once() {
        let tap = Arc::new(KeyTap::new(
            rtc::crypto::default_provider().expect("provider"),
        ));
        let mut lean = LeanEgress::new(tap, vec![ProtectionProfile::AeadAes128Gcm], true);
        let p = packet(1, 0, 100);
        let results: Vec<_> = (0..MAX_WAIT_FOR_KEYS + 5)
            .map(|_| lean.begin_probe(&p))
            .collect();
        let gave_up = results.iter().filter(|r| r.is_err()).count();
        assert_eq!(gave_up, 1, "the outcome is reported once");
        assert!(matches!(results.last(), Some(Ok(None))));
    }

    #[test]
    fn sender_reports_extrapolate_media_time_from_the_newest_packet() {
        let mut s = SenderStats::default();
        let t0 = Instant::now();
        assert!(s.report(1, 90_000, t0).is_none(), "nothing sent yet");
        s.on_sent(t0, &packet(1, 90_000, 100));
        s.on_sent(t0 + Duration::from_millis(40), &packet(2, 93_600, 50));
        // A reordered older packet counts, but does not move the mapping back.
        s.on_sent(t0 + Duration::from_millis(50), &packet(0, 86_400, 10));
        let sr = s
            .report(0xabc, 90_000, t0 + Duration::from_millis(540))
            .expect("a report");
        assert_eq!(sr.ssrc, 0xabc);
        assert_eq!(sr.packet_count, 3);
        assert_eq!(sr.octet_count, 160);
        // 500 ms after the newest packet (93 600): + 45 000 ticks at 90 kHz.
        assert!((sr.rtp_time as i64 - 138_600).abs() <= 1, "{}", sr.rtp_time);
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        assert!(((sr.ntp_time >> 32) as i64 - (unix + 2_208_988_800) as i64).abs() <= 1);
    }
}

//! Counting RTP retransmissions as they cross a relay.
//!
//! A retransmission without RTX repeats its original's SSRC and sequence number, and the RTP
//! header is in the clear under SRTP (and after the 24-byte header of a plaintext Octo
//! packet). So the relay can tell, for any SFU it sits in front of, how many packets and bytes
//! on the hop were repeats: the retransmission cost of a repair scheme, measured from outside.

use std::collections::HashMap;

/// One bit per sequence number of one SSRC.
type SeqBitmap = Box<[u64; 1024]>;

/// Remembers which (SSRC, sequence number) pairs went by. Memory: 8 KiB per SSRC seen; a
/// sequence number is remembered until it comes round again (65 536 packets later), which
/// covers a benchmark run, not a day-long relay.
#[derive(Debug)]
pub struct RtpWatch {
    offset: usize,
    seen: HashMap<u32, SeqBitmap>,
}

/// What [`RtpWatch::observe`] made of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    /// Not an RTP packet (RTCP, STUN, DTLS, a message, too short).
    Other,
    /// An RTP packet seen for the first time.
    First,
    /// An RTP packet with an SSRC and sequence number seen before.
    Repeat,
}

impl RtpWatch {
    /// `offset`: where the RTP header starts in a datagram (0 for RTP/SRTP, 24 behind a
    /// plaintext Octo header).
    pub fn new(offset: usize) -> Self {
        Self {
            offset,
            seen: HashMap::new(),
        }
    }

    pub fn observe(&mut self, datagram: &[u8]) -> Observed {
        let Some(h) = datagram.get(self.offset..self.offset + 12) else {
            return Observed::Other;
        };
        // RTP version 2; RTCP (RFC 5761: second byte 192..=223) and the other protocols
        // sharing a WebRTC port (STUN 0-3, DTLS 20-63 in the first byte) fall out here.
        if h[0] >> 6 != 2 || (192..=223).contains(&h[1]) {
            return Observed::Other;
        }
        let seq = u16::from_be_bytes([h[2], h[3]]);
        let ssrc = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
        let bits = self.seen.entry(ssrc).or_insert_with(|| Box::new([0; 1024]));
        let (word, bit) = (usize::from(seq / 64), 1u64 << (seq % 64));
        let Some(w) = bits.get_mut(word) else {
            return Observed::Other;
        };
        if *w & bit != 0 {
            Observed::Repeat
        } else {
            *w |= bit;
            Observed::First
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 1]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[0xab; 100]);
        p
    }

    #[test]
    fn repeats_are_told_from_originals_per_ssrc() {
        let mut w = RtpWatch::new(0);
        assert_eq!(w.observe(&rtp(1, 10)), Observed::First);
        assert_eq!(w.observe(&rtp(1, 11)), Observed::First);
        assert_eq!(w.observe(&rtp(2, 10)), Observed::First, "another stream");
        assert_eq!(w.observe(&rtp(1, 10)), Observed::Repeat);
        assert_eq!(w.observe(&rtp(1, 65_535)), Observed::First);
        assert_eq!(w.observe(&rtp(1, 65_535)), Observed::Repeat);
    }

    #[test]
    fn other_protocols_are_not_rtp() {
        let mut w = RtpWatch::new(0);
        let mut rtcp = rtp(1, 1);
        rtcp[1] = 200;
        assert_eq!(w.observe(&rtcp), Observed::Other);
        assert_eq!(w.observe(&[0x00, 0x01, 0, 0]), Observed::Other, "STUN");
        assert_eq!(w.observe(&[22; 40]), Observed::Other, "DTLS");
        assert_eq!(w.observe(b"{\"type\":\"x\"}"), Observed::Other);
    }

    #[test]
    fn rtp_behind_a_header() {
        let mut w = RtpWatch::new(24);
        let mut d = vec![0u8; 24];
        d.extend_from_slice(&rtp(7, 3));
        assert_eq!(w.observe(&d), Observed::First);
        assert_eq!(w.observe(&d), Observed::Repeat);
        assert_eq!(w.observe(&d[..30]), Observed::Other, "truncated");
    }
}

//! Payload of [`crate::PacketType::Control`] packets: link-level messages
//! between two bridges, currently the RTT ping and its answer.
//!
//! ```text
//! Ping: kind = 1 (1 byte) | token (u64 BE)                         9 bytes
//! Pong: kind = 2 (1 byte) | token (u64 BE) | hold time µs (u32 BE) 13 bytes
//! ```
//!
//! The pinger picks the token (e.g. its monotonic send time in µs) and
//! computes `rtt = now - send time - hold`; the responder reports how long it
//! held the ping before answering, as RTCP's DLSR does, so queueing inside
//! the responder does not inflate the link RTT. Binary rather than JSON
//! because pings are periodic, per link, and parsed on the media thread.
//! Control packets use conference [`crate::ConferenceId::LINK`], endpoint
//! [`crate::EndpointId::BRIDGE`] and media [`crate::MediaType::Data`].

use thiserror::Error;

/// Wire value of [`Control::Ping`].
pub const KIND_PING: u8 = 1;
/// Wire value of [`Control::Pong`].
pub const KIND_PONG: u8 = 2;

/// Longest encoded control message.
pub const MAX_CONTROL_LEN: usize = 13;

/// A link control message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Control {
    /// Asks the peer for a [`Control::Pong`] with the same token.
    Ping {
        /// Opaque to the responder.
        token: u64,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's token.
        token: u64,
        /// Microseconds between receiving the ping and sending this pong
        /// (saturated at `u32::MAX`).
        hold_micros: u32,
    },
}

/// Why a control payload did not parse. The packet itself authenticated, so
/// this means a peer speaks a newer control kind or has a bug: ignore, count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ControlError {
    /// Empty payload, or shorter/longer than its kind requires.
    #[error("control message has the wrong length")]
    Length,
    /// A kind this version does not know.
    #[error("unknown control message kind {0}")]
    UnknownKind(u8),
}

impl Control {
    /// Writes the message into `out`, returning the number of bytes used, or
    /// `None` if `out` is shorter than that.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let (buf, len): ([u8; MAX_CONTROL_LEN], usize) = match *self {
            Control::Ping { token } => {
                let [a, b, c, d, e, f, g, h] = token.to_be_bytes();
                ([KIND_PING, a, b, c, d, e, f, g, h, 0, 0, 0, 0], 9)
            }
            Control::Pong { token, hold_micros } => {
                let [a, b, c, d, e, f, g, h] = token.to_be_bytes();
                let [i, j, k, l] = hold_micros.to_be_bytes();
                ([KIND_PONG, a, b, c, d, e, f, g, h, i, j, k, l], 13)
            }
        };
        let src = buf.get(..len)?;
        out.get_mut(..len)?.copy_from_slice(src);
        Some(len)
    }

    /// Encoded form as a small array plus its length.
    pub fn to_bytes(&self) -> ([u8; MAX_CONTROL_LEN], usize) {
        let mut out = [0u8; MAX_CONTROL_LEN];
        let len = self.encode(&mut out).unwrap_or(0);
        (out, len)
    }

    /// Parses a control payload. Never panics.
    pub fn decode(payload: &[u8]) -> Result<Control, ControlError> {
        let (&kind, rest) = payload.split_first().ok_or(ControlError::Length)?;
        match kind {
            KIND_PING => {
                let token: [u8; 8] = rest.try_into().map_err(|_| ControlError::Length)?;
                Ok(Control::Ping {
                    token: u64::from_be_bytes(token),
                })
            }
            KIND_PONG => {
                let body: [u8; 12] = rest.try_into().map_err(|_| ControlError::Length)?;
                let [a, b, c, d, e, f, g, h, i, j, k, l] = body;
                Ok(Control::Pong {
                    token: u64::from_be_bytes([a, b, c, d, e, f, g, h]),
                    hold_micros: u32::from_be_bytes([i, j, k, l]),
                })
            }
            other => Err(ControlError::UnknownKind(other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for c in [
            Control::Ping { token: 0 },
            Control::Ping { token: u64::MAX },
            Control::Pong {
                token: 0x0102_0304_0506_0708,
                hold_micros: 250,
            },
        ] {
            let (buf, len) = c.to_bytes();
            assert_eq!(Control::decode(&buf[..len]), Ok(c));
        }
        let (buf, len) = Control::Pong {
            token: 0x0102_0304_0506_0708,
            hold_micros: 0x0a0b_0c0d,
        }
        .to_bytes();
        assert_eq!(
            &buf[..len],
            &[2, 1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b, 0x0c, 0x0d]
        );
    }

    #[test]
    fn rejects_bad_lengths_and_kinds() {
        assert_eq!(Control::decode(&[]), Err(ControlError::Length));
        assert_eq!(Control::decode(&[1, 0, 0]), Err(ControlError::Length));
        assert_eq!(Control::decode(&[1; 10]), Err(ControlError::Length));
        assert_eq!(Control::decode(&[2; 9]), Err(ControlError::Length));
        assert_eq!(Control::decode(&[9; 9]), Err(ControlError::UnknownKind(9)));
        let mut small = [0u8; 8];
        assert_eq!(Control::Ping { token: 1 }.encode(&mut small), None);
    }
}

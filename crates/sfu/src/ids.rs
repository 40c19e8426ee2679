//! Identifiers that say what a value is.

use std::fmt;

/// A conference, numbered by the bridge. 32 bits because that is what the Octo header carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConferenceId(pub u32);

/// A participant (endpoint) of a conference. Unique within a bridge for its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId(pub u32);

/// A published track (one audio or one video source of a participant).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(pub u32);

/// An RTP synchronisation source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ssrc(pub u32);

/// An RTP sequence number; compare with [`SeqNo::diff`], never with `<`, because it wraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SeqNo(pub u16);

impl SeqNo {
    /// Signed distance from `other` to `self` in the 16-bit circular space
    /// (positive when `self` is newer).
    pub fn diff(self, other: SeqNo) -> i32 {
        i32::from(self.0.wrapping_sub(other.0) as i16)
    }
}

// The string forms are what signaling shows to clients: short, opaque and stable.
impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EP{:08x}", self.0)
    }
}

impl fmt::Display for TrackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TR{:08x}", self.0)
    }
}

impl fmt::Display for ConferenceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:08x}", self.0)
    }
}

impl TrackId {
    /// Parses the form produced by `Display` (`TR` + 8 hex digits).
    pub fn parse(s: &str) -> Option<TrackId> {
        let hex = s.strip_prefix("TR")?;
        if hex.len() != 8 {
            return None;
        }
        u32::from_str_radix(hex, 16).ok().map(TrackId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_diff_wraps() {
        assert_eq!(SeqNo(1).diff(SeqNo(65535)), 2);
        assert_eq!(SeqNo(65535).diff(SeqNo(1)), -2);
        assert_eq!(SeqNo(100).diff(SeqNo(100)), 0);
    }

    #[test]
    fn track_id_round_trips() {
        let t = TrackId(0xdead_beef);
        assert_eq!(TrackId::parse(&t.to_string()), Some(t));
        assert_eq!(TrackId::parse("TRxyz"), None);
        assert_eq!(TrackId::parse("EP00000001"), None);
    }
}

//! Which bridges exist and which id a room has, behind an interface the cluster directory
//! will fill. Today: the static peer list of the config, and ids derived from room names.

use kaskade_sfu::ConferenceId;

/// A 32-bit conference id, the same on every bridge for one room name without any
/// coordination: FNV-1a of the name. Two names can collide (about 1 in 10^4 with 1000 rooms
/// live at once); every announcement carries the room name, so a bridge that sees one id used
/// for two names counts it and refuses to mix them. The cluster directory will hand out ids
/// instead.
pub fn conference_id(room: &str) -> ConferenceId {
    let mut h: u32 = 0x811c_9dc5;
    for b in room.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    // 0 is the Octo link itself (control packets).
    ConferenceId(if h == 0 { 1 } else { h })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_never_zero() {
        assert_eq!(conference_id("room-1"), conference_id("room-1"));
        assert_ne!(conference_id("room-1"), conference_id("room-2"));
        // FNV-1a reference value for "a".
        assert_eq!(conference_id("a").0, 0xe40c_292c);
        assert_ne!(conference_id("").0, 0);
    }
}

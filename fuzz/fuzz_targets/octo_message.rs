//! Octo messages from a peer bridge (announcements with tracks and layers, goodbyes, chat,
//! layer demand), through the whole receive path of a shard: sealed with the peer's key,
//! opened, parsed, applied to the conference a local participant is in
//! (`kaskade_bridge::shard::fuzzing::OctoHarness`).
//!
//! The input is a sequence of records `[flags, endpoint, step, len (2 bytes, LE), payload]`: bit 0 of
//! flags picks a conference this bridge does not host, the endpoint is one of 256 of the peer,
//! step x 20 ms passes before the message (housekeeping runs on steps of a second or more).
//! Every message is applied or dropped, never fatal; what the local participant is told always
//! serializes; and once announcements stop, no remote participant is left.
#![no_main]

use kaskade_bridge::shard::fuzzing::OctoHarness;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut h = OctoHarness::new().expect("harness");
    let mut rest = data;
    while let [flags, endpoint, step, lo, hi, tail @ ..] = rest {
        let n = usize::from(u16::from_le_bytes([*lo, *hi])).min(tail.len());
        let (payload, next) = tail.split_at(n);
        h.message(
            flags & 1 == 1,
            0x0200_0000 | u32::from(*endpoint),
            u16::from(*step) * 20,
            payload,
        );
        rest = next;
    }
    // Silence: every remote participant expires.
    h.message(false, 0x0200_0000, 5000, b"{}");
    h.message(false, 0x0200_0000, 5000, b"{}");
    assert_eq!(
        h.remote_participants(),
        0,
        "remote participants outlived their announcements"
    );
});

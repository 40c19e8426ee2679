//! The Octo replay window against a model: a set of every counter ever accepted.
//!
//! The input is a sequence of (floor-flag, counter) records; counters are made relative to a
//! base so the fuzzer explores the interesting region (the window edge, jumps of one lap,
//! u64::MAX). The window may refuse a fresh counter that is too old, but it must never accept
//! one twice, never accept one below its floor, and `check` must agree with `accept`.
#![no_main]

use std::collections::HashSet;

use kaskade_octo::{REPLAY_WINDOW, ReplayWindow};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&f, rest)) = data.split_first() else {
        return;
    };
    let floor = u64::from(f) * 16;
    let mut window = ReplayWindow::with_floor(floor);
    let mut accepted = HashSet::new();
    let mut highest: Option<u64> = None;
    for rec in rest.chunks_exact(9) {
        let raw = u64::from_be_bytes(rec[1..9].try_into().unwrap());
        // Mode byte: absolute counter, or a small step around the highest accepted one.
        let counter = match rec[0] % 4 {
            0 => raw,
            1 => highest.unwrap_or(0).wrapping_add(raw % (4 * REPLAY_WINDOW)),
            2 => highest.unwrap_or(0).wrapping_sub(raw % (4 * REPLAY_WINDOW)),
            _ => u64::MAX - (raw % (2 * REPLAY_WINDOW)),
        };
        let checked = window.check(counter);
        let result = window.accept(counter);
        assert_eq!(
            checked.is_ok(),
            result.is_ok(),
            "check and accept disagree on {counter}"
        );
        if result.is_ok() {
            assert!(
                counter >= floor,
                "accepted {counter} below the floor {floor}"
            );
            assert!(accepted.insert(counter), "accepted {counter} twice");
            highest = Some(highest.map_or(counter, |h| h.max(counter)));
            assert_eq!(window.highest(), highest);
        } else if let Some(h) = highest {
            // A refused counter is old or seen: never above the highest accepted one.
            assert!(counter <= h, "refused {counter} above the highest {h}");
        }
    }
});

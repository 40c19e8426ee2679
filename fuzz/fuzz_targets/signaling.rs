//! One WebSocket text frame from a client: `messages::parse_client`.
//!
//! Every frame parses or gets an error code; a frame that parses re-serializes and parses
//! again to the same message type (so the bridge's own view of a message is stable).
#![no_main]

use kaskade_bridge::messages::{CLIENT_TYPES, ClientMsg, MAX_REASON_CHARS, parse_client};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client(text) {
        Ok(msg) => {
            let again = serde_json::to_string(&msg).unwrap();
            let back: ClientMsg = parse_client(&again)
                .unwrap_or_else(|e| panic!("re-encoded message does not parse: {e:?}: {again}"));
            assert_eq!(std::mem::discriminant(&msg), std::mem::discriminant(&back));
            let v: serde_json::Value = serde_json::from_str(&again).unwrap();
            let typ = v["type"].as_str().unwrap();
            assert!(CLIENT_TYPES.contains(&typ));
        }
        Err((code, reason)) => {
            assert!(!code.as_str().is_empty());
            // Reasons go back to the client and into logs: bounded whatever the input.
            assert!(
                reason.chars().count() <= MAX_REASON_CHARS,
                "reason of {} bytes",
                reason.len()
            );
        }
    }
});

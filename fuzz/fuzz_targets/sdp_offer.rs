//! An offer as a publisher sends it: the bridge's own checks (size, m-line count) and then
//! what the shard does with it through `rtc` — parse, set as remote description, answer, set
//! the answer as local description — on a PeerConnection built exactly as the bridge builds
//! one (`leg::build_peer_connection`). Errors are fine; panics are not.
//!
//! Before `rtc`, the shard reads the offer's simulcast RIDs (`offered_rids`): at most three,
//! each a short token, or the offer is refused.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use kaskade_bridge::leg::{self, LegSettings};
use libfuzzer_sys::fuzz_target;
use rtc::peer_connection::sdp::RTCSessionDescription;

/// The bridge's defaults (crates/bridge/src/config.rs): 32 KiB of SDP, 16 media sections.
const MAX_SDP_BYTES: usize = 32_768;
const MAX_MEDIA_SECTIONS: usize = 16;

fn settings() -> &'static LegSettings {
    static S: OnceLock<LegSettings> = OnceLock::new();
    S.get_or_init(|| LegSettings {
        advertised: "127.0.0.1:10000".parse().unwrap(),
        srtp_profiles: vec![leg::parse_srtp_profile("aead_aes_128_gcm").unwrap()],
        replay_window: 64,
        certificate: leg::generate_certificate().unwrap(),
        lean_egress: true,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    if sdp.len() > MAX_SDP_BYTES
        || sdp.lines().filter(|l| l.starts_with("m=")).count() > MAX_MEDIA_SECTIONS
    {
        return;
    }
    match kaskade_bridge::shard::fuzzing::offered_rids(sdp) {
        Ok(rids) => assert!(rids.len() <= 3, "{} simulcast layers taken", rids.len()),
        // Refused with a reason the participant is sent: bounded.
        Err(reason) => assert!(reason.len() <= 1024, "reason of {} bytes", reason.len()),
    }
    let now = Instant::now();
    // A publisher leg, as an offer from a client is answered on.
    let mut pc = leg::build_peer_connection(
        now,
        settings(),
        "fuzzufrag",
        "fuzzpasswordfuzzpassword",
        leg::LegKind::Publisher,
    )
    .expect("building a PeerConnection from fixed settings")
    .pc;
    let _ = RTCSessionDescription::offer(sdp.to_owned())
        .and_then(|offer| pc.set_remote_description(now, offer))
        .and_then(|_| pc.create_answer(None))
        .and_then(|answer| pc.set_local_description(now, answer));
});

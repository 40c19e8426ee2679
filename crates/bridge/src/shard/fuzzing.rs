//! A shard with an Octo peer, for the fuzz target of Octo messages (fuzz/fuzz_targets/
//! octo_message.rs): hostile message payloads go the whole way a peer's would, sealed by the
//! peer's key, opened, parsed and applied to the conference state (remote participants, their
//! tracks and layers, chat, layer demand), with a local participant watching.
//!
//! Also the RID extraction from publisher offers (fuzz/fuzz_targets/sdp_offer.rs). Not part of
//! the node's API: public only so that the fuzz crate can reach it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kaskade_octo::{BridgeId, LinkCounter, LinkSecurity, MediaType, PacketType, Sealer, Suite};
use kaskade_sfu::{ConferenceId, EndpointId};
use tokio::sync::mpsc;

use super::cascade::{Cascade, octo_meta};
use super::{Command, SessionId, Shard, ShardLimits};
use crate::config::{OctoConfig, OctoPeer, RepairMode};
use crate::leg::{self, LegSettings};
use crate::messages::{BridgeInfo, ServerMsg};
use crate::metrics::Metrics;

const SECRET: &str = "a-cluster-secret-for-the-fuzzer";

/// One DTLS certificate for every harness: generating a key pair per fuzz input would be most
/// of the work.
fn certificate() -> anyhow::Result<rtc::peer_connection::certificate::RTCCertificate> {
    static CERT: std::sync::OnceLock<rtc::peer_connection::certificate::RTCCertificate> =
        std::sync::OnceLock::new();
    if let Some(c) = CERT.get() {
        return Ok(c.clone());
    }
    let c = leg::generate_certificate()?;
    Ok(CERT.get_or_init(|| c).clone())
}
const PEER: u32 = 2;

/// Bridge 1 with a local participant in room "fuzz", and bridge 2's sealer.
pub struct OctoHarness {
    shard: Shard,
    sealer: Sealer,
    events: mpsc::UnboundedReceiver<ServerMsg>,
    conference: ConferenceId,
    now: Instant,
}

/// A shard of bridge `me` (id prefix `me`, Octo id `me`) with one Octo peer, bridge `peer` at
/// 127.0.0.1:4000+`peer`, both keyed by `secret`: the fuzz harness's shard and the cascade
/// tests' (shard/cascade/tests.rs).
pub(crate) fn octo_shard(
    me: u32,
    peer: u32,
    secret: &str,
    max_participants: usize,
) -> anyhow::Result<Shard> {
    let metrics = Arc::new(Metrics::new()?);
    let mut shard = Shard::new(
        LegSettings {
            advertised: SocketAddr::from(([127, 0, 0, 1], 10000)),
            srtp_profiles: vec![leg::parse_srtp_profile("aead_aes_128_gcm")?],
            replay_window: 1024,
            certificate: certificate()?,
            lean_egress: true,
        },
        ShardLimits {
            max_participants,
            max_media_sections: 16,
            stun_per_address: 50,
            stun_per_leg: 100,
            max_pending_legs: 200,
            leg_timeout: Duration::from_secs(30),
            repair: RepairMode::PerHop,
        },
        BridgeInfo {
            id: format!("b{me}"),
            region: format!("r{me}"),
        },
        metrics,
    );
    let config = OctoConfig {
        bridge_id: me,
        secret: secret.into(),
        peers: vec![OctoPeer {
            id: peer,
            name: format!("b{peer}"),
            region: format!("r{peer}"),
            address: SocketAddr::from(([127, 0, 0, 1], 4000 + (peer % 1000) as u16)),
            url: String::new(),
        }],
        ..OctoConfig::default()
    };
    shard.core = kaskade_sfu::Conferences::with_id_prefix(me as u8);
    shard.octo = Some(Cascade::new(&config, &shard.metrics, Instant::now())?);
    Ok(shard)
}

impl OctoHarness {
    pub fn new() -> anyhow::Result<Self> {
        let mut shard = octo_shard(1, PEER, SECRET, 100)?;
        let now = Instant::now();
        let (tx, events) = mpsc::unbounded_channel();
        let conference = crate::directory::conference_id("fuzz");
        shard.on_command(
            now,
            Command::Join {
                session: SessionId(1),
                conference,
                room: "fuzz".into(),
                identity: "watcher".into(),
                name: "Watcher".into(),
                can_publish: true,
                can_subscribe: true,
                events: tx,
                started: now,
            },
        );
        let security = LinkSecurity::encrypted(Suite::Aes128Gcm, SECRET.as_bytes())?;
        let sealer = Sealer::new(&security, BridgeId(PEER), BridgeId(1), LinkCounter(1))?;
        Ok(Self {
            shard,
            sealer,
            events,
            conference,
            now,
        })
    }

    /// Peer 2 sends `payload` as an Octo message from `endpoint`, about the watcher's
    /// conference (or, with `other_conference`, one this bridge does not host); `advance_ms`
    /// passes first, and the shard's timers and housekeeping run as they would.
    pub fn message(
        &mut self,
        other_conference: bool,
        endpoint: u32,
        advance_ms: u16,
        payload: &[u8],
    ) {
        self.now += Duration::from_millis(u64::from(advance_ms));
        let conference = if other_conference {
            ConferenceId(self.conference.0 ^ 0x5a5a)
        } else {
            self.conference
        };
        let meta = octo_meta(
            PacketType::Message,
            MediaType::Data,
            conference,
            EndpointId(endpoint),
        );
        let mut datagram = Vec::new();
        if self
            .sealer
            .seal_to_vec(&meta, payload, &mut datagram)
            .is_err()
        {
            return;
        }
        let from = SocketAddr::from(([127, 0, 0, 1], 4002));
        self.shard
            .on_octo_datagram(self.now, from, &mut datagram, Default::default());
        self.shard.service_dirty(self.now);
        self.shard.on_timers(self.now);
        if advance_ms >= 1000 {
            self.shard.housekeeping(self.now);
            self.shard.demand_tick(self.now);
        }
        // Whatever the watcher is told must be a message the bridge can send.
        while let Ok(m) = self.events.try_recv() {
            if let Err(e) = serde_json::to_string(&m) {
                panic!("an event for the watcher does not serialize: {e}: {m:?}");
            }
        }
    }

    /// Remote participants this bridge holds now.
    pub fn remote_participants(&self) -> usize {
        self.shard.octo.as_ref().map_or(0, |o| o.remote.len())
    }
}

/// The simulcast RIDs of a publisher offer, as the shard reads them before `rtc` sees the
/// offer (`Err`: the offer is refused with that reason).
pub fn offered_rids(sdp: &str) -> Result<Vec<String>, String> {
    super::simulcast::offered_rids(sdp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_messages_from_a_peer_are_applied_or_dropped_never_fatal() {
        let mut h = OctoHarness::new().expect("harness");
        let track = r#"{"id":"TR02000001","kind":"video","ssrc":7,"layers":[{"rid":"0","ssrc":7,"height":180,"bitrate":100000,"active":true},{"rid":"1","ssrc":8,"height":360,"bitrate":500000,"active":true}]}"#;
        let inputs: Vec<String> = vec![
            format!(r#"{{"type":"participant","room":"fuzz","name":"bob","tracks":[{track}]}}"#),
            r#"{"type":"participant","room":"another room","name":"x","tracks":[]}"#.into(),
            r#"{"type":"chat","name":"bob","text":"hi"}"#.into(),
            r#"{"type":"layer_demand","tracks":[{"id":"TR01000001","max_layer":2}]}"#.into(),
            r#"{"type":"participant","room":"fuzz","name":"bob","tracks":[{"id":"TR02000001","kind":"video","ssrc":7,"layers":[{"rid":"0","ssrc":7,"height":0,"bitrate":0,"active":true},{"rid":"1","ssrc":7,"height":0,"bitrate":0,"active":true},{"rid":"2","ssrc":9,"height":0,"bitrate":0,"active":true},{"rid":"3","ssrc":10,"height":0,"bitrate":0,"active":true}]}]}"#.into(),
            r#"{"type":"bye"}"#.into(),
            "not json".into(),
            r#"{"type":"participant"}"#.into(),
        ];
        // The first announcement is applied: bob appears to the watcher.
        h.message(false, 0x0200_0001, 10, inputs[0].as_bytes());
        assert_eq!(h.remote_participants(), 1);
        for (i, m) in inputs.iter().enumerate() {
            h.message(false, 0x0200_0001, 10, m.as_bytes());
            h.message(true, 0x0200_0002 + i as u32, 10, m.as_bytes());
        }
        // Remote participants expire once their announcements stop.
        h.message(false, 0x0200_0009, 5000, b"{}");
        h.message(false, 0x0200_0009, 5000, b"{}");
        assert_eq!(h.remote_participants(), 0);
    }
}

//! Prometheus metrics of the node.
//!
//! Low cardinality by rule: no label carries a room, participant or address. Hot-path
//! counters are resolved to plain atomic handles once, at start, so counting a packet is one
//! relaxed add and never a label lookup.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::demux::DropReason;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub conferences: IntGauge,
    pub participants: IntGauge,
    /// Kernel buffer sizes the sockets got, by socket (`media`, `octo`) and direction.
    pub udp_buffer_bytes: prometheus::IntGaugeVec,
    pub tracks: IntGauge,
    pub legs: IntGauge,
    pub packets_in: IntCounter,
    pub bytes_in: IntCounter,
    pub packets_out: IntCounter,
    pub bytes_out: IntCounter,
    pub rtp_forwarded: IntCounter,
    /// Copies encrypted on the lean path (leg/lean.rs), a part of `rtp_forwarded`.
    pub rtp_forwarded_lean: IntCounter,
    /// Subscriber legs' attempts at the lean egress, by outcome.
    pub lean_egress_legs: IntCounterVec,
    /// Sender reports the shard wrote.
    pub sender_reports: IntCounter,
    pub rtp_duplicates: IntCounter,
    /// RTP of tracks an administrator muted, not forwarded.
    pub rtp_muted: IntCounter,
    pub rtp_unroutable: IntCounter,
    pub udp_dropped: IntCounterVec,
    /// Datagrams the kernel gave one shard's socket for a leg of another shard.
    pub handoffs_out: IntCounter,
    pub handoffs_in: IntCounter,
    /// Media threads running, and the participants on each (placement's balance).
    pub shards: IntGauge,
    pub shard_participants: IntGaugeVec,
    /// Conferences of this node that span more than one shard.
    pub spread_conferences: IntGauge,
    /// Joins placed on a shard other than their conference's first (it was full).
    pub spread_placements: IntCounter,
    /// Packets (media, feedback, announcements) between shards of one spread conference.
    pub sibling_packets: IntCounter,
    pub leg_read_errors: IntCounter,
    pub early_stun: IntCounter,
    pub send_errors: IntCounter,
    pub keyframe_requests: IntCounterVec,
    pub signaling_errors: IntCounterVec,
    /// Limits hit, by limit (`crate::limits::ALL`).
    pub limit_hits: IntCounterVec,
    pub signaling_sessions: IntGauge,
    pub join_seconds: Histogram,
    pub octo_packets_in: IntCounterVec,
    pub octo_packets_out: IntCounterVec,
    pub octo_bytes_in: IntCounterVec,
    pub octo_bytes_out: IntCounterVec,
    pub octo_dropped: IntCounterVec,
    pub octo_rtt_seconds: GaugeVec,
    pub octo_conferences: IntGauge,
    pub octo_remote_participants: IntGauge,
    /// Inbound RTP accepted for forwarding (after duplicate suppression), by origin.
    pub rtp_routed_local: IntCounter,
    pub rtp_routed_octo: IntCounter,
    pub octo_rtp_out: IntCounter,
    pub octo_streams_out: IntGauge,
    /// Loss repair on client legs (uplink gaps, subscribers' NACKs).
    pub repair_client: LinkRepair,
    /// Loss repair on Octo links.
    pub repair_octo: LinkRepair,
    /// Receivers' NACKs for packets this bridge is itself still waiting for.
    pub repairs_waiting_upstream: IntCounter,
    /// Of those, packets that arrived and so went out to the receivers that asked.
    pub repairs_answered_on_arrival: IntCounter,
    /// Resends not made because the same packet went to the same receiver within an RTT.
    pub retransmissions_suppressed: IntCounter,
    /// Second copies of Octo resends (`octo.repair_copy_ms`), also in retransmitted bytes.
    pub octo_repair_copies: IntCounter,
    /// NACKs for the lost tail of a remote video frame, sent before the next frame showed it.
    pub octo_tail_probes: IntCounter,
    pub dominant_speaker_changes: IntCounter,
    pub speaker_decision_seconds: Histogram,
    /// Simulcast layer switches seen by receivers.
    pub simulcast_switches: Switches,
    /// Video bytes handed to subscriber legs, by layer kind: `single` (no simulcast), `low`,
    /// `mid`, `high` (simulcast layers 0, 1, 2), in [`SIMULCAST_LAYER_LABELS`] order.
    pub simulcast_forwarded_bytes: [IntCounter; 4],
    /// Simulcast bytes not sent to a peer bridge because none of its receivers needed the
    /// layer.
    pub octo_bytes_saved: IntCounter,
    /// Time inside the bridge of each RTP datagram received, by input.
    pub forwarding_delay: ForwardingDelay,
    /// The node's side of the cluster (crate::cluster).
    pub cluster: ClusterMetrics,
}

/// Stress, draining, and the directory as this node uses it.
#[derive(Clone)]
pub struct ClusterMetrics {
    /// `kaskade_stress`: max(packet rate / capacity, CPU / 0.9); the autoscaling signal.
    pub stress: prometheus::Gauge,
    pub draining: IntGauge,
    /// Directory calls by operation (`publish`, `nodes`, `conference`, `set_host`, `withdraw`).
    pub directory_ops: IntCounterVec,
    /// Failed directory calls by kind (`DirectoryError::kind`).
    pub directory_errors: IntCounterVec,
    /// Node records from the directory refused as invalid.
    pub records_refused: IntCounter,
    /// Bridge selections by the rule that decided (`kaskade_cluster::Rule::as_str`).
    pub selections: IntCounterVec,
    /// Seconds since this node's record was last published successfully.
    pub heartbeat_age: prometheus::Gauge,
    /// Joins answered with a `redirect` to another bridge.
    pub redirects: IntCounter,
    /// Times the directory answered again after failing (Redis reconnected).
    pub reconnects: IntCounter,
    /// Participants of a draining node told to move (`migrate`), by outcome: `sent`, or
    /// `no_bridge` when selection found nowhere to go (retried).
    pub migrations: IntCounterVec,
}

impl ClusterMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let fgauge = |name: &str, help: &str| -> prometheus::Result<prometheus::Gauge> {
            let g = prometheus::Gauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let vec = |name: &str, help: &str, label: &str| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), &[label])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let draining = IntGauge::new(
            "draining",
            "1 while this node drains (takes no new participants)",
        )?;
        registry.register(Box::new(draining.clone()))?;
        let records_refused = IntCounter::new(
            "directory_records_refused_total",
            "Node records read from the directory and refused as invalid",
        )?;
        registry.register(Box::new(records_refused.clone()))?;
        let redirects = IntCounter::new(
            "redirects_total",
            "Joins answered with a redirect to the bridge selection chose",
        )?;
        registry.register(Box::new(redirects.clone()))?;
        let reconnects = IntCounter::new(
            "directory_reconnects_total",
            "Times the cluster directory answered again after failing (Redis reconnected)",
        )?;
        registry.register(Box::new(reconnects.clone()))?;
        let m = ClusterMetrics {
            redirects,
            reconnects,
            migrations: vec(
                "drain_migrations_total",
                "Participants of a draining node told to move to another bridge, by outcome",
                "outcome",
            )?,
            stress: fgauge(
                "stress",
                "Load of this node: max(packet rate / cluster.pps_capacity, CPU / 0.9)",
            )?,
            draining,
            directory_ops: vec(
                "directory_operations_total",
                "Cluster directory calls, by operation",
                "op",
            )?,
            directory_errors: vec(
                "directory_errors_total",
                "Failed cluster directory calls, by kind",
                "kind",
            )?,
            records_refused,
            selections: vec(
                "bridge_selections_total",
                "Bridge selections for joining participants, by the rule that decided",
                "rule",
            )?,
            heartbeat_age: fgauge(
                "heartbeat_age_seconds",
                "Seconds since this node's record was last published to the directory",
            )?,
        };
        for op in ["publish", "nodes", "conference", "set_host", "withdraw"] {
            m.directory_ops.with_label_values(&[op]);
        }
        for k in ["unavailable", "refused", "bad_record", "exhausted"] {
            m.directory_errors.with_label_values(&[k]);
        }
        for r in kaskade_cluster::Rule::ALL {
            m.selections.with_label_values(&[r.as_str()]);
        }
        Ok(m)
    }
}

/// `kaskade_forwarding_delay_seconds{input}`: from the kernel's receive timestamp of an RTP
/// datagram to the end of the send pass that handed what it caused to the kernel; and
/// `kaskade_forwarding_wait_seconds{input}`, the part of it before the shard read the datagram.
#[derive(Clone)]
pub struct ForwardingDelay {
    /// `input="client"`: SRTP on the media port.
    pub client: Histogram,
    /// `input="octo"`: Octo RTP from peer bridges.
    pub octo: Histogram,
    pub client_wait: Histogram,
    pub octo_wait: Histogram,
}

/// Buckets of [`ForwardingDelay`], in seconds: 10 µs to 50 ms, fine around the 1 and 2 ms
/// targets (docs/benchmarks.md, "Time inside one bridge"), and on to 250 ms, which a key
/// frame's fan-out to a few hundred receivers reaches.
pub const FORWARDING_DELAY_BUCKETS: [f64; 23] = [
    10e-6, 20e-6, 50e-6, 100e-6, 200e-6, 300e-6, 500e-6, 750e-6, 1e-3, 1.5e-3, 2e-3, 3e-3, 5e-3,
    7.5e-3, 10e-3, 15e-3, 20e-3, 30e-3, 50e-3, 75e-3, 100e-3, 150e-3, 250e-3,
];

/// The `layer` label values of the per-layer metrics, by [`crate::shard`]'s layer index.
pub const SIMULCAST_LAYER_LABELS: [&str; 4] = ["single", "low", "mid", "high"];

#[derive(Clone)]
pub struct Switches {
    pub up: IntCounter,
    pub down: IntCounter,
}

/// Loss-repair counters of one link kind (`link` = `client` or `octo`).
#[derive(Clone)]
pub struct LinkRepair {
    /// NACKs (RTCP packets) received from the next hop.
    pub nacks_received: IntCounter,
    /// NACKs (RTCP packets) sent to the previous hop.
    pub nacks_sent: IntCounter,
    /// Packets resent from our cache (or, end to end, duplicates relayed).
    pub retransmissions: IntCounter,
    pub retransmitted_bytes: IntCounter,
    /// Requested packets no longer (or never) in the cache.
    pub cache_misses: IntCounter,
    /// Packets missing on the link that arrived later (repaired or reordered).
    pub recovered: IntCounter,
    /// Packets missing on the link given up on after the last request.
    pub lost_unrecovered: IntCounter,
}

/// Why an Octo datagram was dropped: the decoder's reasons, then the bridge's own.
pub const OCTO_DROP_REASONS: [&str; 20] = [
    "truncated",
    "bad_version",
    "bad_type",
    "auth",
    "replay",
    "plaintext_refused",
    "encrypted_refused",
    "unknown_sender",
    "oversized",
    "bad_message",
    "bad_rtp",
    "bad_rtcp",
    "bad_control",
    "unknown_track",
    "unknown_conference",
    "conference_mismatch",
    "endpoint_conflict",
    "handoff_full",
    "not_announced",
    "track_ended",
];

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new_custom(Some("kaskade".into()), None)?;
        let gauge = |name: &str, help: &str| -> prometheus::Result<IntGauge> {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let gauge_vec =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
                let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(g.clone()))?;
                Ok(g)
            };
        let repair = RepairVecs::new(&registry)?;
        let udp_buffer_bytes = prometheus::IntGaugeVec::new(
            Opts::new(
                "udp_buffer_bytes",
                "Kernel UDP buffer the socket got (media.udp_buffer_bytes asked; capped by net.core.rmem_max/wmem_max)",
            ),
            &["socket", "dir"],
        )?;
        registry.register(Box::new(udp_buffer_bytes.clone()))?;
        let m = Metrics {
            udp_buffer_bytes,
            conferences: gauge("conferences", "Conferences on this node")?,
            participants: gauge("participants", "Participants joined on this node")?,
            tracks: gauge("tracks", "Published tracks on this node")?,
            legs: gauge("webrtc_legs", "WebRTC PeerConnections (legs) open")?,
            packets_in: counter(
                "udp_packets_in_total",
                "Datagrams received on the media port",
            )?,
            bytes_in: counter("udp_bytes_in_total", "Bytes received on the media port")?,
            packets_out: counter(
                "udp_packets_out_total",
                "Datagrams sent from the media port",
            )?,
            bytes_out: counter("udp_bytes_out_total", "Bytes sent from the media port")?,
            rtp_forwarded: counter(
                "rtp_forwarded_total",
                "RTP packets handed to a subscriber leg (one per copy)",
            )?,
            rtp_forwarded_lean: counter(
                "rtp_forwarded_lean_total",
                "Copies encrypted with the leg's SRTP keys outside rtc's pipeline (part of rtp_forwarded_total)",
            )?,
            lean_egress_legs: counter_vec(
                "lean_egress_legs_total",
                "Subscriber legs' lean egress: verified against rtc's own output, mismatch, no keys seen, or ended by new keys",
                &["outcome"],
            )?,
            sender_reports: counter(
                "sender_reports_total",
                "RTCP sender reports written for subscriber legs' streams",
            )?,
            rtp_muted: counter(
                "rtp_muted_dropped_total",
                "RTP packets of tracks an administrator muted, not forwarded",
            )?,
            rtp_duplicates: counter(
                "rtp_duplicates_dropped_total",
                "Inbound RTP packets dropped as duplicates",
            )?,
            rtp_unroutable: counter(
                "rtp_unroutable_total",
                "Inbound RTP packets of no known track",
            )?,
            udp_dropped: counter_vec(
                "udp_dropped_total",
                "Datagrams dropped before reaching a leg, by reason",
                &["reason"],
            )?,
            handoffs_out: counter(
                "shard_handoffs_out_total",
                "Datagrams a shard received for another shard's leg and passed on in process",
            )?,
            handoffs_in: counter(
                "shard_handoffs_in_total",
                "Datagrams a shard took from another shard for its own legs",
            )?,
            shards: gauge("shards", "Media threads (shards) running")?,
            shard_participants: gauge_vec(
                "shard_participants",
                "Participants whose conference lives on each shard",
                &["shard"],
            )?,
            spread_conferences: gauge(
                "spread_conferences",
                "Conferences whose participants are on more than one shard of this node",
            )?,
            spread_placements: counter(
                "spread_placements_total",
                "Joins placed on another shard than their conference's first, which was full",
            )?,
            sibling_packets: counter(
                "shard_sibling_packets_total",
                "Packets a shard sent to another shard of a conference they both carry",
            )?,
            leg_read_errors: counter(
                "leg_read_errors_total",
                "Datagrams a leg refused (bad DTLS/SRTP, replay, garbage)",
            )?,
            early_stun: counter(
                "early_stun_total",
                "Connectivity checks a subscriber leg held until its answer told it the client's credentials, then answered",
            )?,
            send_errors: counter("udp_send_errors_total", "Failed sends on the media port")?,
            keyframe_requests: counter_vec(
                "keyframe_requests_total",
                "Keyframe requests (PLI/FIR) from receivers, by outcome",
                &["outcome"],
            )?,
            signaling_errors: counter_vec(
                "signaling_errors_total",
                "Errors sent to signaling sessions, by code",
                &["code"],
            )?,
            limit_hits: counter_vec(
                "limit_hits_total",
                "Times a configured limit refused something (a session, a leg, a datagram), by limit",
                &["limit"],
            )?,
            signaling_sessions: gauge("signaling_sessions", "Open signaling WebSockets")?,
            join_seconds: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "join_seconds",
                        "Time from join request to joined, in seconds",
                    )
                    .buckets(vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0]),
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            octo_packets_in: counter_vec(
                "octo_packets_in_total",
                "Octo datagrams accepted from each peer bridge",
                &["peer"],
            )?,
            octo_packets_out: counter_vec(
                "octo_packets_out_total",
                "Octo datagrams sent to each peer bridge",
                &["peer"],
            )?,
            octo_bytes_in: counter_vec(
                "octo_bytes_in_total",
                "Octo bytes accepted from each peer bridge",
                &["peer"],
            )?,
            octo_bytes_out: counter_vec(
                "octo_bytes_out_total",
                "Octo bytes sent to each peer bridge",
                &["peer"],
            )?,
            octo_dropped: counter_vec(
                "octo_dropped_total",
                "Octo datagrams dropped, by reason",
                &["reason"],
            )?,
            octo_rtt_seconds: {
                let g = GaugeVec::new(
                    Opts::new("octo_rtt_seconds", "Round-trip time of each Octo link"),
                    &["peer"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            octo_conferences: gauge(
                "octo_conferences",
                "Conferences that span this bridge and at least one other",
            )?,
            octo_remote_participants: gauge(
                "octo_remote_participants",
                "Participants other bridges announce to this one",
            )?,
            rtp_routed_local: counter(
                "rtp_routed_local_total",
                "RTP packets from local publishers accepted for forwarding",
            )?,
            rtp_routed_octo: counter(
                "rtp_routed_octo_total",
                "RTP packets from other bridges accepted for forwarding",
            )?,
            octo_rtp_out: counter(
                "octo_rtp_out_total",
                "RTP packets sent over Octo (one per peer bridge per packet)",
            )?,
            octo_streams_out: gauge(
                "octo_streams_out",
                "Local streams sent over Octo, counted once per peer bridge they go to",
            )?,
            repair_client: LinkRepair::new(&repair, "client"),
            repair_octo: LinkRepair::new(&repair, "octo"),
            repairs_waiting_upstream: counter(
                "repairs_waiting_upstream_total",
                "Receivers' NACKs for packets this bridge is still repairing upstream",
            )?,
            repairs_answered_on_arrival: counter(
                "repairs_answered_on_arrival_total",
                "Packets receivers NACKed before they arrived here, sent on arrival",
            )?,
            retransmissions_suppressed: counter(
                "retransmissions_suppressed_total",
                "Resends skipped: the same packet went to the same receiver within an RTT",
            )?,
            octo_repair_copies: counter(
                "octo_repair_copies_total",
                "Second copies of packets resent to a peer bridge, against a lost resend",
            )?,
            octo_tail_probes: counter(
                "octo_tail_probes_total",
                "NACKs to a peer bridge for a video frame's tail, after a silence mid-frame",
            )?,
            dominant_speaker_changes: counter(
                "dominant_speaker_changes_total",
                "Dominant speaker changes, summed over conferences",
            )?,
            speaker_decision_seconds: {
                let h = Histogram::with_opts(
                    HistogramOpts::new(
                        "speaker_decision_seconds",
                        "CPU time of one dominant speaker decision of one conference",
                    )
                    .buckets(vec![1e-6, 5e-6, 2e-5, 1e-4, 5e-4, 2e-3]),
                )?;
                registry.register(Box::new(h.clone()))?;
                h
            },
            simulcast_switches: {
                let v = counter_vec(
                    "simulcast_switches_total",
                    "Simulcast layer switches of receivers' streams, by direction",
                    &["direction"],
                )?;
                Switches {
                    up: v.with_label_values(&["up"]),
                    down: v.with_label_values(&["down"]),
                }
            },
            simulcast_forwarded_bytes: {
                let v = counter_vec(
                    "simulcast_forwarded_bytes_total",
                    "Video bytes sent to receivers, by layer (single = not simulcast)",
                    &["layer"],
                )?;
                SIMULCAST_LAYER_LABELS.map(|l| v.with_label_values(&[l]))
            },
            octo_bytes_saved: counter(
                "octo_layer_suppressed_bytes_total",
                "Simulcast bytes not sent to peer bridges whose receivers did not need the layer",
            )?,
            forwarding_delay: {
                let v = HistogramVec::new(
                    HistogramOpts::new(
                        "forwarding_delay_seconds",
                        "Time inside the bridge of each RTP datagram: kernel receive timestamp \
                         to the end of the send pass that followed, by input",
                    )
                    .buckets(FORWARDING_DELAY_BUCKETS.to_vec()),
                    &["input"],
                )?;
                registry.register(Box::new(v.clone()))?;
                let w = HistogramVec::new(
                    HistogramOpts::new(
                        "forwarding_wait_seconds",
                        "Of the forwarding delay, the part before the shard read the datagram \
                         (socket queue, wake-up), by input",
                    )
                    .buckets(FORWARDING_DELAY_BUCKETS.to_vec()),
                    &["input"],
                )?;
                registry.register(Box::new(w.clone()))?;
                ForwardingDelay {
                    client: v.with_label_values(&["client"]),
                    octo: v.with_label_values(&["octo"]),
                    client_wait: w.with_label_values(&["client"]),
                    octo_wait: w.with_label_values(&["octo"]),
                }
            },
            cluster: ClusterMetrics::new(&registry)?,
            registry,
        };
        for r in OCTO_DROP_REASONS {
            m.octo_dropped.with_label_values(&[r]);
        }
        // Make every label value visible from the start, so dashboards see zeros, not gaps.
        for r in DropReason::ALL {
            m.udp_dropped.with_label_values(&[r.as_str()]);
        }
        for l in crate::limits::ALL {
            m.limit_hits.with_label_values(&[l]);
        }
        for o in ["verified", "mismatch", "no_keys", "rekeyed"] {
            m.lean_egress_legs.with_label_values(&[o]);
        }
        for o in ["forwarded", "suppressed_receiver", "suppressed_source"] {
            m.keyframe_requests.with_label_values(&[o]);
        }
        Ok(m)
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The labelled families behind [`LinkRepair`].
struct RepairVecs {
    nacks_received: IntCounterVec,
    nacks_sent: IntCounterVec,
    retransmissions: IntCounterVec,
    retransmitted_bytes: IntCounterVec,
    cache_misses: IntCounterVec,
    recovered: IntCounterVec,
    lost_unrecovered: IntCounterVec,
}

impl RepairVecs {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let vec = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), &["link"])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(Self {
            nacks_received: vec(
                "nacks_received_total",
                "NACK packets received, by link kind",
            )?,
            nacks_sent: vec("nacks_sent_total", "NACK packets sent, by link kind")?,
            retransmissions: vec(
                "retransmissions_total",
                "Packets resent from the cache (end-to-end mode: duplicates relayed), by link kind",
            )?,
            retransmitted_bytes: vec(
                "retransmitted_bytes_total",
                "RTP bytes of those retransmissions, by link kind",
            )?,
            cache_misses: vec(
                "retransmission_cache_misses_total",
                "Requested packets no longer (or never) in the cache, by link kind",
            )?,
            recovered: vec(
                "packets_recovered_total",
                "Video packets missing on a link that arrived later, by link kind",
            )?,
            lost_unrecovered: vec(
                "packets_lost_unrecovered_total",
                "Video packets missing on a link given up after the last request, by link kind",
            )?,
        })
    }
}

impl LinkRepair {
    fn new(v: &RepairVecs, link: &str) -> Self {
        Self {
            nacks_received: v.nacks_received.with_label_values(&[link]),
            nacks_sent: v.nacks_sent.with_label_values(&[link]),
            retransmissions: v.retransmissions.with_label_values(&[link]),
            retransmitted_bytes: v.retransmitted_bytes.with_label_values(&[link]),
            cache_misses: v.cache_misses.with_label_values(&[link]),
            recovered: v.recovered.with_label_values(&[link]),
            lost_unrecovered: v.lost_unrecovered.with_label_values(&[link]),
        }
    }
}

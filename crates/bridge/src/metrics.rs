//! Prometheus metrics of the node.
//!
//! Low cardinality by rule: no label carries a room, participant or address. Hot-path
//! counters are resolved to plain atomic handles once, at start, so counting a packet is one
//! relaxed add and never a label lookup.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::demux::DropReason;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub conferences: IntGauge,
    pub participants: IntGauge,
    pub tracks: IntGauge,
    pub legs: IntGauge,
    pub packets_in: IntCounter,
    pub bytes_in: IntCounter,
    pub packets_out: IntCounter,
    pub bytes_out: IntCounter,
    pub rtp_forwarded: IntCounter,
    pub rtp_duplicates: IntCounter,
    pub rtp_unroutable: IntCounter,
    pub udp_dropped: IntCounterVec,
    pub leg_read_errors: IntCounter,
    pub send_errors: IntCounter,
    pub keyframe_requests: IntCounterVec,
    pub signaling_errors: IntCounterVec,
    pub signaling_sessions: IntGauge,
    pub join_seconds: Histogram,
}

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
        let m = Metrics {
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
            leg_read_errors: counter(
                "leg_read_errors_total",
                "Datagrams a leg refused (bad DTLS/SRTP, replay, garbage)",
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
            registry,
        };
        // Make every label value visible from the start, so dashboards see zeros, not gaps.
        for r in DropReason::ALL {
            m.udp_dropped.with_label_values(&[r.as_str()]);
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

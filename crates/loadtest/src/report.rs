//! The result of a load run: one row per client and a total, as a table for people and as
//! JSON for scripts (the same fields).

use std::fmt::Write as _;

use serde::Serialize;

use crate::client::ssrc_tag;
use crate::media::Kind;
use crate::stats::{Histogram, StreamStats};

/// What one load run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// The node's HTTP base the clients joined through.
    pub url: String,
    pub rooms: Vec<String>,
    pub settings: Settings,
    /// From the first client's start to the end of the measurement.
    pub elapsed_secs: f64,
    /// From the first client's start until every client that connected had (`None`: some
    /// never did).
    pub join_secs: Option<f64>,
    pub clients: Vec<ClientRow>,
    pub total: Total,
    /// Every client connected and none failed: the exit status of `kaskade loadtest`.
    pub ok: bool,
}

/// The load asked for (per room).
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub video_publishers: usize,
    pub audio_publishers: usize,
    pub subscribers: usize,
    pub duration_secs: f64,
    pub simulcast: bool,
    pub resolution: String,
    pub join_rate: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Publisher,
    Subscriber,
}

impl Role {
    fn short(self) -> &'static str {
        match self {
            Role::Publisher => "pub",
            Role::Subscriber => "sub",
        }
    }
}

/// One client.
#[derive(Debug, Clone, Serialize)]
pub struct ClientRow {
    /// The short name in the table (`pub-0`, `sub-3`).
    pub name: String,
    /// The identity in its token (the name with this run's tag).
    pub identity: String,
    pub room: String,
    pub role: Role,
    pub publishes_audio: bool,
    pub publishes_video: bool,
    /// Every leg it needed came up (joined; publisher leg if it publishes; subscriber leg if
    /// there was anything to receive).
    pub connected: bool,
    /// Milliseconds from its start until it was connected.
    pub connect_ms: Option<u64>,
    /// Milliseconds from its start until its subscriber leg came up (JSON only); `null` when
    /// it never did, which `connected` forgives a client that expected nothing to receive
    /// (a load process that knows only its own client, as in the cascade study).
    pub subscriber_ms: Option<u64>,
    #[serde(flatten)]
    pub figures: Figures,
    pub errors: Vec<String>,
    /// Per received stream (JSON only), in SSRC order.
    pub streams: Vec<StreamRow>,
}

/// One stream a client received: whose it is, what arrived, how late, and the repairs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StreamRow {
    /// The SSRC it arrived with (the node's).
    pub ssrc: u32,
    /// `audio`, `video`, or `null` for a stream without probes.
    pub kind: Option<&'static str>,
    /// The publisher's SSRC of the latest packet (from the probe), and the load process's tag
    /// in it (`kaskade loadtest --ssrc-tag`): which publisher this is.
    pub source_ssrc: Option<u32>,
    pub publisher_tag: Option<u8>,
    pub packets_received: u64,
    pub packets_expected: u64,
    /// Residual loss: packets never received, after every repair.
    pub packets_lost: u64,
    pub loss_pct: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p95_ms: Option<f64>,
    /// Packets that arrived after a later one of their stream: repairs (the relays of a
    /// study do not reorder). Their delay is the original's send time to the repair's arrival.
    pub repaired: u64,
    pub repair_p50_ms: Option<f64>,
    pub repair_p95_ms: Option<f64>,
    pub repair_max_ms: Option<f64>,
    /// The latency and repair delay distributions as `[microseconds, packets]` pairs, to
    /// merge streams of several reports exactly.
    pub latency_hist_us: Vec<(u32, u64)>,
    pub repair_hist_us: Vec<(u32, u64)>,
    /// The longest time between two packets of this stream (`null` with fewer than two):
    /// how long this publisher's media stopped, e.g. while a bridge of the cascade failed.
    pub max_gap_ms: Option<f64>,
    /// Unix time in milliseconds of its first and its last packet: the span `max_gap_ms`
    /// covers (a stream that stopped for good ends early).
    pub first_unix_ms: Option<u64>,
    pub last_unix_ms: Option<u64>,
}

impl StreamRow {
    pub fn new(ssrc: u32, s: &StreamStats) -> Self {
        StreamRow {
            ssrc,
            kind: s.kind.map(|k| match k {
                Kind::Audio => "audio",
                Kind::Video => "video",
            }),
            source_ssrc: s.source,
            publisher_tag: s.source.map(ssrc_tag),
            packets_received: s.count.packets,
            packets_expected: s.expected(),
            packets_lost: s.lost(),
            loss_pct: loss_pct(s.lost(), s.expected().saturating_sub(s.lost())),
            latency_p50_ms: ms(s.latency_us.percentile(50.0)),
            latency_p95_ms: ms(s.latency_us.percentile(95.0)),
            repaired: s.repair_us.count(),
            repair_p50_ms: ms(s.repair_us.percentile(50.0)),
            repair_p95_ms: ms(s.repair_us.percentile(95.0)),
            repair_max_ms: ms(s.repair_us.max()),
            latency_hist_us: s.latency_us.buckets(),
            repair_hist_us: s.repair_us.buckets(),
            max_gap_ms: (s.count.packets >= 2).then(|| round(s.max_gap_us as f64 / 1000.0, 1)),
            first_unix_ms: s.first_us.map(|us| us / 1000),
            last_unix_ms: s.first_us.map(|_| s.last_us / 1000),
        }
    }
}

/// All clients together.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Total {
    pub clients: usize,
    pub connected: usize,
    /// Clients that never connected or ended on an error.
    pub failed: usize,
    /// The clients' figures summed (bitrates included), loss over the sums and latency over
    /// every received packet of every client.
    #[serde(flatten)]
    pub figures: Figures,
    pub errors: usize,
}

/// What a client received and sent, or all clients together (in the JSON, fields of the row
/// and of the total). Received figures count RTP payload bytes of the packets decrypted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// Tracks whose media reached it, and how many the room had for it.
    pub tracks_received: usize,
    pub tracks_expected: usize,
    pub packets_received: u64,
    /// Packets missing within the spans received (gaps in the publishers' packet index).
    pub packets_lost: u64,
    pub loss_pct: f64,
    /// Payload bitrate received: per track over its span (first to last packet), summed.
    pub bitrate_kbps: f64,
    /// Payload bitrate sent (publishers).
    pub sent_kbps: f64,
    /// One-way latency, send to decryption (publishers and subscribers share the host clock:
    /// meaningful when the load runs on one machine or on clock-synchronised ones).
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// Times a received video track moved to another simulcast layer of its publisher.
    pub layer_switches: u64,
    /// The longest time no media arrived at all, between the first and the last packet (the
    /// total: the worst client's), e.g. while a draining bridge moved the client.
    pub max_gap_ms: Option<f64>,
    /// Times a draining bridge moved the client to another one (`migrate`).
    pub migrations: u64,
}

/// Loss in percent of what should have arrived (to 4 decimals).
pub fn loss_pct(lost: u64, received: u64) -> f64 {
    let expected = lost + received;
    if expected == 0 {
        0.0
    } else {
        round(100.0 * lost as f64 / expected as f64, 4)
    }
}

/// `v` to `digits` decimals: the JSON carries what the measurement can tell, not float noise.
pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

pub fn ms(us: Option<u32>) -> Option<f64> {
    us.map(|u| f64::from(u) / 1000.0)
}

impl Total {
    /// Sums the rows; `latency` is every client's histogram merged.
    pub fn of(rows: &[ClientRow], latency: &Histogram) -> Total {
        let mut t = Total {
            clients: rows.len(),
            ..Default::default()
        };
        let sum = &mut t.figures;
        for r in rows {
            t.connected += usize::from(r.connected);
            t.failed += usize::from(r.failed());
            let f = &r.figures;
            sum.tracks_received += f.tracks_received;
            sum.tracks_expected += f.tracks_expected;
            sum.packets_received += f.packets_received;
            sum.packets_lost += f.packets_lost;
            sum.bitrate_kbps += f.bitrate_kbps;
            sum.sent_kbps += f.sent_kbps;
            sum.layer_switches += f.layer_switches;
            sum.migrations += f.migrations;
            sum.max_gap_ms = match (sum.max_gap_ms, f.max_gap_ms) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            t.errors += r.errors.len();
        }
        sum.bitrate_kbps = round(sum.bitrate_kbps, 1);
        sum.sent_kbps = round(sum.sent_kbps, 1);
        sum.loss_pct = loss_pct(sum.packets_lost, sum.packets_received);
        sum.latency_p50_ms = ms(latency.percentile(50.0));
        sum.latency_p99_ms = ms(latency.percentile(99.0));
        t
    }
}

impl ClientRow {
    pub fn failed(&self) -> bool {
        !self.connected || !self.errors.is_empty()
    }
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

impl Figures {
    /// A table row: the name columns, these figures, what was sent and the errors.
    fn row(&self, names: [String; 3], sent: String, errors: String) -> [String; 11] {
        let [name, room, role] = names;
        [
            name,
            room,
            role,
            format!("{}/{}", self.tracks_received, self.tracks_expected),
            rate(self.bitrate_kbps),
            self.packets_received.to_string(),
            format!("{:.2}%", self.loss_pct),
            opt_ms(self.latency_p50_ms),
            opt_ms(self.latency_p99_ms),
            sent,
            errors,
        ]
    }
}

/// `1234.5` kbps as `1.23 Mbps`, small rates in kbps.
pub fn rate(kbps: f64) -> String {
    if kbps >= 1000.0 {
        format!("{:.2} Mbps", kbps / 1000.0)
    } else {
        format!("{kbps:.0} kbps")
    }
}

impl LoadReport {
    /// The report as a plain-text table: a line about the load, one row per client, a total,
    /// then every error.
    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "kaskade loadtest: {} room(s) at {}, per room {} video + {} audio publisher(s) \
             ({}{}), {} subscriber(s); {:.1} s of load, {:.1} s in all",
            self.rooms.len(),
            self.url,
            s.video_publishers,
            s.audio_publishers,
            s.resolution,
            if s.simulcast { " simulcast" } else { "" },
            s.subscribers,
            s.duration_secs,
            self.elapsed_secs,
        );
        let _ = writeln!(out);
        let header = [
            "client", "room", "role", "tracks", "bitrate", "packets", "loss", "p50 ms", "p99 ms",
            "sent", "errors",
        ];
        let mut rows: Vec<[String; 11]> = self
            .clients
            .iter()
            .map(|c| {
                let names = [c.name.clone(), c.room.clone(), c.role.short().into()];
                let sent = if c.role == Role::Publisher {
                    rate(c.figures.sent_kbps)
                } else {
                    "-".into()
                };
                let errors = match (c.connected, c.errors.len()) {
                    (false, 0) => "not connected".into(),
                    (_, 0) => "-".into(),
                    (_, n) => n.to_string(),
                };
                c.figures.row(names, sent, errors)
            })
            .collect();
        let t = &self.total;
        let names = [
            format!("total ({})", t.clients),
            String::new(),
            String::new(),
        ];
        let errors = if t.errors == 0 && t.failed == 0 {
            "-".into()
        } else {
            format!("{} ({} failed)", t.errors, t.failed)
        };
        rows.push(t.figures.row(names, rate(t.figures.sent_kbps), errors));
        let mut width = header.map(str::len);
        for r in &rows {
            for (w, cell) in width.iter_mut().zip(r) {
                *w = (*w).max(cell.chars().count());
            }
        }
        // Names left-aligned, figures right-aligned.
        let line = |cells: &[String], out: &mut String| {
            let mut l = String::new();
            for (i, (cell, w)) in cells.iter().zip(width).enumerate() {
                if i > 0 {
                    l.push_str("  ");
                }
                if i < 3 {
                    let _ = write!(l, "{cell:<w$}");
                } else {
                    let _ = write!(l, "{cell:>w$}");
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        };
        line(&header.map(String::from), &mut out);
        let rule: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        line(&rule, &mut out);
        let n = rows.len();
        for (i, r) in rows.iter().enumerate() {
            if i + 1 == n {
                line(&rule, &mut out);
            }
            line(r, &mut out);
        }
        let _ = writeln!(
            out,
            "\n{} of {} clients connected{}; tracks {}/{}; received {}, loss {:.3}%{}",
            t.connected,
            t.clients,
            self.join_secs
                .map(|s| format!(" within {s:.1} s"))
                .unwrap_or_default(),
            t.figures.tracks_received,
            t.figures.tracks_expected,
            rate(t.figures.bitrate_kbps),
            t.figures.loss_pct,
            if s.simulcast {
                format!("; {} simulcast layer switches", t.figures.layer_switches)
            } else {
                String::new()
            },
        );
        let failed: Vec<&ClientRow> = self.clients.iter().filter(|c| c.failed()).collect();
        if !failed.is_empty() {
            let _ = writeln!(out, "\nerrors:");
            for c in failed {
                if c.errors.is_empty() {
                    let _ = writeln!(out, "  {} ({}): never connected", c.name, c.room);
                }
                for e in &c.errors {
                    let _ = writeln!(out, "  {} ({}): {e}", c.name, c.room);
                }
            }
        }
        out
    }

    pub fn json(&self) -> String {
        // Plain numbers, strings and lists: serialisation cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, role: Role, received: u64, lost: u64) -> ClientRow {
        ClientRow {
            name: name.into(),
            identity: format!("lt-abcd-{name}"),
            room: "room-a".into(),
            role,
            publishes_audio: role == Role::Publisher,
            publishes_video: role == Role::Publisher,
            connected: true,
            connect_ms: Some(420),
            subscriber_ms: Some(380),
            figures: Figures {
                tracks_received: 2,
                tracks_expected: 2,
                packets_received: received,
                packets_lost: lost,
                loss_pct: loss_pct(lost, received),
                bitrate_kbps: 2612.3,
                sent_kbps: 0.0,
                latency_p50_ms: Some(1.25),
                latency_p99_ms: Some(4.5),
                layer_switches: 0,
                max_gap_ms: Some(40.0),
                migrations: 0,
            },
            errors: Vec::new(),
            streams: Vec::new(),
        }
    }

    #[test]
    fn a_stream_row_names_its_publisher_and_its_repairs() {
        use crate::client::{VIDEO_SSRC, tagged_ssrc};
        use crate::media::Probe;
        use crate::stats::ClientStats;
        let stats = ClientStats::new();
        let source = tagged_ssrc(VIDEO_SSRC, 3);
        let pkt = |index: u64| {
            Probe {
                publisher_ssrc: source,
                kind: Kind::Video,
                index,
                sent_us: index * 1000,
            }
            .encode(200)
        };
        // 0..=9 with 4 lost for good and 2 repaired 70 ms after it was sent.
        for i in [0u64, 1, 3, 5, 6, 7, 8, 9] {
            stats.on_received(42, &pkt(i), i * 1000 + 20_000);
        }
        stats.on_received(42, &pkt(2), 72_000);
        let r = stats.received();
        let row = StreamRow::new(42, &r.streams[&42]);
        assert_eq!(row.kind, Some("video"));
        assert_eq!(row.source_ssrc, Some(source));
        assert_eq!(row.publisher_tag, Some(3));
        assert_eq!((row.packets_received, row.packets_expected), (9, 10));
        assert_eq!(row.packets_lost, 1);
        assert_eq!(row.loss_pct, 10.0);
        // The histogram keeps values to 1.6%.
        let p50 = row.latency_p50_ms.expect("latency");
        assert!((p50 - 20.0).abs() < 0.35, "{p50}");
        assert_eq!(row.repaired, 1);
        assert_eq!(row.repair_max_ms, Some(70.0));
        assert_eq!(row.latency_hist_us.iter().map(|p| p.1).sum::<u64>(), 9);
        assert_eq!(row.repair_hist_us.len(), 1);
        // Arrivals at 20, 21, 23, 25..=29 and 72 ms: the repair came 43 ms after 29.
        assert_eq!(row.max_gap_ms, Some(43.0));
        assert_eq!((row.first_unix_ms, row.last_unix_ms), (Some(20), Some(72)));
        let json = serde_json::to_value(&row).expect("serialises");
        assert_eq!(json["publisher_tag"], 3);
        assert_eq!(json["repair_hist_us"][0][1], 1);
        assert_eq!(json["max_gap_ms"], 43.0);
        let one = ClientStats::new();
        one.on_received(1, &pkt(0), 5_000);
        let row = StreamRow::new(1, &one.received().streams[&1]);
        assert_eq!(row.max_gap_ms, None, "one packet has no gap");
        assert_eq!((row.first_unix_ms, row.last_unix_ms), (Some(5), Some(5)));
    }

    fn report() -> LoadReport {
        let mut p = row("pub-0", Role::Publisher, 0, 0);
        p.figures.tracks_expected = 0;
        p.figures.tracks_received = 0;
        p.figures.bitrate_kbps = 0.0;
        p.figures.sent_kbps = 2650.0;
        p.figures.latency_p50_ms = None;
        p.figures.latency_p99_ms = None;
        let s1 = row("sub-0", Role::Subscriber, 990, 10);
        let mut s2 = row("sub-1", Role::Subscriber, 0, 0);
        s2.connected = false;
        s2.connect_ms = None;
        s2.figures.tracks_received = 0;
        s2.figures.bitrate_kbps = 0.0;
        s2.errors = vec!["connecting to ws://127.0.0.1:1/ws: refused".into()];
        let clients = vec![p, s1, s2];
        let mut h = Histogram::default();
        for v in [1000, 1250, 1300, 4500] {
            h.record(v);
        }
        let total = Total::of(&clients, &h);
        LoadReport {
            url: "http://127.0.0.1:7880".into(),
            rooms: vec!["room-a".into()],
            settings: Settings {
                video_publishers: 1,
                audio_publishers: 1,
                subscribers: 2,
                duration_secs: 3.0,
                simulcast: false,
                resolution: "720p".into(),
                join_rate: 5.0,
            },
            elapsed_secs: 3.6,
            join_secs: None,
            ok: total.failed == 0,
            clients,
            total,
        }
    }

    #[test]
    fn totals() {
        let r = report();
        let t = &r.total;
        assert_eq!((t.clients, t.connected, t.failed, t.errors), (3, 2, 1, 1));
        let t = &t.figures;
        assert_eq!((t.tracks_received, t.tracks_expected), (2, 4));
        assert_eq!((t.packets_received, t.packets_lost), (990, 10));
        assert!((t.loss_pct - 1.0).abs() < 1e-9);
        // The median of 1.0, 1.25, 1.3, 4.5 ms by nearest rank, to the histogram's 1.6%.
        let p50 = t.latency_p50_ms.expect("latency");
        assert!((p50 - 1.3).abs() < 0.02, "{p50}");
        assert_eq!(t.latency_p99_ms, Some(4.5));
        assert!(!r.ok);
        assert_eq!(loss_pct(0, 0), 0.0);
    }

    #[test]
    fn table_layout() {
        let t = report().table();
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("kaskade loadtest: 1 room(s) at http://127.0.0.1:7880"));
        let header = lines[2];
        assert!(header.starts_with("client"), "{t}");
        for col in [
            "room", "role", "tracks", "bitrate", "packets", "loss", "p50 ms", "p99 ms",
        ] {
            assert!(header.contains(col), "{col} in {header}");
        }
        // Every row and rule is as wide as the header's columns (figures right-aligned).
        let sub0 = lines
            .iter()
            .find(|l| l.starts_with("sub-0"))
            .expect("sub-0 row");
        assert!(sub0.contains("  room-a  sub"), "{sub0}");
        assert!(sub0.contains("2/2"), "{sub0}");
        assert!(sub0.contains("2.61 Mbps"), "{sub0}");
        assert!(sub0.contains("1.00%"), "{sub0}");
        assert!(sub0.contains("1.2") && sub0.contains("4.5"), "{sub0}");
        let bitrate_end = header.find("bitrate").expect("column") + "bitrate".len();
        let cell_end = sub0.find("Mbps").expect("cell") + "Mbps".len();
        assert!(cell_end >= bitrate_end, "right-aligned:\n{header}\n{sub0}");
        let sub1 = lines
            .iter()
            .find(|l| l.starts_with("sub-1"))
            .expect("sub-1 row");
        assert!(sub1.ends_with('1'), "one error: {sub1}");
        let total = lines
            .iter()
            .find(|l| l.starts_with("total (3)"))
            .expect("total");
        assert!(
            total.contains("2/4") && total.contains("1 (1 failed)"),
            "{total}"
        );
        let pub0 = lines
            .iter()
            .find(|l| l.starts_with("pub-0"))
            .expect("pub-0 row");
        assert!(pub0.contains("2.65 Mbps"), "sent: {pub0}");
        assert!(sub0.contains(" - "), "subscribers send nothing: {sub0}");
        assert!(t.contains("2 of 3 clients connected; tracks 2/4;"), "{t}");
        assert!(
            t.contains("errors:\n  sub-1 (room-a): connecting to ws://127.0.0.1:1/ws: refused"),
            "{t}"
        );
    }

    #[test]
    fn json_shape() {
        let v: serde_json::Value = serde_json::from_str(&report().json()).expect("JSON");
        assert_eq!(v["url"], "http://127.0.0.1:7880");
        assert_eq!(v["ok"], false);
        assert_eq!(v["rooms"][0], "room-a");
        assert_eq!(v["settings"]["resolution"], "720p");
        assert_eq!(v["settings"]["subscribers"], 2);
        assert!(v["join_secs"].is_null());
        let clients = v["clients"].as_array().expect("clients");
        assert_eq!(clients.len(), 3);
        let sub0 = &clients[1];
        assert_eq!(sub0["role"], "subscriber");
        assert_eq!(sub0["name"], "sub-0");
        assert_eq!(sub0["identity"], "lt-abcd-sub-0");
        assert_eq!(sub0["tracks_received"], 2);
        assert_eq!(sub0["tracks_expected"], 2);
        assert_eq!(sub0["packets_lost"], 10);
        assert_eq!(sub0["latency_p50_ms"], 1.25);
        assert_eq!(sub0["connected"], true);
        assert_eq!(clients[0]["role"], "publisher");
        assert!(clients[0]["latency_p50_ms"].is_null());
        assert_eq!(
            clients[2]["errors"][0],
            "connecting to ws://127.0.0.1:1/ws: refused"
        );
        let t = &v["total"];
        for key in [
            "clients",
            "connected",
            "failed",
            "tracks_received",
            "tracks_expected",
            "packets_received",
            "packets_lost",
            "loss_pct",
            "bitrate_kbps",
            "sent_kbps",
            "latency_p50_ms",
            "latency_p99_ms",
            "layer_switches",
            "max_gap_ms",
            "migrations",
            "errors",
        ] {
            assert!(t.get(key).is_some(), "total.{key}");
        }
        assert_eq!(t["failed"], 1);
    }
}

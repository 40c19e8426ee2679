//! Micro benchmarks of the per-packet building blocks, with criterion.
//!
//! `cargo bench -p kaskade-benches --bench micro` (results in docs/benchmarks.md, "Micro
//! benchmarks"); `-- <filter>` runs a subset, e.g. `-- octo`. Under `cargo test --all-targets`
//! criterion runs each benchmark once, as a smoke test.
//!
//! - demux: attributing a datagram to one of 1000 legs (SRTP by learned address, STUN by ufrag);
//! - octo: sealing and opening a 1200-byte payload (AES-128-GCM, ChaCha20-Poly1305);
//! - packet cache: storing a forwarded packet and fetching an older one for a NACK;
//! - NACK tracker: 1000 packets of a stream with 5% loss (gaps requested, repairs arriving);
//! - dominant speaker: 300 ms of levels from 10 speakers and the decision that follows;
//! - simulcast rewriter: one forwarded packet's new fields, and with the VP8 descriptor parsed
//!   and rewritten in the payload.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kaskade_bridge::demux::{Demux, LegId};
use kaskade_loadtest::media::{vp8_descriptor, vp8_frame_header};
use kaskade_octo::{
    BridgeId, ConferenceId, EndpointId, LinkCounter, LinkSecurity, MediaType, Opener, PacketMeta,
    PacketType, Sealer, Suite,
};
use kaskade_sfu::simulcast::{Layer, Rewrite, Rewriter, SourcePacket, vp8};
use kaskade_sfu::{DominantSpeaker, NackTracker, PacketCache, SeqNo};

const LEGS: u32 = 1000;

fn leg_addr(i: u32) -> SocketAddr {
    SocketAddr::from((
        Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8),
        40_000 + (i % 20_000) as u16,
    ))
}

/// A STUN Binding request whose USERNAME is "<ufrag>:remote".
fn stun_binding(ufrag: &str) -> Vec<u8> {
    let username = format!("{ufrag}:remote");
    let padded = username.len().div_ceil(4) * 4;
    let mut m = Vec::with_capacity(20 + 4 + padded);
    m.extend_from_slice(&0x0001u16.to_be_bytes());
    m.extend_from_slice(&((4 + padded) as u16).to_be_bytes());
    m.extend_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
    m.extend_from_slice(&[7u8; 12]);
    m.extend_from_slice(&0x0006u16.to_be_bytes());
    m.extend_from_slice(&(username.len() as u16).to_be_bytes());
    m.extend_from_slice(username.as_bytes());
    m.resize(20 + 4 + padded, 0);
    m
}

fn demux(c: &mut Criterion) {
    let mut d = Demux::new();
    for i in 0..LEGS {
        d.add_leg(LegId(i), &format!("ufrag{i:04}"));
        d.learn(LegId(i), leg_addr(i));
    }
    // An SRTP packet (first byte 0x80) of about a video packet's size.
    let mut srtp = vec![0u8; 1200];
    srtp[0] = 0x80;
    let mut g = c.benchmark_group("demux");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u32;
    g.bench_function("route_srtp_1000_legs", |b| {
        b.iter(|| {
            i = (i + 7) % LEGS;
            black_box(d.route(black_box(leg_addr(i)), black_box(&srtp)))
        })
    });
    let stun: Vec<Vec<u8>> = (0..LEGS)
        .map(|i| stun_binding(&format!("ufrag{i:04}")))
        .collect();
    let from = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 1), 5000));
    g.bench_function("route_stun_1000_legs", |b| {
        b.iter(|| {
            i = (i + 7) % LEGS;
            black_box(d.route(black_box(from), black_box(&stun[i as usize])))
        })
    });
    g.finish();
}

fn octo(c: &mut Criterion) {
    const PAYLOAD: usize = 1200;
    let secret = b"benchmark-cluster-secret-0123456789";
    let payload = vec![0xabu8; PAYLOAD];
    let meta = PacketMeta::new(
        PacketType::Rtp,
        MediaType::Video,
        ConferenceId(7),
        EndpointId(0x0100_0001),
    );
    let mut g = c.benchmark_group("octo");
    g.throughput(Throughput::Bytes(PAYLOAD as u64));
    for (name, suite) in [
        ("aes128gcm", Suite::Aes128Gcm),
        ("chacha20poly1305", Suite::ChaCha20Poly1305),
    ] {
        let security = LinkSecurity::encrypted(suite, secret).expect("link security");
        let mut sealer =
            Sealer::new(&security, BridgeId(1), BridgeId(2), LinkCounter(1)).expect("sealer");
        let mut out = Vec::with_capacity(2048);
        g.bench_function(format!("seal_1200B_{name}"), |b| {
            b.iter(|| {
                sealer
                    .seal_to_vec(black_box(&meta), black_box(&payload), &mut out)
                    .expect("seal");
                black_box(out.len())
            })
        });
        // Opening needs a fresh datagram each time (the replay window refuses a repeat): seal
        // outside the timed part, in counter order.
        let mut opener = Opener::new(security.clone(), BridgeId(2));
        opener.add_peer(BridgeId(1)).expect("peer");
        let mut sealer =
            Sealer::new(&security, BridgeId(1), BridgeId(2), LinkCounter(1)).expect("sealer");
        g.bench_function(format!("open_1200B_{name}"), |b| {
            b.iter_batched_ref(
                || {
                    let mut v = Vec::with_capacity(2048);
                    sealer.seal_to_vec(&meta, &payload, &mut v).expect("seal");
                    v
                },
                |dgram| black_box(opener.open_in_place(dgram).expect("open").1.len()),
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

fn packet_cache(c: &mut Criterion) {
    // What the bridge caches: `rtc`'s parsed packet, its payload shared with the forwarding path.
    let packet = rtc::rtp::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            payload_type: 96,
            ssrc: 0x2222_0002,
            ..Default::default()
        },
        payload: Bytes::from(vec![0u8; 1200]),
    };
    let mut cache = PacketCache::new(kaskade_sfu::cache::DEFAULT_CAPACITY);
    let now = Instant::now();
    let mut seq = 0u16;
    let mut g = c.benchmark_group("packet_cache");
    g.throughput(Throughput::Elements(1));
    g.bench_function("insert_and_get_512", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let mut p = packet.clone();
            p.header.sequence_number = seq;
            cache.insert(now, SeqNo(seq), p);
            // A NACK for a packet 100 back, as a receiver 300 ms behind at 300 pps would send.
            black_box(cache.get(SeqNo(seq.wrapping_sub(100))).is_some())
        })
    });
    g.finish();
}

/// A deterministic ~5% loss pattern (xorshift), the same on every run.
fn lossy(n: usize, seed: u64) -> Vec<bool> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 100 < 5
        })
        .collect()
}

fn nack(c: &mut Criterion) {
    const PACKETS: usize = 1000;
    let pattern = lossy(PACKETS, 0x9e37_79b9_7f4a_7c15);
    assert!((30..70).contains(&pattern.iter().filter(|l| **l).count()));
    let mut g = c.benchmark_group("nack");
    g.throughput(Throughput::Elements(PACKETS as u64));
    // 1000 packets at 300 pps (3.3 ms apart): every lost one is requested at the next poll
    // (every 5 packets, ~17 ms) and its repair arrives 10 packets (~33 ms) later.
    g.bench_function("1000_packets_5pct_loss", |b| {
        b.iter_batched_ref(
            NackTracker::default,
            |t| {
                let t0 = Instant::now();
                let mut requested = 0usize;
                for (i, lost) in pattern.iter().enumerate() {
                    let now = t0 + Duration::from_micros(3333 * i as u64);
                    let seq = 1000 + i as u16;
                    if !lost {
                        t.on_packet(SeqNo(seq));
                    }
                    if i >= 10 && pattern[i - 10] {
                        t.on_packet(SeqNo(seq.wrapping_sub(10)));
                    }
                    if i.is_multiple_of(5) {
                        requested += t.poll(now, Duration::from_millis(20)).len();
                    }
                }
                black_box(requested)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn dominant_speaker(c: &mut Criterion) {
    const SPEAKERS: u32 = 10;
    let t0 = Instant::now();
    let mut dsi: DominantSpeaker<u32> = DominantSpeaker::default();
    for k in 0..SPEAKERS {
        dsi.add_speaker(k, t0);
    }
    let mut now = t0;
    let mut frame = 0u64;
    let mut g = c.benchmark_group("dominant_speaker");
    // One step: 300 ms of 20 ms audio frames from every speaker (150 levels), then the
    // decision. The loud speaker changes every 3 s, so decisions also switch.
    g.throughput(Throughput::Elements(u64::from(SPEAKERS) * 15));
    g.bench_function("10_speakers_300ms_step", |b| {
        b.iter(|| {
            for _ in 0..15 {
                now += Duration::from_millis(20);
                frame += 1;
                let loud = ((frame / 150) % u64::from(SPEAKERS)) as u32;
                for k in 0..SPEAKERS {
                    let dbov = if k == loud {
                        20 + (frame % 7) as u8
                    } else {
                        70 + ((frame + u64::from(k)) % 30) as u8
                    };
                    dsi.level(k, dbov, now);
                }
            }
            black_box(dsi.handle_timeout(now))
        })
    });
    g.finish();
    assert!(dsi.decisions() > 0);
}

fn rewriter(c: &mut Criterion) {
    let layer = Layer::TOP;
    let mut g = c.benchmark_group("simulcast_rewriter");
    g.throughput(Throughput::Elements(1));

    // Header fields only: the steady state of a receiver on the top layer.
    let mut r = Rewriter::new();
    r.set_target(Some(layer));
    let t0 = Instant::now();
    let mut seq = 0u16;
    let mut ts = 0u32;
    let mut pid = 0u16;
    let first = SourcePacket {
        keyframe: true,
        ..SourcePacket::plain(layer, SeqNo(seq), ts)
    };
    assert!(matches!(r.rewrite(t0, &first), Rewrite::Forward(_)));
    g.bench_function("rewrite_fields", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            if seq.is_multiple_of(10) {
                ts = ts.wrapping_add(3000);
                pid = (pid + 1) & 0x7fff;
            }
            let p = SourcePacket::plain(layer, SeqNo(seq), ts);
            black_box(r.rewrite(t0, black_box(&p)))
        })
    });

    // The whole per-packet job: parse the VP8 descriptor of a 1100-byte payload (as the load
    // clients send it), map the fields, write picture ID and TL0PICIDX back.
    let mut key = Vec::new();
    vp8_descriptor(&mut key, true, 0, 0);
    vp8_frame_header(&mut key, true, 1280, 720);
    key.resize(1100, 0);
    let d = vp8::parse(&key).expect("the load clients' VP8 descriptor parses");
    assert!(d.keyframe, "and its key frames are recognised");
    let mut delta = Vec::new();
    vp8_descriptor(&mut delta, false, 1, 1);
    delta.resize(1100, 0);
    let mut r = Rewriter::new();
    r.set_target(Some(layer));
    assert!(matches!(
        r.rewrite(t0, &SourcePacket::vp8(layer, SeqNo(0), 0, &d)),
        Rewrite::Forward(_)
    ));
    let mut seq = 0u16;
    g.bench_function("parse_rewrite_vp8_payload", |b| {
        b.iter(|| {
            seq = seq.wrapping_add(1);
            let d = vp8::parse(black_box(&delta)).expect("descriptor");
            let p = SourcePacket::vp8(layer, SeqNo(seq), 0, &d);
            if let Rewrite::Forward(out) = r.rewrite(t0, &p) {
                let _ = vp8::rewrite(&mut delta, out.picture_id.map(|p| p.value), out.tl0_pic_idx);
            }
            black_box(delta[2])
        })
    });
    g.finish();
}

fn config() -> Criterion {
    // Short runs: the whole set in about a minute on a 2-CPU machine.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(50)
}

criterion_group! {
    name = micro;
    config = config();
    targets = demux, octo, packet_cache, nack, dominant_speaker, rewriter
}
criterion_main!(micro);

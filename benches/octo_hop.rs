//! CPU cost of the Octo hop per packet: seal + send on the origin bridge, receive + open on
//! the next one, over a real loopback UDP socket pair, for each link protection mode.
//!
//! `cargo bench -p kaskade-benches --bench octo_hop` (results in docs/benchmarks.md). Not a
//! timed test: it prints a table and asserts nothing about speed.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use kaskade_octo::{
    BridgeId, ConferenceId, EndpointId, LinkCounter, LinkSecurity, MediaType, Opener, PacketMeta,
    PacketType, Sealer, Suite,
};

const PACKETS: u32 = 200_000;
const PAYLOAD: usize = 1100;
/// Datagrams in flight at once: well under what a default receive buffer holds.
const BATCH: u32 = 32;

/// A directed link 1 -> 2: the origin's sealer, the receiver's opener, and an RTP packet's meta.
fn link(security: LinkSecurity) -> (Sealer, Opener, PacketMeta) {
    let sealer = Sealer::new(&security, BridgeId(1), BridgeId(2), LinkCounter(1)).expect("sealer");
    let mut opener = Opener::new(security, BridgeId(2));
    opener.add_peer(BridgeId(1)).expect("peer");
    let meta = PacketMeta::new(
        PacketType::Rtp,
        MediaType::Video,
        ConferenceId(7),
        EndpointId(0x0100_0001),
    );
    (sealer, opener, meta)
}

fn run(name: &str, security: LinkSecurity) {
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let to = rx.local_addr().expect("addr");
    // A datagram the kernel dropped must not hang the bench: count it instead.
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let (mut sealer, mut opener, meta) = link(security);
    let payload = vec![0xabu8; PAYLOAD];
    let mut out = Vec::with_capacity(2048);
    let mut buf = vec![0u8; 2048];

    // Seal + send, in batches the receive side drains, so no datagram is lost to a full buffer.
    let mut seal_send = Duration::ZERO;
    let mut recv_open = Duration::ZERO;
    let mut opened = 0u32;
    let wall = Instant::now();
    // Wall time of a busy single thread: the CPU it spent, with the kernel's share of the
    // sendto and recv included.
    for _ in 0..(PACKETS / BATCH) {
        let t0 = Instant::now();
        for _ in 0..BATCH {
            sealer.seal_to_vec(&meta, &payload, &mut out).expect("seal");
            tx.send_to(&out, to).expect("send");
        }
        seal_send += t0.elapsed();
        let t1 = Instant::now();
        for _ in 0..BATCH {
            let Ok(n) = rx.recv(&mut buf) else {
                break;
            };
            if opener.open_in_place(&mut buf[..n]).is_ok() {
                opened += 1;
            }
        }
        recv_open += t1.elapsed();
    }
    if opened != PACKETS {
        println!(
            "({name}: {} of {PACKETS} datagrams lost on loopback)",
            PACKETS - opened
        );
    }
    println!(
        "| {name} | {:.2} | {:.2} | {:.2} | {:.0} |",
        seal_send.as_secs_f64() * 1e6 / f64::from(PACKETS),
        recv_open.as_secs_f64() * 1e6 / f64::from(PACKETS),
        (seal_send + recv_open).as_secs_f64() * 1e6 / f64::from(PACKETS),
        f64::from(PACKETS) / wall.elapsed().as_secs_f64(),
    );
}

/// The crypto alone, without the sockets.
fn crypto_only(name: &str, security: LinkSecurity) {
    let (mut sealer, mut opener, meta) = link(security);
    let payload = vec![0xabu8; PAYLOAD];
    let mut out = Vec::with_capacity(2048);
    let t0 = Instant::now();
    for _ in 0..PACKETS {
        sealer.seal_to_vec(&meta, &payload, &mut out).expect("seal");
        opener.open_in_place(&mut out).expect("open");
    }
    println!(
        "| {name} (no sockets) | | | {:.2} | |",
        t0.elapsed().as_secs_f64() * 1e6 / f64::from(PACKETS)
    );
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("octo_hop: skipped (run with `cargo bench -p kaskade-benches --bench octo_hop`)");
        return;
    }
    let secret = b"benchmark-cluster-secret-0123456789";
    println!("Octo hop, {PAYLOAD}-byte RTP payloads, {PACKETS} packets, one thread, loopback UDP");
    println!();
    println!("| mode | seal + send µs | recv + open µs | hop µs | packets/s |");
    println!("|---|---:|---:|---:|---:|");
    for (name, suite) in [
        ("AES-128-GCM", Suite::Aes128Gcm),
        ("ChaCha20-Poly1305", Suite::ChaCha20Poly1305),
    ] {
        run(
            name,
            LinkSecurity::encrypted(suite, secret).expect("security"),
        );
    }
    run("plaintext", LinkSecurity::Plaintext);
    for (name, suite) in [
        ("AES-128-GCM", Suite::Aes128Gcm),
        ("ChaCha20-Poly1305", Suite::ChaCha20Poly1305),
    ] {
        crypto_only(
            name,
            LinkSecurity::encrypted(suite, secret).expect("security"),
        );
    }
}

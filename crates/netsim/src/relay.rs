//! The I/O shell: tokio UDP sockets around the [`Impairment`] model.
//!
//! ```text
//!  client A ──┐                      ┌── socket for A ──┐
//!  client B ──┼──► listen socket ────┤                  ├──► upstream
//!             │   (up impairment)    └── socket for B ──┘
//!             ◄──── (down impairment) ◄──────────────────
//! ```
//!
//! Each client address gets its own socket towards the upstream (a NAT-like mapping), so the
//! upstream sees one distinct source per client and its replies can be told apart and sent back
//! to the right client from the listen socket. Each mapping has its own pair of impairments, one
//! per direction: every client gets its own access link, as in a real call.
//!
//! One task owns all state (mappings, models, the delivery queue); each mapping has a small reader
//! task for its upstream socket that only hands datagrams over, so no lock is needed.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};
use tracing::{debug, warn};

use crate::model::{DropReason, Impairment, ImpairmentConfig, Verdict};
use crate::rtp_watch::{Observed, RtpWatch};

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// Datagrams from the upstream readers waiting for the core task: enough to absorb a burst; when
/// full, the readers wait and the kernel socket buffers take the rest (and drop, as a real
/// overloaded path would).
const CHANNEL_DEPTH: usize = 1024;

/// Datagrams handled per wakeup beyond the first, so a stalled relay catches up quickly while
/// the timer and the other direction still get their turn.
const DRAIN_BATCH: usize = 63;

/// How the relay runs. [`RelayOptions::new`] gives a transparent relay.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Where clients send.
    pub listen: SocketAddr,
    /// Where their traffic goes.
    pub upstream: SocketAddr,
    /// Downlink: upstream to client.
    pub down: ImpairmentConfig,
    /// Uplink: client to upstream.
    pub up: ImpairmentConfig,
    /// Seeds every mapping's models (mixed with the mapping's number and the direction), so a
    /// run with the same seed and the same traffic makes the same decisions.
    pub seed: u64,
    /// A mapping with no traffic either way for this long is closed (its upstream socket too).
    /// WebRTC consent checks every ~5 s keep a live leg mapped.
    pub idle_timeout: Duration,
    /// At most this many client mappings; datagrams from further clients are dropped.
    pub max_sessions: usize,
    /// At most this many datagrams waiting for their delivery time, over all mappings: with a
    /// long delay and no rate cap the queue would otherwise grow with the offered load.
    pub max_in_flight: usize,
    /// Count RTP repeats (retransmissions) in both directions, the RTP header starting this
    /// many bytes into each datagram ([`crate::RtpWatch`]); `None` counts nothing.
    pub rtp_offset: Option<usize>,
}

impl RelayOptions {
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Self {
        Self {
            listen,
            upstream,
            down: ImpairmentConfig::none(),
            up: ImpairmentConfig::none(),
            seed: 0,
            idle_timeout: Duration::from_secs(120),
            max_sessions: 1024,
            max_in_flight: 100_000,
            rtp_offset: None,
        }
    }
}

#[derive(Debug, Default)]
struct DirCounters {
    received: AtomicU64,
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
    reordered: AtomicU64,
    dropped_loss: AtomicU64,
    dropped_burst: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_overflow: AtomicU64,
    dropped_no_session: AtomicU64,
    send_errors: AtomicU64,
    rtp_packets: AtomicU64,
    rtp_repeats: AtomicU64,
    rtp_repeat_bytes: AtomicU64,
}

impl DirCounters {
    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            received: self.received.load(Relaxed),
            forwarded: self.forwarded.load(Relaxed),
            forwarded_bytes: self.forwarded_bytes.load(Relaxed),
            reordered: self.reordered.load(Relaxed),
            dropped_loss: self.dropped_loss.load(Relaxed),
            dropped_burst: self.dropped_burst.load(Relaxed),
            dropped_queue: self.dropped_queue.load(Relaxed),
            dropped_overflow: self.dropped_overflow.load(Relaxed),
            dropped_no_session: self.dropped_no_session.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            rtp_packets: self.rtp_packets.load(Relaxed),
            rtp_repeats: self.rtp_repeats.load(Relaxed),
            rtp_repeat_bytes: self.rtp_repeat_bytes.load(Relaxed),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Relaxed);
}

fn count_rtp(c: &DirCounters, o: Observed, len: usize) {
    match o {
        Observed::Other => {}
        Observed::First => bump(&c.rtp_packets),
        Observed::Repeat => {
            bump(&c.rtp_packets);
            bump(&c.rtp_repeats);
            c.rtp_repeat_bytes.fetch_add(len as u64, Relaxed);
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    up: DirCounters,
    down: DirCounters,
    sessions_opened: AtomicU64,
    sessions_active: AtomicU64,
}

/// Counters of one direction. `received` = `forwarded` + drops + `send_errors` + what is still
/// in flight (waiting for its delivery time).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    pub received: u64,
    pub forwarded: u64,
    pub forwarded_bytes: u64,
    /// Forwarded or in flight, held back out of order.
    pub reordered: u64,
    pub dropped_loss: u64,
    pub dropped_burst: u64,
    /// The rate cap's queue was full.
    pub dropped_queue: u64,
    /// The relay's in-flight limit was reached.
    pub dropped_overflow: u64,
    /// No mapping: the mapping limit was reached or its socket could not be opened (uplink), or
    /// the mapping closed while a reply was on its way (downlink).
    pub dropped_no_session: u64,
    /// The send itself failed (e.g. the upstream port is closed).
    pub send_errors: u64,
    /// With [`RelayOptions::rtp_offset`]: RTP packets received, and those that repeated an
    /// (SSRC, sequence number) seen before (retransmissions), with their bytes.
    pub rtp_packets: u64,
    pub rtp_repeats: u64,
    pub rtp_repeat_bytes: u64,
}

impl DirectionStats {
    /// All datagrams dropped on purpose (by impairment or limits), not counting send errors.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss
            + self.dropped_burst
            + self.dropped_queue
            + self.dropped_overflow
            + self.dropped_no_session
    }

    fn json(&self) -> String {
        format!(
            "{{\"received\":{},\"forwarded\":{},\"forwarded_bytes\":{},\"reordered\":{},\
             \"dropped\":{},\"dropped_loss\":{},\"dropped_burst\":{},\"dropped_queue\":{},\
             \"dropped_overflow\":{},\"dropped_no_session\":{},\"send_errors\":{},\
             \"rtp_packets\":{},\"rtp_repeats\":{},\"rtp_repeat_bytes\":{}}}",
            self.received,
            self.forwarded,
            self.forwarded_bytes,
            self.reordered,
            self.dropped(),
            self.dropped_loss,
            self.dropped_burst,
            self.dropped_queue,
            self.dropped_overflow,
            self.dropped_no_session,
            self.send_errors,
            self.rtp_packets,
            self.rtp_repeats,
            self.rtp_repeat_bytes
        )
    }
}

/// A snapshot of the relay's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Client to upstream.
    pub up: DirectionStats,
    /// Upstream to client.
    pub down: DirectionStats,
    pub sessions_opened: u64,
    pub sessions_active: u64,
}

impl RelayStats {
    /// The fields as JSON object members, without braces, so a caller can add its own.
    pub fn json_fields(&self) -> String {
        format!(
            "\"up\":{},\"down\":{},\"sessions_opened\":{},\"sessions_active\":{}",
            self.up.json(),
            self.down.json(),
            self.sessions_opened,
            self.sessions_active
        )
    }

    /// One JSON object (numbers only, so it needs no serializer).
    pub fn to_json(&self) -> String {
        format!("{{{}}}", self.json_fields())
    }
}

/// Entry point of the shell.
pub struct Relay;

impl Relay {
    /// Starts a relay from `listen` to `upstream`, with `down` applied to upstream-to-client
    /// traffic and `up` to client-to-upstream traffic. Must run inside a tokio runtime; the
    /// relay runs until the returned handle is dropped or stopped.
    pub async fn start(
        listen: SocketAddr,
        upstream: SocketAddr,
        down: ImpairmentConfig,
        up: ImpairmentConfig,
    ) -> io::Result<RelayHandle> {
        Self::start_with(RelayOptions {
            down,
            up,
            ..RelayOptions::new(listen, upstream)
        })
        .await
    }

    /// As [`start`](Self::start), with every option.
    pub async fn start_with(opts: RelayOptions) -> io::Result<RelayHandle> {
        for cfg in [&opts.down, &opts.up] {
            cfg.validate()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        }
        let main = UdpSocket::bind(opts.listen).await?;
        let local_addr = main.local_addr()?;
        let (stop_tx, stop_rx) = oneshot::channel();
        let (down_tx, down_rx) = mpsc::channel(CHANNEL_DEPTH);
        let shared = Arc::new(Shared::default());
        let core = Core {
            watch_up: opts.rtp_offset.map(RtpWatch::new),
            watch_down: opts.rtp_offset.map(RtpWatch::new),
            opts,
            shared: shared.clone(),
            sessions: HashMap::new(),
            next_session: 0,
            down_tx,
            queue: BinaryHeap::new(),
            next_seq: 0,
        };
        let task = tokio::spawn(core.run(main, down_rx, stop_rx));
        Ok(RelayHandle {
            local_addr,
            shared,
            stop: Some(stop_tx),
            task: Some(task),
        })
    }
}

/// A running relay. Dropping it stops the relay (asynchronously: the sockets close as soon as
/// the relay task next runs); [`stop`](Self::stop) waits for that.
pub struct RelayHandle {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl RelayHandle {
    /// The address clients send to (the actual port when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> RelayStats {
        RelayStats {
            up: self.shared.up.snapshot(),
            down: self.shared.down.snapshot(),
            sessions_opened: self.shared.sessions_opened.load(Relaxed),
            sessions_active: self.shared.sessions_active.load(Relaxed),
        }
    }

    /// Stops the relay, waits until its sockets are closed, and returns the final counters.
    /// Datagrams still waiting for their delivery time are discarded.
    pub async fn stop(mut self) -> RelayStats {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            // An Err is a panic or a cancelled runtime: the relay is gone either way.
            let _ = t.await;
        }
        self.stats()
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// One client mapping.
struct Session {
    number: u64,
    socket: Arc<UdpSocket>,
    up: Impairment,
    down: Impairment,
    last_seen: Instant,
    reader: AbortHandle,
}

impl Drop for Session {
    fn drop(&mut self) {
        // The reader holds the socket open; without this a closed mapping would leak it.
        self.reader.abort();
    }
}

/// A datagram the upstream sent to a client's mapping.
struct FromUpstream {
    client: SocketAddr,
    at: Instant,
    data: Vec<u8>,
}

enum Target {
    Client(SocketAddr),
    Upstream(Arc<UdpSocket>),
}

/// A datagram waiting for its delivery time.
struct Pending {
    at: Instant,
    /// Ties in `at` go in arrival order.
    seq: u64,
    to: Target,
    data: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and the earliest must come out first.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Clone, Copy)]
enum Dir {
    Up,
    Down,
}

/// splitmix64's finalizer: turns (seed, mapping, direction) into well-spread model seeds, so
/// that no two models share a random stream.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn session_seed(base: u64, number: u64, dir: Dir) -> u64 {
    let d = match dir {
        Dir::Up => 0,
        Dir::Down => 1,
    };
    mix(base ^ mix(number.wrapping_mul(2).wrapping_add(d)))
}

struct Core {
    opts: RelayOptions,
    shared: Arc<Shared>,
    sessions: HashMap<SocketAddr, Session>,
    next_session: u64,
    down_tx: mpsc::Sender<FromUpstream>,
    queue: BinaryHeap<Pending>,
    next_seq: u64,
    watch_up: Option<RtpWatch>,
    watch_down: Option<RtpWatch>,
}

impl Core {
    async fn run(
        mut self,
        main: UdpSocket,
        mut down_rx: mpsc::Receiver<FromUpstream>,
        mut stop: oneshot::Receiver<()>,
    ) {
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let sweep_every =
            (self.opts.idle_timeout / 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut sweep = tokio::time::interval(sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // With nothing queued, wake up rarely for nothing rather than keep a second branch.
            let wake = self
                .queue
                .peek()
                .map(|p| p.at)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                // Ok is an explicit stop, Err a dropped handle: both mean stop.
                _ = &mut stop => break,
                _ = tokio::time::sleep_until(wake.into()) => {}
                r = main.recv_from(&mut buf) => match r {
                    Ok((n, from)) => {
                        if let Some(data) = buf.get(..n) {
                            self.on_client(Instant::now(), from, data).await;
                        }
                        // Drain what is already queued before going round the loop: after a
                        // stall (a busy machine) this empties the kernel buffer in one go
                        // instead of one datagram per wakeup, so it does not overflow.
                        for _ in 0..DRAIN_BATCH {
                            let Ok((n, from)) = main.try_recv_from(&mut buf) else {
                                break;
                            };
                            if let Some(data) = buf.get(..n) {
                                self.on_client(Instant::now(), from, data).await;
                            }
                        }
                    }
                    // An unconnected socket reports no ICMP errors; whatever this is, it concerns
                    // one datagram, and the relay keeps serving the others.
                    Err(e) => debug!(error = %e, "listen socket receive error"),
                },
                Some(m) = down_rx.recv() => {
                    self.on_upstream(m);
                    for _ in 0..DRAIN_BATCH {
                        let Ok(m) = down_rx.try_recv() else {
                            break;
                        };
                        self.on_upstream(m);
                    }
                }
                _ = sweep.tick() => self.sweep(Instant::now()),
            }
            self.flush(&main, Instant::now()).await;
        }
        debug!(dropped_in_flight = self.queue.len(), "relay stopped");
    }

    async fn on_client(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        bump(&self.shared.up.received);
        if let Some(w) = self.watch_up.as_mut() {
            count_rtp(&self.shared.up, w.observe(data), data.len());
        }
        if !self.sessions.contains_key(&from) {
            if self.sessions.len() >= self.opts.max_sessions {
                bump(&self.shared.up.dropped_no_session);
                return;
            }
            match self.open_session(from, now).await {
                Ok(s) => {
                    self.sessions.insert(from, s);
                    bump(&self.shared.sessions_opened);
                    self.shared
                        .sessions_active
                        .store(self.sessions.len() as u64, Relaxed);
                }
                Err(e) => {
                    warn!(client = %from, error = %e, "cannot open an upstream socket");
                    bump(&self.shared.up.dropped_no_session);
                    return;
                }
            }
        }
        let Some(s) = self.sessions.get_mut(&from) else {
            return;
        };
        s.last_seen = now;
        let verdict = s.up.on_packet(now, data.len());
        let to = Target::Upstream(s.socket.clone());
        self.schedule(Dir::Up, verdict, to, data.to_vec());
    }

    fn on_upstream(&mut self, m: FromUpstream) {
        bump(&self.shared.down.received);
        if let Some(w) = self.watch_down.as_mut() {
            count_rtp(&self.shared.down, w.observe(&m.data), m.data.len());
        }
        let Some(s) = self.sessions.get_mut(&m.client) else {
            bump(&self.shared.down.dropped_no_session);
            return;
        };
        s.last_seen = s.last_seen.max(m.at);
        let verdict = s.down.on_packet(m.at, m.data.len());
        self.schedule(Dir::Down, verdict, Target::Client(m.client), m.data);
    }

    async fn open_session(&mut self, client: SocketAddr, now: Instant) -> io::Result<Session> {
        let upstream = self.opts.upstream;
        // Towards a loopback upstream, stay on loopback: nothing else needs to reach the port.
        let bind: SocketAddr = match (upstream.is_ipv4(), upstream.ip().is_loopback()) {
            (true, true) => (Ipv4Addr::LOCALHOST, 0).into(),
            (true, false) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            (false, true) => (Ipv6Addr::LOCALHOST, 0).into(),
            (false, false) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(bind).await?;
        // Connected: the kernel then only hands us datagrams from the upstream itself.
        socket.connect(upstream).await?;
        let socket = Arc::new(socket);
        let number = self.next_session;
        self.next_session += 1;
        let seed = self.opts.seed;
        let invalid = |e| io::Error::new(io::ErrorKind::InvalidInput, e);
        let up = Impairment::new(self.opts.up.clone(), session_seed(seed, number, Dir::Up))
            .map_err(invalid)?;
        let down = Impairment::new(
            self.opts.down.clone(),
            session_seed(seed, number, Dir::Down),
        )
        .map_err(invalid)?;
        let reader = tokio::spawn(read_upstream(client, socket.clone(), self.down_tx.clone()))
            .abort_handle();
        debug!(%client, mapped = ?socket.local_addr().ok(), number, "mapping opened");
        Ok(Session {
            number,
            socket,
            up,
            down,
            last_seen: now,
            reader,
        })
    }

    fn schedule(&mut self, dir: Dir, verdict: Verdict, to: Target, data: Vec<u8>) {
        let c = match dir {
            Dir::Up => &self.shared.up,
            Dir::Down => &self.shared.down,
        };
        match verdict {
            Verdict::Drop(DropReason::Loss) => bump(&c.dropped_loss),
            Verdict::Drop(DropReason::Burst) => bump(&c.dropped_burst),
            Verdict::Drop(DropReason::Queue) => bump(&c.dropped_queue),
            Verdict::Deliver { at, reordered } => {
                if self.queue.len() >= self.opts.max_in_flight {
                    bump(&c.dropped_overflow);
                    return;
                }
                if reordered {
                    bump(&c.reordered);
                }
                self.next_seq += 1;
                self.queue.push(Pending {
                    at,
                    seq: self.next_seq,
                    to,
                    data,
                });
            }
        }
    }

    /// Sends everything whose time has come, earliest first.
    async fn flush(&mut self, main: &UdpSocket, now: Instant) {
        while self.queue.peek().is_some_and(|p| p.at <= now) {
            let Some(p) = self.queue.pop() else {
                break;
            };
            // Awaiting the send (not try_send) gives backpressure instead of a drop when the
            // kernel buffer is momentarily full: losses should come from the model only.
            let (c, r) = match &p.to {
                Target::Client(addr) => (&self.shared.down, main.send_to(&p.data, *addr).await),
                Target::Upstream(s) => (&self.shared.up, s.send(&p.data).await),
            };
            match r {
                Ok(n) => {
                    bump(&c.forwarded);
                    c.forwarded_bytes.fetch_add(n as u64, Relaxed);
                }
                Err(e) => {
                    bump(&c.send_errors);
                    debug!(error = %e, "relay send failed");
                }
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        let timeout = self.opts.idle_timeout;
        let before = self.sessions.len();
        self.sessions.retain(|client, s| {
            let keep = now.saturating_duration_since(s.last_seen) < timeout;
            if !keep {
                debug!(%client, number = s.number, "mapping closed after idle timeout");
            }
            keep
        });
        if self.sessions.len() != before {
            self.shared
                .sessions_active
                .store(self.sessions.len() as u64, Relaxed);
        }
    }
}

/// Reads one mapping's upstream socket and hands every datagram to the core task.
async fn read_upstream(client: SocketAddr, socket: Arc<UdpSocket>, tx: mpsc::Sender<FromUpstream>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv(&mut buf).await {
            Ok(n) => {
                let Some(data) = buf.get(..n) else {
                    continue;
                };
                let m = FromUpstream {
                    client,
                    at: Instant::now(),
                    data: data.to_vec(),
                };
                if tx.send(m).await.is_err() {
                    // The relay stopped.
                    return;
                }
            }
            // An ICMP port unreachable for an earlier send (the upstream is not listening yet,
            // or restarted): reported once, and the socket stays usable.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                debug!(%client, "upstream port unreachable");
            }
            Err(e) => {
                debug!(%client, error = %e, "upstream socket receive error");
                // Do not spin if the error persists.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_seeds_differ() {
        let mut seen = std::collections::HashSet::new();
        for n in 0..1000 {
            assert!(seen.insert(session_seed(7, n, Dir::Up)));
            assert!(seen.insert(session_seed(7, n, Dir::Down)));
        }
        assert_ne!(session_seed(7, 0, Dir::Up), session_seed(8, 0, Dir::Up));
    }

    #[test]
    fn pending_pops_earliest_then_arrival_order() {
        let t0 = Instant::now();
        let p = |ms: u64, seq| Pending {
            at: t0 + Duration::from_millis(ms),
            seq,
            to: Target::Client(SocketAddr::from(([127, 0, 0, 1], 1))),
            data: Vec::new(),
        };
        let mut h = BinaryHeap::new();
        for x in [p(5, 1), p(1, 2), p(5, 0), p(3, 3)] {
            h.push(x);
        }
        let order: Vec<u64> = std::iter::from_fn(|| h.pop().map(|x| x.seq)).collect();
        assert_eq!(order, vec![2, 3, 0, 1]);
    }

    #[test]
    fn stats_json_is_flat_numbers() {
        let s = RelayStats {
            up: DirectionStats {
                received: 3,
                dropped_loss: 1,
                ..Default::default()
            },
            ..Default::default()
        };
        let j = s.to_json();
        assert!(j.starts_with("{\"up\":{\"received\":3,"));
        assert!(j.contains("\"dropped\":1,\"dropped_loss\":1"));
        assert!(j.ends_with("\"sessions_opened\":0,\"sessions_active\":0}"));
    }
}

//! The impairment model: a pure, deterministic function of (seed, packet arrivals).
//!
//! No clock and no I/O: the caller says when a datagram arrived and how long it is, and
//! [`Impairment::on_packet`] answers drop (with a reason) or the instant to deliver it. The same
//! seed and the same arrivals give the same answers, so a failing test replays exactly.
//!
//! A datagram goes through the stages of a simple path model, in this order:
//! 1. loss: the Gilbert-Elliott chain steps once per datagram and may drop it, then the
//!    independent random loss may drop it;
//! 2. the bottleneck: a token bucket at the rate cap with a bounded queue (drop when full);
//! 3. propagation: the fixed delay plus a bounded jitter sample, kept in FIFO order;
//! 4. reordering: with some probability the datagram is held back an extra time, outside the
//!    FIFO order, so the datagrams behind it overtake it.
//!
//! Loss comes before the bottleneck so a lost datagram does not use link capacity: it models a
//! lossy access hop in front of the bottleneck, which is what a WebRTC client on Wi-Fi sees.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

/// Longest delay, jitter or reorder hold accepted: far beyond any real path, and it keeps the
/// `Instant` arithmetic away from overflow.
pub const MAX_DELAY: Duration = Duration::from_secs(60);

/// The default extra hold of a reordered datagram. At video rates (a datagram every few ms) it
/// lets a few datagrams overtake; it is below the NACK resend interval (150 ms), so a reordered
/// packet still arrives before a receiver would give up on it.
pub const DEFAULT_REORDER_DELAY: Duration = Duration::from_millis(10);

/// A full-size datagram on a 1500-byte MTU path.
const MTU_BYTES: usize = 1500;

/// Two-state Markov loss (Gilbert-Elliott): losses cluster in bursts, as on a congested or
/// fading link, which independent loss cannot produce.
///
/// The chain steps once per datagram (so "time" is counted in datagrams), then the datagram is
/// lost with the loss probability of the new state.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GilbertElliott {
    /// Probability, per datagram, of moving from the good to the bad state.
    pub p_good_to_bad: f64,
    /// Probability, per datagram, of moving from the bad back to the good state.
    pub p_bad_to_good: f64,
    /// Loss probability in the good state (usually 0).
    pub loss_good: f64,
    /// Loss probability in the bad state (usually 1).
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// The classic Gilbert model: nothing lost in the good state, everything in the bad one.
    /// The mean burst length is then `1 / p_bad_to_good` datagrams.
    pub fn gilbert(p_good_to_bad: f64, p_bad_to_good: f64) -> Self {
        Self {
            p_good_to_bad,
            p_bad_to_good,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }

    /// Mean stay in the bad state, in datagrams (geometric: 1 / p(bad -> good)).
    pub fn mean_bad_run(&self) -> f64 {
        1.0 / self.p_bad_to_good
    }

    /// Long-run share of datagrams seen in the bad state.
    pub fn stationary_bad(&self) -> f64 {
        let sum = self.p_good_to_bad + self.p_bad_to_good;
        if sum == 0.0 {
            // Never leaves the (good) start state.
            0.0
        } else {
            self.p_good_to_bad / sum
        }
    }

    /// Long-run loss rate of the chain alone.
    pub fn mean_loss(&self) -> f64 {
        let bad = self.stationary_bad();
        bad * self.loss_bad + (1.0 - bad) * self.loss_good
    }
}

/// Shape of the jitter sample. Both are bounded by the configured jitter, so a test can assert
/// hard delay bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum JitterDistribution {
    /// Uniform in `[-jitter, +jitter]`.
    #[default]
    Uniform,
    /// Bell-shaped in `[-jitter, +jitter]`: the sum of three uniforms (standard deviation
    /// jitter / 3), i.e. a normal distribution cut at about three sigma without rejection.
    Normal,
}

/// A rate cap: a token bucket draining a bounded FIFO queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Link rate, in bits per second of UDP payload.
    pub bits_per_sec: u64,
    /// Bucket depth: how much may leave back to back after an idle period.
    pub burst_bytes: usize,
    /// Bytes that may wait for tokens; a datagram that would exceed it is dropped (tail drop,
    /// as a router's buffer does).
    pub queue_bytes: usize,
}

impl RateLimit {
    /// A cap with defaults that behave like a plain router: a bucket of one full-size datagram
    /// (so a lone datagram is not delayed, but nothing bursts above the rate) and a queue of
    /// 100 ms at the rate (at least two full-size datagrams), a common buffer sizing.
    pub fn new(bits_per_sec: u64) -> Self {
        let queue = usize::try_from(bits_per_sec / 8 / 10).unwrap_or(usize::MAX);
        Self {
            bits_per_sec,
            burst_bytes: MTU_BYTES,
            queue_bytes: queue.max(2 * MTU_BYTES),
        }
    }
}

/// What to do to one direction of traffic. The default does nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct ImpairmentConfig {
    /// Independent loss probability per datagram, 0..=1.
    pub loss: f64,
    /// Bursty loss, on top of `loss`.
    pub burst: Option<GilbertElliott>,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Bound of the jitter added to `delay` (the result is never below zero). Jitter alone does
    /// not reorder: like queueing jitter on a real path, a datagram never leaves before the one
    /// in front of it. Use `reorder` for that.
    pub jitter: Duration,
    pub jitter_distribution: JitterDistribution,
    /// Probability, 0..=1, that a datagram is held `reorder_delay` longer, outside FIFO order.
    pub reorder: f64,
    pub reorder_delay: Duration,
    pub rate: Option<RateLimit>,
}

impl Default for ImpairmentConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            burst: None,
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            jitter_distribution: JitterDistribution::Uniform,
            reorder: 0.0,
            reorder_delay: DEFAULT_REORDER_DELAY,
            rate: None,
        }
    }
}

/// An impairment setting that makes no sense (a probability out of 0..=1, an absurd delay, a
/// zero rate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid impairment: {}", self.0)
    }
}

impl std::error::Error for ConfigError {}

fn check_probability(name: &str, p: f64) -> Result<(), ConfigError> {
    // `contains` is false for NaN too.
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{name} = {p} is not a probability in 0..=1"
        )))
    }
}

fn check_delay(name: &str, d: Duration) -> Result<(), ConfigError> {
    if d <= MAX_DELAY {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "{name} = {d:?} is above the {MAX_DELAY:?} limit"
        )))
    }
}

impl ImpairmentConfig {
    /// No impairment at all: every datagram is delivered at once, in order.
    pub fn none() -> Self {
        Self::default()
    }

    /// True if this config never drops, delays or reorders anything.
    pub fn is_transparent(&self) -> bool {
        self.loss == 0.0
            && self.burst.is_none_or(|b| b.mean_loss() == 0.0)
            && self.delay.is_zero()
            && self.jitter.is_zero()
            && (self.reorder == 0.0 || self.reorder_delay.is_zero())
            && self.rate.is_none()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check_probability("loss", self.loss)?;
        check_probability("reorder", self.reorder)?;
        if let Some(b) = &self.burst {
            check_probability("burst p(good->bad)", b.p_good_to_bad)?;
            check_probability("burst p(bad->good)", b.p_bad_to_good)?;
            check_probability("burst loss in good state", b.loss_good)?;
            check_probability("burst loss in bad state", b.loss_bad)?;
        }
        check_delay("delay", self.delay)?;
        check_delay("jitter", self.jitter)?;
        check_delay("reorder delay", self.reorder_delay)?;
        if let Some(r) = &self.rate
            && r.bits_per_sec == 0
        {
            return Err(ConfigError("rate cap of 0 bit/s".into()));
        }
        Ok(())
    }
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Independent random loss.
    Loss,
    /// Gilbert-Elliott burst loss.
    Burst,
    /// The rate cap's queue was full.
    Queue,
}

/// The fate of one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Hand it on at `at` (never before its arrival). `reordered` marks a datagram held back
    /// out of FIFO order.
    Deliver {
        at: Instant,
        reordered: bool,
    },
    Drop(DropReason),
}

/// The token bucket and its queue. The queue is virtual: it holds the departure times already
/// promised, which is all that is needed to know its fill level.
#[derive(Debug, Clone)]
struct Shaper {
    bits_per_sec: f64,
    burst_bits: f64,
    queue_limit: usize,
    /// Tokens (bits) in the bucket at `at`. `at` is the last promised departure, which may be in
    /// the future while a queue is waiting; None before the first datagram (bucket full).
    tokens: f64,
    at: Option<Instant>,
    /// Promised departures still in the future, with their sizes, oldest first.
    waiting: VecDeque<(Instant, usize)>,
    waiting_bytes: usize,
}

impl Shaper {
    fn new(r: &RateLimit) -> Self {
        // u64 -> f64 is exact up to 2^53 bit/s, far past any rate a test wants.
        let burst_bits = r.burst_bytes as f64 * 8.0;
        Self {
            bits_per_sec: r.bits_per_sec as f64,
            burst_bits,
            queue_limit: r.queue_bytes,
            tokens: burst_bits,
            at: None,
            waiting: VecDeque::new(),
            waiting_bytes: 0,
        }
    }

    /// The instant this datagram leaves the bottleneck, or None if the queue is full.
    fn admit(&mut self, now: Instant, len: usize) -> Option<Instant> {
        while let Some(&(t, n)) = self.waiting.front() {
            if t > now {
                break;
            }
            self.waiting.pop_front();
            self.waiting_bytes -= n;
        }
        // FIFO: this datagram gets tokens only after the last one promised.
        let start = match self.at {
            Some(at) if at > now => at,
            _ => now,
        };
        let tokens = match self.at {
            None => self.burst_bits,
            Some(at) => {
                let idle = start.saturating_duration_since(at).as_secs_f64();
                (self.tokens + idle * self.bits_per_sec).min(self.burst_bits)
            }
        };
        let bits = len as f64 * 8.0;
        let (depart, left) = if tokens >= bits {
            (start, tokens - bits)
        } else {
            // A datagram larger than the bucket waits for the tokens it lacks, as if the bucket
            // could hold it: otherwise it could never pass.
            let wait = Duration::from_secs_f64((bits - tokens) / self.bits_per_sec);
            (start + wait, 0.0)
        };
        if depart > now {
            // It has to wait, so it takes queue space. Empty datagrams still count one byte
            // so that a flood of them cannot grow the queue without bound.
            let size = len.max(1);
            if self.waiting_bytes + size > self.queue_limit {
                return None;
            }
            self.waiting.push_back((depart, size));
            self.waiting_bytes += size;
        }
        self.tokens = left;
        self.at = Some(depart);
        Some(depart)
    }
}

/// Seeds of the independent random streams. Each stage draws from its own stream so that
/// changing, say, the jitter does not change which datagrams are lost under the same seed.
const STREAM_LOSS: u64 = 0x6c6f_7373;
const STREAM_DELAY: u64 = 0x6465_6c61;
const STREAM_REORDER: u64 = 0x7265_6f72;

/// One direction of an impaired path. Feed it every datagram in arrival order.
#[derive(Debug, Clone)]
pub struct Impairment {
    cfg: ImpairmentConfig,
    loss_rng: Xoshiro256PlusPlus,
    delay_rng: Xoshiro256PlusPlus,
    reorder_rng: Xoshiro256PlusPlus,
    /// Gilbert-Elliott state: true in the bad state. Starts good.
    bad: bool,
    shaper: Option<Shaper>,
    /// Delivery time of the last in-order datagram: the next one is not delivered before it.
    fifo_floor: Option<Instant>,
}

impl Impairment {
    pub fn new(cfg: ImpairmentConfig, seed: u64) -> Result<Self, ConfigError> {
        cfg.validate()?;
        let stream = |k: u64| Xoshiro256PlusPlus::seed_from_u64(seed ^ k.rotate_left(32));
        Ok(Self {
            shaper: cfg.rate.as_ref().map(Shaper::new),
            cfg,
            loss_rng: stream(STREAM_LOSS),
            delay_rng: stream(STREAM_DELAY),
            reorder_rng: stream(STREAM_REORDER),
            bad: false,
            fifo_floor: None,
        })
    }

    pub fn config(&self) -> &ImpairmentConfig {
        &self.cfg
    }

    /// Decides the fate of a datagram of `len` payload bytes that arrived at `now`. Arrivals
    /// should come in time order; a slightly earlier `now` than the previous one is tolerated
    /// (the bottleneck and FIFO order then just treat it as arriving with the previous one).
    pub fn on_packet(&mut self, now: Instant, len: usize) -> Verdict {
        if let Some(b) = self.cfg.burst {
            let flip = if self.bad {
                b.p_bad_to_good
            } else {
                b.p_good_to_bad
            };
            // random::<f64>() is in [0, 1): `< p` is never true for p = 0, always for p = 1.
            if self.loss_rng.random::<f64>() < flip {
                self.bad = !self.bad;
            }
            let p = if self.bad { b.loss_bad } else { b.loss_good };
            if self.loss_rng.random::<f64>() < p {
                return Verdict::Drop(DropReason::Burst);
            }
        }
        if self.cfg.loss > 0.0 && self.loss_rng.random::<f64>() < self.cfg.loss {
            return Verdict::Drop(DropReason::Loss);
        }

        let depart = match &mut self.shaper {
            Some(s) => match s.admit(now, len) {
                Some(t) => t,
                None => return Verdict::Drop(DropReason::Queue),
            },
            None => now,
        };

        let one_way = if self.cfg.jitter.is_zero() {
            // Exact, without a round trip through floating point.
            self.cfg.delay
        } else {
            let unit = match self.cfg.jitter_distribution {
                JitterDistribution::Uniform => self.delay_rng.random_range(-1.0..=1.0),
                JitterDistribution::Normal => {
                    let s: f64 = (0..3)
                        .map(|_| self.delay_rng.random_range(-1.0..=1.0))
                        .sum();
                    s / 3.0
                }
            };
            let secs = self.cfg.delay.as_secs_f64() + unit * self.cfg.jitter.as_secs_f64();
            Duration::from_secs_f64(secs.max(0.0))
        };
        let at = depart + one_way;

        if self.cfg.reorder > 0.0
            && !self.cfg.reorder_delay.is_zero()
            && self.reorder_rng.random::<f64>() < self.cfg.reorder
        {
            // Held back, and it does not raise the FIFO floor: the datagrams behind it go out
            // at their own time and so overtake it.
            return Verdict::Deliver {
                at: at + self.cfg.reorder_delay,
                reordered: true,
            };
        }
        let at = match self.fifo_floor {
            Some(floor) if floor > at => floor,
            _ => at,
        };
        self.fifo_floor = Some(at);
        Verdict::Deliver {
            at,
            reordered: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Feeds `n` datagrams of `len` bytes spaced `gap` apart; returns (arrival, verdict).
    fn run(imp: &mut Impairment, n: usize, gap: Duration, len: usize) -> Vec<(Instant, Verdict)> {
        let t0 = Instant::now();
        (0..n)
            .map(|i| {
                let now = t0 + gap * i as u32;
                (now, imp.on_packet(now, len))
            })
            .collect()
    }

    fn delivered(v: &[(Instant, Verdict)]) -> Vec<(usize, Instant, Instant, bool)> {
        v.iter()
            .enumerate()
            .filter_map(|(i, (now, v))| match v {
                Verdict::Deliver { at, reordered } => Some((i, *now, *at, *reordered)),
                Verdict::Drop(_) => None,
            })
            .collect()
    }

    #[test]
    fn no_impairment_delivers_everything_at_once() {
        let cfg = ImpairmentConfig::none();
        assert!(cfg.is_transparent());
        let mut imp = Impairment::new(cfg, 1).unwrap();
        for (now, v) in run(&mut imp, 1000, ms(1), 1200) {
            assert_eq!(
                v,
                Verdict::Deliver {
                    at: now,
                    reordered: false
                }
            );
        }
    }

    #[test]
    fn random_loss_rate_within_tolerance() {
        let cfg = ImpairmentConfig {
            loss: 0.05,
            ..Default::default()
        };
        let mut imp = Impairment::new(cfg, 42).unwrap();
        let n = 100_000;
        let v = run(&mut imp, n, Duration::from_micros(100), 100);
        let lost = v
            .iter()
            .filter(|(_, v)| *v == Verdict::Drop(DropReason::Loss))
            .count();
        let rate = lost as f64 / n as f64;
        // sigma = sqrt(0.05 * 0.95 / 1e5) = 0.0007: 0.004 is more than 5 sigma.
        assert!((rate - 0.05).abs() < 0.004, "loss rate {rate}");
        // Independent loss has no memory: the chance of losing the next one is still ~5%.
        let pairs = v
            .windows(2)
            .filter(|w| matches!(w[0].1, Verdict::Drop(_)))
            .count();
        let both = v
            .windows(2)
            .filter(|w| matches!(w[0].1, Verdict::Drop(_)) && matches!(w[1].1, Verdict::Drop(_)))
            .count();
        let cond = both as f64 / pairs as f64;
        assert!((cond - 0.05).abs() < 0.02, "p(loss | loss) = {cond}");
    }

    #[test]
    fn gilbert_elliott_mean_burst_length_and_rate() {
        let ge = GilbertElliott::gilbert(0.01, 0.25);
        assert_eq!(ge.mean_bad_run(), 4.0);
        let cfg = ImpairmentConfig {
            burst: Some(ge),
            ..Default::default()
        };
        let mut imp = Impairment::new(cfg, 7).unwrap();
        let n = 200_000;
        let v = run(&mut imp, n, Duration::from_micros(100), 100);
        let lost: Vec<bool> = v
            .iter()
            .map(|(_, v)| *v == Verdict::Drop(DropReason::Burst))
            .collect();
        let total = lost.iter().filter(|l| **l).count();
        let bursts = lost.windows(2).filter(|w| !w[0] && w[1]).count() + usize::from(lost[0]);
        let mean_burst = total as f64 / bursts as f64;
        // ~1900 bursts of geometric length (sd 3.5): the mean's sd is ~0.08.
        assert!((mean_burst - 4.0).abs() < 0.4, "mean burst {mean_burst}");
        let rate = total as f64 / n as f64;
        let expect = ge.mean_loss(); // 0.01 / 0.26 = 3.85%
        assert!(
            (rate - expect).abs() < 0.006,
            "burst loss {rate} vs {expect}"
        );
        // Much burstier than independent loss at the same rate: p(loss | loss) = 0.75.
        let both = lost.windows(2).filter(|w| w[0] && w[1]).count();
        let cond = both as f64 / total as f64;
        assert!((cond - 0.75).abs() < 0.03, "p(loss | loss) = {cond}");
    }

    #[test]
    fn gilbert_elliott_lossy_good_state() {
        // Loss in both states: a clean count of the stationary loss formula.
        let ge = GilbertElliott {
            p_good_to_bad: 0.05,
            p_bad_to_good: 0.2,
            loss_good: 0.01,
            loss_bad: 0.5,
        };
        let cfg = ImpairmentConfig {
            burst: Some(ge),
            ..Default::default()
        };
        let mut imp = Impairment::new(cfg, 99).unwrap();
        let n = 200_000;
        let lost = run(&mut imp, n, Duration::from_micros(100), 100)
            .iter()
            .filter(|(_, v)| matches!(v, Verdict::Drop(_)))
            .count();
        let rate = lost as f64 / n as f64;
        // 0.2 * 0.5 + 0.8 * 0.01 = 0.108
        assert!((rate - ge.mean_loss()).abs() < 0.01, "loss {rate}");
    }

    #[test]
    fn delay_and_uniform_jitter_bounds() {
        let cfg = ImpairmentConfig {
            delay: ms(30),
            jitter: ms(5),
            ..Default::default()
        };
        let mut imp = Impairment::new(cfg, 3).unwrap();
        // 20 ms apart: wider than the jitter span, so FIFO order never holds one back.
        let v = delivered(&run(&mut imp, 5000, ms(20), 200));
        assert_eq!(v.len(), 5000);
        let d: Vec<f64> = v
            .iter()
            .map(|(_, now, at, _)| (*at - *now).as_secs_f64() * 1e3)
            .collect();
        let min = d.iter().cloned().fold(f64::MAX, f64::min);
        let max = d.iter().cloned().fold(f64::MIN, f64::max);
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        assert!(min >= 25.0 && max <= 35.0, "delay range {min}..{max}");
        // Uniform: the whole span is used.
        assert!(min < 25.1 && max > 34.9, "delay range {min}..{max}");
        assert!((mean - 30.0).abs() < 0.2, "mean delay {mean}");
    }

    #[test]
    fn normal_jitter_is_bounded_and_bell_shaped() {
        let cfg = ImpairmentConfig {
            delay: ms(30),
            jitter: ms(6),
            jitter_distribution: JitterDistribution::Normal,
            ..Default::default()
        };
        let mut imp = Impairment::new(cfg, 4).unwrap();
        let v = delivered(&run(&mut imp, 20_000, ms(20), 200));
        let d: Vec<f64> = v
            .iter()
            .map(|(_, now, at, _)| (*at - *now).as_secs_f64() * 1e3 - 30.0)
            .collect();
        assert!(d.iter().all(|x| x.abs() <= 6.0 + 1e-6));
        let mean = d.iter().sum::<f64>() / d.len() as f64;
        let sd = (d.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / d.len() as f64).sqrt();
        assert!(mean.abs() < 0.1, "mean {mean}");
        assert!((sd - 2.0).abs() < 0.1, "sd {sd}");
        // Bell-shaped: 2/3 within one sd (the sum of three uniforms), vs 1/3 for a uniform
        // of the same bounds.
        let inner = d.iter().filter(|x| x.abs() <= 2.0).count() as f64 / d.len() as f64;
        assert!(
            (inner - 2.0 / 3.0).abs() < 0.02,
            "share within 1 sd {inner}"
        );
    }

    #[test]
    fn jitter_alone_keeps_order_and_never_delivers_early() {
        let cfg = ImpairmentConfig {
            delay: ms(20),
            jitter: ms(10),
            ..Default::default()
        };
        let mut imp = Impairment::new(cfg, 5).unwrap();
        // 1 ms apart: jitter would reorder these if FIFO order were not kept.
        let v = delivered(&run(&mut imp, 10_000, ms(1), 200));
        assert_eq!(v.len(), 10_000);
        for w in v.windows(2) {
            assert!(w[0].2 <= w[1].2, "jitter reordered");
        }
        for (_, now, at, _) in &v {
            assert!(*at >= *now + ms(10));
        }
    }

    #[test]
    fn delay_smaller_than_jitter_clamps_at_zero() {
        let cfg = ImpairmentConfig {
            delay: ms(1),
            jitter: ms(5),
            ..Default::default()
        };
        let mut imp = Impairment::new(cfg, 6).unwrap();
        for (_, now, at, _) in delivered(&run(&mut imp, 2000, ms(20), 10)) {
            assert!(at >= now && at <= now + ms(6));
        }
    }

    #[test]
    fn reordering_happens_and_keeps_every_packet() {
        let cfg = ImpairmentConfig {
            delay: ms(10),
            reorder: 0.05,
            reorder_delay: ms(5),
            ..Default::default()
        };
        let mut imp = Impairment::new(cfg, 8).unwrap();
        let n = 20_000;
        let v = delivered(&run(&mut imp, n, ms(1), 1000));
        assert_eq!(v.len(), n, "reordering must not lose packets");
        let held = v.iter().filter(|x| x.3).count();
        let share = held as f64 / n as f64;
        assert!((share - 0.05).abs() < 0.008, "reordered share {share}");
        // Order of arrival at the far end: by delivery time, ties in sending order.
        let mut order: Vec<(Instant, usize)> = v.iter().map(|x| (x.2, x.0)).collect();
        order.sort();
        let late = order.windows(2).filter(|w| w[0].1 > w[1].1).count();
        // Every held datagram is overtaken by the ~5 sent in its 5 ms hold.
        assert!(late >= held * 9 / 10, "{late} inversions for {held} held");
        let mut ids: Vec<usize> = order.iter().map(|x| x.1).collect();
        ids.sort();
        assert!(ids.iter().enumerate().all(|(i, id)| i == *id));
        // A held datagram is exactly delay + hold late; the others keep the plain delay.
        for (_, now, at, r) in &v {
            assert_eq!(*at - *now, if *r { ms(15) } else { ms(10) });
        }
    }

    #[test]
    fn rate_cap_limits_throughput_and_bounds_queue() {
        let rate = RateLimit::new(1_000_000);
        assert_eq!(rate.queue_bytes, 12_500);
        let cfg = ImpairmentConfig {
            rate: Some(rate),
            ..Default::default()
        };
        let mut imp = Impairment::new(cfg, 9).unwrap();
        // 1250-byte datagrams (10 kbit) every 5 ms: 2 Mbit/s offered for 10 s.
        let v = run(&mut imp, 2000, ms(5), 1250);
        let d = delivered(&v);
        let queue_drops = v
            .iter()
            .filter(|(_, v)| *v == Verdict::Drop(DropReason::Queue))
            .count();
        assert_eq!(d.len() + queue_drops, 2000);
        let first = d.first().map(|x| x.2).unwrap();
        let last = d.last().map(|x| x.2).unwrap();
        let secs = (last - first).as_secs_f64();
        // Bits between the first and last departure: all but the first datagram.
        let bps = (d.len() - 1) as f64 * 10_000.0 / secs;
        assert!((bps - 1e6).abs() < 1e6 * 0.01, "throughput {bps}");
        // Half the offered load goes.
        assert!((queue_drops as f64 / 2000.0 - 0.5).abs() < 0.02);
        // Queueing delay never exceeds queue size / rate (12.5 kB at 1 Mbit/s = 100 ms).
        for (_, now, at, _) in &d {
            assert!(*at - *now <= ms(100), "queueing delay {:?}", *at - *now);
        }
        // Departures are spaced by exactly one serialization time (10 ms) once saturated.
        let gaps: Vec<Duration> = d.windows(2).map(|w| w[1].2 - w[0].2).collect();
        assert!(
            gaps.iter()
                .skip(20)
                .all(|g| *g >= ms(10) - Duration::from_micros(1))
        );
    }

    #[test]
    fn rate_cap_below_capacity_adds_nothing() {
        let cfg = ImpairmentConfig {
            rate: Some(RateLimit::new(2_000_000)),
            ..Default::default()
        };
        let mut imp = Impairment::new(cfg, 10).unwrap();
        // 1000 bytes every 10 ms = 800 kbit/s under a 2 Mbit/s cap.
        for (now, v) in run(&mut imp, 1000, ms(10), 1000) {
            assert_eq!(
                v,
                Verdict::Deliver {
                    at: now,
                    reordered: false
                }
            );
        }
    }

    #[test]
    fn rate_cap_burst_then_smooth() {
        let cfg = ImpairmentConfig {
            rate: Some(RateLimit {
                bits_per_sec: 800_000,
                burst_bytes: 3000,
                queue_bytes: 100_000,
            }),
            ..Default::default()
        };
        let mut imp = Impairment::new(cfg, 11).unwrap();
        let t0 = Instant::now();
        // 10 datagrams of 1000 bytes at once: 3 ride the full bucket, the rest leave 10 ms apart.
        let at: Vec<Instant> = (0..10)
            .map(|_| match imp.on_packet(t0, 1000) {
                Verdict::Deliver { at, .. } => at,
                v => panic!("{v:?}"),
            })
            .collect();
        assert_eq!(&at[..3], &[t0, t0, t0]);
        for (i, a) in at.iter().enumerate().skip(3) {
            let want = ms(10) * (i as u32 - 2);
            let got = *a - t0;
            assert!(
                got.abs_diff(want) < Duration::from_micros(2),
                "{i}: {got:?}"
            );
        }
    }

    #[test]
    fn stages_combine_and_keep_their_own_streams() {
        let base = ImpairmentConfig {
            loss: 0.1,
            ..Default::default()
        };
        let with_delay = ImpairmentConfig {
            delay: ms(20),
            jitter: ms(5),
            reorder: 0.1,
            ..base.clone()
        };
        let drops = |cfg: ImpairmentConfig| -> Vec<bool> {
            let mut imp = Impairment::new(cfg, 12).unwrap();
            run(&mut imp, 5000, ms(2), 100)
                .iter()
                .map(|(_, v)| matches!(v, Verdict::Drop(_)))
                .collect()
        };
        // Same seed, same loss pattern whatever the delay settings.
        assert_eq!(drops(base), drops(with_delay));
    }

    #[test]
    fn same_seed_same_verdicts_other_seed_differs() {
        let cfg = ImpairmentConfig {
            loss: 0.05,
            burst: Some(GilbertElliott::gilbert(0.02, 0.3)),
            delay: ms(30),
            jitter: ms(5),
            jitter_distribution: JitterDistribution::Normal,
            reorder: 0.02,
            reorder_delay: ms(8),
            rate: Some(RateLimit::new(2_000_000)),
        };
        let t0 = Instant::now();
        let go = |seed| {
            let mut imp = Impairment::new(cfg.clone(), seed).unwrap();
            (0..5000u32)
                .map(|i| {
                    let at = imp.on_packet(t0 + Duration::from_micros(3000) * i, 900);
                    match at {
                        Verdict::Deliver { at, reordered } => (Some(at - t0), reordered),
                        Verdict::Drop(_) => (None, false),
                    }
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(go(1), go(1));
        assert_ne!(go(1), go(2));
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = [
            ImpairmentConfig {
                loss: 1.5,
                ..Default::default()
            },
            ImpairmentConfig {
                loss: f64::NAN,
                ..Default::default()
            },
            ImpairmentConfig {
                reorder: -0.1,
                ..Default::default()
            },
            ImpairmentConfig {
                burst: Some(GilbertElliott::gilbert(0.1, 2.0)),
                ..Default::default()
            },
            ImpairmentConfig {
                delay: Duration::from_secs(3600),
                ..Default::default()
            },
            ImpairmentConfig {
                rate: Some(RateLimit::new(0)),
                ..Default::default()
            },
        ];
        for cfg in bad {
            assert!(Impairment::new(cfg.clone(), 0).is_err(), "{cfg:?}");
        }
    }

    #[test]
    fn certain_loss_and_zero_length_datagrams() {
        let cfg = ImpairmentConfig {
            loss: 1.0,
            ..Default::default()
        };
        let mut imp = Impairment::new(cfg, 13).unwrap();
        assert!(
            run(&mut imp, 100, ms(1), 0)
                .iter()
                .all(|(_, v)| *v == Verdict::Drop(DropReason::Loss))
        );
        // Empty datagrams under a saturated cap still hit the queue limit.
        let cfg = ImpairmentConfig {
            rate: Some(RateLimit {
                bits_per_sec: 8,
                burst_bytes: 1,
                queue_bytes: 10,
            }),
            ..Default::default()
        };
        let mut imp = Impairment::new(cfg, 14).unwrap();
        let t0 = Instant::now();
        // 2 bytes through a 1-byte bucket: it waits a second and holds 2 bytes of queue.
        assert!(matches!(imp.on_packet(t0, 2), Verdict::Deliver { .. }));
        let mut queued = 0;
        for _ in 0..100 {
            if let Verdict::Deliver { .. } = imp.on_packet(t0, 0) {
                queued += 1;
            }
        }
        // Empty ones behind it count a byte each: 8 more fit in the 10-byte queue.
        assert_eq!(queued, 8);
    }
}

//! Dominant speaker identification (DESIGN.md section 6).
//!
//! The algorithm is Volfin & Cohen, "Dominant speaker identification for multipoint
//! videoconferencing" (Computer Speech and Language 27, 2013), in the form Jitsi gave it for
//! RFC 6464 audio levels. The paper counts the active frequency sub-bands of decoded audio; a
//! bridge never decodes, so the level of the header extension stands in for the spectrum: the
//! 0..=127 range is cut into 13 bands of 10, and a frame whose level reaches band `b` counts as
//! `b` active sub-bands.
//!
//! Per speaker the last 50 levels (one second of 20 ms frames) are seen on three time scales:
//!
//! - immediate: the newest frame, 0..=12 active sub-bands;
//! - medium: the newest block of 5 frames, 0..=5 frames with more than 7 active sub-bands;
//! - long: the newest 10 blocks, 0..=10 blocks with more than 4 active frames.
//!
//! Each count `k` out of `n` is scored by the log-likelihood ratio of a binomial model of speech
//! (p = 0.5) against an exponential model of non-speech (rate lambda):
//! `S = ln C(n,k) + k ln p + (n-k) ln(1-p) - ln lambda + lambda k`, floored at 1e-10 so that
//! ratios of scores stay finite. Every 300 ms each challenger compares its three scores with the
//! dominant speaker's; it takes over only when it is clearly ahead on all three scales at once,
//! so a cough (loud now, but not for the last second) or the tail of an old monologue (active
//! over the last second, but not now) does not switch.
//!
//! Everything here is deterministic: the same calls with the same instants give the same
//! decisions, whatever the order in which different speakers' levels arrive between two
//! decisions. Ties are broken by speaker key, never by hash order, so two bridges that receive
//! the same levels agree on the dominant speaker without talking to each other.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Frames in a medium block.
const FRAMES_PER_BLOCK: usize = 5;
/// Medium blocks in the long window.
const BLOCKS: usize = 10;
/// Levels kept per speaker: exactly one long window, so nothing older can matter.
const HISTORY: usize = FRAMES_PER_BLOCK * BLOCKS;

/// The immediate scale's `n`: the 0..=127 level range read as 13 sub-bands.
const SUB_BANDS: u8 = 13;
/// Width of one sub-band, ceil(128 / 13). Also the margin above the noise floor a level needs
/// to count as more than background.
const BAND_WIDTH: u8 = 10;
/// A frame is active (counts toward its medium block) with more than this many active
/// sub-bands, i.e. a level of at least 80 above silence (about -47 dBov or louder).
const ACTIVE_FRAME_BANDS: u8 = 7;
/// A medium block is active (counts toward the long scale) with more than this many active
/// frames: all five.
const ACTIVE_BLOCK_FRAMES: u8 = 4;

/// Probability of an active unit under the speech model, on every scale.
const P_SPEECH: f64 = 0.5;
/// Rates of the exponential non-speech model, per scale (the paper's lambda 1..3). The larger
/// the rate, the faster an increasing count becomes evidence of speech.
const LAMBDA_IMMEDIATE: f64 = 0.78;
const LAMBDA_MEDIUM: f64 = 24.0;
const LAMBDA_LONG: f64 = 47.0;
/// Scores are ratios' operands; a floor above zero keeps `ln(S_j / S_dominant)` finite.
const MIN_SCORE: f64 = 1e-10;

/// Tuning of one [`DominantSpeaker`]; `Default` holds the reference parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpeakerConfig {
    /// How often challengers are compared with the dominant speaker (300 ms). Deciding on every
    /// level would follow every syllable; the interval is the switching granularity.
    pub decision_interval: Duration,
    /// A speaker with no level for longer than this gets a silent frame, and one more for each
    /// further interval without levels (40 ms: longer than the usual 20 and 30 ms packet
    /// durations, so jitter alone does not insert silence into a live stream). Without it a
    /// speaker whose packets stop (mute, DTX, a dead link) would keep their last scores forever.
    pub silence_fill_after: Duration,
    /// Non-silent levels after which the noise floor may rise (750: 15 s of 20 ms frames).
    pub noise_floor_rise_after: u32,
    /// A challenger must beat the dominant speaker by `ln(S_j / S_d)` above this on the
    /// immediate scale (3).
    pub immediate_margin: f64,
    /// ... on the medium scale (2). Among several qualifying challengers the one furthest ahead
    /// here wins.
    pub medium_margin: f64,
    /// ... on the long scale (0: merely ahead).
    pub long_margin: f64,
}

impl Default for SpeakerConfig {
    fn default() -> Self {
        Self {
            decision_interval: Duration::from_millis(300),
            silence_fill_after: Duration::from_millis(40),
            noise_floor_rise_after: 750,
            immediate_margin: 3.0,
            medium_margin: 2.0,
            long_margin: 0.0,
        }
    }
}

/// The dominant speaker changed; what the bridge announces to the conference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpeakerChange<K> {
    pub previous: Option<K>,
    /// `None` only when the last speaker left.
    pub dominant: Option<K>,
}

/// Loudness of one frame as the algorithm sees it: 127 minus the RFC 6464 level, so 0 is
/// silence (-127 dBov, or no packet at all) and 127 is a full-scale signal (0 dBov).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
struct Loudness(u8);

impl Loudness {
    const SILENCE: Loudness = Loudness(0);

    /// From the 7-bit level of the header extension (0 = loudest, 127 = silence). Larger
    /// values cannot come from a well-formed extension; they are read as silence.
    fn from_dbov(dbov: u8) -> Self {
        Loudness(127 - dbov.min(127))
    }

    /// Active sub-bands of a frame, 0..=12, or 0 when the frame is within `BAND_WIDTH` of the
    /// speaker's noise floor: each speaker's own background becomes absolute silence, which puts
    /// a noisy room and a quiet one on equal footing.
    fn sub_bands(self, floor: NoiseFloor) -> u8 {
        if u16::from(self.0) < u16::from(floor.level.0) + u16::from(BAND_WIDTH) {
            0
        } else {
            self.0 / BAND_WIDTH
        }
    }
}

/// A speaker's background level: the lowest non-silent level, raised slowly when the room gets
/// louder (a fan switched on) so that the background does not read as speech for ever.
#[derive(Clone, Copy, Debug, Default)]
struct NoiseFloor {
    /// `SILENCE` until the first non-silent level.
    level: Loudness,
    /// Lowest level of the current observation window (`SILENCE` while it is empty).
    window_min: Loudness,
    /// Non-silent levels at or above the floor since it was last set.
    window_len: u32,
}

impl NoiseFloor {
    fn observe(&mut self, l: Loudness, rise_after: u32) {
        // Silence (muted, filled gap, digital zero) says nothing about the background.
        if l == Loudness::SILENCE {
            return;
        }
        if self.level == Loudness::SILENCE || l < self.level {
            // Quieter than we thought: believe it at once.
            *self = NoiseFloor {
                level: l,
                ..NoiseFloor::default()
            };
            return;
        }
        self.window_min = if self.window_len == 0 {
            l
        } else {
            self.window_min.min(l)
        };
        self.window_len += 1;
        if self.window_len >= rise_after {
            // A whole window without a level below the floor: the background has risen (or the
            // floor was set by a one-off quiet frame). Move to the geometric mean, which rises slower than the arithmetic one;
            // a floor that overshoots would swallow quiet speech. Both factors are <= 127, so
            // the root is too; truncation errs on the low side like the rise itself.
            let mean = (u16::from(self.level.0) * u16::from(self.window_min.0)).isqrt();
            *self = NoiseFloor {
                level: Loudness(mean as u8),
                ..NoiseFloor::default()
            };
        }
    }
}

/// The last `HISTORY` loudness values of a speaker, newest at `newest`.
#[derive(Clone, Debug)]
struct LevelHistory {
    levels: [Loudness; HISTORY],
    newest: usize,
}

impl LevelHistory {
    fn new() -> Self {
        Self {
            levels: [Loudness::SILENCE; HISTORY],
            newest: 0,
        }
    }

    fn push(&mut self, l: Loudness) {
        self.newest = (self.newest + 1) % HISTORY;
        self.levels[self.newest] = l;
    }

    fn newest_first(&self) -> impl Iterator<Item = Loudness> + '_ {
        let (older, newer) = self.levels.split_at(self.newest + 1);
        older.iter().rev().chain(newer.iter().rev()).copied()
    }
}

/// A speaker's speech activity on the three scales, as the counts `k` of the paper.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Activity {
    /// Active sub-bands of the newest frame, 0..=12.
    immediate: u8,
    /// Active frames of the newest block, 0..=5.
    medium: u8,
    /// Active blocks of the window, 0..=10.
    long: u8,
}

#[derive(Clone, Debug)]
struct Speaker {
    history: LevelHistory,
    floor: NoiseFloor,
    /// When the last real level arrived (or the speaker was added).
    last_level_at: Instant,
    /// Silent frames pushed since `last_level_at`.
    filled: u64,
}

impl Speaker {
    fn new(now: Instant) -> Self {
        Self {
            history: LevelHistory::new(),
            floor: NoiseFloor::default(),
            last_level_at: now,
            filled: 0,
        }
    }

    /// Pushes the silent frames due by `now`: one once more than `fill_after` (40 ms) has passed
    /// without a level, one more after each further 40 ms. Filling lazily, whenever the speaker
    /// is next looked at, gives the history a 40 ms timer would, without waking the bridge every
    /// 40 ms for every muted participant.
    fn fill_silence(&mut self, now: Instant, fill_after: Duration) {
        let idle = now.saturating_duration_since(self.last_level_at).as_nanos();
        let due = idle.saturating_sub(1) / fill_after.as_nanos();
        let due = u64::try_from(due).unwrap_or(u64::MAX);
        // Beyond a full window of silence more zeros change nothing (zeros leave the noise
        // floor alone), so a speaker muted for an hour costs at most 50 pushes.
        let missing = due.saturating_sub(self.filled).min(HISTORY as u64);
        for _ in 0..missing {
            self.history.push(Loudness::SILENCE);
        }
        self.filled = self.filled.max(due);
    }

    fn level(&mut self, l: Loudness, now: Instant, config: &SpeakerConfig) {
        self.fill_silence(now, config.silence_fill_after);
        self.history.push(l);
        self.floor.observe(l, config.noise_floor_rise_after);
        self.last_level_at = now;
        self.filled = 0;
    }

    /// Counts on the three scales. Evaluated over the whole window with the current floor (not
    /// the floor each level arrived with), so a floor that moves re-reads the past second.
    fn activity(&self) -> Activity {
        let mut a = Activity::default();
        let mut block_active = [0u8; BLOCKS];
        for (age, l) in self.history.newest_first().enumerate() {
            let bands = l.sub_bands(self.floor);
            if age == 0 {
                a.immediate = bands;
            }
            if bands > ACTIVE_FRAME_BANDS {
                block_active[age / FRAMES_PER_BLOCK] += 1;
            }
        }
        a.medium = block_active[0];
        a.long = block_active
            .iter()
            .filter(|&&n| n > ACTIVE_BLOCK_FRAMES)
            .count() as u8;
        a
    }
}

/// `C(n, k)`, exact for the small `n` used here.
fn binomial(n: u8, k: u8) -> u64 {
    let (n, k) = (u64::from(n), u64::from(k.min(n - k)));
    // Each partial product is C(n, i + 1), an integer, so the division is exact.
    (0..k).fold(1, |c, i| c * (n - i) / (i + 1))
}

/// The speech activity score `S(k, n, lambda)` of the module documentation.
fn activity_score(k: u8, n: u8, lambda: f64) -> f64 {
    let (kf, nf) = (f64::from(k), f64::from(n));
    let s = (binomial(n, k) as f64).ln() + kf * P_SPEECH.ln() + (nf - kf) * (1.0 - P_SPEECH).ln()
        - lambda.ln()
        + lambda * kf;
    s.max(MIN_SCORE)
}

/// `ln S` for every possible count, computed once: a decision then needs no logarithms, and
/// `ln(S_j / S_d)` is the difference of two table entries.
#[derive(Clone, Debug)]
struct ScoreTable {
    immediate: [f64; SUB_BANDS as usize + 1],
    medium: [f64; FRAMES_PER_BLOCK + 1],
    long: [f64; BLOCKS + 1],
}

impl ScoreTable {
    fn new() -> Self {
        fn table<const N: usize>(lambda: f64) -> [f64; N] {
            let n = (N - 1) as u8;
            std::array::from_fn(|k| activity_score(k as u8, n, lambda).ln())
        }
        Self {
            immediate: table(LAMBDA_IMMEDIATE),
            medium: table(LAMBDA_MEDIUM),
            long: table(LAMBDA_LONG),
        }
    }

    fn log_scores(&self, a: Activity) -> LogScores {
        LogScores {
            immediate: self.immediate[usize::from(a.immediate)],
            medium: self.medium[usize::from(a.medium)],
            long: self.long[usize::from(a.long)],
        }
    }
}

/// `ln S` per scale, or, as a difference, `ln(S_j / S_d)` per scale.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LogScores {
    immediate: f64,
    medium: f64,
    long: f64,
}

impl LogScores {
    fn relative_to(self, dominant: LogScores) -> LogScores {
        LogScores {
            immediate: self.immediate - dominant.immediate,
            medium: self.medium - dominant.medium,
            long: self.long - dominant.long,
        }
    }

    /// Whether a challenger so far ahead beats another qualifier. The medium scale decides
    /// (the algorithm's rule); exact ties, common because scores come from small tables, go to
    /// the long and then the immediate scale, and after that to the earlier key.
    fn beats(self, other: LogScores) -> bool {
        (self.medium, self.long, self.immediate) > (other.medium, other.long, other.immediate)
    }
}

/// Dominant speaker identification for one conference, sans-I/O.
///
/// Feed it every audio level with [`level`](Self::level), call
/// [`handle_timeout`](Self::handle_timeout) when [`poll_timeout`](Self::poll_timeout) has come
/// (before feeding levels of a later instant), and announce the changes it returns. Instants
/// never run backwards inside: an instant earlier than one already seen counts as that one.
#[derive(Clone, Debug)]
pub struct DominantSpeaker<K> {
    config: SpeakerConfig,
    scores: ScoreTable,
    /// Ordered by key: decisions iterate in key order, so ties resolve the same on every bridge.
    speakers: BTreeMap<K, Speaker>,
    /// `None` exactly when there are no speakers.
    dominant: Option<K>,
    /// Every speaker: those who have been dominant, most recent first, then the others in key
    /// order.
    recency: Vec<K>,
    /// How many entries at the front of `recency` have been dominant.
    ever_dominant: usize,
    /// The next decision; `None` while there are no speakers.
    next_decision: Option<Instant>,
    /// The latest instant seen.
    clock: Option<Instant>,
    decisions: u64,
}

impl<K: Copy + Ord> Default for DominantSpeaker<K> {
    fn default() -> Self {
        Self::new(SpeakerConfig::default())
    }
}

impl<K: Copy + Ord> DominantSpeaker<K> {
    /// Zero durations or windows would make no sense (and divide by zero); they are raised to
    /// 1 ms and 1 level.
    pub fn new(mut config: SpeakerConfig) -> Self {
        let min = Duration::from_millis(1);
        config.decision_interval = config.decision_interval.max(min);
        config.silence_fill_after = config.silence_fill_after.max(min);
        config.noise_floor_rise_after = config.noise_floor_rise_after.max(1);
        Self {
            config,
            scores: ScoreTable::new(),
            speakers: BTreeMap::new(),
            dominant: None,
            recency: Vec::new(),
            ever_dominant: 0,
            next_decision: None,
            clock: None,
            decisions: 0,
        }
    }

    /// Adds a speaker (an endpoint with audio). The first one is dominant at once; with nobody
    /// to compete against there is nothing to wait for. Adding a known speaker does nothing.
    pub fn add_speaker(&mut self, k: K, now: Instant) -> Option<SpeakerChange<K>> {
        let now = self.tick(now);
        if self.speakers.contains_key(&k) {
            return None;
        }
        self.speakers.insert(k, Speaker::new(now));
        let tail = &self.recency[self.ever_dominant..];
        let at = self.ever_dominant + tail.partition_point(|x| *x < k);
        self.recency.insert(at, k);
        if self.dominant.is_some() {
            return None;
        }
        self.next_decision = Some(now + self.config.decision_interval);
        Some(self.set_dominant(Some(k)))
    }

    /// Removes a speaker. Removing the dominant one decides at once: the most recent earlier
    /// dominant speaker still present is nominated (the first by key if there is none), and the
    /// others challenge it as in a scheduled decision, so someone talking right now takes over.
    pub fn remove_speaker(&mut self, k: K, now: Instant) -> Option<SpeakerChange<K>> {
        let now = self.tick(now);
        self.speakers.remove(&k)?;
        if let Some(at) = self.recency.iter().position(|x| *x == k) {
            self.recency.remove(at);
            if at < self.ever_dominant {
                self.ever_dominant -= 1;
            }
        }
        if self.speakers.is_empty() {
            self.next_decision = None;
        }
        if self.dominant != Some(k) {
            return None;
        }
        self.dominant = self.recency.first().copied();
        let next = self.challenger(now).or(self.dominant);
        let mut change = self.set_dominant(next);
        change.previous = Some(k);
        Some(change)
    }

    /// Records the audio level of one packet of `k`'s audio: `dbov` is the 7-bit level of the
    /// RFC 6464 header extension (0 = loudest, 127 = silence; anything above reads as silence).
    /// Returns `false`, ignoring the level, when `k` is not a speaker. Allocation-free.
    pub fn level(&mut self, k: K, dbov: u8, now: Instant) -> bool {
        let now = self.tick(now);
        let config = self.config;
        match self.speakers.get_mut(&k) {
            Some(s) => {
                s.level(Loudness::from_dbov(dbov), now, &config);
                true
            }
            None => false,
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called: the next decision.
    /// Silence filling needs no timer of its own (see [`SpeakerConfig::silence_fill_after`]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_decision
    }

    /// Runs the decision due by `now`, if any, and returns the change it made. A caller late by
    /// more than an interval gets one decision, not a burst of stale ones: the schedule skips
    /// ahead, staying on the grid of instants it started with.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<SpeakerChange<K>> {
        let now = self.tick(now);
        let due = self.next_decision.filter(|t| *t <= now)?;
        let interval = self.config.decision_interval;
        let steps = now.duration_since(due).as_nanos() / interval.as_nanos() + 1;
        self.next_decision = Some(
            u64::try_from(steps * interval.as_nanos())
                .ok()
                .and_then(|ns| due.checked_add(Duration::from_nanos(ns)))
                .unwrap_or(now + interval),
        );
        self.decisions += 1;
        let winner = self.challenger(now)?;
        Some(self.set_dominant(Some(winner)))
    }

    pub fn dominant(&self) -> Option<K> {
        self.dominant
    }

    /// Every speaker, for last-N selection: the dominant one first, then the earlier dominant
    /// speakers from the most recent, then those never dominant in key order.
    pub fn recent_speakers(&self) -> impl Iterator<Item = K> {
        self.recency.iter().copied()
    }

    /// Scheduled decisions run so far (removals that decide at once are not counted).
    pub fn decisions(&self) -> u64 {
        self.decisions
    }

    pub fn len(&self) -> usize {
        self.speakers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.speakers.is_empty()
    }

    pub fn contains(&self, k: K) -> bool {
        self.speakers.contains_key(&k)
    }

    fn tick(&mut self, now: Instant) -> Instant {
        let now = self.clock.map_or(now, |c| c.max(now));
        self.clock = Some(now);
        now
    }

    /// The challenger that takes over from the dominant speaker at `now`, if any.
    fn challenger(&mut self, now: Instant) -> Option<K> {
        let incumbent = self.dominant?;
        let fill_after = self.config.silence_fill_after;
        for s in self.speakers.values_mut() {
            s.fill_silence(now, fill_after);
        }
        let d = self
            .scores
            .log_scores(self.speakers.get(&incumbent)?.activity());
        let c = &self.config;
        let mut best: Option<(K, LogScores)> = None;
        for (&k, s) in &self.speakers {
            if k == incumbent {
                continue;
            }
            let r = self.scores.log_scores(s.activity()).relative_to(d);
            let qualifies = r.immediate > c.immediate_margin
                && r.medium > c.medium_margin
                && r.long > c.long_margin;
            if qualifies && best.is_none_or(|(_, b)| r.beats(b)) {
                best = Some((k, r));
            }
        }
        best.map(|(k, _)| k)
    }

    fn set_dominant(&mut self, next: Option<K>) -> SpeakerChange<K> {
        let previous = self.dominant;
        self.dominant = next;
        if let Some(k) = next
            && let Some(at) = self.recency.iter().position(|x| *x == k)
        {
            self.recency[..=at].rotate_right(1);
            if at >= self.ever_dominant {
                self.ever_dominant += 1;
            }
        }
        SpeakerChange {
            previous,
            dominant: next,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME_MS: u64 = 20;

    // Levels as the header extension carries them (-dBov: smaller is louder).
    /// Speech: loudness 97, nine active sub-bands, the immediate scale's peak.
    const TALK: u8 = 30;
    /// Between syllables: loudness 42, within 10 of a quiet room's floor.
    const DIP: u8 = 85;
    /// A quiet room's background: loudness 37.
    const ROOM: u8 = 90;
    /// Digital silence.
    const MUTE: u8 = 127;

    const A: u32 = 1;
    const B: u32 = 2;
    const C: u32 = 3;

    /// A small deterministic generator, so that test speech is irregular but reproducible.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % n
        }
    }

    /// Speech as a level source: syllables of 6..=14 loud frames, gaps of 1..=3 quiet ones.
    /// Irregular on purpose: a periodic pattern whose period divides the 15-frame decision
    /// interval would meet the 5-frame blocks at the same alignment in every decision.
    struct Voice {
        rng: Lcg,
        left: u64,
        loud: bool,
    }

    impl Voice {
        fn new(seed: u64) -> Self {
            Self {
                rng: Lcg(seed),
                left: 0,
                loud: false,
            }
        }

        fn next(&mut self) -> u8 {
            if self.left == 0 {
                self.loud = !self.loud;
                self.left = if self.loud {
                    6 + self.rng.below(9)
                } else {
                    1 + self.rng.below(3)
                };
            }
            self.left -= 1;
            if self.loud {
                TALK - 2 + self.rng.below(5) as u8
            } else {
                DIP
            }
        }
    }

    /// Drives a `DominantSpeaker<u32>` like the bridge would: a frame of levels every 20 ms
    /// (7 ms off the decision grid), decisions exactly when `poll_timeout` says.
    struct Sim {
        dsi: DominantSpeaker<u32>,
        t0: Instant,
        frames: u64,
        /// Changes with the milliseconds since `t0` at which they happened.
        changes: Vec<(u64, SpeakerChange<u32>)>,
    }

    impl Sim {
        fn new(speakers: &[u32]) -> Self {
            Self::with_config(speakers, SpeakerConfig::default())
        }

        fn with_config(speakers: &[u32], config: SpeakerConfig) -> Self {
            Self::at(Instant::now(), speakers, config)
        }

        fn at(t0: Instant, speakers: &[u32], config: SpeakerConfig) -> Self {
            let mut sim = Sim {
                dsi: DominantSpeaker::new(config),
                t0,
                frames: 0,
                changes: Vec::new(),
            };
            for &k in speakers {
                if let Some(c) = sim.dsi.add_speaker(k, t0) {
                    sim.changes.push((0, c));
                }
            }
            sim
        }

        fn ms(&self, t: Instant) -> u64 {
            t.duration_since(self.t0).as_millis() as u64
        }

        /// When the next frame is received, in ms since `t0`.
        fn now_ms(&self) -> u64 {
            7 + FRAME_MS * self.frames
        }

        fn run_until(&mut self, t: Instant) {
            while let Some(due) = self.dsi.poll_timeout().filter(|d| *d <= t) {
                if let Some(c) = self.dsi.handle_timeout(due) {
                    self.changes.push((self.ms(due), c));
                }
            }
        }

        /// One frame: the decisions due first, then a level for each listed speaker (the others
        /// send nothing this frame).
        fn frame(&mut self, levels: &[(u32, u8)]) {
            let t = self.t0 + Duration::from_millis(self.now_ms());
            self.run_until(t);
            for &(k, dbov) in levels {
                assert!(self.dsi.level(k, dbov, t));
            }
            self.frames += 1;
        }

        fn frames(&mut self, n: u64, mut levels: impl FnMut(u64) -> Vec<(u32, u8)>) {
            for _ in 0..n {
                let l = levels(self.frames);
                self.frame(&l);
            }
        }

        fn dominant_changes(&self) -> Vec<Option<u32>> {
            self.changes.iter().map(|(_, c)| c.dominant).collect()
        }
    }

    fn push_all(s: &mut Speaker, loudness: &[u8], t: Instant) {
        let config = SpeakerConfig::default();
        for &l in loudness {
            s.level(Loudness(l), t, &config);
        }
    }

    #[test]
    fn reference_scores() {
        let close = |got: f64, want: f64, tol: f64| {
            assert!((got - want).abs() < tol, "got {got}, want {want}");
        };
        close(activity_score(9, 13, LAMBDA_IMMEDIATE), 4.83, 0.005);
        close(activity_score(5, 5, LAMBDA_MEDIUM), 113.36, 0.005);
        close(activity_score(10, 10, LAMBDA_LONG), 459.2, 0.05);
        // k = 9 is the peak of the immediate score: louder frames score slightly lower.
        let peak = (0..=SUB_BANDS)
            .max_by(|a, b| {
                activity_score(*a, 13, LAMBDA_IMMEDIATE).total_cmp(&activity_score(
                    *b,
                    13,
                    LAMBDA_IMMEDIATE,
                ))
            })
            .unwrap();
        assert_eq!(peak, 9);
        // No activity is the floor on every scale, so two silent speakers tie at ratio 1.
        assert_eq!(activity_score(0, 13, LAMBDA_IMMEDIATE), MIN_SCORE);
        assert_eq!(activity_score(3, 13, LAMBDA_IMMEDIATE), MIN_SCORE);
        assert_eq!(activity_score(0, 5, LAMBDA_MEDIUM), MIN_SCORE);
        assert_eq!(activity_score(0, 10, LAMBDA_LONG), MIN_SCORE);
        // The tables hold the logarithms.
        let t = ScoreTable::new();
        close(t.medium[5], 113.36f64.ln(), 1e-4);
        close(t.long[0], MIN_SCORE.ln(), 1e-12);
        assert_eq!(binomial(13, 9), 715);
        assert_eq!(binomial(10, 5), 252);
    }

    #[test]
    fn levels_map_to_loudness() {
        assert_eq!(Loudness::from_dbov(0), Loudness(127));
        assert_eq!(Loudness::from_dbov(127), Loudness::SILENCE);
        assert_eq!(Loudness::from_dbov(200), Loudness::SILENCE);
        assert_eq!(Loudness::from_dbov(TALK), Loudness(97));
    }

    #[test]
    fn immediates_blocks_and_longs() {
        let t = Instant::now();
        let mut s = Speaker::new(t);
        push_all(&mut s, &[37], t); // the floor: speech needs 47 or more
        push_all(&mut s, &[97; 45], t);
        push_all(&mut s, &[46; 5], t); // just under the floor margin
        assert_eq!(s.floor.level, Loudness(37));
        assert_eq!(
            s.activity(),
            Activity {
                immediate: 0,
                medium: 0,
                long: 9
            }
        );
        // A full-scale frame: 12 sub-bands. The blocks slide with it: the newest holds one
        // active frame, the next only four of five.
        push_all(&mut s, &[127], t);
        assert_eq!(
            s.activity(),
            Activity {
                immediate: 12,
                medium: 1,
                long: 8
            }
        );
        // 47 is active (4 sub-bands) but not an active frame (needs more than 7).
        push_all(&mut s, &[47], t);
        assert_eq!(s.activity().immediate, 4);
        assert_eq!(s.activity().medium, 1);
    }

    #[test]
    fn noise_floor_drops_at_once_and_rises_slowly() {
        let mut f = NoiseFloor::default();
        f.observe(Loudness(40), 750);
        assert_eq!(f.level, Loudness(40));
        f.observe(Loudness(20), 750);
        assert_eq!(f.level, Loudness(20));
        f.observe(Loudness::SILENCE, 750);
        assert_eq!(f.level, Loudness(20), "silence is not background");
        for i in 1..750 {
            f.observe(Loudness(80 + (i % 3) as u8), 750);
        }
        assert_eq!(f.level, Loudness(20), "749 levels are not enough");
        f.observe(Loudness(90), 750);
        // Geometric mean of the old floor and the window's minimum: sqrt(20 * 80).
        assert_eq!(f.level, Loudness(40));
        for _ in 0..750 {
            f.observe(Loudness(80), 750);
        }
        assert_eq!(f.level, Loudness(56), "sqrt(40 * 80) = 56.6, truncated");
        f.observe(Loudness(30), 750);
        assert_eq!(f.level, Loudness(30));
    }

    #[test]
    fn a_noise_that_starts_mid_call_fades_as_the_floor_rises() {
        // A fan switched on next to a silent participant: loudness 37 -> 85. Its frames are
        // active at first; the floor needs four windows (about a minute) to catch up.
        let t = Instant::now();
        let mut s = Speaker::new(t);
        push_all(&mut s, &[37; 100], t);
        push_all(&mut s, &[85; 50], t);
        assert_eq!(s.activity().long, 10);
        // The window that was open when the fan started still holds 37s: no rise.
        push_all(&mut s, &[85; 750 - 99 - 50], t);
        assert_eq!(s.floor.level, Loudness(37));
        push_all(&mut s, &[85; 750], t);
        assert_eq!(s.floor.level, Loudness(56));
        push_all(&mut s, &[85; 750], t);
        assert_eq!(s.floor.level, Loudness(68));
        assert_eq!(s.activity().long, 10, "85 is still 10 above the floor");
        push_all(&mut s, &[85; 750], t);
        assert_eq!(s.floor.level, Loudness(76));
        assert_eq!(s.activity(), Activity::default());
    }

    #[test]
    fn no_speakers_no_dominant() {
        let t0 = Instant::now();
        let mut d = DominantSpeaker::<u32>::default();
        assert_eq!(d.dominant(), None);
        assert_eq!(d.poll_timeout(), None);
        assert_eq!(d.handle_timeout(t0 + Duration::from_secs(1)), None);
        assert_eq!(d.recent_speakers().count(), 0);
        assert!(
            !d.level(A, TALK, t0),
            "levels of unknown speakers are ignored"
        );
        assert_eq!(d.remove_speaker(A, t0), None);
        assert!(d.is_empty());
    }

    #[test]
    fn one_speaker_is_dominant_at_once() {
        let t0 = Instant::now();
        let mut d = DominantSpeaker::<u32>::default();
        assert_eq!(
            d.add_speaker(A, t0),
            Some(SpeakerChange {
                previous: None,
                dominant: Some(A)
            })
        );
        assert_eq!(d.dominant(), Some(A));
        assert_eq!(d.add_speaker(A, t0), None, "adding twice changes nothing");
        assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_millis(300)));
        // Silent or not, alone it stays dominant.
        let mut sim = Sim::new(&[A]);
        sim.frames(100, |_| vec![(A, MUTE)]);
        assert_eq!(sim.dominant_changes(), [Some(A)]);
        assert_eq!(sim.dsi.decisions(), 6);
        // The last one leaving ends the schedule.
        assert_eq!(
            d.remove_speaker(A, t0),
            Some(SpeakerChange {
                previous: Some(A),
                dominant: None
            })
        );
        assert_eq!(d.poll_timeout(), None);
        assert_eq!(d.dominant(), None);
    }

    #[test]
    fn steady_noise_does_not_make_its_owner_dominant() {
        // N sits next to a loud, steady noise, louder than A's speech (loudness 98..=102 against
        // 93..=101); S is muted. N joined first, so it starts out dominant.
        const N: u32 = 10;
        const S: u32 = 11;
        let mut sim = Sim::new(&[N, A, S]);
        let mut noise = Lcg(7);
        let mut voice = Voice::new(1);
        let mut levels = move |f: u64| {
            let a = match f {
                0..50 => ROOM,
                50..200 | 300..450 => voice.next(),
                _ => ROOM,
            };
            vec![(N, 25 + noise.below(5) as u8), (A, a), (S, MUTE)]
        };
        sim.frames(450, &mut levels);
        // A takes over within a second of starting to talk, and keeps the floor through its
        // pause: N's noise is its own floor, so N has no activity at all.
        assert_eq!(sim.dominant_changes(), [Some(N), Some(A)]);
        let (at, _) = sim.changes[1];
        assert!((1_000..=2_000).contains(&at), "switched at {at} ms");
        assert_eq!(
            sim.dsi.speakers[&N].activity(),
            Activity::default(),
            "the noise is background"
        );
        assert_eq!(sim.dsi.speakers[&S].activity(), Activity::default());
    }

    #[test]
    fn transient_shorter_than_a_decision_interval_does_not_switch() {
        // A talks; B, in a quiet room, makes a 280 ms noise (14 frames, louder than A) at every
        // alignment with the decision grid. A's medium and immediate scores keep B out.
        for offset in 0..15 {
            let mut sim = Sim::new(&[A, B]);
            let mut voice = Voice::new(2);
            let burst = 100 + offset..114 + offset;
            sim.frames(250, |f| {
                let b = if burst.contains(&f) { TALK - 10 } else { ROOM };
                vec![(A, voice.next()), (B, b)]
            });
            assert_eq!(sim.dominant_changes(), [Some(A)], "offset {offset}");
        }
        // Shorter than a block (< 100 ms), a click cannot win even against a silent dominant:
        // it never fills a medium block, so B's long score stays at A's.
        for offset in 0..15 {
            let mut sim = Sim::new(&[A, B]);
            let burst = 100 + offset..104 + offset;
            sim.frames(250, |f| {
                let b = if burst.contains(&f) { TALK } else { ROOM };
                vec![(A, ROOM), (B, b)]
            });
            assert_eq!(sim.dominant_changes(), [Some(A)], "offset {offset}");
        }
    }

    #[test]
    fn a_short_utterance_in_a_silent_room_takes_the_floor() {
        // The other side of the rule, documented: against a dominant speaker who is silent, a
        // 200 ms "yes" wins if a decision falls within it after its first full block.
        let mut switched = 0;
        for offset in 0..15 {
            let mut sim = Sim::new(&[A, B]);
            let burst = 100 + offset..110 + offset;
            sim.frames(200, |f| {
                let b = if burst.contains(&f) { TALK } else { ROOM };
                vec![(A, ROOM), (B, b)]
            });
            if sim.dsi.dominant() == Some(B) {
                switched += 1;
            }
        }
        // A decision lands on frames 5..=10 of the burst for 6 of the 15 alignments.
        assert_eq!(switched, 6);
    }

    #[test]
    fn sustained_speech_switches_within_about_a_second() {
        // A talks for three seconds and stops; B starts in the same frame (the hardest
        // hand-over: A's long window is still full of speech). 120 runs: 8 voices, each at 15
        // alignments with the decision grid.
        let mut latencies = Vec::new();
        for seed in 0..8 {
            for offset in 0..15 {
                let mut sim = Sim::new(&[A, B]);
                let mut a_voice = Voice::new(100 + seed);
                let mut b_voice = Voice::new(200 + seed);
                sim.frames(150 + offset, |_| vec![(A, a_voice.next()), (B, ROOM)]);
                let onset_ms = sim.now_ms();
                sim.frames(100, |_| vec![(A, ROOM), (B, b_voice.next())]);
                assert_eq!(
                    sim.dominant_changes(),
                    [Some(A), Some(B)],
                    "seed {seed} offset {offset}"
                );
                latencies.push(sim.changes[1].0 - onset_ms);
            }
        }
        latencies.sort_unstable();
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
        // B needs more full blocks in its last second than A has left in its own, and a loud
        // newest frame and an active newest block at a decision instant. The slow tail is B
        // between syllables at several decisions in a row (measured: median 693 ms, 85th
        // percentile 893 ms, worst 1613 ms; the loop above bounds every run by 2 s).
        assert!(at(0.5) <= 800, "median {} ms", at(0.5));
        assert!(at(0.85) <= 1_000, "85th percentile {} ms", at(0.85));
    }

    #[test]
    fn silence_filling_pushes_a_silent_frame_per_40_ms() {
        let t = Instant::now();
        let fill_after = Duration::from_millis(40);
        let mut s = Speaker::new(t);
        push_all(&mut s, &[37, 97], t);
        let newest = |s: &Speaker| s.history.newest_first().take(4).collect::<Vec<_>>();
        s.fill_silence(t + fill_after, fill_after);
        assert_eq!(
            newest(&s)[0],
            Loudness(97),
            "40 ms without a level is not yet a gap"
        );
        s.fill_silence(t + fill_after + Duration::from_nanos(1), fill_after);
        assert_eq!(newest(&s)[..2], [Loudness::SILENCE, Loudness(97)]);
        s.fill_silence(t + Duration::from_millis(100), fill_after);
        assert_eq!(
            newest(&s)[..3],
            [Loudness::SILENCE, Loudness::SILENCE, Loudness(97)]
        );
        // Looking again at the same instant adds nothing.
        s.fill_silence(t + Duration::from_millis(100), fill_after);
        assert_eq!(newest(&s)[2], Loudness(97));
        // An hour later the whole window is silent, after at most 50 pushes.
        s.fill_silence(t + Duration::from_secs(3_600), fill_after);
        assert!(s.history.newest_first().all(|l| l == Loudness::SILENCE));
        assert_eq!(
            s.floor.level,
            Loudness(37),
            "filled silence leaves the floor alone"
        );
        // A real level restarts the count.
        let later = t + Duration::from_secs(3_600);
        s.level(Loudness(97), later, &SpeakerConfig::default());
        s.fill_silence(later + Duration::from_millis(50), fill_after);
        assert_eq!(newest(&s)[..2], [Loudness::SILENCE, Loudness(97)]);
    }

    #[test]
    fn a_speaker_whose_levels_stop_counts_as_silent() {
        // B talks and is dominant; then its packets stop mid-word (mute with no DTX, a dead
        // link) and A starts talking.
        let scenario = |config: SpeakerConfig| {
            let mut sim = Sim::with_config(&[B, A], config);
            let mut a_voice = Voice::new(3);
            let mut b_voice = Voice::new(4);
            sim.frames(150, |_| vec![(B, b_voice.next()), (A, ROOM)]);
            // Make sure B's history ends on speech.
            sim.frames(10, |_| vec![(B, TALK), (A, ROOM)]);
            let stop_ms = sim.now_ms();
            sim.frames(100, |_| vec![(A, a_voice.next())]);
            (sim, stop_ms)
        };
        let (sim, stop_ms) = scenario(SpeakerConfig::default());
        assert_eq!(sim.dominant_changes(), [Some(B), Some(A)]);
        let latency = sim.changes[1].0 - stop_ms;
        assert!(latency <= 1_000, "took {latency} ms");
        assert_eq!(sim.dsi.speakers[&B].activity(), Activity::default());
        // Without filling, B's last second stays frozen in its history and A never gets in.
        let (sim, _) = scenario(SpeakerConfig {
            silence_fill_after: Duration::from_secs(3_600),
            ..SpeakerConfig::default()
        });
        assert_eq!(sim.dominant_changes(), [Some(B)]);
    }

    #[test]
    fn removing_the_dominant_speaker_re_decides() {
        let mut sim = Sim::new(&[A, B, C]);
        let mut voice = Voice::new(5);
        sim.frames(50, |_| vec![(A, ROOM), (B, ROOM), (C, ROOM)]);
        sim.frames(100, |_| vec![(A, ROOM), (B, voice.next()), (C, ROOM)]);
        sim.frames(50, |_| vec![(A, ROOM), (B, ROOM), (C, ROOM)]);
        assert_eq!(sim.dsi.dominant(), Some(B));
        let now = sim.t0 + Duration::from_millis(sim.now_ms());
        // Not the dominant one: nothing to decide.
        assert_eq!(sim.dsi.remove_speaker(C, now), None);
        assert_eq!(sim.dsi.remove_speaker(C, now), None);
        // Nobody talks: the floor returns to the previous dominant speaker.
        assert_eq!(
            sim.dsi.remove_speaker(B, now),
            Some(SpeakerChange {
                previous: Some(B),
                dominant: Some(A)
            })
        );
        assert_eq!(sim.dsi.recent_speakers().collect::<Vec<_>>(), [A]);

        // Someone talking when the dominant speaker leaves takes over at once. No scheduled
        // decision gets the chance here: the interval is an hour.
        let config = SpeakerConfig {
            decision_interval: Duration::from_secs(3_600),
            ..SpeakerConfig::default()
        };
        let mut sim = Sim::with_config(&[A, B, C], config);
        let mut voice = Voice::new(6);
        sim.frames(100, |_| vec![(A, ROOM), (B, ROOM), (C, voice.next())]);
        assert_eq!(sim.dsi.dominant(), Some(A));
        let now = sim.t0 + Duration::from_millis(sim.now_ms());
        assert_eq!(
            sim.dsi.remove_speaker(A, now),
            Some(SpeakerChange {
                previous: Some(A),
                dominant: Some(C)
            })
        );
        assert_eq!(sim.dsi.recent_speakers().collect::<Vec<_>>(), [C, B]);
        assert_eq!(sim.dsi.decisions(), 0);
    }

    #[test]
    fn recent_speakers_are_ordered_by_dominance_then_key() {
        let t0 = Instant::now();
        let mut d = DominantSpeaker::<u32>::default();
        for k in [5, 3, 9, 1] {
            d.add_speaker(k, t0);
        }
        assert_eq!(d.recent_speakers().collect::<Vec<_>>(), [5, 1, 3, 9]);
        d.set_dominant(Some(9));
        d.set_dominant(Some(1));
        assert_eq!(d.recent_speakers().collect::<Vec<_>>(), [1, 9, 5, 3]);
        d.set_dominant(Some(5));
        assert_eq!(d.recent_speakers().collect::<Vec<_>>(), [5, 1, 9, 3]);
        d.add_speaker(2, t0);
        assert_eq!(d.recent_speakers().collect::<Vec<_>>(), [5, 1, 9, 2, 3]);
        d.remove_speaker(9, t0);
        d.remove_speaker(2, t0);
        assert_eq!(d.recent_speakers().collect::<Vec<_>>(), [5, 1, 3]);
        assert_eq!(d.ever_dominant, 2);
    }

    #[test]
    fn a_late_caller_gets_one_decision_and_the_grid_is_kept() {
        let t0 = Instant::now();
        let mut d = DominantSpeaker::<u32>::default();
        d.add_speaker(A, t0);
        d.add_speaker(B, t0);
        assert_eq!(d.handle_timeout(t0 + Duration::from_millis(299)), None);
        assert_eq!(d.decisions(), 0);
        d.handle_timeout(t0 + Duration::from_millis(1_000));
        assert_eq!(d.decisions(), 1);
        assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_millis(1_200)));
        // Time does not run backwards: an old instant is read as the latest one.
        assert_eq!(d.handle_timeout(t0), None);
        assert_eq!(d.decisions(), 1);
    }

    #[test]
    fn identical_inputs_give_identical_decisions() {
        // A minute of a five-way conversation: talkspurts that overlap, pauses with room noise
        // or with no packets at all (DTX). The second instance learns of the speakers in
        // another order (the first is the same) and receives each frame's levels in reverse.
        const N: u32 = 5;
        let mut rng = Lcg(42);
        let mut voices: Vec<Voice> = (0..N).map(|k| Voice::new(1_000 + u64::from(k))).collect();
        let mut talking = [false; N as usize];
        let mut frames = Vec::new();
        for _ in 0..3_000 {
            let mut frame = Vec::new();
            for k in 0..N {
                let i = k as usize;
                if rng.below(if talking[i] { 150 } else { 400 }) == 0 {
                    talking[i] = !talking[i];
                }
                let level = if talking[i] {
                    Some(voices[i].next())
                } else if rng.below(4) == 0 {
                    None
                } else {
                    Some(ROOM - 2 + rng.below(5) as u8)
                };
                if let Some(l) = level {
                    frame.push((k, l));
                }
            }
            frames.push(frame);
        }

        let t0 = Instant::now();
        let mut one = Sim::at(t0, &[0, 1, 2, 3, 4], SpeakerConfig::default());
        let mut two = Sim::at(t0, &[0, 4, 2, 3, 1], SpeakerConfig::default());
        let mut dominants = (Vec::new(), Vec::new());
        for frame in &frames {
            one.frame(frame);
            let reversed: Vec<_> = frame.iter().rev().copied().collect();
            two.frame(&reversed);
            dominants.0.push(one.dsi.dominant());
            dominants.1.push(two.dsi.dominant());
        }
        assert_eq!(one.changes, two.changes);
        assert_eq!(dominants.0, dominants.1);
        assert_eq!(one.dsi.decisions(), two.dsi.decisions());
        assert_eq!(
            one.dsi.recent_speakers().collect::<Vec<_>>(),
            two.dsi.recent_speakers().collect::<Vec<_>>()
        );
        assert!(one.changes.len() >= 10, "{} changes", one.changes.len());
    }
}

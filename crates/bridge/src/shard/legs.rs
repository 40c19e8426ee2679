//! WebRTC legs: created for a participant's publisher or subscriber side, timed out when silent,
//! closed with their demux entries.

use super::*;

/// Why no leg was made.
#[derive(Debug)]
pub(super) enum NewLegError {
    /// This many legs are connecting already.
    Busy(usize),
    Build(anyhow::Error),
}

impl NewLegError {
    /// The error the participant gets, and why.
    pub(super) fn code_and_reason(&self) -> (ErrorCode, String) {
        match self {
            NewLegError::Busy(n) => (
                ErrorCode::Unavailable,
                format!("{n} connections are being set up on this bridge; try again shortly"),
            ),
            NewLegError::Build(e) => (ErrorCode::Internal, format!("{e:#}")),
        }
    }
}

impl Shard {
    pub(super) fn housekeeping(&mut self, now: Instant) {
        if let Some(siblings) = self.siblings.as_mut() {
            siblings.read_notes(&mut self.demux);
        }
        let timeout = self.limits.leg_timeout;
        let stale: Vec<EndpointId> = self
            .legs
            .iter()
            .flatten()
            // Silent, or never connected: ICE checks alone keep `last_rx` fresh while a failed
            // DTLS handshake leaves the leg useless.
            .filter(|l| {
                now.saturating_duration_since(l.last_rx) > timeout
                    || (!l.connected && now.saturating_duration_since(l.created) > timeout)
            })
            .map(|l| l.owner)
            .collect();
        for ep in stale {
            self.fail(
                now,
                ep,
                ErrorCode::MediaTimeout,
                "nothing received, or the connection never completed, within the leg timeout",
            );
        }
        self.octo_housekeeping(now);
        self.sender_reports(now);
        self.stun_guard.expire(now);
        self.expire_caches(now);
        // Peers whose demands ended or timed out hold no state.
        for src in self.sources.values_mut() {
            src.demand.expire(now);
        }
        // A conference over several shards is in each one's core: each counts its own part.
        let (p_elsewhere, t_elsewhere, c_elsewhere) = self.counted_elsewhere();
        let g = &mut self.gauges;
        let m = &self.metrics;
        let conferences = self.core.len().saturating_sub(c_elsewhere) as i64;
        GaugeShares::report(&mut g.conferences, &m.conferences, conferences);
        let participants = self.core.participant_count().saturating_sub(p_elsewhere) as i64;
        GaugeShares::report(&mut g.participants, &m.participants, participants);
        m.shard_participants
            .with_label_values(&[self.index.0.to_string()])
            .set(participants);
        let tracks = self.core.track_count().saturating_sub(t_elsewhere) as i64;
        GaugeShares::report(&mut g.tracks, &m.tracks, tracks);
        let legs = self.legs.iter().flatten().count() as i64;
        GaugeShares::report(&mut g.legs, &m.legs, legs);
    }

    /// A new leg, unless `limits.max_pending_legs` legs are already connecting: each costs a
    /// DTLS handshake (a key exchange and a signature), the dearest thing a client can ask of
    /// the node, so a burst of offers cannot take the shard's CPU from the calls in progress.
    pub(super) fn new_leg(
        &mut self,
        now: Instant,
        owner: EndpointId,
        role: Role,
    ) -> Result<LegId, NewLegError> {
        let pending = self.legs.iter().flatten().filter(|l| !l.connected).count();
        if self.limits.max_pending_legs > 0 && pending >= self.limits.max_pending_legs {
            self.metrics
                .limit_hits
                .with_label_values(&[crate::limits::PENDING_LEGS])
                .inc();
            return Err(NewLegError::Busy(pending));
        }
        let (ufrag, pwd) = leg::ice_credentials(crate::demux::ufrag_prefix(self.index));
        let kind = match role {
            Role::Publisher => leg::LegKind::Publisher,
            Role::Subscriber => leg::LegKind::Subscriber,
        };
        let built = leg::build_peer_connection(now, &self.settings, &ufrag, &pwd, kind)
            .map_err(NewLegError::Build)?;
        let leg = Leg {
            pc: built.pc,
            lean: built.lean,
            owner,
            role,
            created: now,
            last_rx: now,
            deadline: None,
            queued: false,
            connected: false,
            published: HashMap::new(),
            senders: HashMap::new(),
            awaiting_answer: false,
            needs_offer: false,
            rtt: kaskade_sfu::SmoothedRtt::default(),
            bandwidth: simulcast::Bandwidth::default(),
            rids: Vec::new(),
            answered: false,
            early_stun: Vec::new(),
        };
        let id = match self.free_legs.pop() {
            Some(i) => {
                self.legs[i as usize] = Some(leg);
                LegId(i)
            }
            None => {
                self.legs.push(Some(leg));
                LegId((self.legs.len() - 1) as u32)
            }
        };
        self.demux.add_leg(id, &ufrag);
        debug!(leg = id.0, endpoint = %owner, ?role, "leg created");
        Ok(id)
    }

    pub(super) fn close_leg(&mut self, leg_id: LegId) {
        let Some(mut leg) = self.legs.get_mut(leg_id.0 as usize).and_then(|l| l.take()) else {
            return;
        };
        if let Err(e) = leg.pc.close() {
            debug!(leg = leg_id.0, error = %e, "closing leg");
        }
        self.stun_guard.forget_leg(leg_id);
        // Whatever close produced (DTLS close_notify) still goes out.
        while let Some(w) = leg.pc.poll_write() {
            self.out.push((w.transport.peer_addr, w.message));
        }
        if let Some(d) = leg.deadline {
            self.timers.remove(&(d, leg_id));
        }
        self.demux.remove_leg(leg_id);
        self.by_ssrc.retain(|(l, _), _| *l != leg_id);
        self.free_legs.push(leg_id.0);
    }

    pub(super) fn leg_mut(&mut self, id: LegId) -> Option<&mut Leg> {
        self.legs.get_mut(id.0 as usize).and_then(|l| l.as_mut())
    }

    /// An outbound SSRC no other track of this shard uses. On a node of several shards it is
    /// in this shard's lane (its value modulo the shard count), so the SSRCs a peer bridge gets
    /// from one node never collide, whichever shard sent them.
    pub(super) fn fresh_ssrc(&self) -> u32 {
        let lanes = self.siblings.as_ref().map_or(1, |s| s.count()) as u32;
        loop {
            let r: u32 = rand::random();
            let Some(s) = (r - r % lanes).checked_add(u32::from(self.index.0) % lanes) else {
                continue;
            };
            if s != 0 && !self.by_out_ssrc.contains_key(&s) {
                return s;
            }
        }
    }
}

//! The thread and the loop around a shard: sockets in, commands in, timers; everything else is
//! a function of what they deliver and `now`.

use super::*;

/// Starts one shard per media socket, each on its own thread. The sockets share the media
/// port (`SO_REUSEPORT`) when there are several. With Octo, shard 0 owns the Octo socket and
/// the links, and the other shards' cascades go through it (shard/siblings.rs).
pub fn spawn_all(
    sockets: Vec<std::net::UdpSocket>,
    settings: LegSettings,
    limits: ShardLimits,
    bridge: BridgeInfo,
    metrics: Arc<Metrics>,
    octo: Option<(std::net::UdpSocket, crate::config::OctoConfig)>,
) -> Result<Vec<(ShardHandle, std::thread::JoinHandle<()>)>> {
    let n = sockets.len();
    anyhow::ensure!(
        (1..=crate::config::MAX_SHARDS).contains(&n),
        "{n} media sockets for {} shards at most",
        crate::config::MAX_SHARDS
    );
    let (commands, command_rx): (Vec<_>, Vec<_>) =
        (0..n).map(|_| mpsc::unbounded_channel()).unzip();
    let (handoff, handoff_rx): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| mpsc::channel(siblings::HANDOFF_QUEUE))
        .unzip();
    let (notes, inboxes): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
    let (mut octo_socket, octo_config) = match octo {
        Some((socket, config)) => (Some(socket), Some(config)),
        None => (None, None),
    };
    let mut started = Vec::with_capacity(n);
    for (i, (((socket, rx), hrx), inbox)) in sockets
        .into_iter()
        .zip(command_rx)
        .zip(handoff_rx)
        .zip(inboxes)
        .enumerate()
    {
        let index = ShardIndex(u8::try_from(i).context("shard index")?);
        let mut shard = Shard::new(
            settings.clone(),
            limits.clone(),
            bridge.clone(),
            metrics.clone(),
        );
        shard.index = index;
        // Ids carry the bridge's Octo id in their high byte and the shard in the rest, so they
        // are unique in the cluster.
        let prefix = octo_config.as_ref().map_or(0, |c| c.bridge_id as u8);
        shard.core = Conferences::with_id_space(prefix, index.0, n as u8);
        if n > 1 {
            shard.demux.track_changes();
            shard.siblings = Some(siblings::Siblings::new(
                index,
                handoff.clone(),
                notes.clone(),
                inbox,
            ));
        }
        let handle = ShardHandle {
            commands: commands[i].clone(),
            media_addr: socket.local_addr().context("media socket address")?,
        };
        if let Some(config) = octo_config.as_ref() {
            let mut cascade = cascade::Cascade::new(config, &metrics, Instant::now())?;
            if let Some(gateway) = shard.siblings.as_ref().and_then(|s| s.gateway())
                && index != siblings::GATEWAY
            {
                cascade.relay_through(gateway, &metrics);
            }
            shard.octo = Some(cascade);
        }
        if n > 1 {
            // A conference may span shards (crate::shards): the cascade links them, with or
            // without Octo.
            let mut cascade = match shard.octo.take() {
                Some(c) => c,
                None => cascade::Cascade::for_shards(Instant::now()),
            };
            cascade.spread = Some(cascade::spread::Spread::new(
                index,
                handoff.clone(),
                &metrics,
            ));
            shard.octo = Some(cascade);
        }
        let thread = spawn_one(shard, socket, octo_socket.take(), rx, hrx)?;
        started.push((handle, thread));
    }
    metrics.shards.set(n as i64);
    Ok(started)
}

fn spawn_one(
    shard: Shard,
    socket: std::net::UdpSocket,
    octo_socket: Option<std::net::UdpSocket>,
    rx: mpsc::UnboundedReceiver<Command>,
    handoff: mpsc::Receiver<siblings::Handoff>,
) -> Result<std::thread::JoinHandle<()>> {
    socket
        .set_nonblocking(true)
        .context("making the media socket non-blocking")?;
    if let Some(sock) = octo_socket.as_ref() {
        sock.set_nonblocking(true)
            .context("making the Octo socket non-blocking")?;
    }
    let bridge_id = shard.bridge.id.clone();
    let index = shard.index.0;
    std::thread::Builder::new()
        .name(format!("kaskade-shard-{index}"))
        .spawn(move || {
            // Every line the media thread logs names its bridge and shard (fields in JSON).
            let _span = tracing::info_span!("shard", bridge = %bridge_id, shard = index).entered();
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the shard runtime");
                    return;
                }
            };
            rt.block_on(async move {
                let octo = match octo_socket.map(UdpSocket::from_std).transpose() {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot register the Octo socket");
                        return;
                    }
                };
                match UdpSocket::from_std(socket) {
                    Ok(socket) => shard.run(socket, octo, rx, handoff).await,
                    Err(e) => tracing::error!(error = %e, "cannot register the media socket"),
                }
            });
        })
        .context("starting the shard thread")
}

pub(super) const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// How often gaps (uplink, Octo) are turned into NACKs: a gap waits at most this long before
/// its first request. Short, because every millisecond here is repair delay; a reordered
/// packet that arrives meanwhile is simply not asked for.
pub(super) const NACK_TICK: Duration = Duration::from_millis(5);
/// The NACK tick's period while it has nothing to do; a packet that gives it work wakes it.
pub(super) const NACK_IDLE: Duration = Duration::from_secs(1);
pub(super) const MAX_DATAGRAM: usize = 2048;
/// The longest forwarded copies wait in a receive batch for more to send with them.
const MAX_HOLD: Duration = Duration::from_micros(200);

impl Shard {
    /// Whether an Octo datagram (from its clear header) is forwarded by this shard: its
    /// conference is here, alone or among others.
    fn octo_conference_here(&self, d: &[u8]) -> bool {
        let (Some(s), Some(octo)) = (self.siblings.as_ref(), self.octo.as_ref()) else {
            return true;
        };
        kaskade_octo::Header::decode(d).map_or(true, |h| octo.shards_for(&h).contains(s.me()))
    }

    /// Whether what is ready to send should go now rather than with the rest of the receive
    /// batch: a full send call's worth, or held for [`MAX_HOLD`] since `held_since`.
    fn send_due(&self, held_since: Instant, now: Instant) -> bool {
        let ready = self.out.len() + self.octo.as_ref().map_or(0, |o| o.out.len());
        ready >= txbatch::CHUNK
            || (ready > 0 && now.saturating_duration_since(held_since) >= MAX_HOLD)
    }

    /// Inside a receive batch: sends what is ready if [`Shard::send_due`] says so, and starts
    /// the next hold from `now`.
    fn send_if_due(
        &mut self,
        held_since: &mut Instant,
        now: Instant,
        socket: &UdpSocket,
        octo_socket: Option<&UdpSocket>,
        pending: &mut rxtime::Pending,
    ) {
        if self.send_due(*held_since, now) {
            self.send_out(socket, octo_socket);
            pending.observe(&self.metrics.forwarding_delay);
            *held_since = now;
        }
    }

    pub(super) async fn run(
        mut self,
        socket: UdpSocket,
        octo_socket: Option<UdpSocket>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut handoff: mpsc::Receiver<siblings::Handoff>,
    ) {
        info!(addr = ?socket.local_addr().ok(), advertised = %self.settings.advertised, "media shard running");
        let mut buf = vec![0u8; MAX_DATAGRAM];
        let mut octo_buf = vec![0u8; MAX_DATAGRAM];
        // Kernel receive timestamps (shard/rxtime.rs), for kaskade_forwarding_delay_seconds.
        let mut cmsg = rxtime::Cmsg::new();
        let mut octo_cmsg = rxtime::Cmsg::new();
        let mut pending = rxtime::Pending::new();
        for (name, s) in
            std::iter::once(("media", Some(&socket))).chain([("Octo", octo_socket.as_ref())])
        {
            if let Some(s) = s
                && !rxtime::enable(s)
            {
                warn!(
                    socket = name,
                    "no kernel receive timestamps: the forwarding delay starts at the read"
                );
            }
        }
        let mut next_housekeeping = Instant::now() + HOUSEKEEPING;
        let mut next_speakers = Instant::now() + speakers::SPEAKER_TICK;
        let mut next_nack = Instant::now() + NACK_TICK;
        let mut next_layers = Instant::now() + simulcast::LAYER_TICK;
        loop {
            if self.nack_due {
                self.nack_due = false;
                self.nack_wanted |= self.nack_tick(Instant::now());
            }
            if self.nack_wanted {
                self.nack_wanted = false;
                next_nack = next_nack.min(Instant::now() + NACK_TICK);
            }
            self.service_dirty(Instant::now());
            self.send_out(&socket, octo_socket.as_ref());
            pending.observe(&self.metrics.forwarding_delay);
            let next_timer = self.timers.first().map(|(t, _)| *t);
            let wake = next_timer
                .map_or(next_housekeeping, |t| t.min(next_housekeeping))
                .min(next_speakers)
                .min(next_nack)
                .min(next_layers);
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(Instant::now(), cmd),
                    None => break,
                },
                // recvmsg (rxtime::recv) in place of recv_from: the same datagram, plus the
                // kernel's receive timestamp.
                r = socket.async_io(Interest::READABLE, || {
                    rxtime::recv(&socket, &mut buf, &mut cmsg)
                }) => match r {
                    Ok((n, from, stamp)) => {
                        let started = Instant::now();
                        let data = buf.get(..n).unwrap_or_default();
                        self.on_client_datagram(started, from, data, stamp, &mut pending);
                        // Read on while datagrams are queued (no trip through the runtime
                        // each), but do not let a datagram's copies wait for the whole batch:
                        // they leave once a send call's worth is ready or the oldest has
                        // waited MAX_HOLD, so a big fan-out sends each packet's copies before
                        // forwarding the next, and small ones still share send calls. The
                        // legs touched are serviced (timers, RTCP) once, after the batch.
                        let mut held_since = started;
                        for _ in 1..rxtime::BATCH {
                            let now = Instant::now();
                            self.send_if_due(&mut held_since, now, &socket, octo_socket.as_ref(), &mut pending);
                            let r = socket.try_io(Interest::READABLE, || {
                                rxtime::recv(&socket, &mut buf, &mut cmsg)
                            });
                            match r {
                                Ok((n, from, stamp)) => {
                                    let data = buf.get(..n).unwrap_or_default();
                                    self.on_client_datagram(now, from, data, stamp, &mut pending);
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => debug!(error = %e, "media socket receive error"),
                },
                // Datagrams of our legs that reached another shard's socket: drained like a
                // receive batch.
                Some(h) = handoff.recv() => {
                    let now = Instant::now();
                    self.on_handed_off(now, h, &mut pending);
                    let mut held_since = now;
                    for _ in 1..rxtime::BATCH {
                        let now = Instant::now();
                        self.send_if_due(&mut held_since, now, &socket, octo_socket.as_ref(), &mut pending);
                        match handoff.try_recv() {
                            Ok(h) => self.on_handed_off(now, h, &mut pending),
                            Err(_) => break,
                        }
                    }
                },
                // select! picks among ready branches at random, so a flooding peer bridge
                // cannot starve the media socket (and vice versa).
                r = async {
                    match octo_socket.as_ref() {
                        Some(s) => {
                            s.async_io(Interest::READABLE, || {
                                rxtime::recv(s, &mut octo_buf, &mut octo_cmsg)
                            })
                            .await
                        }
                        None => std::future::pending().await,
                    }
                } => match r {
                    Ok((n, from, stamp)) => {
                        let now = Instant::now();
                        if let Some(d) = octo_buf.get_mut(..n) {
                            // Timed by the shard that forwards it (a hand-off carries it).
                            if rxtime::is_octo_rtp(d) && self.octo_conference_here(d) {
                                pending.push(rxtime::Input::Octo, stamp);
                            }
                            self.on_octo_datagram(now, from, d, stamp);
                        }
                    }
                    Err(e) => debug!(error = %e, "Octo socket receive error"),
                },
                _ = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    self.on_timers(now);
                    if now >= next_nack {
                        // Idle (nothing missing, no frame open, no copy queued), the tick
                        // sleeps until a packet gives it work: 200 wake-ups a second less.
                        next_nack = now
                            + if self.nack_tick(now) {
                                NACK_TICK
                            } else {
                                NACK_IDLE
                            };
                    }
                    if now >= next_layers {
                        self.layers_tick(now);
                        next_layers = now + simulcast::LAYER_TICK;
                    }
                    if now >= next_speakers {
                        self.speakers_tick(now);
                        next_speakers = now + speakers::SPEAKER_TICK;
                    }
                    if now >= next_housekeeping {
                        self.housekeeping(now);
                        next_housekeeping = now + HOUSEKEEPING;
                    }
                }
            }
        }
        info!("media shard stopped");
    }
}

//! The thread and the loop around a shard: sockets in, commands in, timers; everything else is
//! a function of what they deliver and `now`.

use super::*;

/// Binds the media socket and starts the shard on its own thread.
pub fn spawn(
    socket: std::net::UdpSocket,
    settings: LegSettings,
    limits: ShardLimits,
    bridge: BridgeInfo,
    metrics: Arc<Metrics>,
    octo: Option<(std::net::UdpSocket, crate::config::OctoConfig)>,
) -> Result<(ShardHandle, std::thread::JoinHandle<()>)> {
    socket
        .set_nonblocking(true)
        .context("making the media socket non-blocking")?;
    let media_addr = socket.local_addr().context("media socket address")?;
    let (tx, rx) = mpsc::unbounded_channel();
    let mut shard = Shard::new(settings, limits, bridge, metrics);
    let octo_socket = match octo {
        Some((sock, config)) => {
            // Ids this bridge allocates carry its Octo id, so they never collide across the
            // bridges of a conference.
            shard.core = Conferences::with_id_prefix(config.bridge_id as u8);
            sock.set_nonblocking(true)
                .context("making the Octo socket non-blocking")?;
            shard.octo = Some(cascade::Cascade::new(
                &config,
                &shard.metrics,
                Instant::now(),
            )?);
            Some(sock)
        }
        None => None,
    };
    let bridge_id = shard.bridge.id.clone();
    let thread = std::thread::Builder::new()
        .name("kaskade-shard-0".into())
        .spawn(move || {
            // Every line the media thread logs names its bridge (a field of this span in JSON).
            let _span = tracing::info_span!("shard", bridge = %bridge_id).entered();
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
                    Ok(socket) => shard.run(socket, octo, rx).await,
                    Err(e) => tracing::error!(error = %e, "cannot register the media socket"),
                }
            });
        })
        .context("starting the shard thread")?;
    Ok((
        ShardHandle {
            commands: tx,
            media_addr,
        },
        thread,
    ))
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
    /// Whether what is ready to send should go now rather than with the rest of the receive
    /// batch: a full send call's worth, or held for [`MAX_HOLD`] since `held_since`.
    fn send_due(&self, held_since: Instant, now: Instant) -> bool {
        let ready = self.out.len() + self.octo.as_ref().map_or(0, |o| o.out.len());
        ready >= txbatch::CHUNK
            || (ready > 0 && now.saturating_duration_since(held_since) >= MAX_HOLD)
    }

    pub(super) async fn run(
        mut self,
        socket: UdpSocket,
        octo_socket: Option<UdpSocket>,
        mut commands: mpsc::UnboundedReceiver<Command>,
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
                            if self.send_due(held_since, now) {
                                self.send_out(&socket, octo_socket.as_ref());
                                pending.observe(&self.metrics.forwarding_delay);
                                held_since = now;
                            }
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
                            if rxtime::is_octo_rtp(d) {
                                pending.push(rxtime::Input::Octo, stamp);
                            }
                            self.on_octo_datagram(now, from, d);
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

//! Time inside the bridge: kernel receive timestamps on the shard's sockets and the
//! `kaskade_forwarding_delay_seconds` histogram (docs/architecture.md, "One packet").
//!
//! On Linux the sockets carry `SO_TIMESTAMPNS`: every datagram comes with the CLOCK_REALTIME
//! time the kernel received it, so the time it waited in the socket's queue while the shard
//! was busy counts. Elsewhere, or if the option or the control message is missing, the time of
//! the read itself stands in. The shard keeps the stamps of the RTP datagrams it read in one
//! wake in a fixed array ([`Pending`]) and observes them once the send pass that followed has
//! handed the resulting datagrams to the kernel, against one CLOCK_REALTIME read. The part
//! before the read (the socket's queue, the thread's wake-up) goes to
//! `kaskade_forwarding_wait_seconds` as well.

use std::io;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;

use crate::metrics::ForwardingDelay;

/// Datagrams the shard reads from its sockets in one wake, at most (the media socket: one
/// awaited, then up to 32 already queued; the Octo socket: one).
pub(super) const BATCH: usize = 33;

/// Nanoseconds since the Unix epoch, CLOCK_REALTIME: the clock of `SO_TIMESTAMPNS`.
pub(super) fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// When a datagram arrived and when the shard read it, ns since the epoch (CLOCK_REALTIME).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// The kernel's receive timestamp (or the read time, without one).
    pub at: u64,
    /// Right after `recvmsg` returned it.
    pub read: u64,
}

/// Where a datagram came in: the histogram's `input` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Input {
    Client,
    Octo,
}

/// An SRTP (not SRTCP, STUN or DTLS) datagram on the media port: RFC 7983 first byte,
/// RFC 5761 second byte. These are what the bridge forwards; feedback and handshakes would
/// swamp the histogram (each subscriber's RTCP) without measuring the forwarding.
pub(super) fn is_client_rtp(d: &[u8]) -> bool {
    matches!(d, [b0, b1, ..] if (128..=191).contains(b0) && !(192..=223).contains(b1))
}

/// An Octo datagram of packet type RTP (proto/octo.md section 3: the second header byte).
pub(super) fn is_octo_rtp(d: &[u8]) -> bool {
    d.get(1) == Some(&0)
}

/// Receive times of the datagrams read since the last send pass. No allocation: a fixed
/// array; a datagram beyond [`BATCH`] (none, by construction of the loop) is not observed.
pub(super) struct Pending {
    at: [Stamp; BATCH],
    input: [Input; BATCH],
    len: usize,
}

impl Pending {
    pub(super) fn new() -> Self {
        Self {
            at: [Stamp::default(); BATCH],
            input: [Input::Client; BATCH],
            len: 0,
        }
    }

    pub(super) fn push(&mut self, input: Input, stamp: Stamp) {
        if let (Some(a), Some(i)) = (self.at.get_mut(self.len), self.input.get_mut(self.len)) {
            *a = stamp;
            *i = input;
            self.len += 1;
        }
    }

    /// Observes every pending datagram against the clock now: call right after the send pass.
    pub(super) fn observe(&mut self, h: &ForwardingDelay) {
        if self.len == 0 {
            return;
        }
        let now = realtime_ns();
        for (s, input) in self.at.iter().zip(&self.input).take(self.len) {
            // A clock stepped backwards gives 0, not a wrap.
            let total = now.saturating_sub(s.at) as f64 * 1e-9;
            let wait = s.read.saturating_sub(s.at) as f64 * 1e-9;
            let (t, w) = match input {
                Input::Client => (&h.client, &h.client_wait),
                Input::Octo => (&h.octo, &h.octo_wait),
            };
            t.observe(total);
            w.observe(wait);
        }
        self.len = 0;
    }
}

/// Room for the control messages of one datagram (one `SCM_TIMESTAMPNS`: 32 bytes), aligned
/// as `struct cmsghdr` must be.
#[repr(C, align(8))]
pub(super) struct Cmsg([u8; 64]);

impl Cmsg {
    pub(super) fn new() -> Self {
        Self([0; 64])
    }
}

/// Asks the kernel to stamp every datagram the socket receives. False if it refused (the
/// read time then stands in).
#[cfg(target_os = "linux")]
pub(super) fn enable(socket: &UdpSocket) -> bool {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid fd for the call's duration (borrowed from `socket`), and a pointer to a
    // c_int with its exact size, as SO_TIMESTAMPNS takes.
    let r = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

#[cfg(not(target_os = "linux"))]
pub(super) fn enable(_socket: &UdpSocket) -> bool {
    false
}

/// One `recvmsg` on a non-blocking socket: length, source and receive time (kernel stamp, or
/// the read time when there is none). `WouldBlock` when nothing is queued, as `recv_from`; run
/// it through `UdpSocket::try_io` / `async_io` so tokio's readiness stays right.
#[cfg(target_os = "linux")]
pub(super) fn recv(
    socket: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut Cmsg,
) -> io::Result<(usize, SocketAddr, Stamp)> {
    use std::mem::{MaybeUninit, size_of};
    use std::os::fd::AsRawFd;

    let mut addr = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
    hdr.msg_name = addr.as_mut_ptr().cast();
    hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    hdr.msg_iov = &raw mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = cmsg.0.as_mut_ptr().cast();
    hdr.msg_controllen = cmsg.0.len() as _;
    // SAFETY: every pointer in `hdr` points at a live buffer of the length given beside it
    // (`buf`, `addr`, `cmsg`, all outliving the call); the fd is borrowed from `socket`.
    let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &raw mut hdr, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let from = sockaddr(&addr, hdr.msg_namelen).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidData, "datagram without an IP source")
    })?;
    let mut at = None;
    if hdr.msg_flags & libc::MSG_CTRUNC == 0 {
        // SAFETY: the kernel filled `msg_controllen` bytes of `cmsg` with well-formed control
        // messages (not truncated, checked above); CMSG_FIRSTHDR/NXTHDR stay within them and
        // return null at the end, and `Cmsg` is aligned for `cmsghdr`. The timestamp's data
        // is a `timespec`, read unaligned as the CMSG_DATA contract allows.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&raw const hdr);
            while let Some(h) = c.as_ref() {
                if h.cmsg_level == libc::SOL_SOCKET
                    && h.cmsg_type == libc::SCM_TIMESTAMPNS
                    && h.cmsg_len >= libc::CMSG_LEN(size_of::<libc::timespec>() as u32) as _
                {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    if ts.tv_sec >= 0 && ts.tv_nsec >= 0 {
                        at = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                    }
                }
                c = libc::CMSG_NXTHDR(&raw const hdr, c);
            }
        }
    }
    let read = realtime_ns();
    Ok((
        n as usize,
        from,
        Stamp {
            at: at.unwrap_or(read),
            read,
        },
    ))
}

/// The source address recvmsg wrote, if IPv4 or IPv6.
#[cfg(target_os = "linux")]
fn sockaddr(
    addr: &std::mem::MaybeUninit<libc::sockaddr_storage>,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    use std::mem::size_of;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    // SAFETY: zero-initialised before the call, so every byte is initialised whatever the
    // kernel wrote; sockaddr_storage is plain data.
    let ss = unsafe { addr.assume_init_ref() };
    let len = len as usize;
    match ss.ss_family as libc::c_int {
        libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr, and the
            // family says the kernel wrote a sockaddr_in.
            let a = unsafe { &*(&raw const *ss).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddrV4::new(ip, u16::from_be(a.sin_port)).into())
        }
        libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(&raw const *ss).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(
                SocketAddrV6::new(
                    ip,
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )
                .into(),
            )
        }
        _ => None,
    }
}

#[cfg(not(target_os = "linux"))]
pub(super) fn recv(
    socket: &UdpSocket,
    buf: &mut [u8],
    _cmsg: &mut Cmsg,
) -> io::Result<(usize, SocketAddr, Stamp)> {
    let (n, from) = socket.try_recv_from(buf)?;
    let read = realtime_ns();
    Ok((n, from, Stamp { at: read, read }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_datagrams() {
        // RTP, PT 96 with the marker bit: 0x80 0xe0.
        assert!(is_client_rtp(&[0x80, 0xe0, 0, 1]));
        assert!(is_client_rtp(&[0x90, 0x6f, 0, 1]));
        // RTCP sender report (200), receiver report (201), feedback (205, 206).
        for pt in [200u8, 201, 205, 206] {
            assert!(!is_client_rtp(&[0x81, pt, 0, 7]));
        }
        // STUN (first byte 0..3), DTLS (20..63), too short.
        assert!(!is_client_rtp(&[0x00, 0x01, 0, 0]));
        assert!(!is_client_rtp(&[22, 0xfe, 0xfd]));
        assert!(!is_client_rtp(&[0x80]));
        assert!(is_octo_rtp(&[0x10, 0, 1]));
        assert!(!is_octo_rtp(&[0x10, 1, 1]));
        assert!(!is_octo_rtp(&[0x10]));
    }

    #[test]
    fn pending_observes_each_datagram_once_and_never_grows() {
        let m = crate::metrics::Metrics::new().expect("metrics");
        let h = &m.forwarding_delay;
        let mut p = Pending::new();
        let now = realtime_ns();
        let stamp = |ago_ms: u64, read_ms: u64| Stamp {
            at: now - ago_ms * 1_000_000,
            read: now - ago_ms * 1_000_000 + read_ms * 1_000_000,
        };
        p.push(Input::Client, stamp(1, 0));
        p.push(Input::Octo, stamp(30, 20));
        p.observe(h);
        p.observe(h);
        assert_eq!(h.client.get_sample_count(), 1);
        assert_eq!(h.octo.get_sample_count(), 1);
        assert_eq!(h.octo_wait.get_sample_count(), 1);
        let s = h.client.get_sample_sum();
        assert!((0.001..0.5).contains(&s), "{s}");
        assert_eq!(h.client_wait.get_sample_sum(), 0.0);
        let (total, wait) = (h.octo.get_sample_sum(), h.octo_wait.get_sample_sum());
        assert!((0.03..0.5).contains(&total), "{total}");
        assert!((wait - 0.02).abs() < 1e-6, "{wait}");
        for _ in 0..2 * BATCH {
            p.push(Input::Client, stamp(0, 0));
        }
        p.observe(h);
        assert_eq!(h.client.get_sample_count(), 1 + BATCH as u64);
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn kernel_stamps_precede_the_read() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        assert!(enable(&rx));
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let to = rx.local_addr().expect("addr");
        // The kernel turns receive timestamps on machine-wide from a work queue after the
        // first socket asks: on a machine where no socket had them, the first datagrams may
        // come unstamped (then stamped at the read). So a few tries; every one fails if the
        // stamps never come.
        let mut waits = Vec::new();
        for _ in 0..10 {
            tx.send_to(b"\x80\x60hello", to).expect("send");
            std::thread::sleep(std::time::Duration::from_millis(20));
            let mut buf = [0u8; 64];
            let mut cmsg = Cmsg::new();
            let (n, from, stamp) = rx
                .async_io(tokio::io::Interest::READABLE, || {
                    recv(&rx, &mut buf, &mut cmsg)
                })
                .await
                .expect("recv");
            assert_eq!(n, 7);
            assert_eq!(from, tx.local_addr().expect("addr"));
            // Stamped when it arrived, ~20 ms before we read it.
            let waited = stamp.read.saturating_sub(stamp.at);
            assert!(waited < 5_000_000_000, "{waited}");
            if waited >= 15_000_000 {
                return;
            }
            waits.push(waited);
        }
        panic!("no kernel receive stamps: waits {waits:?} ns");
    }
}

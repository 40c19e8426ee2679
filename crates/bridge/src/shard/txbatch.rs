//! Sending a pass's datagrams with `sendmmsg`: one system call for up to [`CHUNK`] datagrams
//! to as many addresses. A forwarded copy costs ~10 µs, about half of it in the kernel, and the
//! system call itself (entry, exit, the socket lookup) is paid once per call instead of once per
//! copy (docs/benchmarks.md, "Time inside one bridge"). Linux only; elsewhere one `send_to` per
//! datagram, as before.

use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;

/// Datagrams per `sendmmsg` call (the kernel's UIO_MAXIOV is 1024; 64 keeps the arrays on the
/// stack small and the latency of the first datagram of a call low).
pub(super) const CHUNK: usize = 64;

/// What one [`send_all`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Sent {
    pub packets: u64,
    pub bytes: u64,
    /// Datagrams the kernel refused (a full socket buffer, an unroutable address): dropped,
    /// as a failed `send_to` was.
    pub failed: u64,
}

/// Sends every datagram of `out`, in order. A datagram the kernel refuses is dropped and
/// counted; the rest still go.
#[cfg(target_os = "linux")]
pub(super) fn send_all<B: AsRef<[u8]>>(socket: &UdpSocket, out: &[(SocketAddr, B)]) -> Sent {
    let mut sent = Sent::default();
    let mut rest = out;
    while !rest.is_empty() {
        let chunk = rest.get(..CHUNK).unwrap_or(rest);
        match send_chunk(socket, chunk) {
            Ok(k) if k > 0 => {
                sent.packets += k as u64;
                sent.bytes += chunk
                    .iter()
                    .take(k)
                    .map(|(_, b)| b.as_ref().len() as u64)
                    .sum::<u64>();
                rest = rest.get(k..).unwrap_or_default();
            }
            // The first datagram of the chunk failed: drop it, go on with the next.
            _ => {
                sent.failed += 1;
                rest = rest.get(1..).unwrap_or_default();
            }
        }
    }
    sent
}

#[cfg(not(target_os = "linux"))]
pub(super) fn send_all<B: AsRef<[u8]>>(socket: &UdpSocket, out: &[(SocketAddr, B)]) -> Sent {
    let mut sent = Sent::default();
    for (to, b) in out {
        match socket.try_send_to(b.as_ref(), *to) {
            Ok(n) => {
                sent.packets += 1;
                sent.bytes += n as u64;
            }
            Err(_) => sent.failed += 1,
        }
    }
    sent
}

/// One `sendmmsg` for at most [`CHUNK`] datagrams: how many the kernel took (from the first).
#[cfg(target_os = "linux")]
fn send_chunk<B: AsRef<[u8]>>(socket: &UdpSocket, chunk: &[(SocketAddr, B)]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;

    // SAFETY (zeroed): plain C structs, for which all-zero bytes are a valid value.
    let mut addrs: [libc::sockaddr_storage; CHUNK] = unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; CHUNK] = unsafe { std::mem::zeroed() };
    let mut msgs: [libc::mmsghdr; CHUNK] = unsafe { std::mem::zeroed() };
    let n = chunk.len().min(CHUNK);
    for (i, (to, buf)) in chunk.iter().take(n).enumerate() {
        let (Some(addr), Some(iov), Some(msg)) =
            (addrs.get_mut(i), iovs.get_mut(i), msgs.get_mut(i))
        else {
            break;
        };
        let len = write_sockaddr(*to, addr);
        let buf = buf.as_ref();
        // The kernel only reads through this pointer (sendmmsg), though iovec says *mut.
        iov.iov_base = buf.as_ptr() as *mut libc::c_void;
        iov.iov_len = buf.len();
        msg.msg_hdr.msg_name = (addr as *mut libc::sockaddr_storage).cast();
        msg.msg_hdr.msg_namelen = len;
        msg.msg_hdr.msg_iov = iov;
        msg.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: `msgs[..n]` point into `addrs`, `iovs` and the caller's buffers, all alive and
    // unmoved for the duration of the call; the fd is borrowed from `socket`. MSG_DONTWAIT as
    // the socket is non-blocking anyway (tokio), so a full buffer returns EAGAIN.
    let r = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            n as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Writes `to` as a C socket address; returns its length.
#[cfg(target_os = "linux")]
fn write_sockaddr(to: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    match to {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for any sockaddr_*.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((out as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More datagrams than a chunk, to two receivers, one of them IPv4 and in order.
    #[tokio::test]
    async fn sends_every_datagram_in_order_across_chunks() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let a = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let b = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let (aa, ba) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
        let out: Vec<(SocketAddr, Vec<u8>)> = (0..150u8)
            .map(|i| {
                (
                    if i % 3 == 0 { ba } else { aa },
                    vec![i; usize::from(i) + 1],
                )
            })
            .collect();
        let sent = send_all(&tx, &out);
        let total: u64 = out.iter().map(|(_, d)| d.len() as u64).sum();
        assert_eq!(
            sent,
            Sent {
                packets: 150,
                bytes: total,
                failed: 0
            }
        );
        let mut buf = [0u8; 512];
        for (to, want) in &out {
            let s = if *to == ba { &b } else { &a };
            let (n, _) = s.recv_from(&mut buf).await.expect("recv");
            assert_eq!(&buf[..n], &want[..]);
        }
    }

    /// A datagram the kernel refuses (too large for UDP) is dropped and counted; the others go.
    #[tokio::test]
    async fn a_refused_datagram_is_dropped_alone() {
        let tx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let rx = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let to = rx.local_addr().expect("addr");
        let out = vec![
            (to, vec![1u8; 10]),
            (to, vec![2u8; 70_000]),
            (to, vec![3u8; 10]),
        ];
        let sent = send_all(&tx, &out);
        assert_eq!((sent.packets, sent.failed), (2, 1));
        let mut buf = [0u8; 64];
        for want in [1u8, 3] {
            let (n, _) = rx.recv_from(&mut buf).await.expect("recv");
            assert_eq!(&buf[..n], &[want; 10][..]);
        }
    }
}

//! UDP socket buffers: a burst (a keyframe fanned out to hundreds, a second of Octo traffic
//! after a stall) must fit in the kernel's buffers or it is dropped before kaskade sees it.
//! Linux caps what a process may ask at `net.core.rmem_max` / `wmem_max`; the node asks for
//! `media.udp_buffer_bytes`, reads back what it got, and says how to raise the cap when short.

use std::os::fd::AsRawFd;

use tracing::{info, warn};

/// Receive or send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Recv,
    Send,
}

impl Dir {
    fn option(self) -> libc::c_int {
        match self {
            Dir::Recv => libc::SO_RCVBUF,
            Dir::Send => libc::SO_SNDBUF,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Dir::Recv => "recv",
            Dir::Send => "send",
        }
    }

    fn sysctl(self) -> &'static str {
        match self {
            Dir::Recv => "net.core.rmem_max",
            Dir::Send => "net.core.wmem_max",
        }
    }
}

/// Asks for `want` bytes and returns what the kernel granted (the usable size: Linux reports
/// twice the usable amount, for its bookkeeping).
pub fn set(socket: &impl AsRawFd, dir: Dir, want: usize) -> std::io::Result<usize> {
    let fd = socket.as_raw_fd();
    let v = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
    // SAFETY: fd is a live socket we own; the option value is a c_int of the right size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            dir.option(),
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    get(socket, dir)
}

/// The usable buffer size now.
pub fn get(socket: &impl AsRawFd, dir: Dir) -> std::io::Result<usize> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: as above; v and len are valid for writes of their sizes.
    let r = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            dir.option(),
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let reported = usize::try_from(v).unwrap_or(0);
    Ok(if cfg!(target_os = "linux") {
        reported / 2
    } else {
        reported
    })
}

/// Sizes both buffers of one socket and logs the outcome; returns (recv, send) granted.
pub fn configure(socket: &impl AsRawFd, what: &str, want: usize) -> (usize, usize) {
    let mut got = [0usize; 2];
    for (i, dir) in [Dir::Recv, Dir::Send].into_iter().enumerate() {
        match set(socket, dir, want) {
            Ok(n) if n < want => {
                got[i] = n;
                warn!(
                    socket = what,
                    dir = dir.label(),
                    granted = n,
                    wanted = want,
                    "UDP buffer smaller than asked: bursts may be dropped by the kernel; raise {} (e.g. sysctl -w {}={})",
                    dir.sysctl(),
                    dir.sysctl(),
                    want.saturating_mul(2),
                );
            }
            Ok(n) => {
                got[i] = n;
                info!(socket = what, dir = dir.label(), bytes = n, "UDP buffer");
            }
            Err(e) => {
                warn!(socket = what, dir = dir.label(), error = %e, "cannot size the UDP buffer")
            }
        }
    }
    (got[0], got[1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_modest_buffer_is_granted_and_read_back() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let got = set(&s, Dir::Recv, 64 * 1024).expect("set");
        assert_eq!(got, 64 * 1024, "within every default cap");
        assert_eq!(get(&s, Dir::Recv).expect("get"), got);
        let (r, w) = configure(&s, "test", 128 * 1024);
        assert!(r >= 128 * 1024 / 2 && w > 0, "{r} {w}");
    }
}

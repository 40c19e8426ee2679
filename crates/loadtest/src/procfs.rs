//! CPU time and resident memory of a process, read from Linux `/proc`.

use std::time::Duration;

use anyhow::{Context, Result};

/// Clock ticks per second of `utime`/`stime` in `/proc/<pid>/stat`. Linux reports them in
/// USER_HZ, which is 100 on every architecture it exports to userspace; `getconf CLK_TCK`
/// confirms it on this machine, and no libc call is needed for a constant.
const USER_HZ: f64 = 100.0;

/// User + system CPU time consumed so far by every thread of `pid` ("self" for this process).
pub fn cpu_time(pid: &str) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_cpu(&text).with_context(|| format!("parsing {path}"))
}

/// The `comm` field is in parentheses and may hold spaces or parentheses itself: fields are
/// counted from the last `)`. utime and stime are fields 14 and 15 of the line.
fn parse_stat_cpu(text: &str) -> Option<Duration> {
    let after = &text[text.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // After ")": field 3 (state) is the first; utime is field 14, i.e. the 12th here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Duration::from_secs_f64((utime + stime) as f64 / USER_HZ))
}

/// CPU time of the whole machine since boot: (busy, total), summed over all CPUs, from the
/// first line of `/proc/stat`. Busy is everything but idle and iowait; over a window, busy
/// minus the processes one measured is what the rest of the machine took meanwhile.
pub fn machine_cpu() -> Result<(Duration, Duration)> {
    let text = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_proc_stat(&text).context("parsing /proc/stat")
}

fn parse_proc_stat(text: &str) -> Option<(Duration, Duration)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]: guest time is already
    // counted in user and nice, so only the first eight add up to the total.
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    let secs = |t: u64| Duration::from_secs_f64(t as f64 / USER_HZ);
    Some((secs(total.saturating_sub(idle)), secs(total)))
}

/// The kernel's UDP error counters, machine-wide (`Udp:` in `/proc/net/snmp`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpErrors {
    /// Datagrams dropped because a receiving socket's buffer was full.
    pub rcvbuf: u64,
    /// Datagrams dropped because a sending socket's buffer was full.
    pub sndbuf: u64,
}

impl UdpErrors {
    pub fn since(self, earlier: UdpErrors) -> UdpErrors {
        UdpErrors {
            rcvbuf: self.rcvbuf.saturating_sub(earlier.rcvbuf),
            sndbuf: self.sndbuf.saturating_sub(earlier.sndbuf),
        }
    }
}

/// Reads [`UdpErrors`]. On loopback every drop is one of ours or another local process's: a
/// window's delta on a quiet machine says which side of the node lost packets.
pub fn udp_errors() -> Result<UdpErrors> {
    let text = std::fs::read_to_string("/proc/net/snmp").context("reading /proc/net/snmp")?;
    parse_snmp_udp(&text).context("no Udp counters in /proc/net/snmp")
}

fn parse_snmp_udp(text: &str) -> Option<UdpErrors> {
    // Two "Udp:" lines: the field names, then the values.
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let values: Vec<&str> = lines.next()?.split_whitespace().collect();
    let get = |name: &str| -> Option<u64> {
        let i = names.iter().position(|n| *n == name)?;
        values.get(i)?.parse().ok()
    };
    Some(UdpErrors {
        rcvbuf: get("RcvbufErrors")?,
        sndbuf: get("SndbufErrors")?,
    })
}

/// Resident set size of `pid` in KiB (`VmRSS` in `/proc/<pid>/status`).
pub fn rss_kib(pid: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&text).with_context(|| format!("no VmRSS in {path}"))
}

fn parse_vm_rss(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_line_with_awkward_comm() {
        let line = "1234 (kas (ka) de) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 \
                    5 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_stat_cpu(line), Some(Duration::from_millis(3250)));
    }

    #[test]
    fn proc_stat() {
        let text = "cpu  100 5 50 1000 20 3 2 0 7 0\ncpu0 50 2 25 500 10 1 1 0 0 0\n";
        assert_eq!(
            parse_proc_stat(text),
            Some((Duration::from_millis(1600), Duration::from_millis(11800)))
        );
        assert!(machine_cpu().is_ok());
    }

    #[test]
    fn snmp_udp() {
        let text = "Ip: Forwarding DefaultTTL\nIp: 1 64\n\
                    Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n\
                    Udp: 100 2 7 90 7 3\nUdpLite: InDatagrams\nUdpLite: 0\n";
        assert_eq!(
            parse_snmp_udp(text),
            Some(UdpErrors {
                rcvbuf: 7,
                sndbuf: 3
            })
        );
        assert!(udp_errors().is_ok());
    }

    #[test]
    fn vm_rss() {
        let status = "Name:\tkaskade\nVmPeak:\t  100 kB\nVmRSS:\t   20480 kB\nThreads:\t5\n";
        assert_eq!(parse_vm_rss(status), Some(20480));
    }

    #[test]
    fn this_process_is_readable() {
        assert!(cpu_time("self").is_ok());
        assert!(rss_kib("self").unwrap() > 0);
    }
}

//! CPU time and peak memory of the region processes, from `/proc` (Linux only).
//!
//! - CPU: `utime + stime` of `/proc/<pid>/stat` (fields 14 and 15), in clock ticks. Linux
//!   reports them in `USER_HZ`, which is 100 on every architecture Linux exports to user space
//!   (the kernel converts from its internal `HZ`), so one tick is 10 ms.
//! - Peak RSS: `VmHWM` of `/proc/<pid>/status`, the high-water mark of the resident set since
//!   the process started, in KiB.

/// Clock ticks per second of the `/proc/<pid>/stat` times (`USER_HZ`).
const TICKS_PER_SEC: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct ProcSample {
    /// User plus system CPU time so far, seconds.
    pub(crate) cpu_secs: f64,
    /// Peak resident set so far, KiB.
    pub(crate) peak_rss_kib: u64,
}

/// Reads process `pid`, or `None` if it is gone or `/proc` is not there.
pub(crate) fn sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(ProcSample {
        cpu_secs: parse_cpu_ticks(&stat)? as f64 / TICKS_PER_SEC,
        peak_rss_kib: parse_vm_hwm_kib(&status)?,
    })
}

/// `utime + stime` from the text of `/proc/<pid>/stat`. The command name (field 2) is in
/// parentheses and may hold spaces, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// `VmHWM` in KiB from the text of `/proc/<pid>/status`.
fn parse_vm_hwm_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_the_name() {
        let stat = "4242 (mer idian) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 9 0 \
                    123 456789 1234 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_vm_hwm() {
        let status =
            "Name:\tmeridian\nVmPeak:\t  200000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t 40000 kB\n";
        assert_eq!(parse_vm_hwm_kib(status), Some(51234));
        assert_eq!(parse_vm_hwm_kib("Name: x\n"), None);
    }

    #[test]
    fn reads_this_process() {
        let s = sample(std::process::id()).expect("/proc of this process");
        assert!(s.peak_rss_kib > 0);
        assert!(s.cpu_secs >= 0.0);
    }
}

//! `info()`: who and where this process is, and what it may use.
//!
//! The seed prints `os.getpid()`, `os.getuid()`, `os.getgid()` and
//! `os.getcwd()`. multitask adds the host name and what decides how many
//! workers make sense: the CPUs this process may run on (affinity mask and
//! cgroup CPU quota respected) and the memory it may use (the machine's,
//! capped by a cgroup limit).

use serde::{Deserialize, Serialize};

/// A snapshot of this process and its machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// Process id.
    pub pid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// Current working directory.
    pub cwd: String,
    /// Host name.
    pub host: String,
    /// CPUs online on the machine.
    pub cpus_online: usize,
    /// CPUs this process may use: affinity mask and cgroup quota respected.
    pub cpus_usable: usize,
    /// Total memory of the machine, in bytes.
    pub memory_total: u64,
    /// Memory available now, in bytes (`MemAvailable`).
    pub memory_available: u64,
    /// The cgroup memory limit, in bytes, if one is set.
    pub memory_limit: Option<u64>,
}

/// Reads [`Info`] for this process.
///
/// ```
/// let info = multitasking::info();
/// assert_eq!(info.pid, std::process::id());
/// assert!(info.cpus_usable >= 1);
/// ```
pub fn info() -> Info {
    let (memory_total, memory_available) = meminfo();
    Info {
        pid: std::process::id(),
        uid: rustix::process::getuid().as_raw(),
        gid: rustix::process::getgid().as_raw(),
        cwd: std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|e| format!("<unreadable: {e}>")),
        host: host_name(),
        cpus_online: cpus_online(),
        cpus_usable: usable_cpus(),
        memory_total,
        memory_available,
        memory_limit: cgroup_memory_limit(),
    }
}

/// CPUs this process may use. std's `available_parallelism` reads the
/// affinity mask and the cgroup v1/v2 CPU quota on Linux.
pub fn usable_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpus_online() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| count_cpu_list(s.trim()))
        .unwrap_or_else(usable_cpus)
}

/// Counts a kernel CPU list such as `0-3,8,10-11`.
fn count_cpu_list(s: &str) -> Option<usize> {
    let mut n = 0;
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => n += b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1,
            None => {
                part.parse::<usize>().ok()?;
                n += 1;
            }
        }
    }
    (n > 0).then_some(n)
}

/// The host name, from `uname`.
pub fn host_name() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

fn meminfo() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    };
    (field("MemTotal:"), field("MemAvailable:"))
}

fn cgroup_memory_limit() -> Option<u64> {
    [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| s.trim().parse::<u64>().ok())
    // cgroup v1 reports "no limit" as a huge page-aligned number.
    .filter(|&n| n < (1 << 62))
}

/// Resident set size of process `pid` now and at its peak, in bytes, from
/// `/proc/<pid>/status` (`VmRSS`, `VmHWM`).
pub(crate) fn rss_of(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_count() {
        assert_eq!(count_cpu_list("0-3,8,10-11"), Some(7));
        assert_eq!(count_cpu_list("0"), Some(1));
        assert_eq!(count_cpu_list("x"), None);
    }

    #[test]
    fn info_reads_this_process() {
        let i = info();
        assert_eq!(i.pid, std::process::id());
        assert!(i.cpus_usable >= 1 && i.cpus_usable <= i.cpus_online.max(i.cpus_usable));
        assert!(i.memory_total > 0);
        assert!(!i.host.is_empty());
        let (rss, peak) = rss_of(i.pid).expect("own status");
        assert!(rss > 0 && peak >= rss);
    }
}

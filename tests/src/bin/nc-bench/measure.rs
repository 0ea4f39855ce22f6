//! Measuring: benchmark loops run by nc-probe in a namespace and a cgroup, medians and spread,
//! and a process's CPU time and memory.

use std::{os::unix::process::CommandExt, path::Path, process::Command, sync::OnceLock};

use netcontrol_tests::{parse_probes, probe_bin};

use crate::netns::enter;

/// Where a process runs: the client loop and its server on CPUs of their own (when there are
/// two), so neither is migrated mid-measurement. This cuts the round-to-round spread on a
/// small VM by about half.
#[derive(Clone, Copy)]
pub enum Cpu {
    Client,
    Server,
}

/// The CPUs this process may use (a cpuset may leave out CPU 0), asked once: hundreds of
/// loops are started per run.
fn usable_cpus() -> &'static [usize] {
    static CPUS: OnceLock<Vec<usize>> = OnceLock::new();
    CPUS.get_or_init(|| {
        // SAFETY: a plain syscall on a zeroed cpu_set_t of the right size.
        let mut ours: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut ours) } != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize).filter(|&i| unsafe { libc::CPU_ISSET(i, &ours) }).collect()
    })
}

pub fn on_cpu(mut cmd: Command, cpu: Cpu) -> Command {
    // The client gets the first usable CPU, the server the last.
    let usable = usable_cpus();
    if usable.len() < 2 {
        return cmd;
    }
    let index = match cpu {
        Cpu::Client => usable[0],
        Cpu::Server => usable[usable.len() - 1],
    };
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(index, &mut set) };
    // SAFETY: one syscall in the forked child, on a set built before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// One nc-probe benchmark loop (`loop-tcp:MS` / `loop-udp:MS`) to `target`, on the client
/// CPU: (ns per attempt, attempts, failed attempts).
pub fn run_loop(
    kind: &str,
    ms: u64,
    target: &str,
    netns: Option<&Path>,
    cgroup: Option<&Path>,
) -> Loop {
    let op = format!("loop-{kind}:{ms}");
    let mut cmd = on_cpu(enter(Command::new(probe_bin()), netns, cgroup), Cpu::Client);
    let out = cmd.args([&op, target]).output().expect("nc-probe");
    let p = parse_probes(&out.stdout)
        .pop()
        .unwrap_or_else(|| panic!("no result from nc-probe: {out:?}"));
    assert!(p.ok, "{op} {target}: {p:?}");
    Loop {
        ns_per_op: p.json["ns_per_op"].as_u64().unwrap_or(0),
        ops: p.json["ops"].as_u64().unwrap_or(0),
        failed: p.json["failed"].as_u64().unwrap_or(0),
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Loop {
    pub ns_per_op: u64,
    pub ops: u64,
    pub failed: u64,
}

/// Median and spread of a set of measurements.
#[derive(Clone, Copy, Debug, Default)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

pub fn summarize(values: &[f64]) -> Summary {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return Summary::default();
    }
    let median =
        if v.len() % 2 == 1 { v[v.len() / 2] } else { (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0 };
    Summary { median, min: v[0], max: v[v.len() - 1] }
}

/// A process's CPU time so far (user + system), in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is the 14th field.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: plain sysconf.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// A process's resident memory now and at its peak, in MiB (VmRSS, VmHWM).
pub fn memory_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
}

/// `n` with thousands separators.
pub fn count(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push('\u{202f}');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_counts() {
        let s = summarize(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(summarize(&[1.0, 2.0, 3.0, 4.0]).median, 2.5);
        assert_eq!(count(100000), "100\u{202f}000");
    }
}

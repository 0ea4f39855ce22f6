//! Time spent inside netcontrol's programs, from the kernel's own accounting
//! (`kernel.bpf_stats_enabled`): exact where end-to-end timings on a shared machine are noisy.

use std::{path::Path, process::Command};

use serde_json::Value;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Per-program run-time accounting, on while this lives. It costs two clock reads per program
/// run, so it stays off while end-to-end timings are taken.
pub struct StatsOn {
    previous: String,
}

impl StatsOn {
    pub fn enable() -> Self {
        let previous = std::fs::read_to_string(SYSCTL).unwrap_or_else(|_| "0".into());
        std::fs::write(SYSCTL, "1").unwrap_or_else(|e| crate::fail(&format!("{SYSCTL}: {e}")));
        Self { previous: previous.trim().to_owned() }
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = std::fs::write(SYSCTL, &self.previous);
    }
}

/// The ids of the programs attached to a cgroup.
pub fn attached(cgroup: &Path) -> Vec<u64> {
    let v = bpftool(&["cgroup", "show", &cgroup.to_string_lossy()]);
    let ids: Vec<u64> =
        v.as_array().into_iter().flatten().filter_map(|p| p["id"].as_u64()).collect();
    assert!(!ids.is_empty(), "no programs attached to {}", cgroup.display());
    ids
}

/// ns spent in these programs per attempt of `run`, which returns its number of attempts.
pub fn per_attempt(ids: &[u64], run: impl FnOnce() -> u64) -> f64 {
    let t0 = run_time_ns(ids);
    let attempts = run();
    (run_time_ns(ids) - t0) as f64 / attempts.max(1) as f64
}

/// Total run time (ns) of these programs so far.
fn run_time_ns(ids: &[u64]) -> u64 {
    ids.iter()
        .map(|id| bpftool(&["prog", "show", "id", &id.to_string()])["run_time_ns"].as_u64())
        .map(|t| t.unwrap_or(0)) // absent until the program first runs with accounting on
        .sum()
}

fn bpftool(args: &[&str]) -> Value {
    let out = Command::new("bpftool").arg("-j").args(args).output().expect("bpftool");
    assert!(out.status.success(), "bpftool {args:?}: {}", netcontrol_tests::show(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool {args:?}: {e}: {}", netcontrol_tests::show(&out)))
}

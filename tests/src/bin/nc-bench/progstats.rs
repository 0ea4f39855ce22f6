//! Time spent inside netcontrol's programs, from the kernel's own accounting
//! (`kernel.bpf_stats_enabled`): exact where end-to-end timings on a shared machine are noisy.

use std::{collections::BTreeMap, path::Path, process::Command};

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

/// A program attached to a cgroup: its id and its name (`nc_connect4`, ...).
#[derive(Clone, Debug)]
pub struct Program {
    pub id: u64,
    pub name: String,
}

/// The programs attached to a cgroup.
pub fn attached(cgroup: &Path) -> Vec<Program> {
    let v = bpftool(&["cgroup", "show", &cgroup.to_string_lossy()]);
    let progs: Vec<Program> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some(Program { id: p["id"].as_u64()?, name: p["name"].as_str()?.to_owned() })
        })
        .collect();
    assert!(!progs.is_empty(), "no programs attached to {}", cgroup.display());
    progs
}

/// What one program cost per attempt.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cost {
    /// ns in the program per attempt.
    pub ns: f64,
    /// How often it ran per attempt (a per-packet program: once per packet).
    pub runs: f64,
}

/// What these programs cost per attempt of `run` (which returns its number of attempts), by
/// program name; programs that did not run are left out.
pub fn per_attempt(progs: &[Program], run: impl FnOnce() -> u64) -> BTreeMap<String, Cost> {
    let t0 = counters(progs);
    let attempts = run().max(1) as f64;
    let t1 = counters(progs);
    let mut out: BTreeMap<String, Cost> = BTreeMap::new();
    for ((p, (ns0, runs0)), (ns1, runs1)) in progs.iter().zip(t0).zip(t1) {
        if runs1 > runs0 {
            let c = out.entry(p.name.clone()).or_default();
            c.ns += (ns1 - ns0) as f64 / attempts;
            c.runs += (runs1 - runs0) as f64 / attempts;
        }
    }
    out
}

/// ns per attempt in all of [`per_attempt`]'s programs.
pub fn total(by_program: &BTreeMap<String, Cost>) -> f64 {
    by_program.values().map(|c| c.ns).sum()
}

/// Run time (ns) and run count of each program so far (both absent until the program first
/// runs with accounting on).
fn counters(progs: &[Program]) -> Vec<(u64, u64)> {
    progs
        .iter()
        .map(|p| bpftool(&["prog", "show", "id", &p.id.to_string()]))
        .map(|v| (v["run_time_ns"].as_u64().unwrap_or(0), v["run_cnt"].as_u64().unwrap_or(0)))
        .collect()
}

fn bpftool(args: &[&str]) -> Value {
    let out = Command::new("bpftool").arg("-j").args(args).output().expect("bpftool");
    assert!(out.status.success(), "bpftool {args:?}: {}", netcontrol_tests::show(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool {args:?}: {e}: {}", netcontrol_tests::show(&out)))
}

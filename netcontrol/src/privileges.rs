//! Checking up front for the capabilities loading and attaching need, so that the user gets
//! "run it as root" instead of an EPERM from deep inside a syscall.

use std::fs;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Effective capabilities from /proc/self/status.
fn effective() -> Option<u64> {
    let status = fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

/// Names of the capabilities that are missing (empty when all are there).
pub fn missing() -> Vec<&'static str> {
    let Some(caps) = effective() else { return vec!["(could not read /proc/self/status)"] };
    let has = |c: u32| caps & (1u64 << c) != 0;
    let mut out = Vec::new();
    // CAP_BPF is Linux >= 5.8; before it, CAP_SYS_ADMIN covers BPF.
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        out.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        out.push("CAP_NET_ADMIN");
    }
    out
}

/// Fail early, with an actionable message, when loading cannot work.
pub fn check() -> crate::error::Result<()> {
    let missing = missing();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(crate::error::Error::NotPrivileged { missing: missing.join(", ") })
    }
}

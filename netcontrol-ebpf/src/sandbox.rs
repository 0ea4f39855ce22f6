//! Which sandbox (and so which policy) governs the calling task.

use aya_ebpf::helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id};
use netcontrol_common::abi::{MAX_CGROUP_DEPTH, SandboxValue};

use crate::maps::SANDBOXES;

pub struct Sandbox {
    /// The sandbox's cgroup id.
    pub id: u64,
    pub policy_id: u32,
    pub flags: u32,
    pub dns_port4: u16,
    pub dns_port6: u16,
}

impl Sandbox {
    #[inline(always)]
    fn new(id: u64, v: &SandboxValue) -> Self {
        Self {
            id,
            policy_id: v.policy_id,
            flags: v.flags,
            dns_port4: v.dns_port4,
            dns_port6: v.dns_port6,
        }
    }
}

/// The calling task's cgroup id and the sandbox governing it: the deepest cgroup on the path
/// from the root to the task's cgroup that has a `SANDBOXES` entry. The programs only run for
/// sockets of attached cgroups, so "none" means a sandbox's socket used from outside it.
#[inline(always)]
pub fn current() -> (u64, Option<Sandbox>) {
    // SAFETY: helpers without pointer arguments.
    let cgroup = unsafe { bpf_get_current_cgroup_id() };
    // Fast path: the task sits directly in the sandbox cgroup (`netcontrol run`).
    if let Some(v) = unsafe { SANDBOXES.get(&cgroup) } {
        return (cgroup, Some(Sandbox::new(cgroup, v)));
    }
    // Walk down from the root (level 0 is the root itself, never a sandbox); the last hit is
    // the deepest, so a nested sandbox's policy wins over its ancestor's.
    let mut found = None;
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH {
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if ancestor == 0 || ancestor == cgroup {
            break;
        }
        if let Some(v) = unsafe { SANDBOXES.get(&ancestor) } {
            found = Some(Sandbox::new(ancestor, v));
        }
        level += 1;
    }
    (cgroup, found)
}

//! Which sandbox (and so which policy) governs an attempt: the deepest cgroup with a
//! `SANDBOXES` entry on the path from the root to the cgroup that made it — the calling task's
//! for syscall hooks, the socket's for packet hooks (which may run in softirq context).

use aya_ebpf::{
    bindings::__sk_buff,
    helpers::generated::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_skb_ancestor_cgroup_id,
        bpf_skb_cgroup_id,
    },
    programs::SkBuffContext,
};
use netcontrol_common::abi::{MAX_CGROUP_DEPTH, REASON_NONE, SandboxValue};

use crate::maps::SANDBOXES;

pub struct Sandbox {
    /// The sandbox's cgroup id.
    pub id: u64,
    pub policy_id: u32,
    pub flags: u32,
    pub dns_port4: u16,
    pub dns_port6: u16,
    pub families: u64,
}

impl Sandbox {
    /// `reason`, unless the sandbox's `flag` allows what it names.
    #[inline(always)]
    pub fn denies_unless(&self, flag: u32, reason: u8) -> u8 {
        if self.flags & flag != 0 { REASON_NONE } else { reason }
    }

    #[inline(always)]
    fn new(id: u64, v: &SandboxValue) -> Self {
        Self {
            id,
            policy_id: v.policy_id,
            flags: v.flags,
            dns_port4: v.dns_port4,
            dns_port6: v.dns_port6,
            families: v.families,
        }
    }
}

/// A cgroup and its ancestors, as the kernel helpers give them.
pub trait Lineage {
    /// The cgroup itself.
    fn cgroup(&self) -> u64;
    /// Its ancestor at `level` (0 is the root); 0 past the cgroup's own level.
    fn ancestor(&self, level: i32) -> u64;
}

/// The calling task's cgroup (syscall hooks).
pub struct Task;

impl Lineage for Task {
    #[inline(always)]
    fn cgroup(&self) -> u64 {
        // SAFETY: helper without pointer arguments.
        unsafe { bpf_get_current_cgroup_id() }
    }

    #[inline(always)]
    fn ancestor(&self, level: i32) -> u64 {
        // SAFETY: as above.
        unsafe { bpf_get_current_ancestor_cgroup_id(level) }
    }
}

/// The calling task's cgroup without its ancestors: for kernels that refuse the ancestor
/// helper to a program type (sockopt before Linux 5.12), where a task below the sandbox's own
/// cgroup then finds no sandbox, which every caller treats as denied.
pub struct TaskOnly;

impl Lineage for TaskOnly {
    #[inline(always)]
    fn cgroup(&self) -> u64 {
        // SAFETY: helper without pointer arguments.
        unsafe { bpf_get_current_cgroup_id() }
    }

    #[inline(always)]
    fn ancestor(&self, _level: i32) -> u64 {
        0
    }
}

/// The cgroup of the socket a packet belongs to (packet hooks).
pub struct SocketOf<'a>(pub &'a SkBuffContext);

impl Lineage for SocketOf<'_> {
    #[inline(always)]
    fn cgroup(&self) -> u64 {
        // SAFETY: the program's own context.
        unsafe { bpf_skb_cgroup_id(self.0.skb.skb.cast::<__sk_buff>()) }
    }

    #[inline(always)]
    fn ancestor(&self, level: i32) -> u64 {
        // SAFETY: as above.
        unsafe { bpf_skb_ancestor_cgroup_id(self.0.skb.skb.cast::<__sk_buff>(), level) }
    }
}

/// The cgroup id and the sandbox governing it. The cgroup programs only run for sockets of
/// attached cgroups, so "none" there means a sandbox's socket used from outside it; the LSM
/// programs run for every task, and "none" is the common case for them.
#[inline(always)]
pub fn find<L: Lineage>(l: &L) -> (u64, Option<Sandbox>) {
    let cgroup = l.cgroup();
    // Fast path: directly in the sandbox cgroup (`netcontrol run`).
    // SAFETY: hash lookup; the value is copied out at once.
    if let Some(v) = unsafe { SANDBOXES.get(&cgroup) } {
        return (cgroup, Some(Sandbox::new(cgroup, v)));
    }
    // Walk down from the root (level 0 is the root itself, never a sandbox); the last hit is
    // the deepest, so a nested sandbox's policy wins over its ancestor's. (Plain initialized
    // variables, not an Option: the verifier rejects the compiler's copy of an Option's
    // uninitialized payload.)
    let mut found_id = 0u64;
    let mut found = SandboxValue::default();
    let mut level = 1;
    while level < MAX_CGROUP_DEPTH {
        let ancestor = l.ancestor(level as i32);
        if ancestor == 0 || ancestor == cgroup {
            break;
        }
        // SAFETY: as above.
        if let Some(v) = unsafe { SANDBOXES.get(&ancestor) } {
            found_id = ancestor;
            found = *v;
        }
        level += 1;
    }
    if found_id == 0 { (cgroup, None) } else { (cgroup, Some(Sandbox::new(found_id, &found))) }
}

/// The sandbox of the calling task.
#[inline(always)]
pub fn current() -> (u64, Option<Sandbox>) {
    find(&Task)
}

//! Counting every verdict and queueing an event for every denial (or audit-would-deny).

use aya_ebpf::{
    bindings::{
        BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::bpf_ktime_get_ns,
    },
};
use netcontrol_common::{
    abi::{
        COUNTER_ATTEMPTS, COUNTER_EVENTS_LOST, Event, GLOBAL_EVENTS_LOST, GLOBAL_LAST_WAKEUP,
        GLOBAL_STATS_FULL, REASON_NO_SANDBOX, REASON_NONE, StatsKey, VERDICT_ALLOW, VERDICT_AUDIT,
        VERDICT_DENY,
    },
    verdict::wake_reader,
};

use crate::maps::{EVENTS, GLOBAL, STATS};

/// What was attempted and what was decided.
pub struct Attempt {
    pub hook: u8,
    pub family: u8,
    pub protocol: u8,
    pub sock_type: u16,
    pub addr: [u8; 16],
    pub port: u16,
    pub flags: u8,
}

pub struct Decision {
    pub cgroup_id: u64,
    pub sandbox_id: u64,
    pub policy_id: u32,
    pub verdict: u8,
    pub reason: u8,
}

impl Decision {
    /// No sandbox governs the calling task (only a sandbox's socket used from outside it, or a
    /// sandbox being torn down, gets here): fail closed when `deny`.
    #[inline(always)]
    pub fn unsandboxed(cgroup_id: u64, deny: bool) -> Self {
        Self {
            cgroup_id,
            sandbox_id: 0,
            policy_id: 0,
            verdict: if deny { VERDICT_DENY } else { VERDICT_ALLOW },
            reason: if deny { REASON_NO_SANDBOX } else { REASON_NONE },
        }
    }
}

/// Count the attempt, and queue an event unless it was allowed.
#[inline(always)]
pub fn record(a: &Attempt, d: &Decision) {
    let mut key = StatsKey {
        sandbox_id: d.sandbox_id,
        hook: a.hook,
        family: a.family,
        protocol: a.protocol,
        verdict: d.verdict,
        reason: d.reason,
        counter: COUNTER_ATTEMPTS,
        _pad: [0; 2],
    };
    count(&key);
    // Events are for denials (and audit would-be denials); a redirect to the DNS proxy is just
    // counted: the proxy reports what it refuses.
    if d.verdict != VERDICT_DENY && d.verdict != VERDICT_AUDIT {
        return;
    }
    if !emit(a, d) {
        key.counter = COUNTER_EVENTS_LOST;
        count(&key);
        bump_global(GLOBAL_EVENTS_LOST);
    }
}

#[inline(always)]
fn count(key: &StatsKey) {
    if let Some(p) = STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU slot of a live entry; this CPU is the only writer while we run.
        unsafe { *p += 1 };
        return;
    }
    // First attempt with this key on any CPU. Losing the insert race to another CPU is fine
    // (its entry now exists); a full map is counted so userspace can report incomplete stats.
    if STATS.insert(key, 1u64, BPF_NOEXIST.into()).is_err() {
        match STATS.get_ptr_mut(key) {
            Some(p) => unsafe { *p += 1 },
            None => bump_global(GLOBAL_STATS_FULL),
        }
    }
}

#[inline(always)]
fn bump_global(index: u32) {
    if let Some(p) = GLOBAL.get_ptr_mut(index) {
        // SAFETY: per-CPU array slot.
        unsafe { *p += 1 };
    }
}

/// Queue the event; false if the ring buffer was full.
#[inline(always)]
fn emit(a: &Attempt, d: &Decision) -> bool {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        return false;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    entry.write(Event {
        ts_ns: now,
        cgroup_id: d.cgroup_id,
        sandbox_id: d.sandbox_id,
        pid_tgid: bpf_get_current_pid_tgid(),
        uid_gid: bpf_get_current_uid_gid(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        addr: a.addr,
        port: a.port,
        sock_type: a.sock_type,
        policy_id: d.policy_id,
        family: a.family,
        protocol: a.protocol,
        hook: a.hook,
        reason: d.reason,
        verdict: d.verdict,
        flags: a.flags,
        _pad: [0; 2],
    });
    entry.submit(wakeup_flags(now));
    true
}

/// Wake the reader only when `wake_reader` says so: the kernel's default wakes it for every
/// event it is caught up on, which under a storm means an IPI per denied attempt.
#[inline(always)]
fn wakeup_flags(now: u64) -> u64 {
    let Some(last) = GLOBAL.get_ptr_mut(GLOBAL_LAST_WAKEUP) else {
        return 0; // cannot happen (array slot); the kernel's default is safe
    };
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA.into());
    let size = EVENTS.query(BPF_RB_RING_SIZE.into());
    // SAFETY: per-CPU array slot; this CPU is the only writer while we run.
    unsafe {
        if wake_reader(now, *last, pending, size) {
            *last = now;
            BPF_RB_FORCE_WAKEUP.into()
        } else {
            BPF_RB_NO_WAKEUP.into()
        }
    }
}

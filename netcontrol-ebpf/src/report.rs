//! Counting every verdict and reporting every denial (or audit-would-deny).
//!
//! Each denial is counted in `DENIALS` under what makes it distinct (sandbox, hook,
//! destination, reason). A few per key and second, within the sandbox's budget, also get an
//! event of their own; the rest are counted there, and userspace reports them in summary
//! records. So a flood of one attempt can neither fill the ring buffer nor hide another one.

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
        COUNTER_ATTEMPTS, COUNTER_EVENTS_LOST, COUNTER_SUPPRESSED, DenialKey, DenialValue, Event,
        GLOBAL_DENIALS_FULL, GLOBAL_EVENTS_LOST, GLOBAL_LAST_WAKEUP, GLOBAL_RING_FULL,
        GLOBAL_STATS_FULL, GLOBAL_SUPPRESSED, REASON_NO_SANDBOX, REASON_NONE, StatsKey,
        VERDICT_ALLOW, VERDICT_AUDIT, VERDICT_DENY, Window,
    },
    verdict::{may_emit, stats_key_within_share, verdict, wake_reader, window_over},
};

use crate::{
    maps::{BUDGET, DENIALS, EVENTS, GLOBAL, STATS, STATS_KEYS},
    sandbox::Sandbox,
};

/// What was attempted and what was decided.
pub struct Attempt {
    pub hook: u8,
    pub family: u8,
    pub protocol: u8,
    pub sock_type: u16,
    pub addr: [u8; 16],
    pub port: u16,
    pub flags: u8,
    /// `Event::detail`.
    pub detail: u32,
}

impl Attempt {
    /// An attempt with no destination (socket creation, a socket option).
    #[inline(always)]
    pub fn bare(hook: u8, family: u8, protocol: u8, sock_type: u16, detail: u32) -> Self {
        Self { hook, family, protocol, sock_type, addr: [0; 16], port: 0, flags: 0, detail }
    }
}

pub struct Decision {
    pub cgroup_id: u64,
    pub sandbox_id: u64,
    pub policy_id: u32,
    pub verdict: u8,
    pub reason: u8,
}

impl Decision {
    /// The sandbox's verdict for `reason` (in audit mode a denial becomes a would-deny).
    #[inline(always)]
    pub fn judged(cgroup_id: u64, sb: &Sandbox, reason: u8) -> Self {
        Self {
            cgroup_id,
            sandbox_id: sb.id,
            policy_id: sb.policy_id,
            verdict: verdict(reason, sb.flags),
            reason,
        }
    }

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

/// Who made the attempt, as far as the hook knows: syscall hooks run in the task's context;
/// packet hooks may run in softirq context, where "the current task" is anyone.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Task,
    Unknown,
}

struct TaskInfo {
    pid_tgid: u64,
    uid_gid: u64,
    comm: [u8; 16],
}

#[inline(always)]
fn task_info(who: Who) -> TaskInfo {
    match who {
        Who::Task => TaskInfo {
            pid_tgid: bpf_get_current_pid_tgid(),
            uid_gid: bpf_get_current_uid_gid(),
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
        },
        Who::Unknown => TaskInfo { pid_tgid: 0, uid_gid: 0, comm: [0; 16] },
    }
}

/// Count the attempt, and report it unless it was allowed.
#[inline(always)]
pub fn record(a: &Attempt, d: &Decision, who: Who) {
    let mut key = stats_key(a, d);
    count(&key);
    // A redirect to the DNS proxy is just counted: the proxy reports what it refuses.
    if d.verdict != VERDICT_DENY && d.verdict != VERDICT_AUDIT {
        return;
    }
    match report(a, d, who) {
        Reported::Event => {}
        Reported::Suppressed => {
            key.counter = COUNTER_SUPPRESSED;
            count(&key);
            bump_global(GLOBAL_SUPPRESSED);
        }
        Reported::Lost => {
            key.counter = COUNTER_EVENTS_LOST;
            count(&key);
            bump_global(GLOBAL_EVENTS_LOST);
        }
    }
}

#[inline(always)]
fn stats_key(a: &Attempt, d: &Decision) -> StatsKey {
    StatsKey {
        sandbox_id: d.sandbox_id,
        hook: a.hook,
        family: a.family,
        protocol: a.protocol,
        verdict: d.verdict,
        reason: d.reason,
        counter: COUNTER_ATTEMPTS,
        _pad: [0; 2],
    }
}

enum Reported {
    /// An event of its own.
    Event,
    /// Counted in `DENIALS`, for a summary record.
    Suppressed,
    /// Nowhere: no room in the ring buffer nor in `DENIALS`.
    Lost,
}

#[inline(always)]
fn report(a: &Attempt, d: &Decision, who: Who) -> Reported {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let task = task_info(who);
    let key = DenialKey {
        sandbox_id: d.sandbox_id,
        addr: a.addr,
        port: a.port,
        sock_type: a.sock_type,
        family: a.family,
        protocol: a.protocol,
        hook: a.hook,
        reason: d.reason,
        verdict: d.verdict,
        flags: a.flags,
        _pad: [0; 2],
        detail: a.detail,
    };
    let Some(v) = denial_slot(&key, now) else {
        // No room to count it: an event within the sandbox's budget (so that a sandbox that
        // filled DENIALS cannot go on to fill the ring and hide the others' attempts), or
        // nothing (counted as lost, per sandbox).
        bump_global(GLOBAL_DENIALS_FULL);
        let budget = budget_slot(d.sandbox_id, now);
        // SAFETY: a per-sandbox map value, as below.
        let sandbox_sent = budget.map_or(0, |b| unsafe { (*b).sent });
        if may_emit(0, sandbox_sent) && emit(a, d, now, &task) {
            if let Some(b) = budget {
                // SAFETY: as above.
                unsafe { (*b).sent += 1 };
            }
            return Reported::Event;
        }
        return Reported::Lost;
    };
    // SAFETY: a live map value; `count` and `suppressed` are shared between CPUs and only
    // ever added to atomically; the rest are plain stores, last writer wins.
    let key_sent = unsafe {
        add(&raw mut (*v).count);
        (*v).last_ns = now;
        (*v).pid_tgid = task.pid_tgid;
        (*v).uid_gid = task.uid_gid;
        (*v).cgroup_id = d.cgroup_id;
        (*v).comm = task.comm;
        if window_over(now, (*v).window_start_ns) {
            (*v).window_start_ns = now;
            (*v).window_sent = 0;
        }
        (*v).window_sent
    };
    let budget = budget_slot(d.sandbox_id, now);
    // SAFETY: as above (a per-sandbox value; racing CPUs may both pass, which is fine).
    let sandbox_sent = budget.map_or(0, |b| unsafe { (*b).sent });
    if may_emit(key_sent, sandbox_sent) {
        if emit(a, d, now, &task) {
            // SAFETY: as above.
            unsafe {
                (*v).window_sent += 1;
                if let Some(b) = budget {
                    (*b).sent += 1;
                }
            }
            return Reported::Event;
        }
        bump_global(GLOBAL_RING_FULL);
    }
    // SAFETY: as above.
    unsafe { add(&raw mut (*v).suppressed) };
    Reported::Suppressed
}

/// The `DENIALS` entry of `key`, created if new; None if the map is full.
#[inline(always)]
fn denial_slot(key: &DenialKey, now: u64) -> Option<*mut DenialValue> {
    if let Some(p) = DENIALS.get_ptr_mut(key) {
        return Some(p);
    }
    let fresh = DenialValue { first_ns: now, window_start_ns: now, ..DenialValue::default() };
    // Losing the insert race to another CPU is fine: its entry exists now.
    let _ = DENIALS.insert(key, &fresh, BPF_NOEXIST.into());
    DENIALS.get_ptr_mut(key)
}

/// The sandbox's event budget for the current second.
#[inline(always)]
fn budget_slot(sandbox_id: u64, now: u64) -> Option<*mut Window> {
    let p = match BUDGET.get_ptr_mut(&sandbox_id) {
        Some(p) => p,
        None => {
            let _ = BUDGET.insert(&sandbox_id, &Window { start_ns: now, sent: 0, _pad: 0 }, 0);
            BUDGET.get_ptr_mut(&sandbox_id)?
        }
    };
    // SAFETY: a live map value.
    unsafe {
        if window_over(now, (*p).start_ns) {
            (*p).start_ns = now;
            (*p).sent = 0;
        }
    }
    Some(p)
}

/// An atomic increment of a map value field shared between CPUs.
#[inline(always)]
unsafe fn add(p: *mut u64) {
    // SAFETY: the caller passes a valid, 8-aligned map value field.
    unsafe { netcontrol_ebpf::atomic_inc(p) }
}

#[inline(always)]
fn count(key: &StatsKey) {
    if let Some(p) = STATS.get_ptr_mut(key) {
        // SAFETY: per-CPU slot of a live entry; this CPU is the only writer while we run.
        unsafe { *p += 1 };
        return;
    }
    // A new key: within the sandbox's share, or its folded key beyond it.
    let held = STATS_KEYS.get_ptr_mut(&key.sandbox_id);
    // SAFETY: a live entry of STATS_KEYS (read only; a stale read costs a key or two).
    let so_far = held.map_or(0, |p| unsafe { *p });
    let key = stats_key_within_share(*key, so_far);
    if let Some(p) = STATS.get_ptr_mut(&key) {
        // SAFETY: as above.
        unsafe { *p += 1 };
        return;
    }
    // First attempt with this key on any CPU. Losing the insert race to another CPU is fine
    // (its entry now exists); a full map is counted so userspace can report incomplete stats.
    if STATS.insert(&key, 1u64, BPF_NOEXIST.into()).is_ok() {
        match held {
            // SAFETY: an 8-aligned u64 in a map value.
            Some(p) => unsafe { netcontrol_ebpf::atomic_inc(p) },
            None => {
                if STATS_KEYS.insert(&key.sandbox_id, 1u64, BPF_NOEXIST.into()).is_err()
                    && let Some(p) = STATS_KEYS.get_ptr_mut(&key.sandbox_id)
                {
                    // SAFETY: as above.
                    unsafe { netcontrol_ebpf::atomic_inc(p) }
                }
            }
        }
        return;
    }
    match STATS.get_ptr_mut(&key) {
        // SAFETY: as above.
        Some(p) => unsafe { *p += 1 },
        None => bump_global(GLOBAL_STATS_FULL),
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
fn emit(a: &Attempt, d: &Decision, now: u64, task: &TaskInfo) -> bool {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        return false;
    };
    entry.write(Event {
        ts_ns: now,
        cgroup_id: d.cgroup_id,
        sandbox_id: d.sandbox_id,
        pid_tgid: task.pid_tgid,
        uid_gid: task.uid_gid,
        comm: task.comm,
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
        detail: a.detail,
        _pad2: 0,
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

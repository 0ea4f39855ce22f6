//! Judging socket creation: raw, ICMP ("ping") and SCTP sockets (cgroup sock_create, which
//! sees inet sockets only) and socket families other than unix, inet, inet6 and netlink (the
//! BPF LSM's socket_create, which sees them all).

use core::ptr::read_volatile;

use aya_ebpf::programs::{LsmContext, SockContext};
use aya_log_ebpf::debug;
use netcontrol_common::{
    abi::{HOOK_LSM_SOCKET, HOOK_SOCK_CREATE, REASON_NONE, REASON_SOCKET_FAMILY},
    verdict::{family_allowed, judge_socket, program_return, socket_needs_judging},
};

use crate::{
    report::{Attempt, Decision, Who, record},
    sandbox,
};

/// `-EPERM`, what an LSM program returns to refuse.
pub const LSM_DENY: i32 = -1;

#[inline(always)]
pub fn judge_create(ctx: &SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: ctx fields, 4-byte loads (the only width the verifier accepts for these).
    let (family, ty, proto) = unsafe {
        (
            read_volatile(&raw const (*sk).family),
            read_volatile(&raw const (*sk).type_),
            read_volatile(&raw const (*sk).protocol),
        )
    };
    // TCP and UDP sockets are judged when they connect or send: this hook runs on every
    // socket(), so it answers those at once.
    if !socket_needs_judging(ty as u16, proto) {
        return 1;
    }
    let (cgroup_id, sandbox) = sandbox::current();
    let a = Attempt::bare(HOOK_SOCK_CREATE, family as u8, proto as u8, ty as u16, 0);
    let d = match sandbox {
        Some(sb) => Decision::judged(cgroup_id, &sb, judge_socket(sb.flags, ty as u16, proto)),
        // The task's cgroup is the socket's, and it is attached: only a sandbox being torn
        // down gets here. Deny the socket kinds a sandbox denies.
        None => Decision::unsandboxed(cgroup_id, judge_socket(0, ty as u16, proto) != REASON_NONE),
    };
    debug!(ctx, "sock_create type={} proto={} verdict={}", ty, proto, d.verdict);
    record(&a, &d, Who::Task);
    program_return(d.verdict)
}

/// LSM socket_create(family, type, protocol, kern): runs for every task on the host, so the
/// families everyone may use are answered before anything is looked up.
#[inline(always)]
pub fn judge_family(ctx: &LsmContext) -> i32 {
    let family: i32 = ctx.arg(0);
    let ty: i32 = ctx.arg(1);
    let proto: i32 = ctx.arg(2);
    let kern: i32 = ctx.arg(3);
    let previous: i32 = ctx.arg(4);
    // Another LSM refused already; sockets the kernel makes for itself are not the task's.
    if previous != 0 || kern != 0 || family_allowed(family as u32, 0) {
        return previous;
    }
    let (cgroup_id, sandbox) = sandbox::current();
    let Some(sb) = sandbox else { return 0 };
    if family_allowed(family as u32, sb.families) {
        return 0;
    }
    let a = Attempt::bare(HOOK_LSM_SOCKET, family as u8, proto as u8, ty as u16, family as u32);
    let d = Decision::judged(cgroup_id, &sb, REASON_SOCKET_FAMILY);
    record(&a, &d, Who::Task);
    if program_return(d.verdict) == 0 { LSM_DENY } else { 0 }
}

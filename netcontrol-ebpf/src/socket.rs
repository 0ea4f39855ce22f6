//! Judging socket creation (sock_create): raw and ICMP ("ping") sockets.

use core::ptr::read_volatile;

use aya_ebpf::programs::SockContext;
use aya_log_ebpf::debug;
use netcontrol_common::{
    abi::{HOOK_SOCK_CREATE, REASON_NONE},
    verdict::{judge_socket, program_return, socket_needs_judging, verdict},
};

use crate::{
    report::{Attempt, Decision, record},
    sandbox,
};

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
    if !socket_needs_judging(ty as u16, proto as u8) {
        return 1;
    }
    let (cgroup_id, sandbox) = sandbox::current();
    let a = Attempt {
        hook: HOOK_SOCK_CREATE,
        family: family as u8,
        protocol: proto as u8,
        sock_type: ty as u16,
        addr: [0; 16],
        port: 0,
        flags: 0,
    };
    let d = match sandbox {
        Some(sb) => {
            let reason = judge_socket(sb.flags, ty as u16, proto as u8);
            Decision {
                cgroup_id,
                sandbox_id: sb.id,
                policy_id: sb.policy_id,
                verdict: verdict(reason, sb.flags),
                reason,
            }
        }
        // The task's cgroup is the socket's, and it is attached: only a sandbox being torn
        // down gets here. Deny the socket kinds a sandbox denies.
        None => {
            Decision::unsandboxed(cgroup_id, judge_socket(0, ty as u16, proto as u8) != REASON_NONE)
        }
    };
    debug!(ctx, "sock_create type={} proto={} verdict={}", ty, proto, d.verdict);
    record(&a, &d);
    program_return(d.verdict)
}

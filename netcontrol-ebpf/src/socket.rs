//! Judging socket creation (sock_create): raw and ICMP ("ping") sockets.

use core::ptr::read_volatile;

use aya_ebpf::programs::SockContext;
use aya_log_ebpf::debug;
use netcontrol_common::{
    abi::{HOOK_SOCK_CREATE, REASON_NO_SANDBOX, REASON_NONE, VERDICT_ALLOW, VERDICT_DENY},
    verdict::{judge_socket, program_return, verdict},
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
        // Only reachable while a sandbox is being torn down (the task's cgroup is the
        // socket's, and it is attached): fail closed for the socket kinds a sandbox denies.
        None => {
            let denied = judge_socket(0, ty as u16, proto as u8) != REASON_NONE;
            Decision {
                cgroup_id,
                sandbox_id: 0,
                policy_id: 0,
                verdict: if denied { VERDICT_DENY } else { VERDICT_ALLOW },
                reason: if denied { REASON_NO_SANDBOX } else { REASON_NONE },
            }
        }
    };
    debug!(ctx, "sock_create type={} proto={} verdict={}", ty, proto, d.verdict);
    record(&a, &d);
    program_return(d.verdict)
}

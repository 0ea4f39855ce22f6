//! Judging socket options (cgroup/setsockopt): the ones that choose where packets go.
//!
//! connect/sendmsg judge the destination a program names; an IPv6 routing header (or an IPv4
//! source route) sends the packets somewhere else first, and binding to an interface makes
//! the kernel look for the destination on that link. Refusing the options closes that for
//! sockets set up with setsockopt(); the per-datagram control message forms of routing
//! headers are dropped on the way out by the packet program (`packet::egress`).

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::programs::SockoptContext;
use netcontrol_common::{
    abi::{HOOK_SETSOCKOPT, REASON_SOCKET_OPTION, SANDBOX_F_ALLOW_ROUTING},
    verdict::{program_return, routing_option},
};

use crate::{
    report::{Attempt, Decision, Who, record},
    sandbox::{self, Lineage},
};

/// Beyond this the program sees a truncated copy of the value; optlen 0 tells the kernel to
/// use the caller's own buffer (Documentation/bpf/prog_cgroup_sockopt.rst, "Large optval").
const PAGE: i32 = 4096;

#[inline(always)]
pub fn judge<L: Lineage>(ctx: &SockoptContext, lineage: &L, who: Who) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: ctx fields, 4-byte loads.
    let (level, optname, optlen) = unsafe {
        (
            read_volatile(&raw const (*so).level),
            read_volatile(&raw const (*so).optname),
            read_volatile(&raw const (*so).optlen),
        )
    };
    let ret = if routing_option(level, optname) {
        // SAFETY: ctx field: the socket (never null in setsockopt programs); 4-byte load.
        let family = unsafe {
            let sk = read_volatile(&raw const (*so).__bindgen_anon_1.sk);
            read_volatile(&raw const (*sk).family) as u8
        };
        judge_routing(lineage, who, family, level, optname)
    } else {
        1
    };
    if ret == 1 && optlen > PAGE {
        // SAFETY: optlen is writable in setsockopt programs (4-byte store).
        unsafe { write_volatile(&raw mut (*so).optlen, 0) };
    }
    ret
}

#[inline(always)]
fn judge_routing<L: Lineage>(lineage: &L, who: Who, family: u8, level: i32, optname: i32) -> i32 {
    let detail = ((level as u32) << 16) | (optname as u32 & 0xffff);
    let a = Attempt::bare(HOOK_SETSOCKOPT, family, 0, 0, detail);
    let (cgroup_id, sandbox) = sandbox::find(lineage);
    let d = match sandbox {
        Some(sb) => Decision::judged(
            cgroup_id,
            &sb,
            sb.denies_unless(SANDBOX_F_ALLOW_ROUTING, REASON_SOCKET_OPTION),
        ),
        None => Decision::unsandboxed(cgroup_id, true),
    };
    record(&a, &d, who);
    program_return(d.verdict)
}

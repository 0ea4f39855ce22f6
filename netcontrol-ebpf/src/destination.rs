//! Judging a destination address (connect4/6, sendmsg4/6).

use core::ptr::read_volatile;

use aya_ebpf::{
    helpers::generated::bpf_ktime_get_ns, maps::lpm_trie::Key, programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use netcontrol_common::{
    abi::{
        AF_INET, AF_INET6, ALLOW_F_LEARNED, DNS_PORT, EVENT_F_V4_MAPPED, POLICY_ID_BITS, PROTO_TCP,
        PROTO_UDP, REASON_NONE, RecentKey, SANDBOX_F_DNS_REDIRECT, VERDICT_REDIRECT, v4_key,
        v6_key,
    },
    verdict::{judge_destination, program_return, verdict},
};

use crate::{
    dns::{self, V4_MAPPED_WORD},
    maps::{ALLOW_V4, ALLOW_V6, RECENT},
    report::{Attempt, Decision, record},
    sandbox,
};

/// An IPv4 destination (connect4, sendmsg4).
#[inline(always)]
pub fn judge_v4(ctx: &SockAddrContext, hook: u8) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: ctx fields; read_volatile keeps each load exactly 4 bytes wide, the only width
    // the verifier accepts for `protocol` and `user_port` on older kernels.
    let (ip, port, proto) = unsafe {
        (
            read_volatile(&raw const (*sa).user_ip4),
            read_volatile(&raw const (*sa).user_port),
            read_volatile(&raw const (*sa).protocol),
        )
    };
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&ip.to_ne_bytes());
    judge::<false>(
        ctx,
        Attempt {
            hook,
            family: AF_INET,
            protocol: proto as u8,
            sock_type: 0,
            addr,
            port: u16::from_be(port as u16),
            flags: 0,
        },
    )
}

/// An IPv6 destination (connect6, sendmsg6). A v4-mapped address (`::ffff:a.b.c.d` on a
/// dual-stack socket) is judged by the IPv4 rules: IPv6 rules never see it.
#[inline(always)]
pub fn judge_v6(ctx: &SockAddrContext, hook: u8) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: ctx fields, 4-byte loads.
    let (w, port, proto) = unsafe {
        (
            [
                read_volatile(&raw const (*sa).user_ip6[0]),
                read_volatile(&raw const (*sa).user_ip6[1]),
                read_volatile(&raw const (*sa).user_ip6[2]),
                read_volatile(&raw const (*sa).user_ip6[3]),
            ],
            read_volatile(&raw const (*sa).user_port),
            read_volatile(&raw const (*sa).protocol),
        )
    };
    let mut addr = [0u8; 16];
    let (family, flags) = if w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED_WORD {
        addr[..4].copy_from_slice(&w[3].to_ne_bytes());
        (AF_INET, EVENT_F_V4_MAPPED)
    } else {
        addr[..4].copy_from_slice(&w[0].to_ne_bytes());
        addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
        addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
        addr[12..].copy_from_slice(&w[3].to_ne_bytes());
        (AF_INET6, 0)
    };
    judge::<true>(
        ctx,
        Attempt {
            hook,
            family,
            protocol: proto as u8,
            sock_type: 0,
            addr,
            port: u16::from_be(port as u16),
            flags,
        },
    )
}

#[inline(always)]
fn judge<const V6_CTX: bool>(ctx: &SockAddrContext, a: Attempt) -> i32 {
    let (cgroup_id, sandbox) = sandbox::current();
    let Some(sb) = sandbox else {
        let d = Decision::unsandboxed(cgroup_id, true);
        record(&a, &d);
        return program_return(d.verdict);
    };
    let dns = a.port == DNS_PORT && (a.protocol == PROTO_UDP || a.protocol == PROTO_TCP);
    let redirected = sb.flags & SANDBOX_F_DNS_REDIRECT != 0
        && ((dns && dns::redirect::<V6_CTX>(ctx, &a, &sb, cgroup_id))
            // Already addressed to the proxy: a dual-stack socket connected to a redirected
            // v4-mapped server sends each datagram with that address again (sendmsg4).
            || dns::is_proxy(&a, &sb));
    if redirected {
        let d = Decision {
            cgroup_id,
            sandbox_id: sb.id,
            policy_id: sb.policy_id,
            verdict: VERDICT_REDIRECT,
            reason: REASON_NONE,
        };
        debug!(ctx, "hook={} port={} redirected to the DNS proxy", a.hook, a.port);
        record(&a, &d);
        return 1;
    }
    let entry = if a.family == AF_INET {
        let mut ip = [0u8; 4];
        ip.copy_from_slice(&a.addr[..4]);
        ALLOW_V4.get(Key::new(POLICY_ID_BITS + 32, v4_key(sb.policy_id, ip)))
    } else {
        ALLOW_V6.get(Key::new(POLICY_ID_BITS + 128, v6_key(sb.policy_id, a.addr)))
    };
    let reason = judge_destination(entry, a.protocol, a.port);
    if reason == REASON_NONE
        && let Some(e) = entry
        && e.flags & ALLOW_F_LEARNED != 0
    {
        // A DNS-learned address in use: tell userspace not to forget it yet.
        let key = RecentKey { policy_id: sb.policy_id, family: u32::from(a.family), addr: a.addr };
        // SAFETY: helper without arguments.
        let _ = RECENT.insert(key, unsafe { bpf_ktime_get_ns() }, 0);
    }
    let d = Decision {
        cgroup_id,
        sandbox_id: sb.id,
        policy_id: sb.policy_id,
        verdict: verdict(reason, sb.flags),
        reason,
    };
    debug!(ctx, "hook={} port={} verdict={} reason={}", a.hook, a.port, d.verdict, d.reason);
    record(&a, &d);
    program_return(d.verdict)
}

//! Judging a destination address (connect4/6, sendmsg4/6) and a local address to bind
//! (bind4/6).

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::generated::bpf_ktime_get_ns,
    maps::lpm_trie::Key,
    programs::SockAddrContext,
};
use aya_log_ebpf::debug;
use netcontrol_common::{
    abi::{
        AF_INET, AF_INET6, ALLOW_F_LEARNED, AllowValue, DNS_PORT, EVENT_F_V4_MAPPED,
        LISTEN_POLICY_BIT, POLICY_ID_BITS, PROTO_TCP, PROTO_UDP, REASON_LISTEN, REASON_NONE,
        RecentKey, SANDBOX_F_DNS_REDIRECT, SANDBOX_F_HOST_NETNS, VERDICT_REDIRECT, v4_key, v6_key,
    },
    verdict::{is_loopback_v4, is_loopback_v6, judge_destination, permits, program_return},
};

use crate::{
    dns::{self, V4_MAPPED_WORD},
    maps::{ALLOW_V4, ALLOW_V6, RECENT},
    report::{Attempt, Decision, Who, record},
    sandbox::{self, Sandbox},
};

/// Which address the hook's context holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// The destination (or bind address) the program gave.
    Given,
    /// None was given (sendmsg on a connected socket with control messages): the socket's
    /// connected peer is where the datagram goes.
    Peer,
}

/// What the context says: destination (or local) address, port, protocol.
struct Target {
    family: u8,
    addr: [u8; 16],
    port: u16,
    protocol: u8,
    flags: u8,
}

#[inline(always)]
fn words_to_target(w: [u32; 4], port: u16, protocol: u8) -> Target {
    let mut addr = [0u8; 16];
    // ::ffff:a.b.c.d on a dual-stack socket is judged by the IPv4 rules.
    if w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED_WORD {
        addr[..4].copy_from_slice(&w[3].to_ne_bytes());
        return Target { family: AF_INET, addr, port, protocol, flags: EVENT_F_V4_MAPPED };
    }
    addr[..4].copy_from_slice(&w[0].to_ne_bytes());
    addr[4..8].copy_from_slice(&w[1].to_ne_bytes());
    addr[8..12].copy_from_slice(&w[2].to_ne_bytes());
    addr[12..].copy_from_slice(&w[3].to_ne_bytes());
    Target { family: AF_INET6, addr, port, protocol, flags: 0 }
}

/// The IPv4 target of a connect4/sendmsg4/bind4 context.
#[inline(always)]
fn target_v4(ctx: &SockAddrContext, source: Source) -> Target {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: ctx fields; read_volatile keeps each load exactly 4 bytes wide, the only width
    // the verifier accepts for `protocol` and `user_port` on older kernels.
    let (ip, port, proto) = unsafe {
        match source {
            Source::Given => (
                read_volatile(&raw const (*sa).user_ip4),
                u16::from_be(read_volatile(&raw const (*sa).user_port) as u16),
                read_volatile(&raw const (*sa).protocol),
            ),
            Source::Peer => {
                let sk: *mut bpf_sock = read_volatile(&raw const (*sa).__bindgen_anon_1.sk);
                (
                    read_volatile(&raw const (*sk).dst_ip4),
                    u16::from_be(read_volatile(&raw const (*sk).dst_port)),
                    read_volatile(&raw const (*sa).protocol),
                )
            }
        }
    };
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&ip.to_ne_bytes());
    Target { family: AF_INET, addr, port, protocol: proto as u8, flags: 0 }
}

/// The IPv6 target of a connect6/sendmsg6/bind6 context (v4-mapped: an IPv4 target).
#[inline(always)]
fn target_v6(ctx: &SockAddrContext, source: Source) -> Target {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: ctx fields, 4-byte loads.
    let (w, port, proto) = unsafe {
        match source {
            Source::Given => (
                [
                    read_volatile(&raw const (*sa).user_ip6[0]),
                    read_volatile(&raw const (*sa).user_ip6[1]),
                    read_volatile(&raw const (*sa).user_ip6[2]),
                    read_volatile(&raw const (*sa).user_ip6[3]),
                ],
                u16::from_be(read_volatile(&raw const (*sa).user_port) as u16),
                read_volatile(&raw const (*sa).protocol),
            ),
            Source::Peer => {
                let sk: *mut bpf_sock = read_volatile(&raw const (*sa).__bindgen_anon_1.sk);
                (
                    [
                        read_volatile(&raw const (*sk).dst_ip6[0]),
                        read_volatile(&raw const (*sk).dst_ip6[1]),
                        read_volatile(&raw const (*sk).dst_ip6[2]),
                        read_volatile(&raw const (*sk).dst_ip6[3]),
                    ],
                    u16::from_be(read_volatile(&raw const (*sk).dst_port)),
                    read_volatile(&raw const (*sa).protocol),
                )
            }
        }
    };
    words_to_target(w, port, proto as u8)
}

/// sendmsg without an address (a connected UDP socket sending control messages) runs the
/// hook with an all-zero address of family 0: the datagram goes to the connected peer. An
/// address of family AF_UNSPEC (also 0) is a destination all the same for IPv4 (udp_sendmsg
/// sends to it), and always has a port (a zero port fails before the hook): it is judged.
#[inline(always)]
fn source_of(ctx: &SockAddrContext, is_sendmsg: bool) -> Source {
    // SAFETY: ctx fields, 4-byte loads.
    let (family, port) = unsafe {
        (
            read_volatile(&raw const (*ctx.sock_addr).user_family),
            read_volatile(&raw const (*ctx.sock_addr).user_port),
        )
    };
    if is_sendmsg && family == 0 && port == 0 { Source::Peer } else { Source::Given }
}

/// An IPv4 destination (connect4, sendmsg4).
#[inline(always)]
pub fn judge_v4(ctx: &SockAddrContext, hook: u8, is_sendmsg: bool) -> i32 {
    let source = source_of(ctx, is_sendmsg);
    judge::<false>(ctx, hook, target_v4(ctx, source), source)
}

/// An IPv6 destination (connect6, sendmsg6). A v4-mapped address (`::ffff:a.b.c.d` on a
/// dual-stack socket) is judged by the IPv4 rules: IPv6 rules never see it.
#[inline(always)]
pub fn judge_v6(ctx: &SockAddrContext, hook: u8, is_sendmsg: bool) -> i32 {
    let source = source_of(ctx, is_sendmsg);
    judge::<true>(ctx, hook, target_v6(ctx, source), source)
}

/// The most specific allow entry of `policy_id` covering the address.
#[inline(always)]
pub fn lookup(policy_id: u32, family: u8, addr: &[u8; 16]) -> Option<&'static AllowValue> {
    if family == AF_INET {
        let mut ip = [0u8; 4];
        ip.copy_from_slice(&addr[..4]);
        ALLOW_V4.get(Key::new(POLICY_ID_BITS + 32, v4_key(policy_id, ip)))
    } else {
        ALLOW_V6.get(Key::new(POLICY_ID_BITS + 128, v6_key(policy_id, *addr)))
    }
}

#[inline(always)]
fn judge<const V6_CTX: bool>(ctx: &SockAddrContext, hook: u8, t: Target, source: Source) -> i32 {
    let a = Attempt {
        hook,
        family: t.family,
        protocol: t.protocol,
        sock_type: 0,
        addr: t.addr,
        port: t.port,
        flags: t.flags,
        detail: 0,
    };
    let (cgroup_id, sandbox) = sandbox::current();
    let Some(sb) = sandbox else {
        let d = Decision::unsandboxed(cgroup_id, true);
        record(&a, &d, Who::Task);
        return program_return(d.verdict);
    };
    let dns = a.port == DNS_PORT && (a.protocol == PROTO_UDP || a.protocol == PROTO_TCP);
    // The context's address can only be rewritten when it is the one the program gave.
    let redirected = sb.flags & SANDBOX_F_DNS_REDIRECT != 0
        && ((dns && source == Source::Given && dns::redirect::<V6_CTX>(ctx, &a, &sb, cgroup_id))
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
        record(&a, &d, Who::Task);
        return 1;
    }
    let entry = lookup(sb.policy_id, a.family, &a.addr);
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
    decide(ctx, &a, cgroup_id, &sb, reason)
}

#[inline(always)]
fn decide(ctx: &SockAddrContext, a: &Attempt, cgroup_id: u64, sb: &Sandbox, reason: u8) -> i32 {
    let d = Decision::judged(cgroup_id, sb, reason);
    debug!(ctx, "hook={} port={} verdict={} reason={}", a.hook, a.port, d.verdict, d.reason);
    record(a, &d, Who::Task);
    program_return(d.verdict)
}

/// Whether a sandbox that shares the host's network namespace may listen on `addr:port`
/// (TCP): loopback always, other addresses (the wildcard too) only on its listen rules'
/// ports. Also used for connections arriving at a listening socket.
#[inline(always)]
pub fn listen_reason(sb: &Sandbox, family: u8, addr: &[u8; 16], port: u16) -> u8 {
    if sb.flags & SANDBOX_F_HOST_NETNS == 0 {
        return REASON_NONE;
    }
    let loopback =
        if family == AF_INET { is_loopback_v4(&addr[..4]) } else { is_loopback_v6(addr) };
    if loopback {
        return REASON_NONE;
    }
    match lookup(sb.policy_id | LISTEN_POLICY_BIT, family, addr) {
        Some(e) if permits(e, PROTO_TCP, port) => REASON_NONE,
        _ => REASON_LISTEN,
    }
}

/// bind4 / bind6: a TCP socket bound to a non-loopback address and a port is about to
/// listen (or to connect from a fixed port). UDP binds are not judged: what a UDP socket
/// sends is judged at sendmsg/connect, whatever it is bound to. Port 0 (the kernel picks) is
/// a client's; a listen() on such a socket is caught when connections arrive (skb ingress).
#[inline(always)]
pub fn judge_bind(ctx: &SockAddrContext, hook: u8, v6: bool) -> i32 {
    let t = if v6 { target_v6(ctx, Source::Given) } else { target_v4(ctx, Source::Given) };
    if t.protocol != PROTO_TCP || t.port == 0 {
        return 1;
    }
    let (cgroup_id, sandbox) = sandbox::current();
    // Binding sends nothing: a socket bound from outside its sandbox is judged when it sends.
    let Some(sb) = sandbox else { return 1 };
    let reason = listen_reason(&sb, t.family, &t.addr, t.port);
    if reason == REASON_NONE {
        return 1;
    }
    let a = Attempt {
        hook,
        family: t.family,
        protocol: t.protocol,
        sock_type: 0,
        addr: t.addr,
        port: t.port,
        flags: t.flags,
        detail: 0,
    };
    decide(ctx, &a, cgroup_id, &sb, reason)
}

//! Per-packet programs (cgroup_skb) of sandbox sockets. Both have a fast path of one or two
//! loads for ordinary packets; everything else is the rare case.
//!
//! - egress: drops packets that carry an IPv6 routing header or an IPv4 source-route option,
//!   whichever way they were asked for (setsockopt is refused already; control messages on
//!   sendmsg and RFC 2292 packet options are not visible to any other hook). And it judges
//!   the destination of every packet of an allowed ICMP ("ping") socket: no address hook sees
//!   an unconnected sendto() on one, and before Linux 6.1 not even its connect().
//! - ingress: a sandbox that shares the host's network namespace may listen on loopback and
//!   on the ports of its listen rules only; a connection from elsewhere arriving at any other
//!   listening socket is dropped. This covers listen() on an unbound socket and bind() to port
//!   0, which the bind hooks cannot judge.

use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{__sk_buff, bpf_sock},
    helpers::generated::{bpf_sk_fullsock, bpf_skb_load_bytes},
    programs::SkBuffContext,
};
use netcontrol_common::{
    abi::{
        AF_INET, AF_INET6, HOOK_SKB_EGRESS, HOOK_SKB_INGRESS, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP,
        PROTO_UDP, REASON_LOOPBACK_ELSEWHERE, REASON_NONE, REASON_SOURCE_ROUTE,
        SANDBOX_F_ALLOW_ROUTING, SOCK_DGRAM,
    },
    verdict::{
        IPV4_MAX_OPTIONS, NEXTHDR_ICMPV6, NEXTHDR_TCP, NEXTHDR_UDP, V6Step, ipv4_source_routed_by,
        is_loopback_v4, is_loopback_v6, judge_destination, program_return, v6_step,
    },
};

use crate::{
    destination::{listen_reason, lookup},
    report::{Attempt, Decision, Who, record},
    sandbox::{self, SocketOf},
};

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const TCP_LISTEN: u32 = 10;
/// Extension headers followed before giving up (and dropping: fail closed).
const MAX_V6_HEADERS: u32 = 8;

#[inline(always)]
fn skb(ctx: &SkBuffContext) -> *mut __sk_buff {
    ctx.skb.skb
}

/// The packet's EtherType (skb->protocol).
#[inline(always)]
fn ethertype(ctx: &SkBuffContext) -> u16 {
    // SAFETY: ctx field, 4-byte load; the value is big-endian in the low 16 bits.
    u16::from_be(unsafe { read_volatile(&raw const (*skb(ctx)).protocol) } as u16)
}

/// `len` bytes at `offset` of the packet (the network header is at 0 in cgroup_skb).
#[inline(always)]
fn load<const N: usize>(ctx: &SkBuffContext, offset: u32) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    // SAFETY: the program's own context and a stack buffer of N bytes.
    let r =
        unsafe { bpf_skb_load_bytes(skb(ctx).cast(), offset, buf.as_mut_ptr().cast(), N as u32) };
    (r == 0).then_some(buf)
}

enum Route {
    Clean,
    /// An ICMP or ICMPv6 packet without routing options: judged if its socket is a ping socket.
    Icmp {
        family: u8,
        protocol: u8,
    },
    /// Source-routed (the first hop: the header's destination, and the L4 port if known), or
    /// to loopback on another interface (the destination).
    Routed {
        family: u8,
        addr: [u8; 16],
        protocol: u8,
        port: u16,
        reason: u8,
    },
}

/// The loopback interface's index, in every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

#[inline(always)]
fn v4_route(ctx: &SkBuffContext) -> Route {
    // Version/IHL and the protocol in one load.
    let Some(head) = load::<10>(ctx, 0) else { return Route::Clean };
    let ihl = u32::from(head[0] & 0x0f);
    let clean = if head[9] == PROTO_ICMP {
        Route::Icmp { family: AF_INET, protocol: PROTO_ICMP }
    } else {
        Route::Clean
    };
    if ihl <= 5 {
        return clean;
    }
    let n = (ihl * 4 - 20) & 0x3f;
    if n == 0 || n as usize > IPV4_MAX_OPTIONS {
        return clean;
    }
    // Byte by byte from the packet (not indexing a copy on the stack: see
    // ipv4_source_routed_by). Unreadable options fail closed, as if they routed.
    let byte = |i: usize| load::<1>(ctx, 20 + i as u32).map(|[b]| b);
    if !ipv4_source_routed_by(n as usize, byte) {
        return clean;
    }
    let mut addr = [0u8; 16];
    if let Some(d) = load::<4>(ctx, 16) {
        addr[..4].copy_from_slice(&d);
    }
    let protocol = head[9];
    let port = if protocol == PROTO_TCP || protocol == PROTO_UDP {
        load::<2>(ctx, ihl * 4 + 2).map_or(0, u16::from_be_bytes)
    } else {
        0
    };
    Route::Routed { family: AF_INET, addr, protocol, port, reason: REASON_SOURCE_ROUTE }
}

#[inline(always)]
fn v6_route(ctx: &SkBuffContext) -> Route {
    let Some([mut next]) = load::<1>(ctx, 6) else { return Route::Clean };
    if next == NEXTHDR_TCP || next == NEXTHDR_UDP {
        return Route::Clean;
    }
    if next == NEXTHDR_ICMPV6 {
        return Route::Icmp { family: AF_INET6, protocol: PROTO_ICMPV6 };
    }
    let mut offset = 40u32;
    let mut i = 0;
    let mut routed = true;
    while i < MAX_V6_HEADERS {
        i += 1;
        let Some(hdr) = load::<2>(ctx, offset) else { break };
        match v6_step(next, hdr) {
            V6Step::Done => {
                routed = false;
                break;
            }
            V6Step::Routing => break,
            V6Step::Next { next: n, len } => {
                next = n;
                offset += len;
            }
        }
    }
    if !routed {
        // ICMPv6 behind hop-by-hop or destination options is a ping packet all the same.
        return if next == NEXTHDR_ICMPV6 {
            Route::Icmp { family: AF_INET6, protocol: PROTO_ICMPV6 }
        } else {
            Route::Clean
        };
    }
    let addr = load::<16>(ctx, 24).unwrap_or([0; 16]);
    Route::Routed { family: AF_INET6, addr, protocol: 0, port: 0, reason: REASON_SOURCE_ROUTE }
}

/// A packet to loopback leaving on an interface other than `lo`: the sandbox chose the
/// interface per datagram (IP_PKTINFO / IPV6_PKTINFO control messages, which no hook sees;
/// the socket options are refused by `sockopt`), and the kernel then looks for the address on
/// that link. Ordinary packets on `lo` pay one context load.
#[inline(always)]
fn loopback_elsewhere(ctx: &SkBuffContext, v6: bool) -> Route {
    // SAFETY: ctx field, 4-byte load.
    if unsafe { read_volatile(&raw const (*skb(ctx)).ifindex) } == LOOPBACK_IFINDEX {
        return Route::Clean;
    }
    let mut addr = [0u8; 16];
    let family = if v6 {
        let Some(d) = load::<16>(ctx, 24) else { return Route::Clean };
        if !is_loopback_v6(&d) {
            return Route::Clean;
        }
        addr = d;
        AF_INET6
    } else {
        let Some(d) = load::<4>(ctx, 16) else { return Route::Clean };
        if !is_loopback_v4(&d) {
            return Route::Clean;
        }
        addr[..4].copy_from_slice(&d);
        AF_INET
    };
    Route::Routed { family, addr, protocol: 0, port: 0, reason: REASON_LOOPBACK_ELSEWHERE }
}

#[inline(always)]
pub fn egress(ctx: &SkBuffContext) -> i32 {
    let (route, v6) = match ethertype(ctx) {
        ETH_P_IP => (v4_route(ctx), false),
        ETH_P_IPV6 => (v6_route(ctx), true),
        _ => return 1,
    };
    let route = match route {
        Route::Clean => loopback_elsewhere(ctx, v6),
        Route::Icmp { family, protocol } => match loopback_elsewhere(ctx, v6) {
            Route::Clean => return ping(ctx, family, protocol),
            routed => routed,
        },
        routed => routed,
    };
    let (family, addr, protocol, port, reason) = match route {
        Route::Clean => return 1,
        Route::Icmp { family, protocol } => return ping(ctx, family, protocol),
        Route::Routed { family, addr, protocol, port, reason } => {
            (family, addr, protocol, port, reason)
        }
    };
    let (cgroup_id, sandbox) = sandbox::find(&SocketOf(ctx));
    let a = Attempt {
        hook: HOOK_SKB_EGRESS,
        family,
        protocol,
        sock_type: 0,
        addr,
        port,
        flags: 0,
        detail: 0,
    };
    let d = match sandbox {
        Some(sb) => {
            let mut r = sb.denies_unless(SANDBOX_F_ALLOW_ROUTING, reason);
            // A ping socket's route hides where the echo goes (in the option, not the header):
            // nothing would judge it, so routing options never pass on ping sockets.
            if r == REASON_NONE && ping_socket(ctx).is_some() {
                r = reason;
            }
            Decision::judged(cgroup_id, &sb, r)
        }
        None => Decision::unsandboxed(cgroup_id, true),
    };
    record(&a, &d, Who::Unknown);
    program_return(d.verdict)
}

/// The ICMP protocol of the packet's socket if it is a ping socket (SOCK_DGRAM of ICMP or
/// ICMPv6, which only `--allow-ping` lets a sandbox make).
#[inline(always)]
fn ping_socket(ctx: &SkBuffContext) -> Option<u8> {
    // SAFETY: ctx field (8-byte load of a nullable socket pointer).
    let sk = unsafe { read_volatile(&raw const (*skb(ctx)).__bindgen_anon_2.sk) };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null socket of this context.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return None;
    }
    // SAFETY: a full socket; 4-byte loads.
    let (ty, proto) = unsafe {
        (read_volatile(&raw const (*full).type_), read_volatile(&raw const (*full).protocol))
    };
    let icmp = proto == u32::from(PROTO_ICMP) || proto == u32::from(PROTO_ICMPV6);
    (ty == u32::from(SOCK_DGRAM) && icmp).then_some(proto as u8)
}

/// An ICMP packet leaving: if its socket is a ping socket (SOCK_DGRAM of ICMP or ICMPv6,
/// which only `--allow-ping` lets a sandbox make), its destination is judged as connect()
/// judges it. Raw sockets (trusted code only) and the kernel's own ICMP sockets (SOCK_RAW:
/// echo replies, errors) are left alone.
#[inline(always)]
fn ping(ctx: &SkBuffContext, family: u8, protocol: u8) -> i32 {
    if ping_socket(ctx) != Some(protocol) {
        return 1;
    }
    let mut addr = [0u8; 16];
    if family == AF_INET {
        let Some(d) = load::<4>(ctx, 16) else { return 0 };
        addr[..4].copy_from_slice(&d);
    } else {
        let Some(d) = load::<16>(ctx, 24) else { return 0 };
        addr = d;
    }
    let (cgroup_id, sandbox) = sandbox::find(&SocketOf(ctx));
    let a = Attempt {
        hook: HOOK_SKB_EGRESS,
        family,
        protocol,
        sock_type: SOCK_DGRAM,
        addr,
        port: 0,
        flags: 0,
        detail: 0,
    };
    let d = match sandbox {
        Some(sb) => Decision::judged(
            cgroup_id,
            &sb,
            judge_destination(lookup(sb.policy_id, family, &addr), protocol, 0),
        ),
        None => Decision::unsandboxed(cgroup_id, true),
    };
    record(&a, &d, Who::Unknown);
    program_return(d.verdict)
}

/// The listening socket a packet arrived at, if it arrived at one.
#[inline(always)]
fn listener(ctx: &SkBuffContext) -> Option<*mut bpf_sock> {
    // SAFETY: ctx field (8-byte load of a nullable socket pointer).
    let sk = unsafe { read_volatile(&raw const (*skb(ctx)).__bindgen_anon_2.sk) };
    if sk.is_null() {
        return None;
    }
    // SAFETY: a non-null socket of this context.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return None;
    }
    // SAFETY: a full socket; 4-byte load.
    (unsafe { read_volatile(&raw const (*full).state) } == TCP_LISTEN).then_some(full)
}

#[inline(always)]
pub fn ingress(ctx: &SkBuffContext) -> i32 {
    // Established connections and every other socket: nothing more to look at.
    let Some(sk) = listener(ctx) else { return 1 };
    let (family, peer) = match ethertype(ctx) {
        ETH_P_IP => {
            let Some(s) = load::<4>(ctx, 12) else { return 1 };
            if is_loopback_v4(&s) {
                return 1;
            }
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&s);
            (AF_INET, a)
        }
        ETH_P_IPV6 => {
            let Some(s) = load::<16>(ctx, 8) else { return 1 };
            if is_loopback_v6(&s) {
                return 1;
            }
            (AF_INET6, s)
        }
        _ => return 1,
    };
    let (cgroup_id, sandbox) = sandbox::find(&SocketOf(ctx));
    let Some(sb) = sandbox else { return 1 };
    // Where the socket listens: its bound address (the wildcard too) and port.
    // SAFETY: a full socket; 4-byte loads.
    let (lfamily, laddr, lport) = unsafe {
        let f = read_volatile(&raw const (*sk).family) as u8;
        let mut a = [0u8; 16];
        if f == AF_INET {
            a[..4].copy_from_slice(&read_volatile(&raw const (*sk).src_ip4).to_ne_bytes());
        } else {
            let w = [
                read_volatile(&raw const (*sk).src_ip6[0]),
                read_volatile(&raw const (*sk).src_ip6[1]),
                read_volatile(&raw const (*sk).src_ip6[2]),
                read_volatile(&raw const (*sk).src_ip6[3]),
            ];
            a[..4].copy_from_slice(&w[0].to_ne_bytes());
            a[4..8].copy_from_slice(&w[1].to_ne_bytes());
            a[8..12].copy_from_slice(&w[2].to_ne_bytes());
            a[12..].copy_from_slice(&w[3].to_ne_bytes());
        }
        (f, a, read_volatile(&raw const (*sk).src_port) as u16)
    };
    let reason = listen_reason(&sb, lfamily, &laddr, lport);
    if reason == REASON_NONE {
        return 1;
    }
    // Reported as who tried to come in, to which local port.
    let a = Attempt {
        hook: HOOK_SKB_INGRESS,
        family,
        protocol: PROTO_TCP,
        sock_type: 0,
        addr: peer,
        port: lport,
        flags: 0,
        detail: 0,
    };
    let d = Decision::judged(cgroup_id, &sb, reason);
    record(&a, &d, Who::Unknown);
    program_return(d.verdict)
}

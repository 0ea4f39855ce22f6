//! DNS-aware mode: DNS queries go to the sandbox's proxy, and replies look as if they came from
//! the server the program asked.
//!
//! connect/sendmsg rewrite a port-53 destination to the proxy and remember the original (and
//! who asked) by socket cookie; recvmsg/getpeername rewrite the proxy's address back, so that
//! resolvers that check the reply's source (glibc, musl, c-ares, dig) accept it.

use core::{
    ffi::c_void,
    ptr::{read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::bpf_get_socket_cookie,
    },
    programs::SockAddrContext,
};
use netcontrol_common::abi::{
    AF_INET, AF_INET6, DNS_PROXY_V4, DNS_PROXY_V6, DnsOrigin, EVENT_F_V4_MAPPED,
};

use crate::{maps::DNS_ORIGINS, report::Attempt, sandbox::Sandbox};

/// `::ffff:0:0/96` as the third 32-bit word of an IPv6 address.
pub const V4_MAPPED_WORD: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
const PROXY_V4_WORD: u32 = u32::from_ne_bytes(DNS_PROXY_V4);

fn proxy_v6_words() -> [u32; 4] {
    let b = DNS_PROXY_V6;
    [
        u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        u32::from_ne_bytes([b[4], b[5], b[6], b[7]]),
        u32::from_ne_bytes([b[8], b[9], b[10], b[11]]),
        u32::from_ne_bytes([b[12], b[13], b[14], b[15]]),
    ]
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.sock_addr.cast::<c_void>()) }
}

/// Send a DNS query to the sandbox's proxy instead. False if it cannot (an IPv6 server while
/// the proxy has no IPv6 socket): the attempt is then judged by the rules.
///
/// `V6_CTX`: the program is connect6/sendmsg6. A compile-time choice, because the verifier
/// rejects any reachable `user_ip6` store in a connect4/sendmsg4 program and the other way
/// round.
#[inline(always)]
pub fn redirect<const V6_CTX: bool>(
    ctx: &SockAddrContext,
    a: &Attempt,
    sb: &Sandbox,
    cgroup_id: u64,
) -> bool {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    let v6_ctx = V6_CTX;
    let mapped = a.flags & EVENT_F_V4_MAPPED != 0;
    let proxy_port = if a.family == AF_INET { sb.dns_port4 } else { sb.dns_port6 };
    if proxy_port == 0 {
        return false;
    }
    let origin = DnsOrigin {
        addr: a.addr,
        port: a.port,
        proxy_port,
        family: if v6_ctx { AF_INET6 } else { AF_INET },
        flags: a.flags,
        _pad: [0; 2],
        pid_tgid: bpf_get_current_pid_tgid(),
        uid_gid: bpf_get_current_uid_gid(),
        cgroup_id,
        sandbox_id: sb.id,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    if DNS_ORIGINS.insert(cookie(ctx), origin, 0).is_err() {
        // Without the origin the reply could not be given its server's address back.
        return false;
    }
    let port = u32::from(proxy_port.to_be());
    // SAFETY: 4-byte stores to writable ctx fields, as the verifier requires.
    unsafe {
        if !v6_ctx {
            write_volatile(&raw mut (*sa).user_ip4, PROXY_V4_WORD);
        } else {
            let w = if mapped { [0, 0, V4_MAPPED_WORD, PROXY_V4_WORD] } else { proxy_v6_words() };
            write_volatile(&raw mut (*sa).user_ip6[0], w[0]);
            write_volatile(&raw mut (*sa).user_ip6[1], w[1]);
            write_volatile(&raw mut (*sa).user_ip6[2], w[2]);
            write_volatile(&raw mut (*sa).user_ip6[3], w[3]);
        }
        write_volatile(&raw mut (*sa).user_port, port);
    }
    true
}

/// recvmsg4 / getpeername4: a reply from the proxy shows the original server instead.
#[inline(always)]
pub fn restore_v4(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: ctx fields, 4-byte loads.
    let (ip, port) = unsafe {
        (read_volatile(&raw const (*sa).user_ip4), read_volatile(&raw const (*sa).user_port))
    };
    if ip != PROXY_V4_WORD {
        return 1;
    }
    // SAFETY: LRU hash lookup; the value is copied out at once.
    let Some(o) = (unsafe { DNS_ORIGINS.get(&cookie(ctx)) }).copied() else { return 1 };
    if o.proxy_port != u16::from_be(port as u16) || o.family != AF_INET {
        return 1;
    }
    // SAFETY: 4-byte stores to writable ctx fields.
    unsafe {
        write_volatile(
            &raw mut (*sa).user_ip4,
            u32::from_ne_bytes([o.addr[0], o.addr[1], o.addr[2], o.addr[3]]),
        );
        write_volatile(&raw mut (*sa).user_port, u32::from(o.port.to_be()));
    }
    1
}

/// recvmsg6 / getpeername6, also for a v4-mapped proxy address on a dual-stack socket.
#[inline(always)]
pub fn restore_v6(ctx: &SockAddrContext) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: ctx fields, 4-byte loads.
    let (w, port) = unsafe {
        (
            [
                read_volatile(&raw const (*sa).user_ip6[0]),
                read_volatile(&raw const (*sa).user_ip6[1]),
                read_volatile(&raw const (*sa).user_ip6[2]),
                read_volatile(&raw const (*sa).user_ip6[3]),
            ],
            read_volatile(&raw const (*sa).user_port),
        )
    };
    let mapped = w[0] == 0 && w[1] == 0 && w[2] == V4_MAPPED_WORD && w[3] == PROXY_V4_WORD;
    if !mapped && w != proxy_v6_words() {
        return 1;
    }
    // SAFETY: LRU hash lookup; the value is copied out at once.
    let Some(o) = (unsafe { DNS_ORIGINS.get(&cookie(ctx)) }).copied() else { return 1 };
    if o.proxy_port != u16::from_be(port as u16) {
        return 1;
    }
    let a = o.addr;
    // Answer in the form the socket saw: a mapped proxy address gets the mapped server back.
    let back = if mapped || o.flags & EVENT_F_V4_MAPPED != 0 {
        [0, 0, V4_MAPPED_WORD, u32::from_ne_bytes([a[0], a[1], a[2], a[3]])]
    } else {
        [
            u32::from_ne_bytes([a[0], a[1], a[2], a[3]]),
            u32::from_ne_bytes([a[4], a[5], a[6], a[7]]),
            u32::from_ne_bytes([a[8], a[9], a[10], a[11]]),
            u32::from_ne_bytes([a[12], a[13], a[14], a[15]]),
        ]
    };
    // SAFETY: 4-byte stores to writable ctx fields.
    unsafe {
        write_volatile(&raw mut (*sa).user_ip6[0], back[0]);
        write_volatile(&raw mut (*sa).user_ip6[1], back[1]);
        write_volatile(&raw mut (*sa).user_ip6[2], back[2]);
        write_volatile(&raw mut (*sa).user_ip6[3], back[3]);
        write_volatile(&raw mut (*sa).user_port, u32::from(o.port.to_be()));
    }
    1
}

/// Whether the attempt goes to the sandbox's own DNS proxy.
#[inline(always)]
pub fn is_proxy(a: &Attempt, sb: &Sandbox) -> bool {
    if a.family == AF_INET {
        sb.dns_port4 != 0
            && a.port == sb.dns_port4
            && a.addr[0] == DNS_PROXY_V4[0]
            && a.addr[1] == DNS_PROXY_V4[1]
            && a.addr[2] == DNS_PROXY_V4[2]
            && a.addr[3] == DNS_PROXY_V4[3]
    } else {
        sb.dns_port6 != 0 && a.port == sb.dns_port6 && a.addr == DNS_PROXY_V6
    }
}

//! netcontrol's kernel side: cgroup hooks that judge every outbound attempt of a sandbox.
//!
//! - connect4/6: TCP connect (also TCP Fast Open, which goes through the same pre-connect
//!   hook) and UDP connect;
//! - sendmsg4/6: unconnected UDP (sendto, sendmsg, sendmmsg), which skips connect4/6;
//! - sock_create: raw, ICMP ("ping") and SCTP sockets, which the address hooks cannot see;
//! - recvmsg4/6, getpeername4/6 (DNS-aware mode): replies from the DNS proxy show the server
//!   the program asked;
//! - setsockopt: socket options that route packets elsewhere than the judged destination;
//! - skb egress: packets that carry a route anyway (control messages), dropped;
//! - bind4/6, skb ingress: where a sandbox in the host's network namespace may listen;
//! - LSM socket_create, socket_connect, socket_sendmsg (global, where the kernel runs the BPF
//!   LSM): socket families beyond IP, unix and netlink, and abstract unix sockets.
//!
//! Each program is a thin entry point; the decisions are in the modules named after what they
//! judge, and the pure logic in netcontrol_common::verdict.
#![no_std]
#![no_main]

mod destination;
mod dns;
mod maps;
mod packet;
mod report;
mod sandbox;
mod socket;
mod sockopt;
mod unix;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, lsm},
    programs::{LsmContext, SkBuffContext, SockAddrContext, SockContext, SockoptContext},
};
use netcontrol_common::abi::{
    HOOK_BIND4, HOOK_BIND6, HOOK_CONNECT4, HOOK_CONNECT6, HOOK_SENDMSG4, HOOK_SENDMSG6,
};

#[cgroup_sock_addr(connect4)]
pub fn nc_connect4(ctx: SockAddrContext) -> i32 {
    destination::judge_v4(&ctx, HOOK_CONNECT4, false)
}

#[cgroup_sock_addr(connect6)]
pub fn nc_connect6(ctx: SockAddrContext) -> i32 {
    destination::judge_v6(&ctx, HOOK_CONNECT6, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn nc_sendmsg4(ctx: SockAddrContext) -> i32 {
    destination::judge_v4(&ctx, HOOK_SENDMSG4, true)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn nc_sendmsg6(ctx: SockAddrContext) -> i32 {
    destination::judge_v6(&ctx, HOOK_SENDMSG6, true)
}

#[cgroup_sock_addr(bind4)]
pub fn nc_bind4(ctx: SockAddrContext) -> i32 {
    destination::judge_bind(&ctx, HOOK_BIND4, false)
}

#[cgroup_sock_addr(bind6)]
pub fn nc_bind6(ctx: SockAddrContext) -> i32 {
    destination::judge_bind(&ctx, HOOK_BIND6, true)
}

#[cgroup_sockopt(setsockopt)]
pub fn nc_setsockopt(ctx: SockoptContext) -> i32 {
    sockopt::judge(&ctx, &sandbox::Task, report::Who::Task)
}

/// nc_setsockopt where the kernel refuses sockopt programs the cgroup ancestor and task
/// helpers (Linux 5.10): its events name no process.
#[cgroup_sockopt(setsockopt)]
pub fn nc_sockopt_flat(ctx: SockoptContext) -> i32 {
    sockopt::judge(&ctx, &sandbox::TaskOnly, report::Who::Unknown)
}

#[cgroup_skb(egress)]
pub fn nc_skb_egress(ctx: SkBuffContext) -> i32 {
    packet::egress(&ctx)
}

#[cgroup_skb(ingress)]
pub fn nc_skb_ingress(ctx: SkBuffContext) -> i32 {
    packet::ingress(&ctx)
}

#[lsm(hook = "socket_create")]
pub fn nc_lsm_socket(ctx: LsmContext) -> i32 {
    socket::judge_family(&ctx)
}

#[lsm(hook = "socket_connect")]
pub fn nc_lsm_connect(ctx: LsmContext) -> i32 {
    unix::judge_connect(&ctx)
}

#[lsm(hook = "socket_sendmsg")]
pub fn nc_lsm_sendmsg(ctx: LsmContext) -> i32 {
    unix::judge_sendmsg(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn nc_recvmsg4(ctx: SockAddrContext) -> i32 {
    dns::restore_v4(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn nc_recvmsg6(ctx: SockAddrContext) -> i32 {
    dns::restore_v6(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn nc_getpeername4(ctx: SockAddrContext) -> i32 {
    dns::restore_v4(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn nc_getpeername6(ctx: SockAddrContext) -> i32 {
    dns::restore_v6(&ctx)
}

#[cgroup_sock(sock_create)]
pub fn nc_sock_create(ctx: SockContext) -> i32 {
    socket::judge_create(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Any reachable panic makes the verifier reject the program; there is nothing to unwind.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

//! netcontrol's kernel side: cgroup hooks that judge every outbound attempt of a sandbox.
//!
//! - connect4/6: TCP connect (also TCP Fast Open, which goes through the same pre-connect
//!   hook) and UDP connect;
//! - sendmsg4/6: unconnected UDP (sendto, sendmsg, sendmmsg), which skips connect4/6;
//! - sock_create: raw and ICMP ("ping") sockets, which the address hooks cannot see;
//! - recvmsg4/6, getpeername4/6 (DNS-aware mode): replies from the DNS proxy show the server
//!   the program asked.
//!
//! Each program is a thin entry point; the decision is in `destination` / `socket` and the
//! pure logic in netcontrol_common::verdict.
#![no_std]
#![no_main]

mod destination;
mod dns;
mod maps;
mod report;
mod sandbox;
mod socket;

use aya_ebpf::{
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
};
use netcontrol_common::abi::{HOOK_CONNECT4, HOOK_CONNECT6, HOOK_SENDMSG4, HOOK_SENDMSG6};

#[cgroup_sock_addr(connect4)]
pub fn nc_connect4(ctx: SockAddrContext) -> i32 {
    destination::judge_v4(&ctx, HOOK_CONNECT4)
}

#[cgroup_sock_addr(connect6)]
pub fn nc_connect6(ctx: SockAddrContext) -> i32 {
    destination::judge_v6(&ctx, HOOK_CONNECT6)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn nc_sendmsg4(ctx: SockAddrContext) -> i32 {
    destination::judge_v4(&ctx, HOOK_SENDMSG4)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn nc_sendmsg6(ctx: SockAddrContext) -> i32 {
    destination::judge_v6(&ctx, HOOK_SENDMSG6)
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

//! Abstract unix sockets (BPF LSM socket_connect and socket_sendmsg). They have no file
//! permissions: any process in a network namespace may connect to any of them, so a sandbox
//! that shares the host's namespace could reach every host daemon listening on one. The cgroup
//! inet hooks never see unix sockets; the LSM hooks see every connect() and sendmsg() of every
//! task, so the common case (not unix, not abstract) is answered from the address alone.

use aya_ebpf::{helpers::bpf_probe_read_kernel, programs::LsmContext};
use netcontrol_common::{
    abi::{
        AF_UNIX, EVENT_F_UNIX_NAME, HOOK_LSM_CONNECT, HOOK_LSM_SENDMSG, REASON_ABSTRACT_UNIX,
        SANDBOX_F_ALLOW_ABSTRACT_UNIX, SANDBOX_F_HOST_NETNS,
    },
    verdict::program_return,
};

use crate::{
    report::{Attempt, Decision, Who, record},
    sandbox,
    socket::LSM_DENY,
};

/// offsetof(struct sockaddr_un, sun_path)
const SUN_PATH: usize = 2;

/// LSM socket_connect(sock, address, addrlen).
#[inline(always)]
pub fn judge_connect(ctx: &LsmContext) -> i32 {
    let addr: *const u8 = ctx.arg(1);
    let len: i32 = ctx.arg(2);
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    judge_name(addr, len, HOOK_LSM_CONNECT)
}

/// LSM socket_sendmsg(sock, msg, size): the destination of an unconnected send is the
/// message's msg_name (struct msghdr starts with `void *msg_name; int msg_namelen;`).
#[inline(always)]
pub fn judge_sendmsg(ctx: &LsmContext) -> i32 {
    let msg: *const u8 = ctx.arg(1);
    let previous: i32 = ctx.arg(3);
    if previous != 0 {
        return previous;
    }
    // SAFETY: reading kernel memory through the probe helper, which checks the address.
    let Ok(name) = (unsafe { bpf_probe_read_kernel(msg.cast::<*const u8>()) }) else { return 0 };
    if name.is_null() {
        return 0;
    }
    // SAFETY: as above.
    let Ok(len) = (unsafe { bpf_probe_read_kernel(msg.wrapping_add(8).cast::<i32>()) }) else {
        return 0;
    };
    judge_name(name, len, HOOK_LSM_SENDMSG)
}

#[inline(always)]
fn judge_name(addr: *const u8, len: i32, hook: u8) -> i32 {
    if len <= SUN_PATH as i32 {
        return 0;
    }
    // SAFETY: as above; `addr` is the kernel's copy of the caller's address.
    let Ok(family) = (unsafe { bpf_probe_read_kernel(addr.cast::<u16>()) }) else { return 0 };
    if family != u16::from(AF_UNIX) {
        return 0;
    }
    // SAFETY: as above.
    let Ok(first) = (unsafe { bpf_probe_read_kernel(addr.wrapping_add(SUN_PATH)) }) else {
        return 0;
    };
    // A path name: the file system's permissions decide.
    if first != 0 {
        return 0;
    }
    let (cgroup_id, sandbox) = sandbox::current();
    let Some(sb) = sandbox else { return 0 };
    // A namespace of its own has abstract sockets of its own.
    if sb.flags & SANDBOX_F_HOST_NETNS == 0 || sb.flags & SANDBOX_F_ALLOW_ABSTRACT_UNIX != 0 {
        return 0;
    }
    // The name's first bytes, for the event (the address buffer is the kernel's
    // sockaddr_storage, so 16 bytes past sun_path[0] are always inside it).
    let name_len = (len as u32).saturating_sub(SUN_PATH as u32 + 1);
    // SAFETY: as above.
    let mut name =
        unsafe { bpf_probe_read_kernel(addr.wrapping_add(SUN_PATH + 1).cast::<[u8; 16]>()) }
            .unwrap_or([0; 16]);
    let mut i = 0;
    while i < 16 {
        if i as u32 >= name_len {
            name[i] = 0;
        }
        i += 1;
    }
    let a = Attempt {
        hook,
        family: AF_UNIX,
        protocol: 0,
        sock_type: 0,
        addr: name,
        port: 0,
        flags: EVENT_F_UNIX_NAME,
        detail: name_len,
    };
    let d = Decision::judged(cgroup_id, &sb, REASON_ABSTRACT_UNIX);
    record(&a, &d, Who::Task);
    if program_return(d.verdict) == 0 { LSM_DENY } else { 0 }
}

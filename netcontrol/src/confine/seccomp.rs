//! Where the kernel does not run netcontrol's BPF LSM programs, `run` keeps socket families
//! beyond unix, inet, inet6 and netlink away from its command with a seccomp filter: socket()
//! and socketpair() of another family are handed to netcontrol (SECCOMP_RET_USER_NOTIF),
//! which refuses them with EPERM and reports each one. io_uring, which can make sockets
//! without a system call the filter sees, is refused, as is the 32-bit socketcall() (its
//! arguments are in memory, out of a filter's reach).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use netcontrol_common::abi::ALWAYS_ALLOWED_FAMILIES;

// seccomp_data: nr (u32) at 0, arch (u32) at 4, args[i] (u64) at 16 + 8i.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0: u32 = 16;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const NR_SOCKET: u32 = 41;
const NR_SOCKETPAIR: u32 = 53;
const NR_IO_URING_SETUP: u32 = 425;
const NR32_SOCKETCALL: u32 = 102;
const NR32_SOCKET: u32 = 359;
const NR32_SOCKETPAIR: u32 = 360;

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_NOTIFY: u32 = libc::SECCOMP_RET_USER_NOTIF;
const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
}

fn jeq(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16, jt, jf, k }
}

fn jge(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code: (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16, jt, jf, k }
}

fn load(off: u32) -> libc::sock_filter {
    stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, off)
}

fn ret(k: u32) -> libc::sock_filter {
    stmt(libc::BPF_RET | libc::BPF_K, k)
}

/// The families allowed: the usual four and the policy's, as a sorted list.
fn allowed_families(extra: u64) -> Vec<u32> {
    (0..64).filter(|f| (ALWAYS_ALLOWED_FAMILIES | extra) & (1u64 << f) != 0).collect()
}

/// The filter program (x86_64 kernels: native and 32-bit system calls).
pub fn filter(extra_families: u64) -> Vec<libc::sock_filter> {
    let families = allowed_families(extra_families);
    // The family check: allow if args[0] is one of them, else hand it to netcontrol.
    let mut family_check = vec![load(OFF_ARG0)];
    for (i, f) in families.iter().enumerate() {
        let left = (families.len() - i) as u8; // instructions to "allow" from the next one
        family_check.push(jeq(*f, left, 0));
    }
    family_check.push(ret(RET_NOTIFY));
    family_check.push(ret(RET_ALLOW));
    let fc = family_check.len() as u8;

    // Each block ends in the family check; a system call that is neither socket() nor
    // socketpair() jumps to its last instruction (allow).
    // 32-bit: socketcall refused, socket/socketpair checked, io_uring refused.
    let i386 = vec![
        load(OFF_NR),
        jeq(NR32_SOCKETCALL, 0, 1),
        ret(RET_EPERM),
        jeq(NR_IO_URING_SETUP, 0, 1),
        ret(RET_EPERM),
        jeq(NR32_SOCKET, 1, 0),
        jeq(NR32_SOCKETPAIR, 0, fc - 1),
    ];
    let native = [
        load(OFF_NR),
        // x32 system calls: none of them is needed here.
        jge(X32_SYSCALL_BIT, 0, 1),
        ret(RET_EPERM),
        jeq(NR_IO_URING_SETUP, 0, 1),
        ret(RET_EPERM),
        jeq(NR_SOCKET, 1, 0),
        jeq(NR_SOCKETPAIR, 0, fc - 1),
    ];

    let mut prog = vec![load(OFF_ARCH)];
    // arch == x86_64: native part; == i386: 32-bit part; else allow (nothing else runs on
    // an x86_64 kernel).
    let native_len = (native.len() + family_check.len()) as u8;
    prog.push(jeq(AUDIT_ARCH_X86_64, 0, native_len));
    prog.extend(native.iter().copied());
    prog.extend(family_check.iter().copied());
    prog.push(jeq(AUDIT_ARCH_I386, 1, 0));
    prog.push(ret(RET_ALLOW));
    prog.extend(i386);
    prog.extend(family_check);
    prog
}

/// Install the filter on the calling thread (in the forked child, after no_new_privs) and
/// send its listener fd over `to_parent`. Async-signal-safe: system calls on memory that
/// was allocated before the fork.
pub fn install(prog: &[libc::sock_filter], to_parent: RawFd) -> io::Result<()> {
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_ptr().cast_mut() };
    // SAFETY: a valid filter program that outlives the call.
    let listener = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
            &raw const fprog,
        )
    };
    if listener < 0 {
        return Err(io::Error::last_os_error());
    }
    let r = send_fd(to_parent, listener as RawFd);
    // SAFETY: our own fd; the parent has its copy now.
    unsafe { libc::close(listener as RawFd) };
    r
}

fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // Room for one fd, aligned for cmsghdr.
    let mut control = [0u64; 4];
    // SAFETY: zeroed msghdr is valid; the buffers outlive the call; one cmsg fits.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(size_of::<RawFd>() as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd);
        if libc::sendmsg(sock, &raw const msg, 0) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The listener fd the child sent, within `timeout`.
pub fn receive_listener(sock: BorrowedFd<'_>, timeout: Duration) -> io::Result<OwnedFd> {
    let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&raw mut pfd, 1, timeout.as_millis() as i32) };
    if n <= 0 {
        return Err(io::Error::other("the command did not hand over its seccomp listener"));
    }
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    let mut control = [0u64; 4];
    // SAFETY: as in send_fd, receiving.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &raw mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of_val(&control);
        if libc::recvmsg(sock.as_raw_fd(), &raw mut msg, libc::MSG_CMSG_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            return Err(io::Error::other("no fd in the message"));
        }
        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// A refused system call, for the event.
#[derive(Clone, Copy, Debug)]
pub struct Refused {
    pub pid: u32,
    pub nr: i32,
    pub arch: u32,
    pub family: u32,
    pub sock_type: u32,
    pub protocol: u32,
}

/// Answer the filter's notifications, until every process that had the filter is gone
/// (blocking: run it on a thread of its own). `answer` reports each one and says whether to
/// refuse it with EPERM (enforce) or let it go on (audit).
pub fn serve(listener: &OwnedFd, mut answer: impl FnMut(Refused) -> bool) {
    loop {
        let mut pfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&raw mut pfd, 1, 1000) };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
            continue;
        }
        if n < 0 || pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
            return;
        }
        if n == 0 {
            continue;
        }
        // SAFETY: zeroed seccomp_notif is the expected input (the kernel requires it).
        let mut req: libc::seccomp_notif = unsafe { std::mem::zeroed() };
        // SAFETY: the listener fd and a struct of the kernel's seccomp_notif layout.
        if unsafe {
            libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &raw mut req)
        } < 0
        {
            // ENOENT: the task went away before we read it.
            continue;
        }
        let refuse = answer(Refused {
            pid: req.pid,
            nr: req.data.nr,
            arch: req.data.arch,
            family: req.data.args[0] as u32,
            sock_type: req.data.args[1] as u32,
            protocol: req.data.args[2] as u32,
        });
        // Audit mode lets the call go on (the arguments were only looked at, not trusted).
        let resp = if refuse {
            libc::seccomp_notif_resp { id: req.id, val: 0, error: -libc::EPERM, flags: 0 }
        } else {
            libc::seccomp_notif_resp {
                id: req.id,
                val: 0,
                error: 0,
                flags: libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32,
            }
        };
        // SAFETY: as above.
        unsafe {
            libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &raw const resp)
        };
    }
}

/// A socketpair whose one end goes to the child.
pub fn channel() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: two ints for the kernel to fill.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: two new fds, owned here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the filter like the kernel's classic BPF interpreter would, on one system call.
    fn verdict(prog: &[libc::sock_filter], arch: u32, nr: u32, arg0: u32) -> u32 {
        let mut pc = 0usize;
        let mut a = 0u32;
        loop {
            let i = prog[pc];
            let code = u32::from(i.code);
            match code {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    a = match i.k {
                        OFF_NR => nr,
                        OFF_ARCH => arch,
                        OFF_ARG0 => arg0,
                        k => panic!("load of {k}"),
                    };
                    pc += 1;
                }
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += 1 + usize::from(if a == i.k { i.jt } else { i.jf });
                }
                c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => {
                    pc += 1 + usize::from(if a >= i.k { i.jt } else { i.jf });
                }
                c if c == libc::BPF_RET | libc::BPF_K => return i.k,
                c => panic!("instruction {c:#x}"),
            }
        }
    }

    #[test]
    fn the_filter_lets_ip_unix_and_netlink_through_and_hands_the_rest_over() {
        let p = filter(0);
        let x = AUDIT_ARCH_X86_64;
        for f in [1, 2, 10, 16] {
            assert_eq!(verdict(&p, x, NR_SOCKET, f), RET_ALLOW, "family {f}");
            assert_eq!(verdict(&p, AUDIT_ARCH_I386, NR32_SOCKET, f), RET_ALLOW, "32-bit {f}");
        }
        for f in [17, 40, 21, 30, 38, 0] {
            assert_eq!(verdict(&p, x, NR_SOCKET, f), RET_NOTIFY, "family {f}");
            assert_eq!(verdict(&p, x, NR_SOCKETPAIR, f), RET_NOTIFY, "socketpair {f}");
            assert_eq!(verdict(&p, AUDIT_ARCH_I386, NR32_SOCKET, f), RET_NOTIFY, "32-bit {f}");
        }
        assert_eq!(verdict(&p, x, NR_IO_URING_SETUP, 0), RET_EPERM);
        assert_eq!(verdict(&p, AUDIT_ARCH_I386, NR32_SOCKETCALL, 1), RET_EPERM);
        assert_eq!(verdict(&p, AUDIT_ARCH_I386, NR_IO_URING_SETUP, 0), RET_EPERM);
        assert_eq!(verdict(&p, x, NR_SOCKET | X32_SYSCALL_BIT, 2), RET_EPERM, "x32");
        // Everything else is untouched.
        for nr in [0, 1, 42, 59, 231, 424, 426] {
            assert_eq!(verdict(&p, x, nr, 40), RET_ALLOW, "nr {nr}");
        }
        // A policy's extra family.
        let p = filter(1 << 40);
        assert_eq!(verdict(&p, x, NR_SOCKET, 40), RET_ALLOW);
        assert_eq!(verdict(&p, x, NR_SOCKET, 17), RET_NOTIFY);
    }
}

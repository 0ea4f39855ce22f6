//! The seccomp filter of `run`'s command. Typing into the terminal (TIOCSTI, TIOCLINUX: the
//! shell that started netcontrol would run it, outside the sandbox) and socket(AF_INET,
//! SOCK_PACKET) are handed to netcontrol (SECCOMP_RET_USER_NOTIF), which refuses them with
//! EPERM and reports each one; so are socket() and socketpair() of families beyond unix,
//! inet, inet6 and netlink where the kernel does not run netcontrol's BPF LSM programs.
//! io_uring, which can make sockets without a system call the filter sees, is refused, as
//! are x32 and the 32-bit socketcall() (its arguments are in memory, out of a filter's
//! reach).

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
    time::Duration,
};

use netcontrol_common::abi::ALWAYS_ALLOWED_FAMILIES;

// seccomp_data: nr (u32) at 0, arch (u32) at 4, args[i] (u64) at 16 + 8i (the low half
// first: x86 is little-endian).
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARG0: u32 = 16;
const OFF_ARG1: u32 = 24;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const NR_IOCTL: u32 = 16;
const NR_SOCKET: u32 = 41;
const NR_SOCKETPAIR: u32 = 53;
const NR_IO_URING_SETUP: u32 = 425;
const NR32_IOCTL: u32 = 54;
const NR32_SOCKETCALL: u32 = 102;
const NR32_SOCKET: u32 = 359;
const NR32_SOCKETPAIR: u32 = 360;

/// ioctls that type into a terminal: the command shares netcontrol's, and input pushed
/// there is read by the shell that started netcontrol, outside the sandbox.
const TIOCSTI: u32 = 0x5412;
const TIOCLINUX: u32 = 0x541c;
/// socket(AF_INET, SOCK_PACKET) is turned into a packet socket by the kernel after the filter
/// saw AF_INET.
const SOCK_PACKET: u32 = 10;
const SOCK_TYPE_MASK: u32 = 0xf;

const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
const RET_NOTIFY: u32 = libc::SECCOMP_RET_USER_NOTIF;
const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | libc::EPERM as u32;

/// A classic BPF program with named jump targets, resolved when it is done (the jumps are
/// relative, forward and at most 255 instructions: plenty here).
#[derive(Default)]
struct Asm {
    code: Vec<(libc::sock_filter, Option<(&'static str, &'static str)>)>,
    labels: Vec<(&'static str, usize)>,
}

/// Fall through to the next instruction.
const NEXT: &str = "";

impl Asm {
    fn label(&mut self, name: &'static str) {
        self.labels.push((name, self.code.len()));
    }

    fn stmt(&mut self, code: u32, k: u32) {
        self.code.push((libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }, None));
    }

    fn load(&mut self, off: u32) {
        self.stmt(libc::BPF_LD | libc::BPF_W | libc::BPF_ABS, off);
    }

    fn and(&mut self, k: u32) {
        self.stmt(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, k);
    }

    fn ret(&mut self, k: u32) {
        self.stmt(libc::BPF_RET | libc::BPF_K, k);
    }

    fn jump(&mut self, op: u32, k: u32, yes: &'static str, no: &'static str) {
        let code = (libc::BPF_JMP | op | libc::BPF_K) as u16;
        self.code.push((libc::sock_filter { code, jt: 0, jf: 0, k }, Some((yes, no))));
    }

    fn jeq(&mut self, k: u32, yes: &'static str, no: &'static str) {
        self.jump(libc::BPF_JEQ, k, yes, no);
    }

    fn jge(&mut self, k: u32, yes: &'static str, no: &'static str) {
        self.jump(libc::BPF_JGE, k, yes, no);
    }

    fn finish(self) -> Vec<libc::sock_filter> {
        let at = |name: &str, from: usize| -> u8 {
            if name == NEXT {
                return 0;
            }
            let (_, to) = self.labels.iter().find(|(n, _)| *n == name).expect("a known label");
            u8::try_from(to - from - 1).expect("a forward jump of at most 255")
        };
        self.code
            .iter()
            .enumerate()
            .map(|(i, (insn, targets))| match targets {
                Some((yes, no)) => libc::sock_filter { jt: at(yes, i), jf: at(no, i), ..*insn },
                None => *insn,
            })
            .collect()
    }
}

/// The families allowed: the usual four and the policy's, as a sorted list.
fn allowed_families(extra: u64) -> Vec<u32> {
    (0..64).filter(|f| (ALWAYS_ALLOWED_FAMILIES | extra) & (1u64 << f) != 0).collect()
}

/// The filter program (x86_64 kernels: native and 32-bit system calls). Always: no typing
/// into the terminal, no io_uring, no x32 or socketcall(), no SOCK_PACKET. `families`: also
/// hand socket()/socketpair() of families beyond the allowed ones to netcontrol (where the
/// BPF LSM does not judge them).
pub fn filter(families: Option<u64>) -> Vec<libc::sock_filter> {
    let mut a = Asm::default();
    a.load(OFF_ARCH);
    a.jeq(AUDIT_ARCH_X86_64, NEXT, "not_native");
    a.load(OFF_NR);
    // x32 system calls: none of them is needed here.
    a.jge(X32_SYSCALL_BIT, "eperm", NEXT);
    a.jeq(NR_IO_URING_SETUP, "eperm", NEXT);
    a.jeq(NR_IOCTL, "ioctl", NEXT);
    a.jeq(NR_SOCKET, "socket", NEXT);
    a.jeq(NR_SOCKETPAIR, "family", "allow");
    a.label("not_native");
    // Nothing but x86_64 and i386 runs on an x86_64 kernel.
    a.jeq(AUDIT_ARCH_I386, NEXT, "allow");
    a.load(OFF_NR);
    // The 32-bit socketcall() has its arguments in memory, out of a filter's reach.
    a.jeq(NR32_SOCKETCALL, "eperm", NEXT);
    a.jeq(NR_IO_URING_SETUP, "eperm", NEXT);
    a.jeq(NR32_IOCTL, "ioctl", NEXT);
    a.jeq(NR32_SOCKET, "socket", NEXT);
    a.jeq(NR32_SOCKETPAIR, "family", "allow");

    a.label("ioctl");
    a.load(OFF_ARG1);
    a.jeq(TIOCSTI, "notify", NEXT);
    a.jeq(TIOCLINUX, "notify", "allow");

    a.label("socket");
    a.load(OFF_ARG0);
    a.jeq(libc::AF_INET as u32, NEXT, "family");
    a.load(OFF_ARG1);
    a.and(SOCK_TYPE_MASK);
    a.jeq(SOCK_PACKET, "notify", "allow");

    a.label("family");
    if let Some(extra) = families {
        a.load(OFF_ARG0);
        for f in allowed_families(extra) {
            a.jeq(f, "allow", NEXT);
        }
        a.ret(RET_NOTIFY);
    } else {
        a.ret(RET_ALLOW);
    }
    a.label("allow");
    a.ret(RET_ALLOW);
    a.label("notify");
    a.ret(RET_NOTIFY);
    a.label("eperm");
    a.ret(RET_EPERM);
    a.finish()
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

/// What a refused system call tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tried {
    /// To type into the terminal (TIOCSTI, TIOCLINUX).
    TerminalInput,
    /// A socket of another family (SOCK_PACKET on AF_INET is a packet socket).
    Family(u32),
}

impl Refused {
    pub fn tried(&self) -> Tried {
        let ioctl = (self.arch == AUDIT_ARCH_X86_64 && self.nr as u32 == NR_IOCTL)
            || (self.arch == AUDIT_ARCH_I386 && self.nr as u32 == NR32_IOCTL);
        if ioctl {
            Tried::TerminalInput
        } else if self.family == libc::AF_INET as u32
            && self.sock_type & SOCK_TYPE_MASK == SOCK_PACKET
        {
            Tried::Family(libc::AF_PACKET as u32)
        } else {
            Tried::Family(self.family)
        }
    }
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
    fn run(prog: &[libc::sock_filter], arch: u32, nr: u32, arg0: u32, arg1: u32) -> u32 {
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
                        OFF_ARG1 => arg1,
                        k => panic!("load of {k}"),
                    };
                    pc += 1;
                }
                c if c == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => {
                    a &= i.k;
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

    fn verdict(prog: &[libc::sock_filter], arch: u32, nr: u32, arg0: u32) -> u32 {
        run(prog, arch, nr, arg0, libc::SOCK_STREAM as u32)
    }

    #[test]
    fn the_filter_lets_ip_unix_and_netlink_through_and_hands_the_rest_over() {
        let p = filter(Some(0));
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
        let p = filter(Some(1 << 40));
        assert_eq!(verdict(&p, x, NR_SOCKET, 40), RET_ALLOW);
        assert_eq!(verdict(&p, x, NR_SOCKET, 17), RET_NOTIFY);
    }

    #[test]
    fn terminal_input_and_sock_packet_are_handed_over_whoever_judges_families() {
        let (x, i386) = (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386);
        for p in [filter(Some(0)), filter(None)] {
            for req in [TIOCSTI, TIOCLINUX] {
                assert_eq!(run(&p, x, NR_IOCTL, 0, req), RET_NOTIFY);
                assert_eq!(run(&p, i386, NR32_IOCTL, 0, req), RET_NOTIFY);
            }
            // Other ioctls (TCGETS, FIONREAD) are untouched.
            assert_eq!(run(&p, x, NR_IOCTL, 0, 0x5401), RET_ALLOW);
            assert_eq!(run(&p, x, NR_IOCTL, 0, 0x541b), RET_ALLOW);
            let packet = SOCK_PACKET | libc::SOCK_CLOEXEC as u32;
            assert_eq!(run(&p, x, NR_SOCKET, 2, packet), RET_NOTIFY);
            assert_eq!(run(&p, i386, NR32_SOCKET, 2, SOCK_PACKET), RET_NOTIFY);
            assert_eq!(run(&p, x, NR_SOCKET, 2, libc::SOCK_DGRAM as u32), RET_ALLOW);
            assert_eq!(run(&p, x, NR_IO_URING_SETUP, 0, 0), RET_EPERM);
        }
        // Without the family check, other families are the LSM's to judge.
        assert_eq!(verdict(&filter(None), x, NR_SOCKET, 40), RET_ALLOW);
        let r =
            |nr, family, sock_type| Refused { pid: 1, nr, arch: x, family, sock_type, protocol: 0 };
        assert_eq!(r(NR_IOCTL as i32, 0, TIOCSTI).tried(), Tried::TerminalInput);
        assert_eq!(r(NR_SOCKET as i32, 2, SOCK_PACKET).tried(), Tried::Family(17));
        assert_eq!(r(NR_SOCKET as i32, 40, 1).tried(), Tried::Family(40));
    }
}

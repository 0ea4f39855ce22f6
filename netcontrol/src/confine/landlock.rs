//! Landlock scoping (raw syscalls; no crate needed for these three). A Landlock domain keeps
//! its processes from ptrace (and so from pidfd_getfd, /proc/PID/mem, process_vm_writev) on
//! processes outside it, since ABI 1 (Linux 5.13); from signalling them and from connecting
//! to abstract unix sockets made outside it, since ABI 6 (Linux 6.12). Sandboxes of the same
//! uid are different domains, so one cannot inject into another.

use std::io;

const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1 << 0;
/// Handled so that a ruleset can exist on ABIs before scopes: creating block devices, which
/// an unprivileged user cannot do anyway, so nothing the command may do changes.
const ACCESS_FS_MAKE_BLOCK: u64 = 1 << 11;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// What this kernel's Landlock can do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Landlock {
    pub abi: u32,
    /// Scope abstract unix sockets too (unless the policy allows them).
    pub abstract_unix: bool,
}

impl Landlock {
    /// Landlock's ABI version here, or why there is none.
    pub fn probe() -> Result<u32, String> {
        // SAFETY: the documented version query: no attribute, size 0.
        let r = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                LANDLOCK_CREATE_RULESET_VERSION,
            )
        };
        if r > 0 {
            return Ok(r as u32);
        }
        Err(match io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOSYS) => "the kernel has no Landlock (Linux 5.13 or newer, CONFIG_SECURITY_LANDLOCK)".into(),
            Some(libc::EOPNOTSUPP) => "Landlock is built in but not enabled (add landlock to lsm= on the kernel command line)".into(),
            _ => format!("Landlock is not usable: {}", io::Error::last_os_error()),
        })
    }

    /// What Landlock lets `run` confine a command to here, for `status`.
    pub fn describe() -> String {
        match Self::probe() {
            Ok(abi) if abi >= 6 => format!(
                "ABI {abi}: commands of netcontrol run cannot ptrace, signal or reach the abstract unix sockets of processes outside their sandbox"
            ),
            Ok(abi) => format!(
                "ABI {abi} (Linux < 6.12): commands of netcontrol run cannot ptrace processes outside their sandbox, but can signal those of their user and reach the host's abstract unix sockets"
            ),
            Err(why) => format!(
                "{why}: commands of netcontrol run can ptrace, signal and use the sockets of other processes of their user"
            ),
        }
    }

    /// Signals and abstract unix sockets are scoped only from ABI 6 on.
    pub fn scopes_signals(self) -> bool {
        self.abi >= 6
    }

    /// Enter a new domain. In the forked child: raw syscalls only (async-signal-safe); needs
    /// no_new_privs set (or CAP_SYS_ADMIN).
    pub fn restrict_self(self) -> io::Result<()> {
        let mut scoped = 0;
        if self.abi >= 6 {
            scoped |= SCOPE_SIGNAL;
            if self.abstract_unix {
                scoped |= SCOPE_ABSTRACT_UNIX_SOCKET;
            }
        }
        let attr =
            RulesetAttr { handled_access_fs: ACCESS_FS_MAKE_BLOCK, handled_access_net: 0, scoped };
        // The kernel takes the attribute up to the size its ABI knows.
        let size: usize = match self.abi {
            0..=3 => 8,
            4 | 5 => 16,
            _ => 24,
        };
        // SAFETY: a valid attribute of at least `size` bytes.
        let fd = unsafe {
            libc::syscall(libc::SYS_landlock_create_ruleset, &raw const attr, size, 0u32)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the ruleset fd just made; closed right after.
        let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd as i32, 0u32) };
        let err = io::Error::last_os_error();
        // SAFETY: our own fd.
        unsafe { libc::close(fd as i32) };
        if r < 0 { Err(err) } else { Ok(()) }
    }
}

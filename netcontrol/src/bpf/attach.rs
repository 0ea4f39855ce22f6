//! The hooks, and attaching their programs to a cgroup as bpf_links.
//!
//! bpf_link attachments are always multi-attach: they coexist with other agents' programs on
//! the same cgroup (Cilium, systemd), and any program returning "deny" denies.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError,
        links::{FdLink, LinkError, PinnedLink},
    },
};
use netcontrol_common::abi::program;

use crate::{
    cgroup,
    error::{Error, Result},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    /// BPF_PROG_TYPE_CGROUP_SOCK_ADDR
    SockAddr,
    /// BPF_PROG_TYPE_CGROUP_SOCK
    Sock,
}

#[derive(Debug)]
pub struct Hook {
    /// Program (function) name in the object.
    pub program: &'static str,
    /// The attach point, as named in events and errors.
    pub name: &'static str,
    /// First Linux release with this attach type.
    pub since: &'static str,
    pub kind: HookKind,
}

pub static HOOKS: &[Hook] = &[
    Hook {
        program: program::SOCK_CREATE,
        name: "sock_create",
        since: "4.10",
        kind: HookKind::Sock,
    },
    Hook { program: program::CONNECT4, name: "connect4", since: "4.17", kind: HookKind::SockAddr },
    Hook { program: program::CONNECT6, name: "connect6", since: "4.17", kind: HookKind::SockAddr },
    Hook { program: program::SENDMSG4, name: "sendmsg4", since: "4.18", kind: HookKind::SockAddr },
    Hook { program: program::SENDMSG6, name: "sendmsg6", since: "4.18", kind: HookKind::SockAddr },
    Hook { program: program::RECVMSG4, name: "recvmsg4", since: "5.2", kind: HookKind::SockAddr },
    Hook { program: program::RECVMSG6, name: "recvmsg6", since: "5.2", kind: HookKind::SockAddr },
    Hook {
        program: program::GETPEERNAME4,
        name: "getpeername4",
        since: "5.8",
        kind: HookKind::SockAddr,
    },
    Hook {
        program: program::GETPEERNAME6,
        name: "getpeername6",
        since: "5.8",
        kind: HookKind::SockAddr,
    },
];

/// The links of all hooks on one cgroup. Dropping it detaches them (and removes their pins).
pub struct Attachment {
    pub cgroup: PathBuf,
    links: Vec<Held>,
    /// Holds this attachment's pins (nothing else); removed on detach.
    pin_dir: Option<PathBuf>,
}

enum Held {
    /// Held for its Drop: closing the last fd of a link detaches it.
    Fd(#[expect(dead_code, reason = "held for its Drop")] FdLink),
    /// Pinned on bpffs: enforcement survives this process; detach removes the pin.
    Pinned(PinnedLink, PathBuf),
}

const EPERM_HINT: &str = "\n(an ancestor cgroup may have a program attached without \
     BPF_F_ALLOW_MULTI, which forbids programs below it; or another security module denied it)";

impl Attachment {
    /// Attach every hook's program to `cgroup`. With `pin_dir`, each link is also pinned there
    /// (one file per hook) so that enforcement continues if this process dies.
    pub fn attach(ebpf: &mut Ebpf, cgroup_path: &Path, pin_dir: Option<&Path>) -> Result<Self> {
        let dir = cgroup::open(cgroup_path)?;
        if let Some(d) = pin_dir {
            fs::create_dir_all(d).map_err(|source| Error::Pin {
                op: "creating",
                path: d.to_owned(),
                source,
            })?;
        }
        // Built incrementally: if a later hook fails, dropping `this` detaches the earlier ones.
        let mut this = Self {
            cgroup: cgroup_path.to_owned(),
            links: Vec::new(),
            pin_dir: pin_dir.map(Path::to_owned),
        };
        for hook in HOOKS {
            let link =
                attach_one(ebpf, hook, &dir).map_err(|e| attach_error(hook, cgroup_path, e))?;
            this.links.push(match pin_dir {
                None => Held::Fd(link),
                Some(d) => {
                    let path = d.join(hook.name);
                    // A leftover pin of ours from an earlier, dead process: replace it.
                    let _ = fs::remove_file(&path);
                    let pinned = link.pin(&path).map_err(|e| Error::Pin {
                        op: "pinning link",
                        path: path.clone(),
                        source: io::Error::other(e),
                    })?;
                    Held::Pinned(pinned, path)
                }
            });
        }
        Ok(this)
    }

    /// Detach now, reporting failures (Drop does the same silently).
    pub fn detach(mut self) -> Result<()> {
        self.detach_all()
    }

    fn detach_all(&mut self) -> Result<()> {
        let mut first_err = None;
        for held in self.links.drain(..) {
            if let Held::Pinned(link, path) = held {
                // Removing the pin drops its reference; closing our fd (drop) drops the last.
                if let Err(source) = link.unpin() {
                    first_err.get_or_insert(Error::Pin { op: "unpinning link", path, source });
                }
            }
        }
        if let Some(dir) = self.pin_dir.take()
            && first_err.is_none()
            && let Err(source) = fs::remove_dir(&dir)
            && source.kind() != io::ErrorKind::NotFound
        {
            first_err = Some(Error::Pin { op: "removing", path: dir, source });
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Err(e) = self.detach_all() {
            tracing::warn!("detaching from {}: {e}", self.cgroup.display());
        }
    }
}

fn attach_one(ebpf: &mut Ebpf, hook: &Hook, cgroup: &fs::File) -> Result<FdLink, io::Error> {
    let prog = ebpf
        .program_mut(hook.program)
        .ok_or_else(|| io::Error::other("program not in the object"))?;
    // Link-based cgroup attachment rejects explicit flags (aya pitfall P1); it is
    // multi-attach regardless.
    let link: Result<FdLink, LinkError> = match hook.kind {
        HookKind::SockAddr => {
            let p: &mut CgroupSockAddr = prog.try_into().map_err(program_io)?;
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(program_io)?;
            p.take_link(id).map_err(program_io)?.try_into()
        }
        HookKind::Sock => {
            let p: &mut CgroupSock = prog.try_into().map_err(program_io)?;
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(program_io)?;
            p.take_link(id).map_err(program_io)?.try_into()
        }
    };
    // InvalidLink: the kernel attached without a link (< 5.7), which cannot be pinned.
    link.map_err(io::Error::other)
}

/// The errno of a failed syscall, or the error itself.
fn program_io(e: ProgramError) -> io::Error {
    match e {
        ProgramError::SyscallError(s) => s.io_error,
        other => io::Error::other(other),
    }
}

fn attach_error(hook: &Hook, cgroup: &Path, source: io::Error) -> Error {
    let hint = match source.raw_os_error() {
        Some(libc::EPERM) => EPERM_HINT,
        _ => "",
    };
    Error::Attach { program: hook.program, cgroup: cgroup.to_owned(), source, hint }
}

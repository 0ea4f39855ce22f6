//! The hooks, and attaching their programs to a cgroup as bpf_links.
//!
//! bpf_link attachments are always multi-attach: they coexist with other agents' programs on
//! the same cgroup (Cilium, systemd), and any program returning "deny" denies.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::programs::{
    CgroupAttachMode, CgroupSock, CgroupSockAddr, CgroupSockAddrAttachType, CgroupSockAttachType,
    Program, ProgramError,
    links::{FdLink, LinkError, PinnedLink},
};
use netcontrol_common::abi::program;

use super::{Loaded, pins};
use crate::{
    cgroup,
    error::{Error, Result},
};

#[derive(Clone, Copy, Debug)]
pub enum HookKind {
    /// BPF_PROG_TYPE_CGROUP_SOCK_ADDR
    SockAddr(CgroupSockAddrAttachType),
    /// BPF_PROG_TYPE_CGROUP_SOCK
    Sock(CgroupSockAttachType),
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

const fn hook(
    program: &'static str,
    name: &'static str,
    since: &'static str,
    t: CgroupSockAddrAttachType,
) -> Hook {
    Hook { program, name, since, kind: HookKind::SockAddr(t) }
}

pub static HOOKS: &[Hook] = &[
    Hook {
        program: program::SOCK_CREATE,
        name: "sock_create",
        since: "4.10",
        kind: HookKind::Sock(CgroupSockAttachType::SockCreate),
    },
    hook(program::CONNECT4, "connect4", "4.17", CgroupSockAddrAttachType::Connect4),
    hook(program::CONNECT6, "connect6", "4.17", CgroupSockAddrAttachType::Connect6),
    hook(program::SENDMSG4, "sendmsg4", "4.18", CgroupSockAddrAttachType::UDPSendMsg4),
    hook(program::SENDMSG6, "sendmsg6", "4.18", CgroupSockAddrAttachType::UDPSendMsg6),
    hook(program::RECVMSG4, "recvmsg4", "5.2", CgroupSockAddrAttachType::UDPRecvMsg4),
    hook(program::RECVMSG6, "recvmsg6", "5.2", CgroupSockAddrAttachType::UDPRecvMsg6),
    hook(program::GETPEERNAME4, "getpeername4", "5.8", CgroupSockAddrAttachType::GetPeerName4),
    hook(program::GETPEERNAME6, "getpeername6", "5.8", CgroupSockAddrAttachType::GetPeerName6),
];

/// The links of all hooks on one cgroup. Dropping it detaches them (and removes their pins).
pub struct Attachment {
    pub cgroup: PathBuf,
    links: Vec<Held>,
    /// How many links were adopted from pins rather than attached.
    pub adopted: usize,
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
    /// (one file per hook) so that enforcement continues if this process dies. A link pinned
    /// there already that runs the same program is adopted; one that runs another (an older
    /// build) is replaced make-before-break: ours is attached before the old one goes.
    pub fn attach(loaded: &mut Loaded, cgroup_path: &Path, pin_dir: Option<&Path>) -> Result<Self> {
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
            adopted: 0,
            pin_dir: pin_dir.map(Path::to_owned),
        };
        for hook in HOOKS {
            match this.attach_hook(loaded, hook, &dir) {
                Ok(held) => this.links.push(held),
                Err(e) => {
                    // Adopted links were enforcing before we came: they stay (fail closed).
                    if this.adopted > 0 {
                        this.keep_pins();
                    }
                    return Err(e);
                }
            }
        }
        Ok(this)
    }

    fn attach_hook(&mut self, loaded: &mut Loaded, hook: &Hook, dir: &fs::File) -> Result<Held> {
        let prog = loaded.program_mut(hook).ok_or(Error::MissingProgram(hook.program))?;
        let Some(pin_dir) = &self.pin_dir else {
            let link =
                attach_one(prog, hook, dir).map_err(|e| attach_error(hook, &self.cgroup, e))?;
            return Ok(Held::Fd(link));
        };
        let path = pin_dir.join(hook.name);
        if let Ok(old) = PinnedLink::from_pin(&path) {
            let ours = prog.info().map(|i| i.id()).ok();
            let theirs = FdLink::from(old).info().map(|i| i.program_id()).ok();
            if ours.is_some() && ours == theirs {
                self.adopted += 1;
                return Ok(Held::Pinned(pins::open_link(&path)?, path));
            }
        }
        let link = attach_one(prog, hook, dir).map_err(|e| attach_error(hook, &self.cgroup, e))?;
        // Pin beside the old pin, then rename over it: there is always a pin, and the old
        // link goes only once ours enforces. (bpffs names cannot contain dots.)
        let fresh = pin_dir.join(format!("new_{}", hook.name));
        let _ = fs::remove_file(&fresh);
        let pinned = link.pin(&fresh).map_err(|e| Error::Pin {
            op: "pinning link",
            path: fresh.clone(),
            source: pins::pin_io(e),
        })?;
        fs::rename(&fresh, &path).map_err(|source| Error::Pin {
            op: "renaming pinned link",
            path: fresh.clone(),
            source,
        })?;
        // Keep our fd until the pin under its final name is open.
        let _fd = FdLink::from(pinned);
        let pinned = pins::open_link(&path)?;
        Ok(Held::Pinned(pinned, path))
    }

    /// Detach now, reporting failures (Drop does the same silently).
    pub fn detach(mut self) -> Result<()> {
        self.detach_all()
    }

    /// Let go without detaching: pinned links keep enforcing after this process (a daemon that
    /// stops, to be re-adopted when it starts again).
    pub fn leave_pinned(mut self) {
        self.keep_pins();
    }

    fn keep_pins(&mut self) {
        self.links.retain(|h| matches!(h, Held::Fd(_)));
        self.pin_dir = None;
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

fn attach_one(prog: &mut Program, hook: &Hook, cgroup: &fs::File) -> Result<FdLink, io::Error> {
    // Link-based cgroup attachment rejects explicit flags (aya pitfall P1); it is
    // multi-attach regardless.
    let link: Result<FdLink, LinkError> = match hook.kind {
        HookKind::SockAddr(_) => {
            let p: &mut CgroupSockAddr = prog.try_into().map_err(program_io)?;
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(program_io)?;
            p.take_link(id).map_err(program_io)?.try_into()
        }
        HookKind::Sock(_) => {
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

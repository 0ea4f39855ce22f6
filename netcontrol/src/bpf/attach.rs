//! Attaching the hooks' programs as bpf_links: to a sandbox's cgroup, or (the BPF LSM's) to
//! the whole system; checking that they are still there.
//!
//! bpf_link attachments are always multi-attach: they coexist with other agents' programs on
//! the same cgroup (Cilium, systemd), and any program returning "deny" denies.

use std::{
    fs, io,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSock, CgroupSockAddr, CgroupSockopt, Lsm, Program,
    ProgramError,
    links::{FdLink, LinkError, PinnedLink},
};

use super::{
    Loaded,
    hooks::{HOOKS, Hook, HookKind, Scope},
    pins, sys,
};
use crate::{
    cgroup,
    error::{Error, Result},
};

/// The links of one cgroup (and/or of the global hooks). Dropping it detaches them (and
/// removes their pins).
pub struct Attachment {
    /// The cgroup, or "the system" for global hooks only.
    pub cgroup: PathBuf,
    links: Vec<Held>,
    /// How many links were adopted from pins rather than attached.
    pub adopted: usize,
    /// Holds this attachment's pins (nothing else); removed on detach.
    pin_dir: Option<PathBuf>,
    /// Pinned links keep an fd open too (see [`Fds`]).
    fds: Fds,
}

/// Whether pinned links are also held open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fds {
    /// An fd per link besides its pin (`run`, `attach`: a removed pin is put back without the
    /// link ever going).
    Held,
    /// The pin alone holds the link (the daemon: thousands of sandboxes times a dozen hooks
    /// would not fit the open-files limit). A removed pin takes the link with it; the tamper
    /// check attaches a new one, as for a detached link.
    Released,
}

struct Held {
    hook: &'static Hook,
    link: HeldLink,
    /// The kernel's id of the link, to ask it whether the link still enforces.
    id: Option<u32>,
    /// The id of the program it should run (what the cgroup's query must show).
    prog: Option<u32>,
}

enum HeldLink {
    /// Held for its Drop: closing the last fd of a link detaches it.
    Fd(#[expect(dead_code, reason = "held for its Drop")] Linked),
    /// Pinned on bpffs: enforcement survives this process; detach removes the pin.
    Pinned(PinnedLink, PathBuf),
    /// Pinned, and no fd held ([`Fds::Released`]).
    PinOnly(PathBuf),
}

/// A link just made: through aya, or (what aya cannot hand out) by netcontrol itself.
enum Linked {
    Aya(FdLink),
    Raw(OwnedFd),
}

impl Linked {
    fn id(&self) -> Option<u32> {
        match self {
            Self::Aya(l) => l.info().ok().map(|i| i.id()),
            Self::Raw(fd) => sys::link_info(fd.as_fd()).ok().map(|i| i.id),
        }
    }
}

/// Something that happened to an attachment without netcontrol doing it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tampering {
    pub hook: &'static str,
    pub what: TamperKind,
    /// Whether netcontrol put it right (attached or pinned again).
    pub repaired: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TamperKind {
    /// The link was detached from its cgroup (BPF_LINK_DETACH).
    Detached,
    /// Its pin was removed: the link would go with this process.
    Unpinned,
    /// The link runs another program (BPF_LINK_UPDATE, root only): the hook is there, but
    /// not netcontrol's decision.
    Replaced,
}

impl TamperKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Detached => "link_detached",
            Self::Unpinned => "pin_removed",
            Self::Replaced => "program_replaced",
        }
    }

    /// What happened, for a log line ("the connect4 link was ...").
    pub fn said(self) -> &'static str {
        match self {
            Self::Detached => "detached",
            Self::Unpinned => "unpinned",
            Self::Replaced => "given another program",
        }
    }
}

const EPERM_HINT: &str = "\n(an ancestor cgroup may have a program attached without \
     BPF_F_ALLOW_MULTI, which forbids programs below it; or another security module denied it)";

impl Attachment {
    /// Attach the programs of `scope` to `cgroup` (the global ones to the system). With
    /// `pin_dir`, each link is also pinned there (one file per hook) so that enforcement
    /// continues if this process dies. A link pinned there already that runs the same program
    /// is adopted; one that runs another (an older build) is replaced make-before-break: ours
    /// is attached before the old one goes. Hooks this kernel lacks ([`Loaded::missing`]) are
    /// left out.
    pub fn attach(
        loaded: &mut Loaded,
        cgroup_path: &Path,
        pin_dir: Option<&Path>,
        scope: Scope,
        fds: Fds,
    ) -> Result<Self> {
        let dir = cgroup::open(cgroup_path)?;
        if let Some(d) = pin_dir {
            pins::create_private_dir(d)?;
        }
        // Built incrementally: if a later hook fails, dropping `this` detaches the earlier ones.
        let mut this = Self {
            cgroup: cgroup_path.to_owned(),
            links: Vec::new(),
            adopted: 0,
            pin_dir: pin_dir.map(Path::to_owned),
            fds,
        };
        let hooks: Vec<&'static Hook> =
            HOOKS.iter().filter(|h| scope.wants(h) && loaded.available(h)).collect();
        for hook in hooks {
            match this.attach_hook(loaded, hook, &dir) {
                Ok((link, id)) => {
                    let prog = loaded.program_id(hook);
                    this.links.push(Held { hook, link, id, prog });
                }
                Err(e) => {
                    // Adopted links were enforcing before we came, and the daemon's may have
                    // replaced some that were: they all stay (fail closed; the next attempt
                    // adopts them). Nothing may enforce less because an attach failed.
                    if this.adopted > 0 || this.fds == Fds::Released {
                        this.keep_pins();
                    }
                    return Err(e);
                }
            }
        }
        Ok(this)
    }

    fn attach_hook(
        &mut self,
        loaded: &mut Loaded,
        hook: &'static Hook,
        dir: &fs::File,
    ) -> Result<(HeldLink, Option<u32>)> {
        let prog = loaded.program_mut(hook).ok_or(Error::MissingProgram(hook.program))?;
        let Some(pin_dir) = &self.pin_dir else {
            let link =
                attach_one(prog, hook, dir).map_err(|e| attach_error(hook, &self.cgroup, e))?;
            let id = link.id();
            return Ok((HeldLink::Fd(link), id));
        };
        let path = pin_dir.join(hook.name);
        let pinned = match PinnedLink::from_pin(&path).map_err(pins::link_io) {
            Ok(old) => Some(old),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            // Not known to be absent (out of fds, say): replacing it could drop a link that
            // enforces.
            Err(source) => return Err(Error::Pin { op: "opening pinned link", path, source }),
        };
        if let Some(old) = pinned {
            let ours = prog.info().map(|i| i.id()).ok();
            let theirs = FdLink::from(old).info().ok();
            if ours.is_some()
                && ours == theirs.as_ref().map(|i| i.program_id())
                && let Some(id) = theirs.map(|i| i.id())
                && (hook.is_global() || sys::link_cgroup(id) != Some(0))
            {
                self.adopted += 1;
                let held = match self.fds {
                    Fds::Held => HeldLink::Pinned(pins::open_link(&path)?, path),
                    Fds::Released => HeldLink::PinOnly(path),
                };
                return Ok((held, Some(id)));
            }
        }
        let link = attach_one(prog, hook, dir).map_err(|e| attach_error(hook, &self.cgroup, e))?;
        let id = link.id();
        Ok((self.release(pin_over(link, &path)?), id))
    }

    /// Let go of a pinned link's fd if this attachment holds none.
    fn release(&self, link: HeldLink) -> HeldLink {
        match (self.fds, link) {
            (Fds::Released, HeldLink::Pinned(_, path)) => HeldLink::PinOnly(path),
            (_, link) => link,
        }
    }

    /// Look at every link: one detached behind netcontrol's back is attached again, a pin
    /// removed is pinned again. Returns what was found (nothing, normally).
    pub fn check(&mut self, loaded: &mut Loaded) -> Vec<Tampering> {
        let looked = self.look();
        self.check_looked(loaded, looked)
    }

    /// What the kernel shows of the links now: for each, whether it is pinned and its program
    /// attached to the cgroup (None: the cgroup is gone). Reads only, so many attachments can
    /// be looked at in parallel (`status` looks at every link of thousands of sandboxes).
    ///
    /// One read of the pin directory (not a walk of the whole path per pin), and one query of
    /// the cgroup's programs per attach type: a link whose program is missing there (detached,
    /// or given another program) is then looked at by id, which costs a file and three
    /// syscalls.
    pub fn look(&self) -> Looked {
        let Ok(dir) = cgroup::open(&self.cgroup) else { return Looked(None) };
        let pinned = self.pin_dir.as_deref().and_then(pinned_names);
        let is_pinned = |p: &Path| match &pinned {
            Some(names) => p.file_name().is_some_and(|n| names.contains(n)),
            None => p.exists(),
        };
        let in_place = self
            .links
            .iter()
            .map(|held| {
                let hook = held.hook;
                !hook.is_global()
                    && matches!(&held.link, HeldLink::Pinned(_, p) | HeldLink::PinOnly(p) if is_pinned(p))
                    && hook.attach_type().zip(held.prog).is_some_and(|(at, ours)| {
                        sys::cgroup_program_ids(dir.as_fd(), at).is_ok_and(|ids| ids.contains(&ours))
                    })
            })
            .collect();
        Looked(Some(in_place))
    }

    /// `check`, given what `look` saw just before.
    pub fn check_looked(&mut self, loaded: &mut Loaded, looked: Looked) -> Vec<Tampering> {
        let mut found = Vec::new();
        let Looked(Some(in_place)) = looked else { return found };
        if in_place.len() != self.links.len() || in_place.iter().all(|ok| *ok) {
            return found;
        }
        let Ok(dir) = cgroup::open(&self.cgroup) else { return found };
        let is_pinned = |p: &Path| p.exists();
        for (held, in_place) in std::mem::take(&mut self.links).into_iter().zip(in_place) {
            let hook = held.hook;
            if in_place {
                self.links.push(held);
                continue;
            }
            let state = held.id.and_then(sys::link_state);
            let detached = !hook.is_global()
                && state.is_some_and(|s| s.type_ == sys::BPF_LINK_TYPE_CGROUP && s.cgroup_id == 0);
            let ours = loaded.program_id(hook);
            let replaced = !detached && state.zip(ours).is_some_and(|(s, ours)| s.prog_id != ours);
            let unpinned = matches!(&held.link,
                HeldLink::Pinned(_, p) | HeldLink::PinOnly(p) if !is_pinned(p));
            // Held by its pin alone, a link whose pin went is gone (or soon will be).
            let pin_only = matches!(held.link, HeldLink::PinOnly(_));
            let gone = pin_only && (unpinned || state.is_none());
            let what = match (detached, replaced, unpinned) {
                (true, ..) => TamperKind::Detached,
                (_, true, _) => TamperKind::Replaced,
                (.., true) => TamperKind::Unpinned,
                _ => {
                    self.links.push(held);
                    continue;
                }
            };
            let result = if gone || what == TamperKind::Detached {
                let fresh = self.fresh_link(loaded, hook, &dir);
                if fresh.is_err() {
                    // Still looked after: the next check tries again.
                    self.links.push(held);
                }
                fresh
            } else if what == TamperKind::Replaced {
                restore(loaded, hook, held.id)
                    .and_then(|()| {
                        // Pinned too? (Both may have been done.)
                        if unpinned { self.repin(held.link) } else { Ok(held.link) }
                    })
                    .map(|link| (link, held.id))
            } else {
                self.repin(held.link).map(|link| (link, held.id))
            };
            match result {
                Ok((link, id)) => {
                    self.links.push(Held { hook, link, id, prog: loaded.program_id(hook) });
                    found.push(Tampering { hook: hook.name, what, repaired: true });
                }
                Err(e) => {
                    tracing::error!(
                        "{}: {} was tampered with ({}), and putting it right failed: {e}",
                        self.cgroup.display(),
                        hook.name,
                        what.name()
                    );
                    found.push(Tampering { hook: hook.name, what, repaired: false });
                }
            }
        }
        found
    }

    /// A new link for `hook`, pinned over the old pin (which the detached link then loses).
    fn fresh_link(
        &self,
        loaded: &mut Loaded,
        hook: &'static Hook,
        dir: &fs::File,
    ) -> Result<(HeldLink, Option<u32>)> {
        let prog = loaded.program_mut(hook).ok_or(Error::MissingProgram(hook.program))?;
        let link = attach_one(prog, hook, dir).map_err(|e| attach_error(hook, &self.cgroup, e))?;
        let id = link.id();
        let held = match &self.pin_dir {
            Some(d) => self.release(pin_over(link, &d.join(hook.name))?),
            None => HeldLink::Fd(link),
        };
        Ok((held, id))
    }

    /// Pin a link whose pin was removed at its path again.
    fn repin(&self, link: HeldLink) -> Result<HeldLink> {
        match link {
            HeldLink::Pinned(l, path) => pin_over(Linked::Aya(FdLink::from(l)), &path),
            other @ (HeldLink::Fd(_) | HeldLink::PinOnly(_)) => Ok(other),
        }
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

    /// The hooks attached.
    pub fn hooks(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.links.iter().map(|h| h.hook.name)
    }

    /// Whether it has cgroup links (a child of a cgroup sandbox has none).
    pub fn has_cgroup_links(&self) -> bool {
        self.links.iter().any(|h| !h.hook.is_global())
    }

    /// What to ask the kernel to learn whether its cgroup links still enforce.
    pub fn link_check(&self) -> LinkCheck {
        let expected =
            self.links.iter().filter_map(|h| Some((h.hook.attach_type()?, h.prog?))).collect();
        LinkCheck { cgroup: self.cgroup.clone(), expected }
    }

    fn keep_pins(&mut self) {
        self.links.retain(|h| matches!(h.link, HeldLink::Fd(_)));
        self.pin_dir = None;
    }

    fn detach_all(&mut self) -> Result<()> {
        let mut first_err = None;
        for held in self.links.drain(..) {
            match held.link {
                HeldLink::Pinned(link, path) => {
                    // Removing the pin drops its reference; closing our fd (drop) the last.
                    if let Err(source) = link.unpin() {
                        first_err.get_or_insert(Error::Pin { op: "unpinning link", path, source });
                    }
                }
                HeldLink::PinOnly(path) => match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => {
                        first_err.get_or_insert(Error::Pin { op: "unpinning link", path, source });
                    }
                },
                HeldLink::Fd(_) => {}
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

/// Which of netcontrol's programs run for `cgroup` itself, as the kernel shows it now: at all
/// of its hooks' attach types, programs named `nc_*`.
fn ours_here(cgroup_path: &Path) -> Result<Vec<String>> {
    let dir = cgroup::open(cgroup_path)?;
    let mut ours = Vec::new();
    for t in HOOKS.iter().filter_map(Hook::attach_type) {
        let names = sys::cgroup_programs(dir.as_fd(), t).map_err(|e| {
            Error::io(format!("asking the kernel about {}", cgroup_path.display()), e)
        })?;
        ours.extend(names.into_iter().filter(|n| n.starts_with("nc_")));
    }
    Ok(ours)
}

/// Whether the kernel shows `cgroup` enforced by netcontrol's programs of its own (its
/// connect4 program, which every sandbox with links has; the kernel keeps 15 bytes of a
/// name), or (`want` false) free of all of them.
fn enforced_here(cgroup_path: &Path, want: bool) -> Result<bool> {
    let ours = ours_here(cgroup_path)?;
    let connect4 = netcontrol_common::abi::program::CONNECT4;
    Ok(if want { ours.iter().any(|n| connect4.starts_with(n.as_str())) } else { ours.is_empty() })
}

/// Wait until the kernel shows `cgroup` enforced (`want`) or not: letting go of a link's last
/// reference detaches it in deferred work, after the syscall returned.
pub async fn wait_enforced(cgroup_path: &Path, want: bool) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if enforced_here(cgroup_path, want)? {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::io(
                format!(
                    "waiting for the kernel to show {} {}",
                    cgroup_path.display(),
                    if want { "enforced" } else { "no longer enforced" }
                ),
                io::ErrorKind::TimedOut.into(),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Put our program back into the link `id` of `hook`, which runs another.
fn restore(loaded: &mut Loaded, hook: &'static Hook, id: Option<u32>) -> Result<()> {
    let prog = loaded.program_mut(hook).ok_or(Error::MissingProgram(hook.program))?;
    let what = || format!("putting {} back into its link", hook.program);
    let fd = prog.fd().map_err(|e| Error::io(what(), io::Error::other(e)))?;
    let id = id.ok_or_else(|| Error::io(what(), io::ErrorKind::NotFound.into()))?;
    sys::link_update(id, fd.as_fd()).map_err(|e| Error::io(what(), e))
}

/// Pin a new link at `path`, replacing whatever is pinned there: pinned beside it first, then
/// renamed over it, so that there is always a pin and an old link goes only once the new one
/// enforces. (bpffs names cannot contain dots.)
fn pin_over(link: Linked, path: &Path) -> Result<HeldLink> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let fresh = path.with_file_name(format!("new_{name}"));
    let _ = fs::remove_file(&fresh);
    let pin_err = |source| Error::Pin { op: "pinning link", path: fresh.clone(), source };
    // Keep our fd until the pin under its final name is open.
    let _held = match link {
        Linked::Aya(l) => {
            Linked::Aya(FdLink::from(l.pin(&fresh).map_err(|e| pin_err(pins::pin_io(e)))?))
        }
        Linked::Raw(fd) => {
            sys::pin(fd.as_fd(), &fresh).map_err(pin_err)?;
            Linked::Raw(fd)
        }
    };
    fs::rename(&fresh, path).map_err(|source| Error::Pin {
        op: "renaming pinned link",
        path: fresh.clone(),
        source,
    })?;
    Ok(HeldLink::Pinned(pins::open_link(path)?, path.to_owned()))
}

fn attach_one(prog: &mut Program, hook: &Hook, cgroup: &fs::File) -> Result<Linked, io::Error> {
    // Link-based cgroup attachment rejects explicit flags (aya pitfall P1); it is
    // multi-attach regardless.
    let mode = CgroupAttachMode::Single;
    let link: Result<FdLink, LinkError> = match hook.kind {
        HookKind::SockAddr(_) => {
            let p: &mut CgroupSockAddr = prog.try_into().map_err(program_io)?;
            let id = p.attach(cgroup, mode).map_err(program_io)?;
            p.take_link(id).map_err(program_io)?.try_into()
        }
        HookKind::Sock(_) => {
            let p: &mut CgroupSock = prog.try_into().map_err(program_io)?;
            let id = p.attach(cgroup, mode).map_err(program_io)?;
            p.take_link(id).map_err(program_io)?.try_into()
        }
        HookKind::Sockopt(_) => {
            // aya 0.14 keeps setsockopt links to itself (no pin, no FdLink): make it here.
            let p: &mut CgroupSockopt = prog.try_into().map_err(program_io)?;
            let fd = p.fd().map_err(program_io)?;
            return sys::link_create(fd.as_fd(), cgroup.as_fd(), sys::BPF_CGROUP_SETSOCKOPT)
                .map(Linked::Raw);
        }
        HookKind::Skb(t) => {
            let p: &mut CgroupSkb = prog.try_into().map_err(program_io)?;
            let id = p.attach(cgroup, t, mode).map_err(program_io)?;
            p.take_link(id).map_err(program_io)?.try_into()
        }
        HookKind::Lsm(_) => {
            let p: &mut Lsm = prog.try_into().map_err(program_io)?;
            let id = p.attach().map_err(program_io)?;
            Ok(p.take_link(id).map_err(program_io)?.into())
        }
    };
    // InvalidLink: the kernel attached without a link (< 5.7), which cannot be pinned.
    link.map(Linked::Aya).map_err(io::Error::other)
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

/// What [`Attachment::look`] saw.
pub struct Looked(Option<Vec<bool>>);

/// A cgroup and the program each of its links should run, by attach type.
#[derive(Debug, Clone, Default)]
pub struct LinkCheck {
    cgroup: PathBuf,
    expected: Vec<(u32, u32)>,
}

impl LinkCheck {
    /// How many of the programs the kernel does not show attached to the cgroup now (one
    /// query per attach type: no file per link). A cgroup that cannot be opened has none.
    pub fn detached(&self) -> usize {
        if self.expected.is_empty() {
            return 0;
        }
        let Ok(dir) = cgroup::open(&self.cgroup) else { return self.expected.len() };
        self.expected
            .iter()
            .filter(|(at, prog)| {
                !sys::cgroup_program_ids(dir.as_fd(), *at).is_ok_and(|ids| ids.contains(prog))
            })
            .count()
    }
}

/// The names in a pin directory: none if it is gone; None if it could not be read (then each
/// pin is looked at by itself).
fn pinned_names(dir: &Path) -> Option<std::collections::HashSet<std::ffi::OsString>> {
    match fs::read_dir(dir) {
        Ok(entries) => Some(entries.filter_map(|e| e.ok().map(|e| e.file_name())).collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Some(Default::default()),
        Err(_) => None,
    }
}

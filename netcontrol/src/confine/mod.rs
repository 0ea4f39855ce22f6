//! Confining the command of `netcontrol run` beyond what its sockets may reach: an identity
//! of its own ([`identity`]), no way to gain privileges (no_new_privs, an empty capability
//! bounding set), no reaching into processes outside its sandbox ([`landlock`]), and, where
//! the kernel runs no BPF LSM, no socket families beyond IP, unix and netlink ([`seccomp`]).
//!
//! Everything is decided and allocated before the fork; in the child only system calls run.

pub mod identity;
pub mod landlock;
pub mod seccomp;

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    time::Duration,
};

pub use self::{identity::Identity, landlock::Landlock};

/// What will be done to the command, decided in the parent.
pub struct Plan {
    pub identity: Option<Identity>,
    /// The highest capability number (drop 0..=last from the bounding set).
    last_cap: u32,
    pub landlock: Result<Landlock, String>,
    /// The seccomp filter (x86_64), with the pair of sockets the child hands its listener
    /// over.
    seccomp: Option<Filter>,
}

struct Filter {
    program: Vec<libc::sock_filter>,
    /// It judges socket families (the BPF LSM does not).
    families: bool,
    parent: OwnedFd,
    child: OwnedFd,
}

/// What the forked child does (shared with the pre_exec closure).
pub struct ChildPart {
    ids: Option<(nix::unistd::Uid, nix::unistd::Gid, Vec<nix::unistd::Gid>)>,
    last_cap: u32,
    landlock: Option<Landlock>,
    seccomp: Option<(Vec<libc::sock_filter>, OwnedFd)>,
}

/// What the parent keeps: the identity (its lease lives as long as the run) and its end of
/// the channel the child hands the seccomp listener over.
pub struct ParentPart {
    pub identity: Option<Identity>,
    listener_from: Option<OwnedFd>,
}

impl Plan {
    /// `families_by_lsm`: the BPF LSM judges socket families (no filter needed).
    pub fn new(
        identity: Option<Identity>,
        abstract_unix_allowed: bool,
        extra_families: u64,
        families_by_lsm: bool,
    ) -> io::Result<Self> {
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        let landlock =
            Landlock::probe().map(|abi| Landlock { abi, abstract_unix: !abstract_unix_allowed });
        let seccomp = if cfg!(target_arch = "x86_64") {
            let (parent, child) = seccomp::channel()?;
            let families = (!families_by_lsm).then_some(extra_families);
            Some(Filter {
                program: seccomp::filter(families),
                families: families.is_some(),
                parent,
                child,
            })
        } else {
            None
        };
        Ok(Self { identity, last_cap, landlock, seccomp })
    }

    /// Whether the seccomp filter keeps other socket families away.
    pub fn filters_families(&self) -> bool {
        self.seccomp.as_ref().is_some_and(|f| f.families)
    }

    /// What is not confined, one line each, for the start of the run.
    pub fn gaps(&self) -> Vec<String> {
        let mut out = Vec::new();
        match &self.landlock {
            Err(why) => out.push(format!(
                "{why}: the command can ptrace, signal and use the sockets of other processes of its user (--user auto gives it a user of its own)"
            )),
            Ok(l) if !l.scopes_signals() => out.push(format!(
                "Landlock ABI {} (Linux < 6.12) does not scope signals or abstract unix sockets: the command can signal other processes of its user and reach the host's abstract unix sockets",
                l.abi
            )),
            Ok(_) => {}
        }
        out
    }

    /// Split into what the child does and what the parent keeps.
    pub fn into_parts(self) -> (ChildPart, ParentPart) {
        let ids = self.identity.as_ref().map(|i| (i.uid, i.gid, i.groups.clone()));
        let (seccomp, listener_from) = match self.seccomp {
            Some(f) => (Some((f.program, f.child)), Some(f.parent)),
            None => (None, None),
        };
        (
            ChildPart { ids, last_cap: self.last_cap, landlock: self.landlock.ok(), seccomp },
            ParentPart { identity: self.identity, listener_from },
        )
    }
}

impl ChildPart {
    /// In the forked child, after it joined its cgroup and before exec. Async-signal-safe.
    pub fn apply(&self) -> io::Result<()> {
        let check = |r: libc::c_int| if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) };
        // netcontrol ignores these (a sandbox must not be able to stop it); its command gets
        // the terminal's usual behaviour. SAFETY: async-signal-safe disposition changes.
        unsafe {
            libc::signal(libc::SIGTTOU, libc::SIG_DFL);
            libc::signal(libc::SIGTTIN, libc::SIG_DFL);
        }
        if let Some((uid, gid, groups)) = &self.ids {
            // While still root: nothing the command executes can bring a capability back.
            for cap in 0..=self.last_cap {
                // SAFETY: prctl with integer arguments.
                let r =
                    unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
                // EINVAL: a capability this kernel does not know.
                if r < 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
                    return Err(io::Error::last_os_error());
                }
            }
            nix::unistd::setgroups(groups)?;
            nix::unistd::setgid(*gid)?;
            nix::unistd::setuid(*uid)?;
            // SAFETY: as above.
            check(unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            })?;
        }
        // No setuid binary, file capability or LSM transition gives the command more.
        // SAFETY: as above.
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
        if let Some(l) = self.landlock {
            l.restrict_self()?;
        }
        if let Some((program, to_parent)) = &self.seccomp {
            seccomp::install(program, to_parent.as_raw_fd())?;
        }
        Ok(())
    }
}

impl ParentPart {
    /// Once the child runs: serve the seccomp filter's notifications on a thread of its own
    /// (`answer` says whether to refuse, and reports). The child part must be dropped first,
    /// so that a child that died early shows as a closed channel.
    pub fn supervise(
        &mut self,
        answer: impl FnMut(seccomp::Refused) -> bool + Send + 'static,
    ) -> io::Result<Option<std::thread::JoinHandle<()>>> {
        let Some(from) = self.listener_from.take() else { return Ok(None) };
        let listener = seccomp::receive_listener(from.as_fd(), Duration::from_secs(10))?;
        Ok(Some(
            std::thread::Builder::new()
                .name("seccomp".into())
                .spawn(move || seccomp::serve(&listener, answer))?,
        ))
    }
}

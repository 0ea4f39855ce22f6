//! `netcontrol run -- CMD`: a sandbox for one command.

use std::{
    ffi::OsString,
    io,
    os::{fd::AsRawFd, unix::process::ExitStatusExt},
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::signal::unix::{SignalKind, signal};

use super::{RunArgs, single::Single, summary};
use crate::{
    cgroup,
    confine::{
        Identity, Plan,
        seccomp::{Refused, Tried},
    },
    error::{Error, Result},
    events::{EventRecord, Injector, Labels},
    policy::Mode,
    privileges,
    sandbox::NsChoice,
};

/// Exit codes of a shell for a command that was not found / could not be executed.
const NOT_FOUND: i32 = 127;
const NOT_EXECUTABLE: i32 = 126;

pub async fn main(args: RunArgs) -> Result<i32> {
    let policy = args.policy.policy()?;
    // Reject a bad policy before creating anything.
    policy.compile(&Default::default(), &[])?;
    privileges::check()?;
    let parent = match &args.cgroup_parent {
        Some(p) => p.clone(),
        None => cgroup::mount_point()?.join("netcontrol"),
    };
    let identity = args.user.as_deref().map(Identity::resolve).transpose()?;
    let signals = Signals::new()?;
    let sandbox = RunCgroup::create(&parent)?;
    let sink = args.output.sink()?;
    if args.output.events.as_deref() == Some(Path::new("-")) {
        crate::console::say(
            "netcontrol: events go to stdout, which the command shares: it can write lines that \
             look like events there; --events FILE keeps a record the command cannot forge"
                .to_owned(),
        );
    }
    let (abstract_unix, families, audit) =
        (policy.allow_abstract_unix, policy.family_mask(), policy.mode == Mode::Audit);
    // Domains are resolved before CMD starts, so its first connection already finds them.
    // CMD starts in netcontrol's own network namespace.
    let mut enforced =
        Single::start(&sandbox.path, policy, sink, &args.kernel, NsChoice::Own).await?;
    let families_by_lsm = !enforced.dp.missing().iter().any(|m| m.hook == "lsm_socket_create");
    let plan = Plan::new(identity, abstract_unix, families, families_by_lsm)
        .map_err(|e| Error::io("preparing the command's confinement", e))?;
    // What the kernel's hooks cannot close here and the command's confinement does.
    let mut covered = Vec::new();
    if plan.filters_families() {
        covered.push("lsm_socket_create");
    }
    if plan.landlock.as_ref().is_ok_and(|l| l.scopes_signals()) {
        covered.extend(["lsm_socket_connect", "lsm_socket_sendmsg"]);
    }
    let gaps = crate::datapath::gaps(enforced.dp.missing(), &covered).into_iter();
    for gap in gaps.chain(plan.gaps()) {
        crate::console::say(format!("netcontrol: {gap}"));
    }
    let refusals = Refusals {
        events: enforced.dp.injector(),
        labels: enforced.dp.labels().clone(),
        sandbox_id: cgroup::id(&sandbox.path)?,
        audit,
        count: Default::default(),
        terminal: Default::default(),
    };

    let outcome =
        run_command(&sandbox.path, &args.command, plan, &refusals, signals, &mut enforced).await;

    // Whatever happened, end the sandbox: no process may outlive its enforcement.
    let emptied = cgroup::kill_all(&sandbox.path, Duration::from_secs(10));
    let stopped = enforced.stop().await;
    drop(sandbox);
    emptied?;
    let (mut counts, sink) = stopped?;
    let refused = refusals.count.load(std::sync::atomic::Ordering::Relaxed);
    if audit {
        counts.would_block += refused;
    } else {
        counts.blocked += refused;
    }
    if let Some(line) = summary(&counts, &sink) {
        crate::console::say(line);
    }
    match refusals.terminal.load(std::sync::atomic::Ordering::Relaxed) {
        0 => {}
        1 => crate::console::say("netcontrol: 1 attempt to type into the terminal refused"),
        n => crate::console::say(format!(
            "netcontrol: {n} attempts to type into the terminal refused"
        )),
    }
    outcome
}

/// Spawn CMD inside the sandbox cgroup and wait for it, forwarding signals and following DNS
/// meanwhile.
/// What the seccomp filter refused: socket families (where the kernel runs no BPF LSM),
/// reported as the LSM program would have, and input typed into the terminal.
struct Refusals {
    events: Injector,
    labels: Labels,
    sandbox_id: u64,
    audit: bool,
    count: std::sync::Arc<std::sync::atomic::AtomicU64>,
    terminal: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Refusals {
    /// The function the seccomp supervisor calls for each notification: report it and say
    /// whether to refuse it.
    fn answer(&self) -> impl FnMut(Refused) -> bool + Send + 'static {
        let (events, labels, sandbox_id, audit, count, terminal) = (
            self.events.clone(),
            self.labels.clone(),
            self.sandbox_id,
            self.audit,
            self.count.clone(),
            self.terminal.clone(),
        );
        move |r: Refused| {
            let counter = match r.tried() {
                Tried::TerminalInput => &terminal,
                Tried::Family(_) => &count,
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            events.send(EventRecord::seccomp_refusal(&r, sandbox_id, audit, &labels));
            !audit
        }
    }
}

async fn run_command(
    cgroup_path: &Path,
    argv: &[OsString],
    plan: Plan,
    refusals: &Refusals,
    mut signals: Signals,
    sandbox: &mut Single,
) -> Result<i32> {
    let procs_path = cgroup_path.join("cgroup.procs");
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(|source| Error::Cgroup { op: "opening", path: procs_path.clone(), source })?;
    let procs_fd = procs.as_raw_fd();
    let (child_part, mut parent_part) = plan.into_parts();
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    if let Some(id) = &parent_part.identity {
        cmd.env("HOME", &id.home).env("USER", &id.name).env("LOGNAME", &id.name);
    }
    // SAFETY: runs in the forked child before exec and makes only syscalls (async-signal-
    // safe); the fds stay open until spawn returns. Joining the cgroup before exec means CMD
    // is enforced from its first instruction; it needs root, so it comes before dropping to
    // --user (in `apply`).
    unsafe {
        cmd.pre_exec(move || {
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(io::Error::last_os_error());
            }
            child_part.apply()
        });
    }
    let spawned = cmd.spawn();
    // The child part's fds (in the closure) go: a child that died early closes the channel.
    drop(cmd);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let name = argv[0].to_string_lossy();
            return Ok(match e.kind() {
                io::ErrorKind::NotFound => {
                    crate::console::say(format!("netcontrol: {name}: command not found"));
                    NOT_FOUND
                }
                io::ErrorKind::PermissionDenied => {
                    crate::console::say(format!("netcontrol: {name}: {e}"));
                    NOT_EXECUTABLE
                }
                _ => return Err(Error::io(format!("starting {name}"), e)),
            });
        }
    };
    drop(procs);
    let _supervisor = parent_part
        .supervise(refusals.answer())
        .map_err(|e| Error::io("serving the command's seccomp filter", e))?;
    let pid = child.id().map(|p| Pid::from_raw(p as i32));
    let mut tamper_check = tokio::time::interval(super::attach::TAMPER_CHECK);
    tamper_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let status = loop {
        tokio::select! {
            _ = tamper_check.tick() => drop(sandbox.check_tamper()),
            status = child.wait() => break status.map_err(|e| Error::io("waiting for the command", e))?,
            sig = signals.next() => if let Some(pid) = pid { signals.forward(pid, sig) },
            r = sandbox.follow_dns() => r?,
        }
    };
    Ok(exit_code(status))
}

/// The shell convention: the exit code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// The signals netcontrol relays to CMD instead of dying from them (it must clean up).
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        // CMD shares the terminal: it may take the foreground and set TOSTOP, and a write of
        // ours would then stop netcontrol (SIGTTOU) with CMD running on unwatched. Ignored,
        // the write goes through. (CMD gets the default back before exec.)
        // SAFETY: setting a disposition to SIG_IGN.
        unsafe {
            libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            libc::signal(libc::SIGTTIN, libc::SIG_IGN);
        }
        let s = |k| signal(k).map_err(|e| Error::io("installing signal handlers", e));
        Ok(Self {
            int: s(SignalKind::interrupt())?,
            term: s(SignalKind::terminate())?,
            hup: s(SignalKind::hangup())?,
            quit: s(SignalKind::quit())?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.hup.recv() => Signal::SIGHUP,
            _ = self.quit.recv() => Signal::SIGQUIT,
        }
    }

    fn forward(&self, pid: Pid, sig: Signal) {
        // Ctrl-C / Ctrl-\ on our terminal already reached CMD (same foreground process group);
        // relaying would deliver it twice.
        let from_terminal = matches!(sig, Signal::SIGINT | Signal::SIGQUIT) && in_foreground();
        if !from_terminal {
            let _ = nix::sys::signal::kill(pid, sig);
        }
    }
}

fn in_foreground() -> bool {
    nix::unistd::tcgetpgrp(io::stdin()).is_ok_and(|fg| fg == nix::unistd::getpgrp())
}

/// The sandbox cgroup of this run; removed (after killing what is left in it) on drop.
struct RunCgroup {
    path: PathBuf,
}

impl RunCgroup {
    fn create(parent: &Path) -> Result<Self> {
        let nanos =
            SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = parent.join(format!("{}{}-{nanos:08x}", cgroup::RUN_PREFIX, std::process::id()));
        cgroup::create(&path)?;
        if !cgroup::is_cgroup2(&path) {
            let _ = std::fs::remove_dir(&path);
            return Err(Error::NotCgroup2 {
                path: parent.to_owned(),
                mount: cgroup::mount_point()?,
            });
        }
        Ok(Self { path })
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        let result = cgroup::kill_all(&self.path, Duration::from_secs(10))
            .and_then(|()| cgroup::remove(&self.path));
        if let Err(e) = result {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGTERM)), 143);
    }
}

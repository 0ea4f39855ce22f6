//! `netcontrol attach`: enforce on an existing cgroup, a Docker container, or a parent cgroup
//! for containers, until told to stop; reload the policy file on SIGHUP and when it changes.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use super::{AttachArgs, PolicyArgs, attach_docker::Target, single::Single, summary};
use crate::{
    daemon::control::{self, PolicyRef, Request},
    error::{Error, Result},
    watch::FileWatch,
};

pub async fn main(args: AttachArgs) -> Result<i32> {
    if args.daemon {
        return to_daemon(&args).await;
    }
    let policy = args.policy.policy()?;
    policy.compile(&Default::default(), &[])?;
    let s = |k| signal(k).map_err(|e| Error::io("installing signal handlers", e));
    let (mut int, mut term, mut hup) =
        (s(SignalKind::interrupt())?, s(SignalKind::terminate())?, s(SignalKind::hangup())?);
    let mut watch = args.policy.file.as_deref().map(FileWatch::new).transpose()?;
    // Docker and the cgroup are checked before anything is loaded.
    let mut target = Target::resolve(&args).await?;
    let sink = args.output.sink()?;
    let mut single = Single::load(policy, sink, &args.kernel)?;
    if let Some(line) = crate::datapath::gaps(single.dp.missing(), &[]) {
        eprintln!("netcontrol: {line}");
    }
    target.begin(&mut single).await?;
    if let Some(s) = &single.sandbox {
        eprintln!(
            "netcontrol: enforcing on {} (cgroup id {}): {} rules, {} allow entries, {} mode; SIGINT or SIGTERM detaches",
            target.describe(s.enforcer().cgroup()),
            s.enforcer().sandbox_id(),
            single.policy().allow.len(),
            s.enforcer().entry_count(),
            single.policy().mode.name(),
        );
    }
    target.hint();
    let mut tamper_check = tokio::time::interval(TAMPER_CHECK);
    tamper_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tamper_check.tick() => drop(single.check_tamper()),
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => reload(&args.policy, &mut single, "SIGHUP").await,
            () = changed(&mut watch) => {
                if let Some(w) = watch.as_mut() {
                    w.settle().await;
                }
                reload(&args.policy, &mut single, "policy file changed").await;
            }
            r = single.follow_dns() => r?,
            Some(event) = target.next() => {
                if target.handle(event, &mut single).await.is_break() {
                    break;
                }
            }
        }
    }
    let attached_to = single.sandbox.as_ref().map(|s| target.describe(s.enforcer().cgroup()));
    let (counts, sink) = single.stop().await?;
    if let Some(what) = attached_to {
        eprintln!("netcontrol: detached from {what}");
    }
    target.end();
    if let Some(line) = summary(&counts, &sink) {
        eprintln!("{line}");
    }
    Ok(0)
}

/// How often the links are looked at (a root process could detach them).
pub const TAMPER_CHECK: Duration = Duration::from_secs(1);

async fn changed(watch: &mut Option<FileWatch>) {
    match watch {
        Some(w) => w.changed().await,
        None => std::future::pending().await,
    }
}

/// Re-read the policy; a policy that does not validate is reported and the old one stays.
async fn reload(args: &PolicyArgs, single: &mut Single, why: &str) {
    let Some(file) = &args.file else {
        eprintln!("netcontrol: {why}: nothing to reload (no --policy file)");
        return;
    };
    let result = match args.policy() {
        Ok(p) if &p == single.policy() => {
            tracing::info!("{why}: {} is unchanged", file.display());
            return;
        }
        Ok(p) => single.reload(p).await,
        Err(e) => Err(e),
    };
    let entries = single.sandbox.as_ref().map_or(0, |s| s.enforcer().entry_count());
    match result {
        Ok(()) => eprintln!(
            "netcontrol: {why}: reloaded {}: {} rules, {entries} allow entries, {} mode",
            file.display(),
            single.policy().allow.len(),
            single.policy().mode.name()
        ),
        Err(e) => eprintln!("netcontrol: {why}: {e}\nnetcontrol: keeping the previous policy"),
    }
}

/// `attach --daemon`: the daemon enforces it (and keeps it across its restarts).
async fn to_daemon(args: &AttachArgs) -> Result<i32> {
    let Some(cgroup) = &args.cgroup else {
        return Err(Error::Daemon(
            "--daemon takes --cgroup; for containers, give the daemon a `containers:` sandbox in its configuration".into(),
        ));
    };
    let policy = match &args.policy_name {
        Some(name) => PolicyRef::Named(name.clone()),
        None => {
            // Checked here, so that errors name the user's file and line.
            let p = args.policy.policy()?;
            p.compile(&Default::default(), &[])?;
            let source = args.policy.file.clone().unwrap_or_else(|| "--allow".into());
            PolicyRef::Inline { yaml: crate::policy::file::render(&p, None), source }
        }
    };
    let request = Request::Attach { name: args.name.clone(), cgroup: cgroup.clone(), policy };
    let response = control::call(&args.socket.path, &request, Duration::from_secs(60)).await?;
    if response.ok {
        let message = response.message.unwrap_or_default();
        // Done only once the kernel runs the programs for it (not when it waits for its
        // cgroup to appear).
        if message.starts_with("enforcing on") {
            crate::bpf::attach::wait_enforced(&crate::cgroup::validate(cgroup)?, true).await?;
        }
        eprintln!("netcontrol: {message}");
        Ok(0)
    } else {
        Err(Error::Daemon(response.error.unwrap_or_default()))
    }
}

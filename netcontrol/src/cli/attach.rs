//! `netcontrol attach --cgroup PATH`: enforce on an existing cgroup until told to stop.

use tokio::signal::unix::{SignalKind, signal};

use super::{AttachArgs, summary};
use crate::{
    enforcer::Enforcer,
    error::{Error, Result},
};

pub async fn main(args: AttachArgs) -> Result<i32> {
    let policy = args.policy.policy();
    let compiled = policy.compile()?;
    let s = |k| signal(k).map_err(|e| Error::io("installing signal handlers", e));
    let (mut int, mut term, mut hup) =
        (s(SignalKind::interrupt())?, s(SignalKind::terminate())?, s(SignalKind::hangup())?);
    let sink = args.output.sink()?;
    let enforcer = Enforcer::start(&args.cgroup, &compiled, sink, &args.kernel.options())?;
    eprintln!(
        "netcontrol: enforcing on {} (cgroup id {}): {} rules, {} allow entries, {} mode; SIGINT or SIGTERM detaches",
        enforcer.cgroup().display(),
        enforcer.sandbox_id(),
        policy.allow.len(),
        compiled.entries.len(),
        policy.mode.name(),
    );
    loop {
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => eprintln!("netcontrol: SIGHUP: nothing to reload (the rules come from the command line)"),
        }
    }
    let (counts, sink) = enforcer.stop().await?;
    eprintln!("netcontrol: detached from {}", args.cgroup.display());
    if let Some(line) = summary(&counts, &sink) {
        eprintln!("{line}");
    }
    Ok(0)
}

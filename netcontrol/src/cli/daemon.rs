//! `netcontrol daemon --config FILE`.

use std::path::Path;

use super::DaemonArgs;
use crate::{daemon, error::Result};

/// `daemon --check`: validate, compile every policy, and summarize.
fn check(path: &Path) -> Result<i32> {
    let config = daemon::config::load(path).map_err(crate::policy::PolicyError::from)?;
    for (name, policy) in &config.policies {
        policy.compile(&Default::default(), &[]).map_err(|e| {
            crate::Error::Daemon(format!("{}: policy {name:?}: {e}", config.path.display()))
        })?;
    }
    println!(
        "{}: valid: {} policies ({}), {} cgroup sandboxes, {} container selectors{}",
        config.path.display(),
        config.policies.len(),
        config.policies.keys().cloned().collect::<Vec<_>>().join(", "),
        config.sandboxes.len(),
        config.containers.len(),
        if config.kubernetes.is_some() { ", Kubernetes pods" } else { "" }
    );
    Ok(0)
}

pub async fn main(args: DaemonArgs) -> Result<i32> {
    if args.check {
        return check(&args.config);
    }
    daemon::run(daemon::Options {
        config: args.config,
        pin_root: args.pin_root,
        metrics_addr: args.metrics_addr.map(|m| m.0),
        control_socket: args.socket,
        events: args.events,
        max_open_files: args.max_open_files,
        load: args.load.options(),
    })
    .await
}

//! `netcontrol daemon`: one set of programs serving many sandboxes, pinned so that
//! enforcement outlives the process.

mod cgroups;
mod closed;
pub mod config;
pub mod containers;
pub mod control;
mod garbage;
pub mod pods;
pub mod policies;
pub(crate) mod reconcile;
mod report;
mod requests;
pub mod runtime;
pub mod supervisor;
mod tamper;
mod upgrade;
mod wanted;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};

use self::supervisor::Supervisor;
use crate::{
    bpf::{LoadOptions, PinRoot},
    cgroup::watch::CgroupWatch,
    datapath::Datapath,
    docker,
    error::{Error, Result},
    events::{Labels, Sink},
    kubernetes,
    metrics::{self, KernelCollector, Shared},
    watch::FileWatch,
};

/// What the command line says (it overrides the configuration file).
#[derive(Debug)]
pub struct Options {
    pub config: PathBuf,
    pub pin_root: Option<PathBuf>,
    /// `Some(None)`: metrics off.
    pub metrics_addr: Option<Option<SocketAddr>>,
    pub control_socket: Option<PathBuf>,
    pub events: Option<PathBuf>,
    /// Raise the hard open-files limit to this (`--max-open-files`).
    pub max_open_files: Option<u64>,
    pub load: LoadOptions,
}

/// Run until SIGTERM or SIGINT. Sandboxes stay enforced when it stops (their links are
/// pinned); `netcontrol uninstall` removes everything.
pub async fn run(opts: Options) -> Result<i32> {
    let config = config::load(&opts.config).map_err(crate::policy::PolicyError::from)?;
    crate::privileges::check()?;
    raise_fd_limit(opts.max_open_files);
    let s = |k| signal(k).map_err(|e| Error::io("installing signal handlers", e));
    let (mut int, mut term, mut hup) =
        (s(SignalKind::interrupt())?, s(SignalKind::terminate())?, s(SignalKind::hangup())?);
    let pin_root = opts
        .pin_root
        .clone()
        .or_else(|| config.pin_root.clone())
        .unwrap_or_else(|| PathBuf::from(crate::bpf::pins::DEFAULT_ROOT));
    let socket = opts.control_socket.clone().unwrap_or_else(|| config.control_socket.clone());
    let metrics_addr = opts.metrics_addr.unwrap_or(config.metrics_addr);
    let events = opts.events.clone().unwrap_or_else(|| config.events.path.clone());

    // The socket first: a second daemon must stop before it touches the pins.
    let (calls_tx, mut calls) = mpsc::channel(16);
    control::listen(&socket, calls_tx).await?;
    let _socket = RemoveOnDrop(socket.clone());
    let root = match config.kubernetes {
        Some(_) => PinRoot::open_host(&pin_root)?,
        None => PinRoot::open(&pin_root)?,
    };
    let sink = Sink::with_rotation(Some(&events), false, Some(config.events.rotation))?;
    let dp = Datapath::load(&opts.load, Some(&root), sink, Labels::default())?;
    let shared = Arc::new(Shared::new());
    if let Some(addr) = metrics_addr {
        let collector = KernelCollector::open(&root.daemon_maps(), shared.clone(), dp.injector())?;
        metrics::serve(addr, shared.clone(), collector).await?;
    }
    let mut watched = config.files.clone();
    let mut watch = FileWatch::of(&watched)?;
    // Containers are followed from before the start, so none is missed.
    let mut containers = config.docker.as_ref().map(|d| docker::follow::follow(d.host.clone()));
    let mut pods = match &config.kubernetes {
        Some(k) => Some(kubernetes::follow::follow(node_name(k)?)),
        None => None,
    };
    let mut sup = Supervisor::new(dp, root, config, shared.clone(), runtime::file_for(&socket))?;
    sup.start_all(containers.as_mut(), pods.as_mut()).await;
    shared.set_ready();
    let status = sup.status();
    let enforcing = status.sandboxes.iter().filter(|s| s.state == "enforcing").count();
    tracing::info!(
        "ready: {enforcing} sandboxes enforcing, {} waiting; control socket {}{}",
        status.sandboxes.len() - enforcing,
        socket.display(),
        metrics_addr.map(|a| format!(", metrics on http://{a}/metrics")).unwrap_or_default()
    );

    // Without inotify (out of instances, say) every cgroup is looked at each tick.
    let mut cgroups = CgroupWatch::new().unwrap_or_else(|e| {
        tracing::warn!("watching cgroups: {e}; looking at them each second instead");
        CgroupWatch::none()
    });
    sup.sync_watches(&mut cgroups);
    let mut policies = sup.policies.subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        shared.beat();
        tokio::select! {
            _ = int.recv() => break,
            _ = term.recv() => break,
            _ = hup.recv() => {
                drop(sup.reload("SIGHUP").await);
                rewatch(&sup, &mut watched, &mut watch);
            }
            () = watch.changed() => {
                watch.settle().await;
                drop(sup.reload("configuration file changed").await);
                rewatch(&sup, &mut watched, &mut watch);
            }
            Some((request, reply)) = calls.recv() => {
                let _ = reply.send(sup.handle(request).await);
                rewatch(&sup, &mut watched, &mut watch);
            }
            _ = tick.tick() => sup.tick(&mut cgroups).await,
            Ok(()) = policies.changed() => sup.policies_changed().await,
            seen = cgroups.next() => match seen {
                Ok(seen) => sup.cgroups_changed(seen, &mut cgroups).await,
                Err(e) => {
                    // Unreadable: every cgroup is looked at each tick instead.
                    tracing::warn!("reading cgroup events: {e}; looking at cgroups each second");
                    cgroups = CgroupWatch::none();
                }
            },
            Some(event) = next(&mut containers) => sup.docker_event(event).await,
            Some(event) = next(&mut pods) => sup.pod_event(event).await,
            (name, change) = sup.next_change() => {
                if sup.apply(&name, change) {
                    sup.publish();
                }
            }
        }
    }
    sup.shutdown().await?;
    Ok(0)
}

/// After a reload: watch the policy files the configuration names now.
fn rewatch(sup: &Supervisor, watched: &mut Vec<PathBuf>, watch: &mut FileWatch) {
    let files = sup.config_files();
    if files == watched.as_slice() {
        return;
    }
    match FileWatch::of(files) {
        Ok(w) => {
            *watch = w;
            *watched = files.to_vec();
        }
        Err(e) => tracing::warn!("{e}; changes to the policy files are applied on SIGHUP"),
    }
}

/// Each DNS-aware sandbox's proxy holds its listening sockets (its links are held by their
/// pins alone), and every DNS query in flight a socket more. The soft limit (often 1024)
/// would stop the daemon at a few hundred sandboxes; the hard one is the operator's to set.
/// (Where fds run out anyway, a sandbox is denied everything instead: see daemon/closed.rs.)
fn raise_fd_limit(max: Option<u64>) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on local structs.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut lim) != 0 {
            return;
        }
        // The kernel allows no more than fs.nr_open.
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        if let Some(want) = max.map(|w| w.min(nr_open)).filter(|w| *w > lim.rlim_max) {
            let raised = libc::rlimit { rlim_cur: want, rlim_max: want };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) == 0 {
                lim = raised;
            } else {
                tracing::warn!(
                    "raising the open-files limit to {want}: {} (CAP_SYS_RESOURCE, and \
                     fs.nr_open at least that); keeping {}",
                    std::io::Error::last_os_error(),
                    lim.rlim_max
                );
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const lim) != 0 {
                tracing::warn!("raising the open files limit: {}", std::io::Error::last_os_error());
            }
        }
    }
    tracing::info!("open files limit: {}", lim.rlim_cur);
}

/// The next message of a source the configuration may not use.
async fn next<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// This node's name: the configuration's, else $NODE_NAME (the downward API's spec.nodeName).
fn node_name(k: &config::KubernetesConfig) -> Result<String> {
    k.node_name
        .clone()
        .or_else(|| std::env::var("NODE_NAME").ok())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            Error::Daemon(
                "kubernetes: the node's name is unknown: set NODE_NAME from the downward API \
                 (fieldRef: spec.nodeName) or kubernetes.node_name in the configuration"
                    .into(),
            )
        })
}

/// The control socket goes when the daemon does.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

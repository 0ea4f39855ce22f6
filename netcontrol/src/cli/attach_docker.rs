//! What `attach` enforces on: a cgroup, a Docker container (followed across its restarts
//! until it is removed), or a parent cgroup that containers are started under
//! (`docker run --cgroup-parent`), each of which gets a sandbox of its own once Docker
//! reports it.

use std::{
    collections::BTreeMap,
    ops::ControlFlow,
    path::{Path, PathBuf},
};

use tokio::sync::mpsc;

use super::{AttachArgs, single::Single};
use crate::{
    cgroup,
    docker::{self, Container, Docker, Lifecycle},
    error::{Error, Result},
    sandbox::NsChoice,
};

pub enum Target {
    Cgroup(PathBuf),
    Container {
        container: Container,
        events: mpsc::Receiver<Lifecycle>,
        unreachable: bool,
    },
    Parent {
        path: PathBuf,
        name: String,
        created: bool,
        events: mpsc::Receiver<Lifecycle>,
        /// The containers Docker says run (those under `path` are children).
        running: BTreeMap<String, Container>,
    },
}

impl Target {
    /// Find what the arguments name; Docker must answer for the Docker targets.
    pub async fn resolve(args: &AttachArgs) -> Result<Self> {
        if let Some(path) = &args.cgroup {
            return Ok(Self::Cgroup(path.clone()));
        }
        let docker = Docker::connect(args.docker_host.as_deref()).await?;
        if let Some(name) = &args.container {
            let container = docker.inspect(name).await?;
            if !container.running {
                return Err(docker::cgroup::not_running(&container));
            }
            return Ok(Self::Container {
                container,
                events: docker::follow::follow(Some(docker.host().to_owned())),
                unreachable: false,
            });
        }
        let name = args.docker_parent.clone().unwrap_or_default();
        let driver = docker.cgroup_driver().await?;
        if driver == "systemd" {
            return Err(Error::Docker(format!(
                "dockerd uses the systemd cgroup driver, for which --cgroup-parent names a systemd \
                 slice: create one (`systemctl start {name}.slice`) and run `netcontrol attach \
                 --cgroup <cgroup2 mount>/{name}.slice`, then `docker run --cgroup-parent={name}.slice`"
            )));
        }
        let name = name.trim_matches('/').to_owned();
        if name.is_empty() || name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(Error::Docker(format!(
                "{name:?} is not a cgroup name for --docker-parent"
            )));
        }
        let path = cgroup::mount_point()?.join(&name);
        let created = !path.exists();
        if created {
            cgroup::create(&path)?;
        }
        Ok(Self::Parent {
            path,
            name,
            created,
            events: docker::follow::follow(Some(docker.host().to_owned())),
            running: BTreeMap::new(),
        })
    }

    /// Start enforcing.
    pub async fn begin(&mut self, single: &mut Single) -> Result<()> {
        match self {
            // The DNS proxy listens where the sandbox's processes are: their network namespace.
            Self::Cgroup(path) => {
                let name = cgroup::validate(path)?.display().to_string();
                single.enforce(path, name, NsChoice::OfProcesses, None).await
            }
            Self::Container { container, .. } => enforce_container(single, container).await,
            Self::Parent { path, .. } => {
                let name = path.display().to_string();
                single.enforce(path, name, NsChoice::Own, None).await
            }
        }
    }

    pub fn describe(&self, cgroup: &Path) -> String {
        match self {
            Self::Container { container, .. } => {
                format!(
                    "container {} ({}), cgroup {}",
                    container.name,
                    container.short_id(),
                    cgroup.display()
                )
            }
            _ => cgroup.display().to_string(),
        }
    }

    /// What the user does next, if anything.
    pub fn hint(&self) {
        if let Self::Parent { name, .. } = self {
            eprintln!(
                "netcontrol: start containers with `docker run --cgroup-parent=/{name} ...`: they are enforced from their first instruction"
            );
        }
    }

    /// The next container event, if this target follows containers.
    pub async fn next(&mut self) -> Option<Lifecycle> {
        match self {
            Self::Cgroup(_) => std::future::pending().await,
            Self::Container { events, .. } | Self::Parent { events, .. } => events.recv().await,
        }
    }

    /// React to a container event; Break ends `attach`.
    pub async fn handle(&mut self, event: Lifecycle, single: &mut Single) -> ControlFlow<()> {
        match self {
            Self::Cgroup(_) => ControlFlow::Continue(()),
            Self::Container { container, unreachable, .. } => {
                follow_container(container, unreachable, event, single).await
            }
            Self::Parent { path, running, .. } => {
                follow_children(path, running, event, single).await;
                ControlFlow::Continue(())
            }
        }
    }

    /// After detaching: remove a parent cgroup this process created, if nothing runs in it.
    pub fn end(&self) {
        if let Self::Parent { path, created: true, .. } = self
            && let Err(e) = std::fs::remove_dir(path)
        {
            eprintln!(
                "netcontrol: leaving {} in place ({e}): containers still run in it, unenforced now",
                path.display()
            );
        }
    }
}

async fn enforce_container(single: &mut Single, c: &Container) -> Result<()> {
    let cgroup = docker::cgroup::of_container(c)?;
    single.enforce(&cgroup, c.name.clone(), NsChoice::OfProcesses, Some(c.label())).await
}

/// `attach --container`: detach when it stops, enforce again when it starts, end when it is
/// removed.
async fn follow_container(
    container: &mut Container,
    unreachable: &mut bool,
    event: Lifecycle,
    single: &mut Single,
) -> ControlFlow<()> {
    let ours = |id: &str| id == container.id;
    let (running, started) = match event {
        Lifecycle::Removed(id) if ours(&id) => {
            eprintln!("netcontrol: container {} was removed", container.name);
            if let Err(e) = single.detach() {
                eprintln!("netcontrol: {e}");
            }
            return ControlFlow::Break(());
        }
        Lifecycle::Died(id) if ours(&id) => (false, None),
        Lifecycle::Started(c) if ours(&c.id) => {
            // `docker restart` can be quicker than its die event's check (the container runs
            // again by then): a start with another cgroup than the one enforced is a restart,
            // and the old cgroup's links enforce nothing any more.
            if let Some(s) = &single.sandbox
                && !same_cgroup(s.enforcer().sandbox_id(), &c)
            {
                match single.detach() {
                    Ok(()) => eprintln!(
                        "netcontrol: container {} restarted with a new cgroup: detached from the old one",
                        container.name
                    ),
                    Err(e) => eprintln!("netcontrol: {e}"),
                }
            }
            (true, Some(c))
        }
        Lifecycle::Running(list) => {
            *unreachable = false;
            let now = list.into_iter().find(|c| ours(&c.id));
            (now.is_some(), now)
        }
        Lifecycle::Unreachable(why) => {
            if !*unreachable {
                eprintln!(
                    "netcontrol: {why}; the container stays enforced, but its restarts are not followed until Docker answers again"
                );
                *unreachable = true;
            }
            return ControlFlow::Continue(());
        }
        _ => return ControlFlow::Continue(()),
    };
    if !running && single.sandbox.is_some() {
        match single.detach() {
            Ok(()) => eprintln!(
                "netcontrol: container {} stopped: detached; waiting for it to start again or be removed",
                container.name
            ),
            Err(e) => eprintln!("netcontrol: {e}"),
        }
    }
    if let Some(c) = started
        && single.sandbox.is_none()
    {
        *container = c;
        match enforce_container(single, container).await {
            Ok(()) => {
                eprintln!("netcontrol: container {} started again: enforcing", container.name)
            }
            Err(e) => eprintln!("netcontrol: container {} started again, but: {e}", container.name),
        }
    }
    ControlFlow::Continue(())
}

/// Whether `c` still runs in the cgroup with id `enforced`.
fn same_cgroup(enforced: u64, c: &Container) -> bool {
    docker::cgroup::of_container(c)
        .ok()
        .and_then(|p| cgroup::id(&p).ok())
        .is_some_and(|now| now == enforced)
}

/// `attach --docker-parent`: a sandbox for each container under the parent, kept in line
/// with the containers Docker says run.
async fn follow_children(
    parent: &Path,
    running: &mut BTreeMap<String, Container>,
    event: Lifecycle,
    single: &mut Single,
) {
    match event {
        Lifecycle::Started(c) => {
            // A quick restart may come without a die event: the old sandbox's cgroup is gone.
            if single.child_id(&c.id).is_some_and(|enforced| !same_cgroup(enforced, &c))
                && let Err(e) = single.remove_child(&c.id)
            {
                eprintln!("netcontrol: {e}");
            }
            running.insert(c.id.clone(), c);
        }
        Lifecycle::Running(list) => {
            *running = list.into_iter().map(|c| (c.id.clone(), c)).collect()
        }
        Lifecycle::Died(id) | Lifecycle::Removed(id) => drop(running.remove(&id)),
        Lifecycle::Unreachable(why) => {
            tracing::warn!("{why}; containers stay enforced by the parent's policy");
            return;
        }
    }
    single.sync_children(parent, running).await;
}

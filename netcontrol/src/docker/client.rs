//! The Docker Engine API, through bollard: the unix socket of `DOCKER_HOST` (or
//! /var/run/docker.sock), the API version negotiated with the daemon.

use std::{collections::BTreeMap, time::Duration};

use bollard::{
    errors::Error as ApiError,
    query_parameters::{EventsOptionsBuilder, ListContainersOptionsBuilder},
};
use futures_util::Stream;

use crate::error::{Error, Result};

pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How long a request to dockerd may take before it counts as unreachable.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Docker {
    api: bollard::Docker,
    host: String,
}

/// What netcontrol needs to know about a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// The full id (64 hex digits).
    pub id: String,
    /// Without Docker's leading slash.
    pub name: String,
    /// The host pid of its init process, while it runs.
    pub pid: Option<u32>,
    pub running: bool,
    pub labels: BTreeMap<String, String>,
}

impl Container {
    /// The 12-digit id `docker ps` shows.
    pub fn short_id(&self) -> &str {
        &self.id[..self.id.len().min(12)]
    }

    /// How events name it.
    pub fn label(&self) -> crate::events::ContainerName {
        crate::events::ContainerName { name: self.name.clone(), id: self.short_id().to_owned() }
    }
}

impl Docker {
    /// Connect to `host` (`unix:///path`), or `DOCKER_HOST`, or the default socket, and agree
    /// on an API version. Fails with a message naming the host if dockerd does not answer.
    pub async fn connect(host: Option<&str>) -> Result<Self> {
        let host = host
            .map(str::to_owned)
            .or_else(|| std::env::var("DOCKER_HOST").ok().filter(|h| !h.is_empty()))
            .unwrap_or_else(|| DEFAULT_HOST.to_owned());
        let unreachable = |e: &dyn std::fmt::Display| {
            Error::Docker(format!(
                "Docker is not reachable at {host}: {e} (is dockerd running? DOCKER_HOST or --docker-host name another socket)"
            ))
        };
        let api = bollard::Docker::connect_with_host(&host).map_err(|e| unreachable(&e))?;
        let api = match tokio::time::timeout(TIMEOUT, api.negotiate_version()).await {
            Ok(Ok(api)) => api,
            Ok(Err(e)) => return Err(unreachable(&e)),
            Err(_) => return Err(unreachable(&"no answer within 10 s")),
        };
        Ok(Self { api, host })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// A container by name or id (a unique id prefix does too).
    pub async fn inspect(&self, name_or_id: &str) -> Result<Container> {
        let r = tokio::time::timeout(TIMEOUT, self.api.inspect_container(name_or_id, None))
            .await
            .map_err(|_| self.error("inspecting a container", &"no answer within 10 s"))?;
        let r = match r {
            Ok(r) => r,
            Err(ApiError::DockerResponseServerError { status_code: 404, .. }) => {
                return Err(Error::Docker(format!("no such container: {name_or_id}")));
            }
            Err(e) => return Err(self.error("inspecting a container", &e)),
        };
        let state = r.state.unwrap_or_default();
        Ok(Container {
            id: r.id.unwrap_or_default(),
            name: r.name.unwrap_or_default().trim_start_matches('/').to_owned(),
            pid: state.pid.and_then(|p| u32::try_from(p).ok()).filter(|p| *p > 0),
            running: state.running.unwrap_or(false),
            labels: r.config.and_then(|c| c.labels).unwrap_or_default().into_iter().collect(),
        })
    }

    /// The cgroup driver dockerd uses (`cgroupfs` or `systemd`).
    pub async fn cgroup_driver(&self) -> Result<String> {
        let info = tokio::time::timeout(TIMEOUT, self.api.info())
            .await
            .map_err(|_| self.error("asking for its settings", &"no answer within 10 s"))?
            .map_err(|e| self.error("asking for its settings", &e))?;
        Ok(info.cgroup_driver.map(|d| d.to_string()).unwrap_or_default())
    }

    /// Every running container.
    pub async fn running(&self) -> Result<Vec<Container>> {
        let list = tokio::time::timeout(
            TIMEOUT,
            self.api.list_containers(Some(ListContainersOptionsBuilder::new().build())),
        )
        .await
        .map_err(|_| self.error("listing containers", &"no answer within 10 s"))?
        .map_err(|e| self.error("listing containers", &e))?;
        let mut out = Vec::new();
        for c in list {
            let Some(id) = c.id else { continue };
            // Gone between the list and the inspect: not running any more.
            match self.inspect(&id).await {
                Ok(c) if c.running => out.push(c),
                Ok(_) => {}
                Err(Error::Docker(m)) if m.starts_with("no such container") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Container starts, deaths and removals from `since` (unix seconds) on.
    pub fn lifecycle_events(
        &self,
        since: i64,
    ) -> impl Stream<Item = Result<bollard::models::EventMessage, ApiError>> + use<> {
        let filters = std::collections::HashMap::from([
            ("type", vec!["container"]),
            ("event", vec!["start", "die", "destroy"]),
        ]);
        self.api.events(Some(
            EventsOptionsBuilder::new().since(&since.to_string()).filters(&filters).build(),
        ))
    }

    fn error(&self, what: &str, e: &dyn std::fmt::Display) -> Error {
        Error::Docker(format!("{what} through Docker at {}: {e}", self.host))
    }
}

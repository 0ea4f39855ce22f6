//! The control socket's requests, carried out by the supervisor: status, reload, and
//! attaching or detaching a sandbox (a source of wanted sandboxes, kept in the runtime file).

use std::path::PathBuf;

use super::{
    control::{PolicyRef, Request, Response},
    runtime::{self, Attached},
    supervisor::{Origin, State, Supervisor},
};
use crate::{
    cgroup,
    error::{Error, Result},
};

impl Supervisor {
    pub async fn handle(&mut self, request: Request) -> Response {
        let response = match request {
            Request::Status => {
                // What status says must be what the kernel does now.
                self.check_tamper();
                Response { ok: true, status: Some(self.status()), ..Response::default() }
            }
            Request::Reload => match self.reload("control request").await {
                Ok(s) => Response::done(s),
                Err(e) => Response::failed(e),
            },
            Request::Attach { name, cgroup, policy } => {
                match self.attach(name, cgroup, policy).await {
                    Ok(s) => Response::done(s),
                    Err(e) => Response::failed(e),
                }
            }
            Request::Detach { name, cgroup } => match self.detach(name, cgroup).await {
                Ok(s) => Response::done(s),
                Err(e) => Response::failed(e),
            },
        };
        self.publish();
        response
    }

    async fn attach(
        &mut self,
        name: Option<String>,
        cgroup: PathBuf,
        policy: PolicyRef,
    ) -> Result<String> {
        let name = name.unwrap_or_else(|| cgroup.display().to_string());
        if self.slots.contains_key(&name) || self.attached.iter().any(|a| a.name == name) {
            return Err(Error::Reload(format!("there is already a sandbox named {name:?}")));
        }
        let (_, p) = self.resolve_policy(&policy)?;
        p.compile(&Default::default(), &[])?;
        let path = self.resolve(&cgroup);
        cgroup::validate(&path)?;
        self.attached.push(Attached { name: name.clone(), cgroup, policy });
        self.converge().await;
        match self.slots.get(&name).map(|s| &s.state) {
            Some(State::Enforcing(s)) => {
                let msg = format!(
                    "enforcing on {} (cgroup id {}) as sandbox {name:?}: {} allow entries, {} mode",
                    path.display(),
                    s.enforcer().sandbox_id(),
                    s.enforcer().entry_count(),
                    s.policy().mode.name()
                );
                self.save_runtime();
                Ok(msg)
            }
            other => {
                let why = match other {
                    Some(State::Waiting { why, .. }) => why.clone(),
                    _ => format!("another sandbox is named {name:?}"),
                };
                self.attached.retain(|a| a.name != name);
                self.converge().await;
                Err(Error::Reload(why))
            }
        }
    }

    async fn detach(&mut self, name: Option<String>, cgroup: Option<PathBuf>) -> Result<String> {
        let wanted_id = cgroup.as_ref().and_then(|c| cgroup::id(&self.resolve(c)).ok());
        let found = self.slots.iter().find(|(n, s)| {
            Some(*n) == name.as_ref()
                || cgroup.as_ref().is_some_and(|c| {
                    *c == s.cgroup
                        || self.resolve(c) == self.resolve(&s.cgroup)
                        || matches!(&s.state, State::Enforcing(sb) if Some(sb.enforcer().sandbox_id()) == wanted_id)
                })
        });
        let Some((name, slot)) = found else {
            let what = name.map_or_else(
                || format!("{}", cgroup.unwrap_or_default().display()),
                |n| format!("{n:?}"),
            );
            return Err(Error::Reload(format!("no sandbox {what} is attached")));
        };
        let name = name.clone();
        let follows = match &slot.origin {
            Origin::Control(_) => None,
            Origin::Config => Some(format!("comes from {}", self.config.path.display())),
            Origin::Container { .. } | Origin::Child { .. } => {
                Some("is a container the configuration selects".to_owned())
            }
            Origin::Pod => Some("is a pod the configuration selects".to_owned()),
        };
        if let Some(why) = follows {
            return Err(Error::Reload(format!(
                "sandbox {name:?} {why}; change the configuration (or the labels) and reload"
            )));
        }
        self.stop(&name)?;
        self.attached.retain(|a| a.name != name);
        self.save_runtime();
        self.converge().await;
        Ok(format!("detached sandbox {name:?}"))
    }

    pub(super) fn save_runtime(&self) {
        let list = &self.attached;
        if list.is_empty() && !self.runtime_file.exists() {
            return;
        }
        if let Err(e) = runtime::save(&self.runtime_file, list) {
            tracing::error!("saving {}: {e}", self.runtime_file.display());
        }
    }
}

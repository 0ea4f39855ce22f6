//! The sandboxes of one `run` or `attach` process, on a datapath of their own: the main one
//! (the command's cgroup, the attached cgroup or container), and with `--docker-parent` one
//! child per container started under it. All share the command line's policy.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use futures_util::future::select_all;

use super::KernelArgs;
use crate::{
    daemon::{
        reconcile::{Action, Have, Key, Wanted, reconcile},
        supervisor::Origin,
    },
    datapath::{Counts, Datapath},
    docker::Container,
    enforcer::LinkPins,
    error::Result,
    events::{ContainerName, Identity, Labels, Sink},
    policy::Policy,
    sandbox::{Change, NsChoice, Sandbox, Spec},
};

pub struct Single {
    pub dp: Datapath,
    /// None between a container's stop and its next start.
    pub sandbox: Option<Sandbox>,
    /// Containers under the main cgroup, by container id.
    children: BTreeMap<String, Child>,
    policy: Policy,
    link_pins: LinkPins,
    /// What sandboxes that were detached already counted.
    done: Counts,
}

/// A container's sandbox under the main cgroup, with what reconciling compares.
struct Child {
    sandbox: Sandbox,
    key: Key,
    name: String,
    cgroup: PathBuf,
    origin: Origin,
    container: Container,
}

impl Child {
    fn have<'a>(&'a self, policy: &'a Policy) -> Have<'a> {
        Have {
            key: &self.key,
            name: &self.name,
            cgroup: &self.cgroup,
            origin: &self.origin,
            policy_name: "",
            policy,
            policy_missing: None,
            container: Some(&self.container),
            pod: None,
        }
    }
}

impl Single {
    /// Load the programs; nothing is enforced yet.
    pub fn load(policy: Policy, sink: Sink, kernel: &KernelArgs) -> Result<Self> {
        // A bad policy is reported before anything touches the kernel.
        policy.compile(&Default::default(), &[])?;
        let link_pins = kernel.link_pins()?;
        let dp = Datapath::load(&kernel.load_options(), None, sink, Labels::default())?;
        Ok(Self {
            dp,
            sandbox: None,
            children: BTreeMap::new(),
            policy,
            link_pins,
            done: Counts::default(),
        })
    }

    /// Load the programs and enforce `policy` on `cgroup`.
    pub async fn start(
        cgroup: &Path,
        policy: Policy,
        sink: Sink,
        kernel: &KernelArgs,
        ns: NsChoice,
    ) -> Result<Self> {
        let mut this = Self::load(policy, sink, kernel)?;
        let name = crate::cgroup::validate(cgroup)?.display().to_string();
        this.enforce(cgroup, name, ns, None).await?;
        Ok(this)
    }

    /// Enforce on `cgroup` as the main sandbox.
    pub async fn enforce(
        &mut self,
        cgroup: &Path,
        name: String,
        ns: NsChoice,
        container: Option<ContainerName>,
    ) -> Result<()> {
        let spec = Spec {
            name,
            cgroup: cgroup.to_owned(),
            policy: self.policy.clone(),
            // The main sandbox is 1, children count up from 2.
            policy_id: 1,
            link_pins: self.link_pins.clone(),
            ns,
            identity: Identity { container, pod: None },
        };
        self.sandbox = Some(Sandbox::start(&mut self.dp, spec).await?);
        Ok(())
    }

    /// Stop enforcing the main sandbox (its cgroup went away), keeping its counts.
    pub fn detach(&mut self) -> Result<()> {
        if let Some(s) = self.sandbox.take() {
            self.done = add(self.done, s.detach(&mut self.dp)?);
        }
        Ok(())
    }

    /// Bring the children in line with the containers running under `parent` now: the same
    /// reconcile step as the daemon's, with one source.
    pub async fn sync_children(&mut self, parent: &Path, running: &BTreeMap<String, Container>) {
        let origin = Origin::Child { parent: parent.display().to_string() };
        let policy = std::sync::Arc::new(self.policy.clone());
        let wanted: Vec<Wanted> = running
            .values()
            .filter_map(|c| {
                let cgroup = crate::docker::cgroup::of_container(c).ok()?;
                (cgroup != parent && cgroup.starts_with(parent)).then(|| Wanted {
                    key: Key::Container(c.id.clone()),
                    name: c.name.clone(),
                    cgroup,
                    origin: origin.clone(),
                    create: false,
                    policy_name: String::new(),
                    policy: policy.clone(),
                    policy_missing: None,
                    container: Some(c.clone()),
                    pod: None,
                })
            })
            .collect();
        let actions = {
            let have: Vec<Have<'_>> =
                self.children.values().map(|c| c.have(&self.policy)).collect();
            reconcile(wanted, &have)
        };
        for action in actions {
            match action {
                Action::Remove(name) => self.remove_child_named(&name),
                Action::Add(w) => self.add_child(w).await,
                // Children are enforced by the parent's links: starting one anew leaves no
                // gap, a rename (a container renamed) included.
                Action::Replace(old, w) | Action::Rename(old, w) => {
                    self.remove_child_named(&old);
                    self.add_child(w).await;
                }
                Action::Refresh(w) | Action::SetPolicy(w) => {
                    if let (Key::Container(id), Some(c)) = (&w.key, w.container)
                        && let Some(child) = self.children.get_mut(id)
                    {
                        child.container = c;
                    }
                }
            }
        }
    }

    /// Give a container under the main cgroup a sandbox of its own: same policy, its own DNS
    /// proxy in its network namespace, events naming it. The main cgroup's links enforce.
    async fn add_child(&mut self, w: Wanted) {
        let (Key::Container(id), Some(c)) = (&w.key, &w.container) else { return };
        let used: Vec<u32> =
            self.children.values().map(|c| c.sandbox.enforcer().policy_id()).collect();
        let policy_id = (2..).find(|i| !used.contains(i)).unwrap_or(u32::MAX);
        let spec = Spec {
            name: c.name.clone(),
            cgroup: w.cgroup.clone(),
            policy: self.policy.clone(),
            policy_id,
            link_pins: LinkPins::Inherited,
            ns: NsChoice::OfProcesses,
            identity: Identity { container: Some(c.label()), pod: None },
        };
        match Sandbox::start(&mut self.dp, spec).await {
            Ok(sandbox) => {
                tracing::info!(
                    "container {} ({}) runs under the parent: it has its own sandbox",
                    c.name,
                    c.short_id()
                );
                let child = Child {
                    sandbox,
                    key: w.key.clone(),
                    name: w.name,
                    cgroup: w.cgroup,
                    origin: w.origin,
                    container: c.clone(),
                };
                self.children.insert(id.clone(), child);
            }
            Err(e) => eprintln!(
                "netcontrol: container {}: {e}; the parent's policy still applies",
                c.name
            ),
        }
    }

    /// The cgroup id a container's child sandbox enforces on.
    pub fn child_id(&self, id: &str) -> Option<u64> {
        self.children.get(id).map(|c| c.sandbox.enforcer().sandbox_id())
    }

    pub fn remove_child(&mut self, id: &str) -> Result<()> {
        if let Some(c) = self.children.remove(id) {
            self.done = add(self.done, c.sandbox.detach(&mut self.dp)?);
        }
        Ok(())
    }

    fn remove_child_named(&mut self, name: &str) {
        let id = self.children.iter().find(|(_, c)| c.name == name).map(|(id, _)| id.clone());
        if let Some(id) = id
            && let Err(e) = self.remove_child(&id)
        {
            eprintln!("netcontrol: {e}");
        }
    }

    /// Wait for DNS to change what one of the sandboxes allows, and apply it. Cancel-safe.
    pub async fn follow_dns(&mut self) -> Result<()> {
        let waits: Vec<_> = self
            .sandbox
            .iter_mut()
            .map(|s| (None, s))
            .chain(self.children.iter_mut().map(|(id, c)| (Some(id.clone()), &mut c.sandbox)))
            .map(|(id, s)| Box::pin(async move { (id, s.next_change().await) }))
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        let ((id, change), _, _): ((Option<String>, Change), _, _) = select_all(waits).await;
        let sandbox = match id {
            None => self.sandbox.as_mut(),
            Some(id) => self.children.get_mut(&id).map(|c| &mut c.sandbox),
        };
        match sandbox {
            Some(s) => s.apply(&mut self.dp, change),
            None => Ok(()),
        }
    }

    /// Look for tampering with the main sandbox's links (the children have none of their
    /// own), and for a process of it in the host's network namespace; returns how many things
    /// were found tampered with.
    pub fn check_tamper(&mut self) -> usize {
        match &mut self.sandbox {
            Some(s) => {
                if let Err(e) = s.recheck_netns(&mut self.dp) {
                    tracing::warn!("{e}");
                }
                s.check_tamper(&mut self.dp)
            }
            None => 0,
        }
    }

    pub async fn reload(&mut self, policy: Policy) -> Result<()> {
        if let Some(s) = &mut self.sandbox {
            s.reload(&mut self.dp, policy.clone()).await?;
        }
        for (id, child) in &mut self.children {
            if let Err(e) = child.sandbox.reload(&mut self.dp, policy.clone()).await {
                tracing::warn!("container {id}: {e}");
            }
        }
        self.policy = policy;
        Ok(())
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Detach everything, deliver every queued event, and return the counts and the sink.
    pub async fn stop(mut self) -> Result<(Counts, Sink)> {
        let ids: Vec<String> = self.children.keys().cloned().collect();
        for id in ids {
            self.remove_child(&id)?;
        }
        self.detach()?;
        let Self { dp, done, .. } = self;
        let injected_lost = dp.injected_lost();
        let sink = dp.finish().await?;
        let mut counts = done;
        counts.events_lost += injected_lost;
        Ok((counts, sink))
    }
}

fn add(a: Counts, b: Counts) -> Counts {
    Counts {
        allowed: a.allowed + b.allowed,
        blocked: a.blocked + b.blocked,
        would_block: a.would_block + b.would_block,
        redirected: a.redirected + b.redirected,
        events_lost: a.events_lost + b.events_lost,
        summarized: a.summarized + b.summarized,
        dns_refused: a.dns_refused + b.dns_refused,
    }
}

//! The daemon's sandboxes: which are wanted (configuration file and control socket), which
//! are enforcing, and bringing the one in line with the other — at start (re-adopting what is
//! pinned), on reload, when cgroups come and go, and on control requests.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use futures_util::future::select_all;
use netcontrol_common::abi::GLOBAL_EVENTS_LOST;

use tokio::sync::mpsc;

use super::{
    config::{self, Config, SandboxConfig},
    control::{MapUsage, PolicyRef, Request, Response, SandboxStatus, Status},
    runtime::{self, Attached},
};
use crate::{
    bpf::{Attachment, PinRoot, hooks::Scope, pins},
    cgroup,
    datapath::Datapath,
    docker::{Container, Lifecycle},
    enforcer::LinkPins,
    error::{Error, Result},
    events::{Identity, PodName},
    kubernetes::{Pod, PodEvent},
    metrics::{SandboxGauges, Shared, Snapshot},
    policy::Policy,
    sandbox::{Change, NsChoice, Sandbox, Spec},
};

/// Sandboxes whose links the once-a-second tamper check looks at (all of them up to this
/// many; beyond, each every `n / TAMPER_PER_TICK` seconds).
const TAMPER_PER_TICK: usize = 250;
/// How soon a sandbox whose cgroup is missing is looked for again.
const MISSING_RETRY: Duration = Duration::from_secs(1);
/// How long the start waits for Docker's list of running containers.
const DOCKER_WAIT: Duration = Duration::from_secs(5);

pub struct Supervisor {
    pub(super) dp: Datapath,
    pub(super) root: PinRoot,
    pub(super) mount: PathBuf,
    pub(super) config: Config,
    pub(super) slots: BTreeMap<String, Slot>,
    /// cgroup id -> policy id, for every cgroup that has (or may have) entries in the maps.
    ids: BTreeMap<u64, u32>,
    shared: Arc<Shared>,
    runtime_file: PathBuf,
    pub(super) attach_errors: BTreeMap<String, u64>,
    reload_failures: u64,
    /// Docker's running containers, by id (when containers are followed).
    pub(super) running: BTreeMap<String, Container>,
    /// Whether the list of running containers is known: until it is, pins of cgroups that
    /// still exist are kept (they may be containers we will be told about).
    pub(super) docker_synced: bool,
    /// The pods of this node, by uid (in Kubernetes mode).
    pub(super) pods: BTreeMap<String, Pod>,
    /// Like `docker_synced`, for the pods.
    pub(super) pods_synced: bool,
    /// The global hooks' links (BPF LSM), attached once for every sandbox.
    pub(super) global: Option<Attachment>,
    /// Tampering found, by sandbox name ("global" for the global hooks).
    tamper: BTreeMap<String, u64>,
    /// Where the next partial tamper check starts.
    tamper_cursor: usize,
    /// Pin trees of other versions that still enforce cgroups this daemon does not, as last
    /// said (upgrade.rs).
    pub(super) kept_by_other_versions: BTreeSet<(PathBuf, Vec<u64>)>,
}

pub(super) struct Slot {
    /// As configured: absolute, or relative to the cgroup2 mount.
    pub(super) cgroup: PathBuf,
    pub(super) policy_name: String,
    pub(super) policy: Policy,
    pub(super) origin: Origin,
    /// The Docker container it is.
    pub(super) container: Option<Container>,
    /// The Kubernetes pod it is.
    pub(super) pod: Option<Pod>,
    /// Create the cgroup if it is missing.
    create: bool,
    pub(super) state: State,
    /// The policy name it was given does not exist (where the name came from): it is
    /// given `Policy::deny_all` instead.
    pub(super) policy_missing: Option<String>,
    /// Its own policy failed to start: it enforces deny-all meanwhile (see closed.rs).
    pub(super) standin: Option<super::closed::Standin>,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum Origin {
    Config,
    Control(PolicyRef),
    /// A container a `containers:` sandbox selects (the entry's name).
    Container {
        rule: String,
    },
    /// A container under a cgroup sandbox (its name): no links of its own.
    Child {
        parent: String,
    },
    /// A pod of this node (Kubernetes mode).
    Pod,
}

pub(super) enum State {
    Enforcing(Box<Sandbox>),
    /// Not enforcing: `failed` when its cgroup exists and starting failed (nothing of it may
    /// be enforced then: the daemon is not ready), else its cgroup is not there (yet).
    Waiting {
        why: String,
        next_try: Instant,
        failed: bool,
    },
}

impl Supervisor {
    pub fn new(
        dp: Datapath,
        root: PinRoot,
        config: Config,
        shared: Arc<Shared>,
        runtime_file: PathBuf,
    ) -> Result<Self> {
        // Policy ids of the sandboxes a previous run left in the pinned maps: reused for the
        // same cgroups, so that their entries are updated in place, never dropped.
        let ids = dp.maps_ref().sandboxes()?.into_iter().map(|(id, v)| (id, v.policy_id)).collect();
        let docker_synced = config.docker.is_none();
        let pods_synced = config.kubernetes.is_none();
        Ok(Self {
            dp,
            root,
            mount: cgroup::mount_point()?,
            config,
            slots: BTreeMap::new(),
            ids,
            shared,
            runtime_file,
            attach_errors: BTreeMap::new(),
            reload_failures: 0,
            running: BTreeMap::new(),
            docker_synced,
            pods: BTreeMap::new(),
            pods_synced,
            global: None,
            tamper: BTreeMap::new(),
            tamper_cursor: 0,
            kept_by_other_versions: BTreeSet::new(),
        })
    }

    /// Bring up every configured and control-attached sandbox and every selected container
    /// (re-adopting pinned links), then remove what earlier runs left for cgroups that are gone
    /// or no longer wanted.
    pub async fn start_all(
        &mut self,
        docker: Option<&mut mpsc::Receiver<Lifecycle>>,
        pods: Option<&mut mpsc::Receiver<PodEvent>>,
    ) {
        if let Some(line) = crate::datapath::gaps(self.dp.missing(), &[]) {
            tracing::warn!("{line}");
        }
        // The global hooks first: they judge every sandbox's tasks by the sandbox table.
        match self.dp.attach(
            &self.mount,
            Some(&self.root.daemon_global()),
            Scope::Global,
            crate::bpf::attach::Fds::Held,
        ) {
            Ok(a) => self.global = Some(a),
            Err(e) => tracing::error!("attaching the global hooks: {e}"),
        }
        for s in self.config.sandboxes.clone() {
            self.add_config_slot(&s);
        }
        for a in runtime::load(&self.runtime_file) {
            match self.resolve_policy(&a.policy) {
                Ok((policy_name, policy)) if !self.slots.contains_key(&a.name) => {
                    self.slots.insert(
                        a.name.clone(),
                        Slot::new(a.cgroup, policy_name, policy, Origin::Control(a.policy)),
                    );
                }
                Ok(_) => tracing::warn!(
                    "{}: attached through the control socket, but the configuration now has a sandbox of that name",
                    a.name
                ),
                // Its policy is gone from the configuration: deny-all, never let go.
                Err(e) if !self.slots.contains_key(&a.name) => {
                    tracing::error!(
                        "{}: attached through the control socket, but {e}; it gets no egress at \
                         all (deny-all) until it is detached or attached again",
                        a.name
                    );
                    let name = match &a.policy {
                        PolicyRef::Named(n) => n.clone(),
                        PolicyRef::Inline { source, .. } => source.display().to_string(),
                    };
                    let mut slot =
                        Slot::new(a.cgroup, name, Policy::deny_all(), Origin::Control(a.policy));
                    slot.policy_missing =
                        Some("the daemon's record of control-socket attaches".into());
                    self.slots.insert(a.name.clone(), slot);
                }
                Err(e) => tracing::warn!("{}: {e}", a.name),
            }
        }
        // The containers running now, before anything pinned is judged unwanted.
        if let Some(rx) = docker {
            match tokio::time::timeout(DOCKER_WAIT, rx.recv()).await {
                Ok(Some(event)) => self.docker_event(event).await,
                _ => tracing::warn!(
                    "Docker did not answer within {DOCKER_WAIT:?}; containers are attached when it does, and their pins are kept until then"
                ),
            }
        }
        if let Some(rx) = pods {
            match tokio::time::timeout(DOCKER_WAIT, rx.recv()).await {
                Ok(Some(event)) => self.pod_event(event).await,
                _ => tracing::warn!(
                    "the Kubernetes API did not answer within {DOCKER_WAIT:?}; pods are attached when it does, and their pins are kept until then"
                ),
            }
        }
        let names: Vec<String> = self.slots.keys().cloned().collect();
        for name in &names {
            self.try_start(name).await;
        }
        // Ours are attached: now the links of other versions go (make before break).
        self.retire_other_versions();
        self.collect_garbage();
        self.save_runtime();
        self.publish();
    }

    fn add_config_slot(&mut self, s: &SandboxConfig) {
        let policy = self.config.policies[&s.policy].clone();
        self.slots.insert(
            s.name.clone(),
            Slot {
                create: s.create,
                ..Slot::new(s.cgroup.clone(), s.policy.clone(), policy, Origin::Config)
            },
        );
    }

    fn resolve(&self, cgroup: &Path) -> PathBuf {
        if cgroup.is_absolute() { cgroup.to_owned() } else { self.mount.join(cgroup) }
    }

    /// The policy id for a cgroup: the one it had, or the smallest free one.
    fn policy_id_for(&mut self, cgroup_id: u64) -> u32 {
        if let Some(id) = self.ids.get(&cgroup_id) {
            return *id;
        }
        let used: BTreeSet<u32> = self.ids.values().copied().collect();
        let id = (1..).find(|i| !used.contains(i)).unwrap_or(u32::MAX);
        self.ids.insert(cgroup_id, id);
        id
    }

    /// Start enforcing a waiting sandbox if its cgroup exists; otherwise note why not.
    pub(super) async fn try_start(&mut self, name: &str) {
        let Some(slot) = self.slots.get(name) else { return };
        if matches!(slot.state, State::Enforcing(_)) {
            return;
        }
        let path = self.resolve(&slot.cgroup);
        if slot.create && !path.exists() {
            match cgroup::create(&path) {
                Ok(()) => tracing::info!(sandbox = name, "created {}", path.display()),
                Err(e) => tracing::warn!(sandbox = name, "{e}"),
            }
        }
        let policy = slot.policy.clone();
        let (link_pins, identity) = (self.link_pins(name), self.identity(name));
        let result = self.start_on(name, &path, policy, link_pins, identity).await;
        let state = match result {
            Ok(sandbox) => {
                let how = if sandbox.enforcer().adopted() { "re-adopted" } else { "enforcing" };
                tracing::info!(
                    sandbox = name,
                    "{how} {} (cgroup id {}): policy {}, {} mode, {} allow entries",
                    path.display(),
                    sandbox.enforcer().sandbox_id(),
                    self.slots.get(name).map_or("", |s| s.policy_name.as_str()),
                    sandbox.policy().mode.name(),
                    sandbox.enforcer().entry_count()
                );
                if let Some(slot) = self.slots.get_mut(name) {
                    slot.standin = None;
                }
                let mut sandbox = sandbox;
                sandbox.sweep_externally();
                State::Enforcing(Box::new(sandbox))
            }
            Err(Missing(why)) => {
                let same = self.slots.get(name).is_some_and(
                    |s| matches!(&s.state, State::Waiting { why: w, .. } if *w == why),
                );
                if !same {
                    tracing::info!(sandbox = name, "waiting: {why}");
                }
                State::Waiting { why, next_try: Instant::now() + MISSING_RETRY, failed: false }
            }
            Err(Failed(e)) => {
                *self.attach_errors.entry(name.to_owned()).or_default() += 1;
                tracing::error!(
                    sandbox = name,
                    "attaching to {} failed (retrying): {e}",
                    path.display()
                );
                let (pins, identity) = (self.link_pins(name), self.identity(name));
                self.stand_in(name, &path, pins, identity, e.to_string()).await
            }
        };
        let enforcing = matches!(state, State::Enforcing(_));
        let Some(slot) = self.slots.get_mut(name) else { return };
        slot.state = state;
        if enforcing {
            self.report_missing(name);
        }
    }

    fn link_pins(&self, name: &str) -> LinkPins {
        match self.slots.get(name).map(|s| &s.origin) {
            Some(Origin::Child { .. }) => LinkPins::Inherited,
            _ => LinkPins::Daemon(self.root.clone()),
        }
    }

    fn identity(&self, name: &str) -> Identity {
        let slot = self.slots.get(name);
        Identity {
            container: slot.and_then(|s| s.container.as_ref()).map(Container::label),
            pod: slot
                .and_then(|s| s.pod.as_ref())
                .map(|p| PodName { namespace: p.namespace.clone(), name: p.name.clone() }),
        }
    }

    pub(super) async fn start_on(
        &mut self,
        name: &str,
        path: &Path,
        policy: Policy,
        link_pins: LinkPins,
        identity: Identity,
    ) -> Result<Sandbox, NotStarted> {
        if !cgroup::is_cgroup2(path) {
            return Err(Missing(format!("{} does not exist yet", path.display())));
        }
        let cgroup_id = cgroup::id(path).map_err(Failed)?;
        if let Some(other) = self.enforcing().find(|(_, s)| s.enforcer().sandbox_id() == cgroup_id)
        {
            return Err(Missing(format!(
                "{} is already enforced as sandbox {:?}",
                path.display(),
                other.0
            )));
        }
        let policy_id = self.policy_id_for(cgroup_id);
        let spec = Spec {
            name: name.to_owned(),
            cgroup: path.to_owned(),
            policy,
            policy_id,
            link_pins,
            ns: NsChoice::OfProcesses,
            identity,
        };
        Sandbox::start(&mut self.dp, spec).await.map_err(Failed)
    }

    pub(super) fn enforcing(&self) -> impl Iterator<Item = (&String, &Sandbox)> {
        self.slots.iter().filter_map(|(n, s)| match &s.state {
            State::Enforcing(sb) => Some((n, sb.as_ref())),
            State::Waiting { .. } => None,
        })
    }

    /// Stop a sandbox and drop it.
    pub(super) fn remove_slot(&mut self, name: &str) {
        if let Err(e) = self.stop(name) {
            tracing::warn!(sandbox = name, "{e}");
        }
        self.slots.remove(name);
    }

    /// Stop enforcing a sandbox: its links, pins, map entries and counters go.
    pub(super) fn stop(&mut self, name: &str) -> Result<()> {
        let Some(slot) = self.slots.get_mut(name) else { return Ok(()) };
        let state = std::mem::replace(
            &mut slot.state,
            State::Waiting {
                why: "detached".into(),
                next_try: Instant::now() + MISSING_RETRY,
                failed: false,
            },
        );
        if let State::Enforcing(sandbox) = state {
            let id = sandbox.enforcer().sandbox_id();
            let counts = sandbox.detach(&mut self.dp)?;
            self.ids.remove(&id);
            tracing::info!(
                sandbox = name,
                "detached: {} blocked, {} allowed over its life",
                counts.blocked,
                counts.allowed
            );
        }
        Ok(())
    }

    /// Remove what earlier runs left behind and nobody wants now: links of cgroups that are
    /// gone or not configured, their sandbox entries, their policies' entries. Until Docker's
    /// running containers are known, a cgroup that still exists is kept (it may be one).
    pub(super) fn collect_garbage(&mut self) {
        let mut keep: BTreeSet<u64> = BTreeSet::new();
        for slot in self.slots.values() {
            match &slot.state {
                State::Enforcing(s) => {
                    keep.insert(s.enforcer().sandbox_id());
                }
                // A wanted cgroup that failed to start keeps what enforced it before (fail
                // closed) until an attach succeeds.
                State::Waiting { .. } => {
                    if let Ok(id) = cgroup::id(&self.resolve(&slot.cgroup)) {
                        keep.insert(id);
                    }
                }
            }
        }
        if !(self.docker_synced && self.pods_synced) {
            keep.extend(
                self.root
                    .daemon_link_dirs()
                    .into_iter()
                    .map(|(id, _)| id)
                    .chain(
                        self.dp
                            .maps_ref()
                            .sandboxes()
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(id, _)| id),
                    )
                    .filter(|id| cgroup::path_by_id(&self.mount, *id).is_some()),
            );
        }
        for (id, dir) in self.root.daemon_link_dirs() {
            if keep.contains(&id) {
                continue;
            }
            let what = match cgroup::path_by_id(&self.mount, id) {
                Some(p) => format!("{} (no longer configured)", p.display()),
                None => format!("cgroup {id} (gone)"),
            };
            match pins::remove_dir(&dir) {
                Ok(()) => tracing::info!("removed the pinned links of {what}"),
                Err(e) => tracing::warn!("removing the pinned links of {what}: {e}"),
            }
        }
        if let Ok(entries) = self.dp.maps_ref().sandboxes() {
            for (id, _) in entries.into_iter().filter(|(id, _)| !keep.contains(id)) {
                if let Err(e) =
                    self.dp.maps().remove_sandbox(id).and_then(|()| self.dp.maps().remove_stats(id))
                {
                    tracing::warn!("{e}");
                }
            }
        }
        self.ids.retain(|id, _| keep.contains(id));
        let policies: BTreeSet<u32> = self.ids.values().copied().collect();
        match self.dp.maps().purge_policies(&policies) {
            Ok(0) => {}
            Ok(n) => tracing::info!("removed {n} allow entries of sandboxes that are gone"),
            Err(e) => tracing::warn!("{e}"),
        }
        let _ = pins::collect_garbage(&self.root, &self.mount, None);
    }

    /// Look at every sandbox's links (and the global ones): what was detached or unpinned
    /// behind the daemon's back is attached or pinned again, logged, counted and reported.
    pub fn check_tamper(&mut self) {
        self.check_tamper_of(usize::MAX);
    }

    /// `check_tamper` for at most `most` sandboxes, going round: the once-a-second check of a
    /// node with thousands of sandboxes (a few syscalls per link each) takes a slice of them
    /// per tick, so each is still looked at every few seconds; `status` and scrapes check all.
    fn check_tamper_of(&mut self, most: usize) {
        let dp = &mut self.dp;
        let n = self.slots.len();
        let (start, take) = if most >= n { (0, n) } else { (self.tamper_cursor % n, most) };
        self.tamper_cursor = start + take;
        let in_slice = |i: usize| (i + n - start) % n.max(1) < take;
        for (_, (name, slot)) in self.slots.iter_mut().enumerate().filter(|(i, _)| in_slice(*i)) {
            if let State::Enforcing(s) = &mut slot.state {
                let n = s.check_tamper(dp);
                if n > 0 {
                    *self.tamper.entry(name.clone()).or_default() += n as u64;
                }
                // A sandbox of its own namespace that gets a process in the host's has the
                // host's rules from then on (a read of each process's namespace: in the same
                // slice, not every sandbox every second).
                if !s.netns_pending()
                    && let Err(e) = s.recheck_netns(dp)
                {
                    tracing::warn!(sandbox = name.as_str(), "{e}");
                }
            }
        }
        if let Some(g) = &mut self.global {
            let found = dp.check(g);
            crate::sandbox::report_tampering(dp, "global", 0, &found);
            if !found.is_empty() {
                *self.tamper.entry("global".into()).or_default() += found.len() as u64;
            }
        }
    }

    /// Once a second: attach sandboxes whose cgroup appeared (or whose attach failed), and
    /// let go of those whose cgroup went away.
    pub async fn tick(&mut self) {
        self.check_tamper_of(TAMPER_PER_TICK);
        let now = Instant::now();
        let mut due = Vec::new();
        let mut gone = Vec::new();
        for (name, slot) in &self.slots {
            match &slot.state {
                State::Waiting { next_try, .. } if *next_try <= now => due.push(name.clone()),
                State::Waiting { .. } => {}
                State::Enforcing(s) => {
                    let path = s.enforcer().cgroup();
                    if cgroup::id(path).ok() != Some(s.enforcer().sandbox_id()) {
                        gone.push(name.clone());
                    }
                }
            }
        }
        for name in gone {
            tracing::info!(sandbox = name.as_str(), "its cgroup is gone");
            if let Err(e) = self.stop(&name) {
                tracing::warn!(sandbox = name.as_str(), "{e}");
            }
            match self.slots.get(&name).map(|s| &s.origin) {
                Some(Origin::Control(_)) => {
                    self.slots.remove(&name);
                    self.save_runtime();
                }
                // A container's next start is a new sandbox (Docker says when).
                Some(Origin::Container { .. } | Origin::Child { .. }) => {
                    self.slots.remove(&name);
                }
                _ => {}
            }
        }
        for name in due {
            self.try_start(&name).await;
        }
        self.retry_standins().await;
        // A sandbox another version still enforced may be ours now.
        self.retire_other_versions();
        // Sandboxes attached before their first process (pods): their DNS proxy moves into
        // the processes' network namespace once there are some.
        let dp = &mut self.dp;
        for (name, slot) in &mut self.slots {
            if let State::Enforcing(s) = &mut slot.state {
                // Learned addresses expire here, for every sandbox at once.
                if let Err(e) = s.sweep(dp) {
                    tracing::warn!(sandbox = name.as_str(), "{e}");
                }
                if s.netns_pending()
                    && let Err(e) = s.settle_netns(dp)
                {
                    tracing::warn!(sandbox = name.as_str(), "{e}");
                }
            }
        }
        self.publish();
    }

    /// Wait for DNS to change what one of the sandboxes allows. Cancel-safe.
    pub async fn next_change(&mut self) -> (String, Change) {
        let waits: Vec<_> = self
            .slots
            .iter_mut()
            .filter_map(|(name, slot)| match &mut slot.state {
                State::Enforcing(s) => {
                    Some(Box::pin(async move { (name.clone(), s.next_change().await) }))
                }
                State::Waiting { .. } => None,
            })
            .collect();
        if waits.is_empty() {
            return std::future::pending().await;
        }
        select_all(waits).await.0
    }

    /// Apply a sandbox's DNS change. Returns whether what metrics show of it (its entry
    /// counts) changed: a sweep that expired nothing needs no new snapshot (every sandbox
    /// sweeps once a second; publishing each would be quadratic in the sandboxes).
    pub fn apply(&mut self, name: &str, change: Change) -> bool {
        let Some(Slot { state: State::Enforcing(s), .. }) = self.slots.get_mut(name) else {
            return false;
        };
        let before = s.enforcer().entry_counts();
        if let Err(e) = s.apply(&mut self.dp, change) {
            tracing::warn!(sandbox = name, "{e}");
        }
        s.enforcer().entry_counts() != before
    }

    /// The files the configuration was read from.
    pub fn config_files(&self) -> &[PathBuf] {
        &self.config.files
    }

    /// Re-read the configuration: validated as a whole first (an invalid file changes
    /// nothing), then applied sandbox by sandbox.
    pub async fn reload(&mut self, why: &str) -> Result<String> {
        let result = self.reload_inner().await;
        match &result {
            Ok(summary) => {
                tracing::info!("{why}: reloaded {}: {summary}", self.config.path.display())
            }
            Err(e) => {
                self.reload_failures += 1;
                tracing::error!("{why}: keeping the previous configuration: {e}");
            }
        }
        self.publish();
        result
    }

    async fn reload_inner(&mut self) -> Result<String> {
        let new = config::load(&self.config.path).map_err(crate::policy::PolicyError::from)?;
        for (name, p) in &new.policies {
            p.compile(&Default::default(), &[])
                .map_err(|e| Error::Reload(format!("policy {name:?}: {e}")))?;
        }
        if new.pin_root != self.config.pin_root
            || new.metrics_addr != self.config.metrics_addr
            || new.control_socket != self.config.control_socket
            || new.events != self.config.events
        {
            tracing::warn!(
                "pin_root, metrics_addr, control_socket and events take effect at the next start"
            );
        }
        let (mut added, mut changed, mut removed, mut problems) = (0, 0, 0, Vec::new());
        let wanted: BTreeSet<&String> = new.sandboxes.iter().map(|s| &s.name).collect();
        let dropped: Vec<String> = self
            .slots
            .iter()
            .filter(|(n, s)| s.origin == Origin::Config && !wanted.contains(n))
            .map(|(n, _)| n.clone())
            .collect();
        let old = std::mem::replace(&mut self.config, new);
        for s in self.config.sandboxes.clone() {
            let policy = self.config.policies[&s.policy].clone();
            let existing =
                self.slots.get(&s.name).map(|slot| (slot.cgroup.clone(), slot.origin.clone()));
            match existing {
                None => {
                    self.add_config_slot(&s);
                    self.try_start(&s.name).await;
                    added += 1;
                }
                Some((cgroup, origin)) if cgroup != s.cgroup || origin != Origin::Config => {
                    if let Err(e) = self.stop(&s.name) {
                        problems.push(format!("{}: {e}", s.name));
                    }
                    self.add_config_slot(&s);
                    self.try_start(&s.name).await;
                    changed += 1;
                }
                Some(_) => match self.set_policy(&s.name, s.policy.clone(), policy, None).await {
                    Ok(true) => changed += 1,
                    Ok(false) => {}
                    Err(e) => {
                        problems.push(format!("{}: {e}; it keeps its previous policy", s.name))
                    }
                },
            }
        }
        for name in dropped {
            if let Err(e) = self.stop(&name) {
                problems.push(format!("{name}: {e}"));
            }
            self.slots.remove(&name);
            removed += 1;
        }
        drop(old);
        // Containers and pods: other selectors, policies or parents may apply now.
        changed += self.reconcile_containers().await;
        changed += self.reconcile_pods().await;
        let summary = format!("{added} sandboxes added, {changed} changed, {removed} removed");
        if problems.is_empty() {
            Ok(summary)
        } else {
            Err(Error::Reload(format!("{summary}, but:\n  {}", problems.join("\n  "))))
        }
    }

    fn resolve_policy(&self, r: &PolicyRef) -> Result<(String, Policy)> {
        match r {
            PolicyRef::Named(n) => match self.config.policies.get(n) {
                Some(p) => Ok((n.clone(), p.clone())),
                None => Err(Error::Reload(format!(
                    "no policy named {n:?} in {} (defined: {})",
                    self.config.path.display(),
                    self.config.policies.keys().cloned().collect::<Vec<_>>().join(", ")
                ))),
            },
            PolicyRef::Inline { yaml, source } => {
                let p = crate::policy::file::parse(yaml, source)
                    .map_err(crate::policy::PolicyError::from)?;
                Ok((source.display().to_string(), p))
            }
        }
    }

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
            Request::Detach { name, cgroup } => match self.detach(name, cgroup) {
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
        if self.slots.contains_key(&name) {
            return Err(Error::Reload(format!("there is already a sandbox named {name:?}")));
        }
        let (policy_name, p) = self.resolve_policy(&policy)?;
        p.compile(&Default::default(), &[])?;
        let path = self.resolve(&cgroup);
        cgroup::validate(&path)?;
        self.slots.insert(
            name.clone(),
            Slot::new(cgroup.clone(), policy_name, p, Origin::Control(policy)),
        );
        self.try_start(&name).await;
        match &self.slots[&name].state {
            State::Enforcing(s) => {
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
            State::Waiting { why, .. } => {
                let why = why.clone();
                self.slots.remove(&name);
                Err(Error::Reload(why))
            }
        }
    }

    fn detach(&mut self, name: Option<String>, cgroup: Option<PathBuf>) -> Result<String> {
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
        if slot.origin == Origin::Config {
            return Err(Error::Reload(format!(
                "sandbox {name:?} comes from {}; remove it there and reload",
                self.config.path.display()
            )));
        }
        self.stop(&name)?;
        self.slots.remove(&name);
        self.save_runtime();
        Ok(format!("detached sandbox {name:?}"))
    }

    fn save_runtime(&self) {
        let list: Vec<Attached> = self
            .slots
            .iter()
            .filter_map(|(name, s)| match &s.origin {
                Origin::Control(policy) => Some(Attached {
                    name: name.clone(),
                    cgroup: s.cgroup.clone(),
                    policy: policy.clone(),
                }),
                _ => None,
            })
            .collect();
        if list.is_empty() && !self.runtime_file.exists() {
            return;
        }
        if let Err(e) = runtime::save(&self.runtime_file, &list) {
            tracing::error!("saving {}: {e}", self.runtime_file.display());
        }
    }

    pub fn status(&self) -> Status {
        // One walk of STATS for every sandbox.
        let (mut counts_of, stats_entries) = self.dp.counts_by_sandbox().unwrap_or_default();
        let sandboxes = self
            .slots
            .iter()
            .map(|(name, slot)| {
                let mut s = SandboxStatus {
                    name: name.clone(),
                    cgroup: self.resolve(&slot.cgroup),
                    policy: slot.policy_name.clone(),
                    mode: slot.policy.mode.name().to_owned(),
                    dns_mode: slot.policy.dns.mode.name().to_owned(),
                    origin: match slot.origin {
                        Origin::Config => "config".into(),
                        Origin::Control(_) => "control".into(),
                        Origin::Container { .. } => "container".into(),
                        Origin::Child { .. } => "child".into(),
                        Origin::Pod => "pod".into(),
                    },
                    container: slot.container.as_ref().map(|c| c.short_id().to_owned()),
                    ..SandboxStatus::default()
                };
                match &slot.state {
                    State::Enforcing(sb) => {
                        let id = sb.enforcer().sandbox_id();
                        let counts = sb.with_dns(counts_of.remove(&id).unwrap_or_default());
                        let (v4, v6) = sb.enforcer().entry_counts();
                        s.state = "enforcing".into();
                        s.cgroup_id = Some(sb.enforcer().sandbox_id());
                        s.adopted = sb.enforcer().adopted();
                        s.allowed = counts.allowed;
                        s.blocked = counts.blocked;
                        s.would_block = counts.would_block;
                        s.events_lost = counts.events_lost;
                        s.dns_refused = counts.dns_refused;
                        s.tampered = self.tamper.get(name).copied().unwrap_or(0);
                        (s.entries_v4, s.entries_v6) = (v4, v6);
                    }
                    State::Waiting { why, .. } => {
                        s.state = "waiting".into();
                        s.detail = Some(why.clone());
                    }
                }
                s
            })
            .collect::<Vec<_>>();
        let not_enforcing = self.not_enforcing();
        let mut sandboxes = sandboxes;
        for n in &not_enforcing {
            if let Some(s) = sandboxes.iter_mut().find(|s| s.name == n.sandbox) {
                s.problem = Some(format!("{}: {}", n.reason, n.detail));
            }
        }
        let maps = crate::metrics::map_usage(&self.gauges(), stats_entries)
            .into_iter()
            .map(|(map, entries, capacity)| MapUsage { map: map.to_owned(), entries, capacity })
            .collect();
        let kernel_lost =
            self.dp.maps_ref().global().map(|g| g[GLOBAL_EVENTS_LOST as usize]).unwrap_or(0);
        Status {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            config: self.config.path.clone(),
            pin_root: self.root.path.clone(),
            ready: !not_enforcing.iter().any(crate::metrics::NotEnforcing::blocks_ready),
            programs_adopted: self.dp.programs_adopted(),
            sandboxes,
            maps,
            events_lost: kernel_lost + self.dp.injected_lost(),
            kernel_gaps: crate::datapath::gaps(self.dp.missing(), &[]),
            landlock: Some(crate::confine::Landlock::describe()),
        }
    }

    fn gauges(&self) -> Vec<SandboxGauges> {
        self.enforcing()
            .map(|(name, s)| SandboxGauges {
                labels: self.metric_labels(name),
                name: name.clone(),
                cgroup_id: s.enforcer().sandbox_id(),
                entries_v4: s.enforcer().entry_counts().0,
                entries_v6: s.enforcer().entry_counts().1,
                dns: s.dns_stats().cloned(),
                link_ids: s.enforcer().link_ids(),
            })
            .collect()
    }

    /// The labels naming a sandbox in metrics: its name; a container's id; a pod's namespace
    /// and name, or only its namespace if per-pod metrics are off.
    fn metric_labels(&self, name: &str) -> Vec<(&'static str, String)> {
        let slot = &self.slots[name];
        if let Some(p) = &slot.pod {
            let per_pod = self.config.kubernetes.as_ref().is_none_or(|k| k.pod_metrics);
            return if per_pod {
                vec![
                    ("sandbox", name.to_owned()),
                    ("namespace", p.namespace.clone()),
                    ("pod", p.name.clone()),
                ]
            } else {
                vec![("namespace", p.namespace.clone())]
            };
        }
        let mut labels = vec![("sandbox", name.to_owned())];
        if let Some(c) = &slot.container {
            labels.push(("container_id", c.short_id().to_owned()));
        }
        labels
    }

    /// Hand metrics what changed.
    pub fn publish(&self) {
        let sandboxes = self.gauges();
        self.shared.publish(Snapshot {
            waiting: self.slots.len() - sandboxes.len(),
            sandboxes,
            attach_errors: self.attach_errors.clone(),
            reload_failures: self.reload_failures,
            tamper: self.tamper.clone(),
            not_enforcing: self.not_enforcing(),
        });
    }

    /// Stop supervising, leaving every sandbox enforced by its pins (a restarted daemon
    /// re-adopts them), and deliver the events still queued.
    pub async fn shutdown(self) -> Result<()> {
        let Self { dp, slots, global, .. } = self;
        if let Some(g) = global {
            g.leave_pinned();
        }
        let n = slots.values().filter(|s| matches!(s.state, State::Enforcing(_))).count();
        for slot in slots.into_values() {
            if let State::Enforcing(s) = slot.state {
                s.leave_pinned();
            }
        }
        tracing::info!("stopping; {n} sandboxes stay enforced by their pins");
        dp.finish().await.map(drop)
    }
}

impl Slot {
    /// Not enforcing yet.
    pub(super) fn new(
        cgroup: PathBuf,
        policy_name: String,
        policy: Policy,
        origin: Origin,
    ) -> Self {
        Self {
            cgroup,
            policy_name,
            policy,
            origin,
            container: None,
            pod: None,
            create: false,
            state: State::Waiting {
                why: "not started".into(),
                next_try: Instant::now(),
                failed: false,
            },
            policy_missing: None,
            standin: None,
        }
    }
}

/// Why a sandbox did not start.
pub(super) enum NotStarted {
    /// Its cgroup is not there (yet): not an error.
    Missing(String),
    Failed(Error),
}
use NotStarted::{Failed, Missing};

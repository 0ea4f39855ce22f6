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

use tokio::sync::mpsc;

use super::{
    config::{self, Config},
    control::PolicyRef,
    reconcile::{Have, Key, Wanted},
    runtime::{self, Attached},
};
use crate::{
    bpf::{Attachment, PinRoot, hooks::Scope},
    cgroup,
    cgroup::watch::CgroupWatch,
    datapath::Datapath,
    docker::{Container, Lifecycle},
    enforcer::LinkPins,
    error::{Error, Result},
    events::{Identity, PodName},
    kubernetes::{Pod, PodEvent},
    metrics::Shared,
    policy::Policy,
    sandbox::{Change, NsChoice, Sandbox, Spec},
};

/// Sandboxes whose links the once-a-second tamper check looks at (all of them up to this
/// many; beyond, each every `n / TAMPER_PER_TICK` seconds: 4000 every half minute). A few
/// syscalls per link: this is most of an idle daemon's CPU. `status` checks all.
const TAMPER_PER_TICK: usize = 128;
/// How soon a sandbox whose cgroup is missing is looked for again.
const MISSING_RETRY: Duration = Duration::from_secs(1);
/// How long the start waits for Docker's list of running containers.
const DOCKER_WAIT: Duration = Duration::from_secs(5);

pub struct Supervisor {
    pub(super) dp: Datapath,
    pub(super) root: PinRoot,
    pub(super) mount: PathBuf,
    pub(super) config: Config,
    /// The policies sandboxes name (taken out of `config`).
    pub(super) policies: super::policies::Policies,
    /// The store's generation the last converge saw.
    pub(super) converged_at: u64,
    pub(super) slots: BTreeMap<String, Slot>,
    /// cgroup id -> policy id, for every cgroup that has (or may have) entries in the maps.
    pub(super) ids: BTreeMap<u64, u32>,
    pub(super) shared: Arc<Shared>,
    pub(super) runtime_file: PathBuf,
    pub(super) attach_errors: BTreeMap<String, u64>,
    pub(super) reload_failures: u64,
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
    pub(super) tamper: BTreeMap<String, u64>,
    /// Where the next partial tamper check starts.
    pub(super) tamper_cursor: usize,
    /// Pin trees of other versions that still enforce cgroups this daemon does not, as last
    /// said (upgrade.rs).
    pub(super) kept_by_other_versions: BTreeSet<(PathBuf, Vec<u64>)>,
    /// The sandboxes attached through the control socket (a source; kept in `runtime_file`).
    pub(super) attached: Vec<Attached>,
    /// Files held back so that a stand-in can attach when the limit is reached.
    pub(super) reserve: super::closed::Reserve,
    /// The signature of the last snapshot published (report.rs).
    pub(super) published: std::cell::Cell<u64>,
    /// The signature of the sandboxes when the cgroup watches were last set (report.rs).
    pub(super) watched: std::cell::Cell<u64>,
    /// Cgroups that are not watched: the tick looks at them (cgroups.rs).
    pub(super) polled: std::collections::HashSet<PathBuf>,
    /// Where the next backstop slice of cgroups starts (cgroups.rs).
    pub(super) backstop_cursor: usize,
}

pub(super) struct Slot {
    /// What its source knows it by (see reconcile.rs).
    pub(super) key: Key,
    /// As configured: absolute, or relative to the cgroup2 mount.
    pub(super) cgroup: PathBuf,
    pub(super) policy_name: String,
    pub(super) policy: Arc<Policy>,
    pub(super) origin: Origin,
    /// The Docker container it is.
    pub(super) container: Option<Container>,
    /// The Kubernetes pod it is.
    pub(super) pod: Option<Pod>,
    /// Create the cgroup if it is missing.
    pub(super) create: bool,
    pub(super) state: State,
    /// The policy name it was given does not exist (where the name came from): it is
    /// given `Policy::deny_all` instead.
    pub(super) policy_missing: Option<String>,
    /// Its own policy failed to start: it enforces deny-all meanwhile (see closed.rs).
    pub(super) standin: Option<super::closed::Standin>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Origin {
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
        mut config: Config,
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
            policies: super::policies::Policies::new(std::mem::take(&mut config.policies)),
            converged_at: 0,
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
            attached: Vec::new(),
            reserve: super::closed::Reserve::new(),
            published: std::cell::Cell::new(0),
            watched: std::cell::Cell::new(0),
            polled: std::collections::HashSet::new(),
            backstop_cursor: 0,
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
        self.attached = runtime::load(&self.runtime_file);
        self.drop_shadowed_attaches();
        // What the pinned maps hold, read once for every sandbox re-adopted now.
        if let Err(e) = self.dp.maps_ref().snapshot_entries() {
            tracing::warn!("{e}");
        }
        self.converge().await;
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
        self.dp.maps_ref().drop_snapshot();
        // Ours are attached: now the links of other versions go (make before break).
        self.retire_other_versions();
        self.collect_garbage();
        self.save_runtime();
        self.publish();
    }

    pub(super) fn resolve(&self, cgroup: &Path) -> PathBuf {
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
        let policy = Policy::clone(&slot.policy);
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
        // Its series go with it (names come and go with containers and pods).
        self.attach_errors.remove(name);
        self.tamper.remove(name);
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

    /// Once a second: look at the cgroups that are not watched (attach sandboxes whose
    /// cgroup appeared, let go of those whose cgroup went; see cgroups.rs), retry what
    /// failed, and expire learned addresses.
    pub async fn tick(&mut self, cgroups: &mut CgroupWatch) {
        self.reserve.fill();
        self.check_tamper_of(TAMPER_PER_TICK);
        self.look_at_unwatched().await;
        self.retry_standins().await;
        // A sandbox another version still enforced may be ours now.
        self.retire_other_versions();
        let dp = &mut self.dp;
        for (name, slot) in &mut self.slots {
            if let State::Enforcing(s) = &mut slot.state {
                // Learned addresses expire here, for every sandbox at once.
                if let Err(e) = s.sweep(dp) {
                    tracing::warn!(sandbox = name.as_str(), "{e}");
                }
            }
        }
        self.publish_and_watch_if_changed(cgroups);
    }

    /// Wait for DNS to change what one of the sandboxes allows. Cancel-safe.
    pub async fn next_change(&mut self) -> (String, Change) {
        let waits: Vec<_> = self
            .slots
            .iter_mut()
            .filter_map(|(name, slot)| match &mut slot.state {
                // Only resolver-mode sandboxes bring changes here (the others' learners apply
                // their own): a wait over thousands of idle futures is built on every turn.
                State::Enforcing(s) if s.follows_names() => {
                    Some(Box::pin(async move { (name.clone(), s.next_change().await) }))
                }
                State::Enforcing(_) | State::Waiting { .. } => None,
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
        let mut new = config::load(&self.config.path).map_err(crate::policy::PolicyError::from)?;
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
        self.policies.replace(std::mem::take(&mut new.policies));
        let old = std::mem::replace(&mut self.config, new);
        self.drop_shadowed_attaches();
        let done = self.converge().await;
        drop(old);
        let super::wanted::Converged { added, changed, removed, problems } = done;
        let summary = format!("{added} sandboxes added, {changed} changed, {removed} removed");
        if problems.is_empty() {
            Ok(summary)
        } else {
            Err(Error::Reload(format!("{summary}, but:\n  {}", problems.join("\n  "))))
        }
    }

    pub(super) fn resolve_policy(&self, r: &PolicyRef) -> Result<(String, Arc<Policy>)> {
        match r {
            PolicyRef::Named(n) => match self.policies.get(n) {
                Some(p) => Ok((n.clone(), p.clone())),
                None => Err(Error::Reload(format!(
                    "no policy named {n:?} in {} (defined: {})",
                    self.config.path.display(),
                    self.policies.names()
                ))),
            },
            PolicyRef::Inline { yaml, source } => {
                let p = crate::policy::file::parse(yaml, source)
                    .map_err(crate::policy::PolicyError::from)?;
                Ok((source.display().to_string(), Arc::new(p)))
            }
        }
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
    pub(super) fn from_wanted(w: Wanted) -> Self {
        Self {
            key: w.key,
            cgroup: w.cgroup,
            policy_name: w.policy_name,
            policy: w.policy,
            origin: w.origin,
            container: w.container,
            pod: w.pod,
            create: w.create,
            state: State::Waiting {
                why: "not started".into(),
                next_try: Instant::now(),
                failed: false,
            },
            policy_missing: w.policy_missing,
            standin: None,
        }
    }

    /// What reconciling compares.
    pub(super) fn have<'a>(&'a self, name: &'a str) -> Have<'a> {
        Have {
            key: &self.key,
            name,
            cgroup: &self.cgroup,
            origin: &self.origin,
            policy_name: &self.policy_name,
            policy: &self.policy,
            policy_missing: self.policy_missing.as_deref(),
            container: self.container.as_ref(),
            pod: self.pod.as_ref(),
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

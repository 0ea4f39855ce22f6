//! Failing closed. A sandbox whose cgroup exists is never left open because something about
//! its policy went wrong: a policy name that resolves to nothing gets `Policy::deny_all`
//! (reported), a policy that fails to start is replaced by deny-all until it starts (retried
//! with backoff), and a policy that cannot be applied in place (another DNS mode) is started
//! anew under the pinned links, which keep enforcing the old one meanwhile. What is not
//! enforcing as configured is listed for `/readyz` and the metrics.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use super::supervisor::{NotStarted, Slot, State, Supervisor};
use crate::{
    enforcer::LinkPins,
    error::Result,
    events::{EventRecord, Identity},
    metrics::NotEnforcing,
    policy::{Mode, Policy},
};

/// A failed start is tried again after this, doubling up to `STANDIN_MAX_DELAY`.
const STANDIN_FIRST_DELAY: Duration = Duration::from_secs(5);
const STANDIN_MAX_DELAY: Duration = Duration::from_secs(60);

/// Files held back for the stand-in: when the open-files limit is reached (a sandbox's DNS
/// proxy took the last ones), denying everything still needs a few for a moment (the cgroup,
/// a link at a time); the sockets of a proxy that failed to start are closed only later.
pub(in crate::daemon) struct Reserve(Vec<std::fs::File>);

const RESERVE: usize = 8;

impl Reserve {
    pub(in crate::daemon) fn new() -> Self {
        let mut r = Self(Vec::new());
        r.fill();
        r
    }

    /// Hold `RESERVE` files again, as far as the limit allows.
    pub(in crate::daemon) fn fill(&mut self) {
        while self.0.len() < RESERVE {
            match std::fs::File::open("/dev/null") {
                Ok(f) => self.0.push(f),
                Err(_) => break,
            }
        }
    }

    fn release(&mut self) {
        self.0.clear();
    }
}

/// Deny-all standing in for a policy that failed to start.
pub(in crate::daemon) struct Standin {
    why: String,
    next_try: Instant,
    delay: Duration,
}

/// The deny-all policy in the sandbox's mode (an audit sandbox reports, still allows).
pub(in crate::daemon) fn deny_all(mode: Mode) -> Policy {
    Policy { mode, ..Policy::deny_all() }
}

impl Supervisor {
    /// Its own policy failed to start on a cgroup that exists: deny everything meanwhile.
    pub(super) async fn stand_in(
        &mut self,
        name: &str,
        path: &Path,
        pins: LinkPins,
        identity: Identity,
        why: String,
    ) -> State {
        let Some(slot) = self.slots.get(name) else {
            return State::Waiting { why, next_try: Instant::now(), failed: true };
        };
        let delay = slot
            .standin
            .as_ref()
            .map_or(STANDIN_FIRST_DELAY, |s| (s.delay * 2).min(STANDIN_MAX_DELAY));
        let policy = deny_all(slot.policy.mode);
        self.reserve.release();
        let started = self.start_on(name, path, policy, pins, identity).await;
        self.reserve.fill();
        match started {
            Ok(mut sb) => {
                sb.sweep_externally();
                tracing::error!(
                    sandbox = name,
                    "denying all of its egress until its policy starts (next try in {delay:?})"
                );
                if let Some(slot) = self.slots.get_mut(name) {
                    slot.standin = Some(Standin { why, next_try: Instant::now() + delay, delay });
                }
                State::Enforcing(Box::new(sb))
            }
            Err(NotStarted::Missing(w)) => {
                State::Waiting { why: w, next_try: Instant::now() + delay, failed: false }
            }
            Err(NotStarted::Failed(e)) => {
                tracing::error!(sandbox = name, "and even denying everything failed: {e}");
                State::Waiting { why, next_try: Instant::now() + delay, failed: true }
            }
        }
    }

    /// Once a tick: try the policies that deny-all stands in for again.
    pub(super) async fn retry_standins(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| s.standin.as_ref().is_some_and(|st| st.next_try <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            self.restart_pinned(&name).await;
        }
    }

    /// Start a sandbox anew with its slot's policy while its pinned links keep enforcing what
    /// it had: the new start adopts them and rewrites its entries in place (no gap), or
    /// deny-all stands in.
    pub(super) async fn restart_pinned(&mut self, name: &str) {
        let Some(slot) = self.slots.get_mut(name) else { return };
        let old = std::mem::replace(
            &mut slot.state,
            State::Waiting { why: "restarting".into(), next_try: Instant::now(), failed: true },
        );
        if let State::Enforcing(sb) = old {
            sb.leave_pinned();
        }
        self.try_start(name).await;
    }

    /// Give a sandbox another policy (a reload, a relabelled pod): applied in place, or, when
    /// that cannot be done (another DNS mode), by a start anew under its pins. `missing` says
    /// where a name came from that resolves to no policy (`policy` is deny-all then). Returns
    /// whether it changed; an error when the new policy could not be applied (the old one
    /// stays).
    pub(super) async fn set_policy(
        &mut self,
        name: &str,
        policy_name: String,
        policy: Arc<Policy>,
        missing: Option<String>,
    ) -> Result<bool> {
        let Some(slot) = self.slots.get_mut(name) else { return Ok(false) };
        if slot.policy_name == policy_name
            && (Arc::ptr_eq(&slot.policy, &policy) || slot.policy == policy)
            && slot.policy_missing == missing
        {
            return Ok(false);
        }
        let newly_missing = missing.is_some() && slot.policy_missing != missing;
        let restart = match &mut slot.state {
            State::Enforcing(sb) if sb.policy().dns.mode != policy.dns.mode => true,
            State::Enforcing(sb) if slot.standin.is_none() => {
                sb.reload(&mut self.dp, Policy::clone(&policy)).await?;
                false
            }
            // A stand-in, or not started: the next start takes the new policy.
            State::Enforcing(_) => true,
            State::Waiting { .. } => false,
        };
        slot.policy_name = policy_name;
        slot.policy = policy;
        slot.policy_missing = missing;
        if restart {
            self.restart_pinned(name).await;
        } else if newly_missing && matches!(slot.state, State::Enforcing(_)) {
            self.report_missing(name);
        }
        Ok(true)
    }

    /// Say (an event) that an enforcing sandbox got deny-all for a policy that is not there.
    /// The error line was logged when the sandbox got it (wanted.rs).
    pub(super) fn report_missing(&self, name: &str) {
        let Some(slot) = self.slots.get(name) else { return };
        let (Some(source), State::Enforcing(sb)) = (&slot.policy_missing, &slot.state) else {
            return;
        };
        let id = sb.enforcer().sandbox_id();
        let audit = slot.policy.mode == Mode::Audit;
        self.dp.injector().send(EventRecord::policy_missing(
            &slot.policy_name,
            source,
            id,
            audit,
            self.dp.labels(),
        ));
    }

    /// The sandboxes that do not enforce their policy as configured, and why.
    pub(super) fn not_enforcing(&self) -> Vec<NotEnforcing> {
        self.slots
            .iter()
            .filter_map(|(name, slot)| {
                let (reason, detail) = problem(slot)?;
                Some(NotEnforcing { sandbox: name.clone(), reason, detail })
            })
            .collect()
    }
}

/// Why a slot does not enforce its policy as configured (a cgroup that is not there yet has
/// nothing to enforce on: not a problem).
fn problem(slot: &Slot) -> Option<(&'static str, String)> {
    match &slot.state {
        State::Waiting { why, failed: true, .. } => Some(("attach_failed", why.clone())),
        State::Waiting { .. } => None,
        State::Enforcing(sb) => {
            if let Some(s) = &slot.standin {
                Some(("deny_all_stand_in", format!("its policy failed to start: {}", s.why)))
            } else if let Some(source) = &slot.policy_missing {
                Some((
                    "policy_missing",
                    format!("{source} names policy {:?}, which does not exist", slot.policy_name),
                ))
            } else {
                sb.problem().map(|p| ("dns_proxy_unplaced", p))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::supervisor::Origin;

    #[test]
    fn only_a_cgroup_that_exists_and_failed_is_open() {
        let mut slot = Slot::from_wanted(crate::daemon::reconcile::Wanted {
            key: crate::daemon::reconcile::Key::Config("a".into()),
            name: "a".into(),
            cgroup: "a".into(),
            origin: Origin::Config,
            create: false,
            policy_name: "web".into(),
            policy: Policy::default().into(),
            policy_missing: None,
            container: None,
            pod: None,
        });
        assert_eq!(problem(&slot), None, "not started: its cgroup is not there yet");
        slot.state =
            State::Waiting { why: "map full".into(), next_try: Instant::now(), failed: true };
        assert_eq!(problem(&slot), Some(("attach_failed", "map full".to_owned())));
        slot.policy_missing = Some("a label".into());
        slot.state =
            State::Waiting { why: "no cgroup".into(), next_try: Instant::now(), failed: false };
        assert_eq!(problem(&slot), None, "nothing to enforce on yet");
    }

    #[test]
    fn a_missing_policy_does_not_take_the_agent_out_of_service() {
        let n = |reason| NotEnforcing { sandbox: "s".into(), reason, detail: String::new() };
        assert!(!n("policy_missing").blocks_ready());
        for r in ["attach_failed", "deny_all_stand_in", "dns_proxy_unplaced"] {
            assert!(n(r).blocks_ready(), "{r}");
        }
    }

    #[test]
    fn deny_all_allows_nothing_not_even_dns() {
        let p = deny_all(Mode::Audit);
        assert_eq!(p.mode, Mode::Audit);
        assert!(p.allow.is_empty() && p.dns.servers == Some(Vec::new()));
        let c = p.compile(&Default::default(), &[]).expect("compiles");
        assert!(c.entries.is_empty(), "{c:?}");
    }
}

//! What a sandbox says: how its names resolved (resolver mode), what was tampered with.

use std::collections::BTreeSet;

use crate::{
    datapath::Datapath,
    policy::Policy,
    resolve::{Follower, NameUpdate, Status},
};

/// Say what was tampered with: an error line and an event each.
pub fn report_tampering(
    dp: &Datapath,
    name: &str,
    sandbox_id: u64,
    found: &[crate::bpf::attach::Tampering],
) {
    for t in found {
        let outcome = match (t.repaired, t.what) {
            (false, _) => "NOT put right",
            (true, crate::bpf::attach::TamperKind::Detached) => "attached again",
            (true, crate::bpf::attach::TamperKind::Unpinned) => "pinned again",
            (true, crate::bpf::attach::TamperKind::Replaced) => "netcontrol's program put back",
        };
        tracing::error!(
            sandbox = name,
            "tampering: the {} link was {} behind netcontrol's back; {outcome}",
            t.hook,
            t.what.said()
        );
        dp.injector().send(crate::events::EventRecord::tamper(t, sandbox_id, dp.labels()));
    }
}

/// Say what changed about names, as a user needs to hear it.
pub(super) fn report(sandbox: &str, updates: &[NameUpdate]) {
    for u in updates {
        let n = u.ips.len();
        match &u.status {
            Status::Pending => {}
            Status::Resolved => {
                tracing::info!(sandbox, "{}: {n} address{} allowed", u.name, plural(n))
            }
            Status::NoSuchName => tracing::warn!(
                sandbox,
                "{}: no such domain (NXDOMAIN); {}",
                u.name,
                keeping(n, "nothing is allowed for it")
            ),
            Status::NoAddresses => tracing::warn!(
                sandbox,
                "{}: the name has no A or AAAA records; {}",
                u.name,
                keeping(n, "nothing is allowed for it")
            ),
            Status::Failing { error } => tracing::warn!(
                sandbox,
                "{}: DNS lookup failed ({error}); {}",
                u.name,
                keeping(n, "nothing is allowed for it yet")
            ),
        }
        if u.dropped_by_cap > 0 {
            tracing::warn!(
                sandbox,
                "{}: its answers hold more addresses than dns.max_ips_per_name allows; {} dropped so far (least recently seen first)",
                u.name,
                u.dropped_by_cap
            );
        }
    }
}

fn keeping(n: usize, otherwise: &str) -> String {
    if n == 0 {
        format!("{otherwise}; retrying")
    } else {
        format!("keeping its {n} last known address{}", plural(n))
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "es" }
}

/// Names that got no answer at all within the start-up deadline.
pub(super) fn report_silent(follower: &Follower, names: &BTreeSet<String>) {
    for n in names.iter().filter(|n| !follower.statuses.contains_key(*n)) {
        tracing::warn!("{n}: no answer from DNS yet; nothing is allowed for it until one comes");
    }
}

pub(super) fn report_wildcards(policy: &Policy) {
    for w in policy.wildcards() {
        tracing::warn!(
            "{w}: wildcard rules cannot be resolved in advance, so in resolver mode they allow nothing; \
             use dns.mode: proxy (the default) for them"
        );
    }
}

//! The tamper check: links detached, unpinned or given another program behind the daemon's
//! back are put right, logged, counted and reported.

use super::supervisor::{State, Supervisor};

impl Supervisor {
    /// Look at every sandbox's links (and the global ones): what was detached or unpinned
    /// behind the daemon's back is attached or pinned again, logged, counted and reported.
    pub fn check_tamper(&mut self) {
        self.check_tamper_of(usize::MAX);
    }

    /// `check_tamper` for at most `most` sandboxes, going round: the once-a-second check of a
    /// node with thousands of sandboxes (a few syscalls per link each) takes a slice of them
    /// per tick, so each is still looked at every few seconds; `status` and scrapes check all.
    pub(super) fn check_tamper_of(&mut self, most: usize) {
        let dp = &mut self.dp;
        let n = self.slots.len();
        let (start, take) = if most >= n { (0, n) } else { (self.tamper_cursor % n, most) };
        self.tamper_cursor = start + take;
        let in_slice = |i: usize| (i + n - start) % n.max(1) < take;
        // What the kernel shows, looked at on every core first (reads only); what needs
        // putting right is then done here, one sandbox after the other.
        let enforcers: Vec<Option<&crate::enforcer::Enforcer>> = self
            .slots
            .values()
            .enumerate()
            .filter(|(i, _)| in_slice(*i))
            .map(|(_, slot)| match &slot.state {
                State::Enforcing(s) => Some(s.enforcer()),
                State::Waiting { .. } => None,
            })
            .collect();
        let mut looks = look_in_parallel(&enforcers).into_iter();
        for (_, (name, slot)) in self.slots.iter_mut().enumerate().filter(|(i, _)| in_slice(*i)) {
            let looked = looks.next().flatten();
            if let State::Enforcing(s) = &mut slot.state {
                let n = s.check_tamper_looked(dp, looked);
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
}

/// Sandboxes below this many are looked at on this thread: threads cost more than they save
/// (the tick's slice of `TAMPER_PER_TICK` stays here; `status` of thousands does not).
const PARALLEL_FROM: usize = 256;

/// `Enforcer::look` of each (None for None), spread over the machine's cores.
fn look_in_parallel(
    enforcers: &[Option<&crate::enforcer::Enforcer>],
) -> Vec<Option<crate::bpf::attach::Looked>> {
    let look = |e: &Option<&crate::enforcer::Enforcer>| e.and_then(|e| e.look());
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(8);
    if enforcers.len() < PARALLEL_FROM || threads < 2 {
        return enforcers.iter().map(look).collect();
    }
    let chunk = enforcers.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = enforcers
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(look).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            // A thread that panicked looked at nothing: its sandboxes are checked one by one.
            .zip(enforcers.chunks(chunk))
            .flat_map(|(h, part)| h.join().unwrap_or_else(|_| part.iter().map(|_| None).collect()))
            .collect()
    })
}

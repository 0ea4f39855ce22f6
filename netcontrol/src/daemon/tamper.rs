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
}

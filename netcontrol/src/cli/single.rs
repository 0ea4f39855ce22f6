//! One sandbox on a datapath of its own: what `run` and `attach` share.

use std::path::Path;

use super::KernelArgs;
use crate::{
    datapath::{Counts, Datapath},
    error::Result,
    events::{Labels, Sink},
    policy::Policy,
    sandbox::{NsChoice, Sandbox, Spec},
};

/// This process's programs serve one sandbox, so one policy id.
const POLICY_ID: u32 = 1;

pub struct Single {
    pub dp: Datapath,
    pub sandbox: Sandbox,
}

impl Single {
    /// Load the programs and enforce `policy` on `cgroup`.
    pub async fn start(
        cgroup: &Path,
        policy: Policy,
        sink: Sink,
        kernel: &KernelArgs,
        ns: NsChoice,
    ) -> Result<Self> {
        // A bad policy is reported before anything touches the kernel.
        policy.compile(&Default::default(), &[])?;
        let link_pins = kernel.link_pins()?;
        let mut dp = Datapath::load(&kernel.load_options(), None, sink, Labels::default())?;
        let spec = Spec {
            name: crate::cgroup::validate(cgroup)?.display().to_string(),
            cgroup: cgroup.to_owned(),
            policy,
            policy_id: POLICY_ID,
            link_pins,
            ns,
        };
        let sandbox = Sandbox::start(&mut dp, spec).await?;
        Ok(Self { dp, sandbox })
    }

    /// Wait for DNS to change what the policy allows, and apply it. Cancel-safe.
    pub async fn follow_dns(&mut self) -> Result<()> {
        let change = self.sandbox.next_change().await;
        self.sandbox.apply(&mut self.dp, change)
    }

    pub async fn reload(&mut self, policy: Policy) -> Result<()> {
        self.sandbox.reload(&mut self.dp, policy).await
    }

    /// Detach, deliver every queued event, and return the final counts and the sink.
    pub async fn stop(self) -> Result<(Counts, Sink)> {
        let Self { mut dp, sandbox } = self;
        let mut counts = sandbox.detach(&mut dp)?;
        let injected_lost = dp.injected_lost();
        let sink = dp.finish().await?;
        counts.events_lost += injected_lost;
        Ok((counts, sink))
    }
}

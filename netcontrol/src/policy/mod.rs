//! What a sandbox may reach: the policy model, rule syntax ([`rule`]) and the translation into
//! allow-trie entries ([`compile`]).

pub mod compile;
pub mod rule;

use netcontrol_common::abi::{SANDBOX_F_ALLOW_ICMP, SANDBOX_F_ALLOW_RAW, SANDBOX_F_AUDIT};

pub use self::{
    compile::{Entries, Grant, compile},
    rule::{Ports, Proto, Rule, RuleError, Target},
};

/// Enforce denies; audit only reports what enforce would deny.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
        }
    }
}

/// A sandbox's policy. Everything not allowed is denied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub allow: Vec<Rule>,
    /// Allow `SOCK_RAW` sockets (they bypass every address rule).
    pub allow_raw_sockets: bool,
    /// Allow ICMP/ICMPv6 datagram ("ping") sockets. Their `connect()` is judged by the address
    /// rules, but an unconnected `sendto()` on them is not visible to any cgroup hook.
    pub allow_icmp: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Rule(#[from] RuleError),
    #[error("domain rules are not supported yet ({rule}): allow the IP address or CIDR instead")]
    DomainUnsupported { rule: String },
    #[error("{0}")]
    Compile(#[from] compile::TooManyRanges),
}

impl Policy {
    /// The `SANDBOX_F_*` flags the kernel side sees.
    pub fn sandbox_flags(&self) -> u32 {
        let mut f = 0;
        if self.mode == Mode::Audit {
            f |= SANDBOX_F_AUDIT;
        }
        if self.allow_raw_sockets {
            f |= SANDBOX_F_ALLOW_RAW;
        }
        if self.allow_icmp {
            f |= SANDBOX_F_ALLOW_ICMP;
        }
        f
    }

    /// The address grants of this policy (domains are not resolved here).
    pub fn grants(&self) -> Result<Vec<Grant>, PolicyError> {
        self.allow
            .iter()
            .map(|r| match &r.target {
                Target::Net(net) => Ok(Grant { net: *net, proto: r.proto, ports: r.ports }),
                Target::Domain(_) => Err(PolicyError::DomainUnsupported { rule: r.to_string() }),
            })
            .collect()
    }

    /// What the kernel side needs: the sandbox flags and the allow-trie entries.
    pub fn compile(&self) -> Result<Compiled, PolicyError> {
        Ok(Compiled { flags: self.sandbox_flags(), entries: compile(&self.grants()?)? })
    }
}

/// A policy in the kernel's terms.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// `SANDBOX_F_*`
    pub flags: u32,
    pub entries: Entries,
}

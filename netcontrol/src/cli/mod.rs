//! The command line: `netcontrol run` and `netcontrol attach`.

pub mod attach;
pub mod attach_docker;
pub mod check_policy;
pub mod daemon;
pub mod detach;
pub mod run;
pub mod single;
pub mod status;
pub mod uninstall;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    bpf::{LoadOptions, PinRoot, pins::DEFAULT_ROOT},
    datapath::Counts,
    enforcer::LinkPins,
    events::Sink,
    policy::{Mode, Policy, Rule},
};

const ABOUT: &str = "Kernel-enforced egress allowlists for untrusted code";

const LONG_ABOUT: &str = "\
netcontrol decides, in the kernel, every outbound connection attempt of the processes in a
sandbox cgroup: TCP and UDP connect(), unconnected UDP sendto()/sendmsg()/sendmmsg(), TCP Fast
Open, IPv4-mapped IPv6, raw and ICMP sockets, socket families beyond IP, source routes and
IPv6 routing headers, listeners. Everything not allowed fails at once with EPERM (\"Operation
not permitted\"), whatever the language or library, and every blocked attempt is reported.

Rules (--allow RULE, repeatable):
  10.0.0.0/8                  every port and protocol in a network
  127.0.0.11:8080             one address and port (TCP or UDP)
  10.0.0.0/8:8000-8100/tcp    a port range, TCP only
  [::1]:443  2001:db8::/32    IPv6 (brackets when a port is given)
  10.0.0.0/8/udp              every port, UDP only
  api.github.com:443          a domain, resolved and followed in DNS
  *.example.com  **.example.com   wildcards: one label / one or more (need DNS-aware mode)
Cloud metadata addresses (169.254.169.254, fd00:ec2::254, ...), link-local networks and
0.0.0.0/:: stay blocked under broad rules such as 0.0.0.0/0; only a rule naming the exact
address or network opens them. DNS answers pointing at loopback, private or the host's own
addresses are refused (DNS rebinding) unless the policy says otherwise.

For untrusted code use `netcontrol run --user auto`: as root, code could leave its cgroup.";

#[derive(Debug, Parser)]
#[command(name = "netcontrol", version, about = ABOUT, long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// Log filter for netcontrol's own diagnostics (error, warn, info, debug, trace, or a
    /// tracing-subscriber directive). Default: info for the daemon, warn otherwise.
    #[arg(long, global = true, env = "NETCONTROL_LOG", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Format of netcontrol's own diagnostics on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Cli {
    /// The log filter: --log-level, plus the kernel-side records when --bpf-log asks for them.
    pub fn log_filter(&self) -> String {
        let (load, default) = match &self.command {
            Command::Run(a) => (Some(&a.kernel.load), "warn"),
            Command::Attach(a) => (Some(&a.kernel.load), "warn"),
            Command::Daemon(a) => (Some(&a.load), "info"),
            _ => (None, "warn"),
        };
        let level = self.log_level.clone().unwrap_or_else(|| default.to_owned());
        match load.map(|l| l.bpf_log) {
            None | Some(BpfLog::Off) => level,
            Some(_) => format!("{level},bpf=trace"),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command in a new sandbox cgroup: it and all its descendants can reach only what
    /// the rules allow, from their first instruction.
    ///
    /// Exits with the command's exit status (128+N if a signal N killed it, 127 if it was not
    /// found, 126 if it could not be executed, 125 if netcontrol itself failed). Processes the
    /// command leaves behind are killed when it exits: they would otherwise outlive the sandbox.
    #[command(
        after_help = "Example:\n  netcontrol run --allow 127.0.0.11:8080 -- curl -sS http://127.0.0.10:8080/"
    )]
    Run(RunArgs),

    /// Enforce on an existing cgroup v2 directory until SIGINT or SIGTERM, then detach.
    ///
    /// Every process in the cgroup and its descendants is covered, including processes already
    /// running (their sockets created before attaching too).
    #[command(
        after_help = "Example:\n  netcontrol attach --cgroup /sys/fs/cgroup/my-sandbox --allow 10.0.0.0/8:443 --events -"
    )]
    Attach(AttachArgs),

    /// Enforce policies on many sandboxes, as a node's agent: one set of programs, pinned so
    /// that enforcement continues if the daemon dies; Prometheus metrics; a control socket.
    ///
    /// Sandboxes and policies come from the configuration file (reloaded on SIGHUP and when it
    /// changes, validated first) and from `netcontrol attach --daemon`. When the daemon stops
    /// or is killed, every sandbox stays enforced; a restarted daemon re-adopts them. Remove
    /// everything with `netcontrol uninstall`.
    #[command(after_help = DAEMON_CONFIG)]
    Daemon(DaemonArgs),

    /// Show the running daemon's sandboxes, their policies, counters and map usage.
    Status(StatusArgs),

    /// Stop enforcing on a cgroup: through the daemon if it runs, else by removing the pins
    /// netcontrol left for it.
    Detach(DetachArgs),

    /// Remove every pin under the pin root: links (enforcement ends), maps and programs.
    Uninstall(UninstallArgs),

    /// Validate a policy file and print it normalized (as YAML that loads back unchanged).
    ///
    /// Exits 0 if the file is valid, 1 with FILE:LINE:COLUMN and what was expected if not.
    #[command(after_help = POLICY_FORMAT)]
    CheckPolicy(CheckPolicyArgs),
}

#[derive(Debug, Args)]
pub struct CheckPolicyArgs {
    /// The policy file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

const POLICY_FORMAT: &str = "\
Policy file format:
  mode: enforce                  # or audit
  allow:
    - api.github.com:443         # any RULE, as with --allow
    - \"*.githubusercontent.com:443\" # *. = exactly one more label, **. = one or more
    - 10.0.0.0/8
    - domain: api.stripe.com     # the long form
      ports: [443, \"8000-8100\"]
      protocol: tcp              # tcp, udp, icmp, sctp or any (the default)
    - domain: db.internal.test
      allow_private: true        # its DNS answers may be private addresses
    - cidr: 192.168.0.0/16
  listen: [8080, \"0.0.0.0:9000\"] # as --listen: where to listen besides loopback
  dns:
    mode: proxy                  # DNS-aware (the default), or resolver
    servers: [127.0.0.53]        # default: the nameservers of /etc/resolv.conf
    min_ttl: 5s                  # TTL clamps: re-resolve at most this often...
    max_ttl: 1h                  # ...and at least this often
    grace: 5m                    # an address stays allowed this long after it left the answers
    max_ips_per_name: 1000
    timeout: 2s
    refuse_with: nxdomain        # or refused: the answer to names not allowed
    max_queries_per_second: 100  # per sandbox, bursts of twice as many
    max_name_length: 253
    rebinding: refuse            # or allow: answers may then point anywhere
    allow_private: false         # true: private addresses in answers, for every name
  sockets:
    raw: false                   # as --allow-raw-sockets
    ping: false                  # as --allow-ping
    routing_options: false       # as --allow-routing-options
    abstract_unix: false         # as --allow-abstract-unix
    families: []                 # as --allow-family, e.g. [vsock, packet]
The sandbox may reach the DNS servers (UDP and TCP, their port only) when the policy has
domain rules or names servers. Unknown keys are errors.";

#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// The policy file (YAML; see `netcontrol check-policy --help`). The options below add
    /// to it (and --audit, --dns-mode and --dns-rebinding override it).
    #[arg(short = 'p', long = "policy", value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Allow a destination (repeatable): an address, network or domain, optionally with ports
    /// and a protocol. See `netcontrol --help` for the syntax.
    #[arg(short = 'a', long = "allow", value_name = "RULE")]
    pub allow: Vec<Rule>,

    /// Audit mode: block nothing, but report every attempt that would be blocked.
    #[arg(long)]
    pub audit: bool,

    /// How domain rules become addresses: `proxy` (DNS-aware: the sandbox's DNS goes through
    /// netcontrol, which answers allowed names only) or `resolver` (netcontrol resolves the
    /// names itself). Overrides dns.mode of the policy file.
    #[arg(long, value_enum, value_name = "MODE")]
    pub dns_mode: Option<DnsModeArg>,

    /// DNS rebinding protection: `refuse` (the default) keeps loopback, private,
    /// link-local and the host's own addresses in answers from being allowed (and takes them
    /// out of the answers, in DNS-aware mode); `allow` lets answers point anywhere. Overrides
    /// dns.rebinding of the policy file.
    #[arg(long, value_enum, value_name = "WHAT")]
    pub dns_rebinding: Option<RebindingArg>,

    /// Allow raw (SOCK_RAW) sockets. They bypass every address rule: only for trusted code.
    #[arg(long)]
    pub allow_raw_sockets: bool,

    /// Allow ICMP "ping" sockets. Where they send is still judged by the rules: each echo
    /// request as it leaves, and connect() on them too on Linux 6.1 and newer.
    #[arg(long)]
    pub allow_ping: bool,

    /// Allow the socket options and packets that route through other hosts first (IPv6
    /// routing, hop-by-hop and destination options, IPv4 source routes). They make packets
    /// go elsewhere than the destination the rules judged: only for trusted code.
    #[arg(long)]
    pub allow_routing_options: bool,

    /// Allow connections to abstract unix sockets. For a sandbox in the host's network
    /// namespace (`run`) those are the host's daemons' (X11, D-Bus, container shims).
    #[arg(long)]
    pub allow_abstract_unix: bool,

    /// Allow a socket family beyond inet, inet6, unix and netlink (repeatable), e.g. vsock
    /// (a channel to the hypervisor host) or packet.
    #[arg(long = "allow-family", value_name = "FAMILY", value_parser = parse_family)]
    pub allow_families: Vec<u8>,

    /// Where a sandbox in the host's network namespace may listen besides loopback
    /// (repeatable, TCP): PORT, PORT-PORT or ADDRESS:PORT. Without it, listening on other
    /// addresses fails with EPERM and connections from elsewhere to its listeners are dropped.
    #[arg(long = "listen", value_name = "RULE")]
    pub listen: Vec<crate::policy::Listen>,
}

fn parse_family(s: &str) -> Result<u8, String> {
    crate::policy::file::parse_family(s)
}

impl PolicyArgs {
    /// The policy file (if any) with the command line's additions. Read anew on every call,
    /// which is what a reload wants.
    pub fn policy(&self) -> crate::Result<Policy> {
        let mut p = match &self.file {
            Some(f) => crate::policy::file::load(f).map_err(crate::policy::PolicyError::from)?,
            None => Policy::default(),
        };
        p.allow.extend(self.allow.iter().cloned());
        if self.audit {
            p.mode = Mode::Audit;
        }
        p.allow_raw_sockets |= self.allow_raw_sockets;
        p.allow_icmp |= self.allow_ping;
        p.allow_routing_options |= self.allow_routing_options;
        p.allow_abstract_unix |= self.allow_abstract_unix;
        p.families.extend(self.allow_families.iter().copied());
        p.listen.extend(self.listen.iter().cloned());
        match self.dns_mode {
            Some(DnsModeArg::Proxy) => p.dns.mode = crate::policy::DnsMode::Proxy,
            Some(DnsModeArg::Resolver) => p.dns.mode = crate::policy::DnsMode::Resolver,
            None => {}
        }
        match self.dns_rebinding {
            Some(RebindingArg::Refuse) => p.dns.rebinding = crate::policy::Rebinding::Refuse,
            Some(RebindingArg::Allow) => p.dns.rebinding = crate::policy::Rebinding::Allow,
            None => {}
        }
        Ok(p)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DnsModeArg {
    Proxy,
    Resolver,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RebindingArg {
    Refuse,
    Allow,
}

#[derive(Debug, Args)]
pub struct OutputArgs {
    /// Append one JSON object per blocked attempt to PATH (`-` for stdout). Without it, each
    /// blocked attempt is described in one line on stderr.
    #[arg(long, value_name = "PATH")]
    pub events: Option<PathBuf>,

    /// Do not describe blocked attempts on stderr (the summary line is still printed).
    #[arg(short, long)]
    pub quiet: bool,
}

impl OutputArgs {
    pub fn sink(&self) -> crate::Result<Sink> {
        Sink::new(self.events.as_deref(), self.events.is_none() && !self.quiet)
    }
}

#[derive(Debug, Args)]
pub struct KernelArgs {
    /// bpffs directory for pins: links pinned there keep enforcing if netcontrol is killed.
    /// Mounted at /sys/fs/bpf if needed.
    #[arg(long, env = "NETCONTROL_PIN_ROOT", default_value = DEFAULT_ROOT, value_name = "DIR")]
    pub pin_root: PathBuf,

    /// Do not pin: if netcontrol dies, its programs detach and the sandbox is open.
    #[arg(long)]
    pub no_pin: bool,

    #[command(flatten)]
    pub load: LoadArgs,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Kernel-side diagnostics through aya-log, forwarded to netcontrol's log (off: the
    /// programs carry no logging cost).
    #[arg(long, env = "NETCONTROL_BPF_LOG", value_enum, default_value_t = BpfLog::Off)]
    pub bpf_log: BpfLog,

    /// Size of the kernel's event buffer in KiB (a power of two, 4 or more). When it is full,
    /// attempts are still blocked and counted, and the lost events are counted and reported.
    #[arg(long, value_name = "KIB", default_value_t = 1024, value_parser = parse_event_buffer)]
    pub event_buffer: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BpfLog {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LoadArgs {
    pub fn options(&self) -> LoadOptions {
        LoadOptions {
            bpf_log_level: self.bpf_log as u8,
            events_bytes: Some(self.event_buffer * 1024),
            ..LoadOptions::default()
        }
    }
}

impl KernelArgs {
    pub fn load_options(&self) -> LoadOptions {
        self.load.options()
    }

    /// Where a standalone sandbox pins its links (--no-pin: nowhere).
    pub fn link_pins(&self) -> crate::Result<LinkPins> {
        Ok(match self.no_pin {
            true => LinkPins::None,
            false => LinkPins::Standalone(PinRoot::open(&self.pin_root)?),
        })
    }
}

fn parse_event_buffer(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if (4..=1 << 20).contains(&n) && n.is_power_of_two() => Ok(n),
        _ => Err(format!("{s} is not a power of two between 4 and 1048576 (KiB)")),
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,

    /// Run the command as this user: `auto` (for untrusted code) gives it a uid and gid of its
    /// own for this run, shared with no other process; a name or uid (optionally :group) runs
    /// it with that user's groups, HOME, USER and LOGNAME. A command running as root could
    /// leave its cgroup or detach the programs.
    #[arg(short, long, value_name = "auto|USER[:GROUP]")]
    pub user: Option<String>,

    /// Create the sandbox cgroup under this cgroup v2 directory (default: `netcontrol` under
    /// the cgroup2 mount).
    #[arg(long, value_name = "DIR")]
    pub cgroup_parent: Option<PathBuf>,

    /// The command and its arguments.
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("target").required(true).args(["cgroup", "container", "docker_parent"]))]
pub struct AttachArgs {
    /// The cgroup v2 directory to enforce on.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// A running Docker container (name or id): its cgroup is found through the Docker API,
    /// it is enforced again after each restart, and `attach` ends when it is removed. It runs
    /// unenforced until attached: for enforcement from the first instruction use
    /// --docker-parent.
    #[arg(long, value_name = "NAME_OR_ID")]
    pub container: Option<String>,

    /// Create (if needed) and enforce cgroup NAME under the cgroup2 mount, for containers
    /// started with `docker run --cgroup-parent=/NAME`: they are enforced from their first
    /// instruction, and each gets a sandbox of its own (own DNS proxy, events naming it) as
    /// soon as Docker reports it.
    #[arg(long, value_name = "NAME")]
    pub docker_parent: Option<String>,

    /// The Docker API socket (default: DOCKER_HOST, else unix:///var/run/docker.sock).
    #[arg(long, env = "DOCKER_HOST", value_name = "URL", hide_env_values = true)]
    pub docker_host: Option<String>,
    #[command(flatten)]
    pub policy: PolicyArgs,

    /// Hand the sandbox to the running daemon (which keeps it across its restarts) and return
    /// at once, instead of enforcing from this process.
    #[arg(long)]
    pub daemon: bool,

    /// With --daemon: a policy of the daemon's configuration, instead of --policy/--allow.
    #[arg(long, value_name = "NAME", requires = "daemon", conflicts_with_all = ["file", "allow"])]
    pub policy_name: Option<String>,

    /// With --daemon: how status, events and metrics name the sandbox (default: the cgroup).
    #[arg(long, value_name = "NAME", requires = "daemon")]
    pub name: Option<String>,

    #[command(flatten)]
    pub socket: SocketArgs,
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(flatten)]
    pub kernel: KernelArgs,
}

const DAEMON_CONFIG: &str = "\
Configuration file:
  pin_root: /sys/fs/bpf/netcontrol      # default
  metrics_addr: 127.0.0.1:9477          # default; \"off\" serves nothing
  control_socket: /run/netcontrol/control.sock
  events:
    path: /var/log/netcontrol/events.jsonl   # \"-\" (the default): stdout
    max_size: 100MiB                    # rotate at this size...
    keep: 5                             # ...keeping this many old files
  policies:                             # in the policy file format (check-policy --help)
    ci:
      allow: [api.github.com:443]
  policy_files:                         # or in files of their own (relative to this one)
    web: web-policy.yaml
  sandboxes:
    - name: job-1                       # names it in status, events and metrics
      cgroup: ci/job-1                  # relative to the cgroup2 mount, or absolute
      policy: ci
A sandbox whose cgroup does not exist yet is attached when it appears (checked every second);
one whose cgroup goes away is detached. Unknown keys are errors.

A sandbox whose policy name resolves to nothing gets deny-all; one whose policy fails to
start is denied everything until it starts. Neither is ever left open.

Endpoints: /metrics (OpenMetrics), /healthz, /readyz (ready once every pinned sandbox is
re-adopted and every configured one attached or found missing; not ready while a sandbox
whose cgroup exists does not enforce its policy: attach failed, deny-all standing in, its
DNS proxy not placed).";

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The configuration file (YAML; see below).
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,

    /// Where to serve /metrics, /healthz and /readyz (default: the configuration's
    /// metrics_addr, else 127.0.0.1:9477); `off` serves nothing.
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub metrics_addr: Option<MetricsAddr>,

    /// bpffs directory for pins (default: the configuration's pin_root, else
    /// /sys/fs/bpf/netcontrol).
    #[arg(long, env = "NETCONTROL_PIN_ROOT", value_name = "DIR")]
    pub pin_root: Option<PathBuf>,

    /// The control socket (default: the configuration's control_socket, else
    /// /run/netcontrol/control.sock).
    #[arg(long, env = "NETCONTROL_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Where events go (JSON lines; `-` for stdout), instead of the configuration's.
    #[arg(long, value_name = "PATH")]
    pub events: Option<PathBuf>,

    /// Only validate the configuration (and its policies) and say what it contains: exit 0
    /// if it is valid, 1 with FILE:LINE:COLUMN if not. Needs no privileges.
    #[arg(long)]
    pub check: bool,

    /// Raise the open-files limit (soft and hard) to N at start, where the hard limit is lower
    /// (needs CAP_SYS_RESOURCE; Kubernetes pods cannot set limits otherwise). Each DNS-aware
    /// sandbox's proxy holds about 5 files. Default: the soft limit is raised to the hard one.
    #[arg(long, value_name = "N")]
    pub max_open_files: Option<u64>,

    #[command(flatten)]
    pub load: LoadArgs,
}

/// An address for metrics, or none.
#[derive(Clone, Copy, Debug)]
pub struct MetricsAddr(pub Option<std::net::SocketAddr>);

fn parse_metrics_addr(s: &str) -> Result<MetricsAddr, String> {
    if s == "off" {
        return Ok(MetricsAddr(None));
    }
    s.parse()
        .map(|a| MetricsAddr(Some(a)))
        .map_err(|_| format!("{s:?} is not an address and port such as 127.0.0.1:9477 (or `off`)"))
}

#[derive(Debug, Args)]
pub struct SocketArgs {
    /// The daemon's control socket.
    #[arg(long = "socket", env = "NETCONTROL_SOCKET", value_name = "PATH",
          default_value = crate::daemon::config::DEFAULT_CONTROL_SOCKET)]
    pub path: PathBuf,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub socket: SocketArgs,

    /// Print the status as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["cgroup", "name"]))]
pub struct DetachArgs {
    /// The cgroup to stop enforcing on.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,

    /// The daemon's sandbox of this name.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    #[command(flatten)]
    pub socket: SocketArgs,

    /// bpffs directory of the pins (when no daemon runs).
    #[arg(long, env = "NETCONTROL_PIN_ROOT", default_value = DEFAULT_ROOT, value_name = "DIR")]
    pub pin_root: PathBuf,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// bpffs directory of the pins.
    #[arg(long, env = "NETCONTROL_PIN_ROOT", default_value = DEFAULT_ROOT, value_name = "DIR")]
    pub pin_root: PathBuf,

    #[command(flatten)]
    pub socket: SocketArgs,

    /// Also while a daemon answers on the control socket (it keeps running, enforcing
    /// nothing, until restarted).
    #[arg(long)]
    pub force: bool,
}

/// The line printed at the end, if anything was blocked.
pub fn summary(counts: &Counts, sink: &Sink) -> Option<String> {
    let see = match sink.json_path() {
        Some(p) if p.as_os_str() == "-" => " (see events)".to_owned(),
        Some(p) => format!(" (see events in {})", p.display()),
        None => String::new(),
    };
    let lost = if counts.events_lost > 0 {
        format!(
            "; {} attempts reported nowhere (the event buffer and the denial counts were \
             full, or the events output failed)",
            counts.events_lost
        )
    } else {
        String::new()
    };
    let lost = match counts.summarized {
        0 => lost,
        n => format!("{lost}; {n} of them in summary records, not one by one"),
    };
    let plural = |n: u64| if n == 1 { "attempt" } else { "attempts" };
    let dns = match counts.dns_refused {
        0 => String::new(),
        1 => ", 1 DNS query refused".to_owned(),
        n => format!(", {n} DNS queries refused"),
    };
    if counts.blocked > 0 || counts.dns_refused > 0 {
        Some(format!(
            "netcontrol: {} connection {} blocked{dns}{see}{lost}",
            counts.blocked,
            plural(counts.blocked)
        ))
    } else if counts.would_block > 0 {
        Some(format!(
            "netcontrol: audit mode: {} connection {} would have been blocked{see}{lost}",
            counts.would_block,
            plural(counts.would_block)
        ))
    } else {
        None
    }
}

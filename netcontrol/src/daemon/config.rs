//! The daemon's configuration file (YAML):
//!
//! ```yaml
//! pin_root: /sys/fs/bpf/netcontrol      # default
//! metrics_addr: 127.0.0.1:9477          # default; "off" serves nothing
//! control_socket: /run/netcontrol/control.sock
//! events:
//!   path: /var/log/netcontrol/events.jsonl   # "-" (the default) is stdout
//!   max_size: 100MiB                    # rotate at this size...
//!   keep: 5                             # ...keeping this many old files
//! policies:                             # policies written here, in the policy file format
//!   ci:
//!     allow: [api.github.com:443]
//! policy_files:                         # or kept in their own files (relative to this one)
//!   web: web-policy.yaml
//! docker:                               # only for containers (default: DOCKER_HOST)
//!   host: unix:///var/run/docker.sock
//! sandboxes:
//!   - name: job-1                       # how events, metrics and status name it
//!     cgroup: ci/job-1                  # relative to the cgroup2 mount, or absolute
//!     policy: ci
//!   - name: ci-containers               # docker run --cgroup-parent=/netcontrol-ci
//!     cgroup: netcontrol-ci
//!     create: true                      # create the cgroup if it is missing
//!     policy: ci
//!   - name: web                         # every container whose name matches
//!     containers: {name: "web-*"}
//!     policy: web
//!   - containers: {label: netcontrol.policy}   # the label's value names the policy
//! kubernetes:                           # the pods of this node (the DaemonSet)
//!   node_name: node-1                   # default: $NODE_NAME (the downward API)
//!   policy_label: netcontrol.io/policy  # the pod label naming its policy (the default)
//!   namespaces: {team-a: web}           # the policy of a namespace's unlabelled pods
//!   default_policy: none                # of every other unlabelled pod (default: not enforced)
//!   cgroup_root: /sys/fs/cgroup         # where the kubelet's kubepods hierarchy is
//!   pod_metrics: true                   # false: metrics by namespace only
//! ```
//!
//! Unknown keys are errors; every error names the file, line and column.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_saphyr::Spanned;

use crate::{
    docker::Selector,
    events::Rotation,
    policy::{
        Policy,
        file::{self, FileError, RawPolicy},
    },
};

pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9477";
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/netcontrol/control.sock";
const DEFAULT_MAX_SIZE: u64 = 100 << 20;
const DEFAULT_KEEP: u32 = 5;

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    /// Every file it was read from: `path` and the `policy_files` (watched for changes).
    pub files: Vec<PathBuf>,
    pub pin_root: Option<PathBuf>,
    /// None: `metrics_addr: off`.
    pub metrics_addr: Option<SocketAddr>,
    pub control_socket: PathBuf,
    pub events: Events,
    pub policies: BTreeMap<String, Policy>,
    pub sandboxes: Vec<SandboxConfig>,
    /// Sandboxes that select Docker containers.
    pub containers: Vec<ContainerRule>,
    /// Where Docker is, when containers are followed (`docker:` or a `containers:` sandbox).
    pub docker: Option<DockerConfig>,
    pub kubernetes: Option<KubernetesConfig>,
}

pub const DEFAULT_POLICY_LABEL: &str = "netcontrol.io/policy";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// None: $NODE_NAME.
    pub node_name: Option<String>,
    pub policy_label: String,
    /// Namespace -> the policy of its pods without the label.
    pub namespaces: BTreeMap<String, String>,
    /// The policy of other pods without the label (None: not enforced).
    pub default_policy: Option<String>,
    /// None: the cgroup2 mount.
    pub cgroup_root: Option<PathBuf>,
    /// Label metrics with the pod (else with the namespace only, bounding their number).
    pub pod_metrics: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct DockerConfig {
    /// None: DOCKER_HOST, else the default socket.
    pub host: Option<String>,
}

/// Containers a sandbox entry selects: each one becomes a sandbox of its own.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerRule {
    pub name: String,
    pub selector: Selector,
    /// None: the value of the selector's label names the policy.
    pub policy: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Events {
    /// `-` for stdout.
    pub path: PathBuf,
    pub rotation: Rotation,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SandboxConfig {
    pub name: String,
    /// As written: absolute, or relative to the cgroup2 mount.
    pub cgroup: PathBuf,
    pub policy: String,
    /// Create the cgroup if it is missing (a parent for `docker run --cgroup-parent`).
    pub create: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    pin_root: Option<PathBuf>,
    metrics_addr: Option<Spanned<String>>,
    control_socket: Option<PathBuf>,
    events: Option<RawEvents>,
    #[serde(default)]
    policies: BTreeMap<String, RawPolicy>,
    #[serde(default)]
    policy_files: BTreeMap<String, Spanned<PathBuf>>,
    docker: Option<RawDocker>,
    kubernetes: Option<Spanned<RawKubernetes>>,
    #[serde(default)]
    sandboxes: Vec<Spanned<RawSandbox>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKubernetes {
    node_name: Option<String>,
    policy_label: Option<String>,
    #[serde(default)]
    namespaces: BTreeMap<String, Spanned<String>>,
    default_policy: Option<Spanned<String>>,
    cgroup_root: Option<PathBuf>,
    pod_metrics: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocker {
    host: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainers {
    name: Option<String>,
    label: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvents {
    path: Option<PathBuf>,
    max_size: Option<Spanned<Size>>,
    keep: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSandbox {
    name: Option<Spanned<String>>,
    cgroup: Option<Spanned<PathBuf>>,
    containers: Option<Spanned<RawContainers>>,
    policy: Option<Spanned<String>>,
    create: Option<bool>,
}

/// A size: a number of bytes, or `"100MiB"`, `"10MB"`, `"512KiB"`...
#[derive(Deserialize)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

/// Read and validate a daemon configuration file (and the policy files it names).
pub fn load(path: &Path) -> Result<Config, FileError> {
    let read = |source| FileError::Read { path: path.to_owned(), source };
    // Absolute, so that status names it and relative policy files resolve from anywhere.
    let path = std::fs::canonicalize(path).map_err(read)?;
    let text = std::fs::read_to_string(&path).map_err(read)?;
    parse(&text, &path)
}

pub fn parse(text: &str, path: &Path) -> Result<Config, FileError> {
    let raw: RawConfig = file::parse_yaml(text, path)?;
    let at = |loc: &serde_saphyr::Location, msg: String| {
        FileError::at(path, text, loc.line(), loc.column(), msg)
    };
    let metrics_addr = match &raw.metrics_addr {
        None => Some(DEFAULT_METRICS_ADDR.parse().expect("valid default")),
        Some(s) if s.value.trim() == "off" => None,
        Some(s) => Some(s.value.trim().parse().map_err(|_| {
            at(
                &s.referenced,
                format!(
                    "{:?} is not an address and port such as 127.0.0.1:9477 (or \"off\")",
                    s.value
                ),
            )
        })?),
    };
    let events = match raw.events {
        None => Events {
            path: PathBuf::from("-"),
            rotation: Rotation { max_bytes: DEFAULT_MAX_SIZE, keep: DEFAULT_KEEP },
        },
        Some(e) => Events {
            path: e.path.unwrap_or_else(|| PathBuf::from("-")),
            rotation: Rotation {
                max_bytes: match e.max_size {
                    None => DEFAULT_MAX_SIZE,
                    Some(s) => s.value.bytes().map_err(|m| at(&s.referenced, m))?,
                },
                keep: e.keep.unwrap_or(DEFAULT_KEEP),
            },
        },
    };
    let mut policies: BTreeMap<String, Policy> =
        raw.policies.into_iter().map(|(name, p)| (name, p.into_policy())).collect();
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut files = vec![path.to_owned()];
    for (name, file) in raw.policy_files {
        if policies.contains_key(&name) {
            return Err(at(
                &file.referenced,
                format!("policy {name:?} is defined under both `policies` and `policy_files`"),
            ));
        }
        let full = dir.join(&file.value);
        // The policy file's own errors name that file and its line.
        let policy = file::load(&full)?;
        policies.insert(name, policy);
        files.push(full);
    }
    let mut names = BTreeSet::new();
    let mut sandboxes = Vec::new();
    let mut containers = Vec::new();
    let known = |policies: &BTreeMap<String, Policy>| {
        let k: Vec<&str> = policies.keys().map(String::as_str).collect();
        if k.is_empty() { "none".to_owned() } else { k.join(", ") }
    };
    for entry in raw.sandboxes {
        let s = entry.value;
        let policy = match &s.policy {
            Some(p) if !policies.contains_key(&p.value) => {
                return Err(at(
                    &p.referenced,
                    format!("no policy named {:?} (defined: {})", p.value, known(&policies)),
                ));
            }
            p => p.as_ref().map(|p| p.value.clone()),
        };
        let (name, target) = match (s.cgroup, s.containers) {
            (Some(c), None) => {
                if c.value.as_os_str().is_empty() {
                    return Err(at(&c.referenced, "the cgroup path is empty".into()));
                }
                let policy = policy
                    .ok_or_else(|| at(&entry.referenced, "a sandbox needs a `policy`".into()))?;
                let default = c.value.display().to_string();
                (default, Target::Cgroup(c.value, policy))
            }
            (None, Some(sel)) => {
                let selector = match (&sel.value.name, &sel.value.label) {
                    (Some(n), None) => Selector::name(n),
                    (None, Some(l)) => Selector::label(l),
                    _ => Err("give `containers` either a `name` pattern or a `label`".to_owned()),
                }
                .map_err(|m| at(&sel.referenced, m))?;
                if policy.is_none() && selector.policy_label().is_none() {
                    return Err(at(
                        &entry.referenced,
                        "a sandbox needs a `policy` (only `containers: {label: KEY}` can take it from the label's value)".into(),
                    ));
                }
                (selector.to_string(), Target::Containers(selector, policy))
            }
            (Some(_), Some(_)) => {
                return Err(at(
                    &entry.referenced,
                    "give a sandbox either `cgroup` or `containers`, not both".into(),
                ));
            }
            (None, None) => {
                return Err(at(
                    &entry.referenced,
                    "a sandbox needs `cgroup` or `containers`".into(),
                ));
            }
        };
        let name = match &s.name {
            Some(n) if n.value.trim().is_empty() => {
                return Err(at(&n.referenced, "a sandbox name cannot be empty".into()));
            }
            Some(n) => n.value.trim().to_owned(),
            None => name,
        };
        if !names.insert(name.clone()) {
            let loc = s.name.as_ref().map_or(&entry.referenced, |n| &n.referenced);
            return Err(at(loc, format!("two sandboxes are named {name:?}; names must be unique")));
        }
        match target {
            Target::Cgroup(cgroup, policy) => sandboxes.push(SandboxConfig {
                name,
                cgroup,
                policy,
                create: s.create.unwrap_or(false),
            }),
            Target::Containers(selector, policy) => {
                if s.create.is_some() {
                    return Err(at(&entry.referenced, "`create` is for `cgroup` sandboxes".into()));
                }
                containers.push(ContainerRule { name, selector, policy })
            }
        }
    }
    let kubernetes = match raw.kubernetes {
        None => None,
        Some(k) => {
            let check = |p: &Spanned<String>| {
                if policies.contains_key(&p.value) {
                    Ok(p.value.clone())
                } else {
                    Err(at(
                        &p.referenced,
                        format!("no policy named {:?} (defined: {})", p.value, known(&policies)),
                    ))
                }
            };
            let namespaces = k
                .value
                .namespaces
                .iter()
                .map(|(ns, p)| check(p).map(|p| (ns.clone(), p)))
                .collect::<Result<_, _>>()?;
            Some(KubernetesConfig {
                node_name: k.value.node_name.clone(),
                policy_label: k
                    .value
                    .policy_label
                    .clone()
                    .unwrap_or_else(|| DEFAULT_POLICY_LABEL.to_owned()),
                namespaces,
                default_policy: k.value.default_policy.as_ref().map(check).transpose()?,
                cgroup_root: k.value.cgroup_root.clone(),
                pod_metrics: k.value.pod_metrics.unwrap_or(true),
            })
        }
    };
    let docker = match raw.docker {
        Some(d) => Some(DockerConfig { host: d.host }),
        None if !containers.is_empty() => Some(DockerConfig::default()),
        None => None,
    };
    Ok(Config {
        path: path.to_owned(),
        files,
        pin_root: raw.pin_root,
        metrics_addr,
        control_socket: raw.control_socket.unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET)),
        events,
        policies,
        sandboxes,
        containers,
        docker,
        kubernetes,
    })
}

/// What a sandbox entry enforces on.
enum Target {
    Cgroup(PathBuf, String),
    Containers(Selector, Option<String>),
}

impl Size {
    fn bytes(&self) -> Result<u64, String> {
        let text = match self {
            Size::Bytes(n) => return Ok(*n),
            Size::Text(t) => t.trim(),
        };
        let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
        let (num, unit) = text.split_at(split);
        let unit_bytes: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kb" => 1_000,
            "kib" | "k" => 1 << 10,
            "mb" => 1_000_000,
            "mib" | "m" => 1 << 20,
            "gb" => 1_000_000_000,
            "gib" | "g" => 1 << 30,
            _ => {
                return Err(format!(
                    "{text:?} is not a size such as \"100MiB\", \"10MB\" or a number of bytes"
                ));
            }
        };
        num.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_bytes))
            .filter(|n| *n > 0)
            .ok_or_else(|| {
                format!("{text:?} is not a size such as \"100MiB\", \"10MB\" or a number of bytes")
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Config, String> {
        parse(text, Path::new("/etc/netcontrol/daemon.yaml")).map_err(|e| e.to_string())
    }

    #[test]
    fn an_empty_policy_entry_is_refused_with_its_line() {
        for (body, line) in [("  p:\n", 2), ("  p: {}\n", 2), ("  ok:\n    allow: []\n  p: ~\n", 4)]
        {
            let e = parse_str(&format!("policies:\n{body}sandboxes: []\n")).expect_err("empty");
            assert!(e.contains(&format!("daemon.yaml:{line}:")), "{e}");
            assert!(e.contains("the policy has no `allow:` list"), "{e}");
        }
    }

    #[test]
    fn a_full_config() {
        let c = parse_str(
            "pin_root: /sys/fs/bpf/nc\nmetrics_addr: 127.0.0.1:9000\nevents:\n  path: /tmp/e.jsonl\n  max_size: 10MiB\n  keep: 2\npolicies:\n  ci:\n    allow: [10.0.0.0/8]\nsandboxes:\n  - name: job-1\n    cgroup: ci/job-1\n    policy: ci\n  - cgroup: /sys/fs/cgroup/x\n    policy: ci\n",
        )
        .expect("valid");
        assert_eq!(c.metrics_addr, Some("127.0.0.1:9000".parse().expect("addr")));
        assert_eq!(c.events.rotation, Rotation { max_bytes: 10 << 20, keep: 2 });
        assert_eq!(c.sandboxes[0].name, "job-1");
        assert_eq!(c.sandboxes[1].name, "/sys/fs/cgroup/x", "the cgroup names an unnamed sandbox");
        assert_eq!(c.policies["ci"].allow.len(), 1);
    }

    #[test]
    fn defaults() {
        let c = parse_str("sandboxes: []\n").expect("valid");
        assert_eq!(c.metrics_addr, Some(DEFAULT_METRICS_ADDR.parse().expect("addr")));
        assert_eq!(c.events.path, Path::new("-"));
        assert_eq!(c.control_socket, Path::new(DEFAULT_CONTROL_SOCKET));
        assert_eq!(parse_str("metrics_addr: \"off\"\n").expect("valid").metrics_addr, None);
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = parse_str("policies:\n  ci:\n    allow: [10.0.0.0/8]\nsandboxes:\n  - cgroup: a\n    policy: nope\n")
            .expect_err("unknown policy");
        assert!(
            e.starts_with(
                "/etc/netcontrol/daemon.yaml:6:13: no policy named \"nope\" (defined: ci)"
            ),
            "{e}"
        );
        let e = parse_str("sandboxes:\n  - cgroup: a\n    policy: p\n    colour: red\n")
            .expect_err("unknown key");
        assert!(e.starts_with("/etc/netcontrol/daemon.yaml:4:5:") && e.contains("colour"), "{e}");
        let e = parse_str("policies:\n  p:\n    allow: [\"bad rule!\"]\n").expect_err("bad rule");
        assert!(e.starts_with("/etc/netcontrol/daemon.yaml:3:"), "{e}");
        let e = parse_str("policies: {p: {allow: []}}\nsandboxes:\n  - {name: a, cgroup: a, policy: p}\n  - {name: a, cgroup: b, policy: p}\n")
            .expect_err("duplicate");
        assert!(e.contains(":4:") && e.contains("two sandboxes are named \"a\""), "{e}");
        let e = parse_str("events:\n  max_size: lots\n").expect_err("size");
        assert!(e.contains(":2:13:") && e.contains("not a size"), "{e}");
        let e = parse_str("metrics_addr: localhost\n").expect_err("addr");
        assert!(e.contains(":1:15:") && e.contains("not an address"), "{e}");
    }

    #[test]
    fn container_sandboxes() {
        let c = parse_str(
            "policies: {web: {allow: []}}\nsandboxes:\n  - name: w\n    containers: {name: \"web-*\"}\n    policy: web\n  - containers: {label: netcontrol.policy}\n  - {cgroup: ci, create: true, policy: web}\n",
        )
        .expect("valid");
        assert_eq!(c.containers.len(), 2);
        assert_eq!(c.containers[0].name, "w");
        assert_eq!(c.containers[1].name, "label netcontrol.policy");
        assert_eq!(c.containers[1].policy, None);
        assert!(c.sandboxes[0].create);
        assert_eq!(c.docker, Some(DockerConfig::default()), "containers imply Docker");
        let e = parse_str(
            "policies: {web: {allow: []}}\nsandboxes:\n  - containers: {name: \"web-*\"}\n",
        )
        .expect_err("no policy");
        assert!(e.contains(":3:5:") && e.contains("needs a `policy`"), "{e}");
        let e = parse_str("sandboxes:\n  - {cgroup: a, containers: {name: x}, policy: p}\n")
            .expect_err("both");
        assert!(e.contains("no policy named") || e.contains("not both"), "{e}");
        let e = parse_str("policies: {p: {allow: []}}\nsandboxes:\n  - {containers: {name: x, label: y}, policy: p}\n").expect_err("both selectors");
        assert!(e.contains("either a `name` pattern or a `label`"), "{e}");
        let e = parse_str("policies: {p: {allow: []}}\nsandboxes:\n  - {policy: p}\n")
            .expect_err("no target");
        assert!(e.contains("needs `cgroup` or `containers`"), "{e}");
    }

    #[test]
    fn kubernetes() {
        let c = parse_str(
            "policies: {web: {allow: []}, none: {allow: []}}\nkubernetes:\n  node_name: n1\n  namespaces: {team-a: web}\n  default_policy: none\n",
        )
        .expect("valid");
        let k = c.kubernetes.expect("kubernetes");
        assert_eq!(k.node_name.as_deref(), Some("n1"));
        assert_eq!(k.policy_label, DEFAULT_POLICY_LABEL);
        assert_eq!(k.namespaces["team-a"], "web");
        assert_eq!(k.default_policy.as_deref(), Some("none"));
        assert!(k.pod_metrics);
        let e =
            parse_str("policies: {web: {allow: []}}\nkubernetes:\n  namespaces: {team-a: nope}\n")
                .expect_err("unknown");
        assert!(e.contains(":3:24:") && e.contains("no policy named \"nope\""), "{e}");
    }

    #[test]
    fn policy_files_are_relative_and_report_their_own_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("web.yaml"), "allow:\n  - 10.0.0.0/8\n").expect("write");
        std::fs::write(dir.path().join("bad.yaml"), "allow:\n  - nope nope\n").expect("write");
        let cfg = dir.path().join("daemon.yaml");
        let ok =
            parse("policy_files: {web: web.yaml}\nsandboxes: [{cgroup: a, policy: web}]\n", &cfg)
                .expect("valid");
        assert_eq!(ok.policies["web"].allow.len(), 1);
        let e = parse("policy_files: {bad: bad.yaml}\n", &cfg).expect_err("bad").to_string();
        assert!(e.contains("bad.yaml:2:"), "{e}");
    }
}

//! The daemon's Kubernetes mode: pods of this node from a stand-in API server (the real
//! list/watch protocol, spoken by the test) are enforced at their pod cgroups, laid out as the
//! kubelet does it for both cgroup drivers and both container runtimes' naming, with real
//! processes in the containers' cgroups.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use netcontrol_tests::{
    Server, cgroup2_mount,
    daemon::Daemon,
    events_at_least, find_event, isolate_network, kernel_tests_enabled,
    kube_api::{KubeApi, pod},
    probe_in, unique, within,
};
use serde_json::json;

/// A test cgroup standing for the node's cgroup root (where the kubelet's kubepods is).
struct NodeRoot(PathBuf);

impl NodeRoot {
    fn new() -> Self {
        let p = cgroup2_mount().join(unique("nc-node"));
        std::fs::create_dir(&p).expect("mkdir");
        Self(p)
    }

    /// Make a pod's cgroup as the kubelet would, with one container cgroup below it as the
    /// runtime would name it; returns the container's cgroup.
    fn pod(&self, driver: &str, runtime: &str, qos: &str, uid: &str) -> PathBuf {
        let esc = uid.replace('-', "_");
        let class = qos.to_lowercase();
        let pod_dir = match (driver, qos) {
            ("systemd", "Guaranteed") => {
                self.0.join(format!("kubepods.slice/kubepods-pod{esc}.slice"))
            }
            ("systemd", _) => self.0.join(format!(
                "kubepods.slice/kubepods-{class}.slice/kubepods-{class}-pod{esc}.slice"
            )),
            (_, "Guaranteed") => self.0.join(format!("kubepods/pod{uid}")),
            _ => self.0.join(format!("kubepods/{class}/pod{uid}")),
        };
        let id = "4f1c0e2d9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d";
        let container = match (driver, runtime) {
            ("systemd", "containerd") => format!("cri-containerd-{id}.scope"),
            ("systemd", _) => format!("crio-{id}.scope"),
            (_, "containerd") => id.to_owned(),
            _ => format!("crio-{id}"),
        };
        let dir = pod_dir.join(container);
        std::fs::create_dir_all(&dir).expect("mkdir pod cgroup");
        dir
    }
}

impl Drop for NodeRoot {
    fn drop(&mut self) {
        // Deepest first; every process in them has exited.
        fn remove(p: &Path) {
            if let Ok(entries) = std::fs::read_dir(p) {
                for e in entries.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        remove(&e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(p);
        }
        remove(&self.0);
    }
}

fn config(node_root: &Path, web: &str) -> String {
    format!(
        "policies:\n  web:\n    allow: [\"{web}\"]\n    dns: {{mode: resolver}}\n  none:\n    allow: []\n    dns: {{mode: resolver}}\n\
         kubernetes:\n  node_name: node-a\n  cgroup_root: {}\n  namespaces: {{team-a: web}}\n",
        node_root.display()
    )
}

fn start_daemon(d: &mut Daemon, api: &KubeApi) {
    let kubeconfig = api.kubeconfig(d.dir.path());
    d.env.push(("KUBECONFIG".into(), kubeconfig));
    d.start();
}

fn uid(n: u32) -> String {
    format!("0d8a4c43-6a6c-4c1e-9c6f-{n:012}")
}

#[test]
fn pods_of_both_drivers_runtimes_and_classes_are_enforced_at_the_pod_cgroup() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.10", "127.0.0.11"]);
    let (denied, allowed) = (Server::start("127.0.0.10"), Server::start("127.0.0.11"));
    let mut cases = Vec::new();
    let mut pods = Vec::new();
    let mut n = 0;
    for driver in ["systemd", "cgroupfs"] {
        let root = NodeRoot::new();
        for runtime in ["containerd", "cri-o"] {
            for qos in ["Guaranteed", "Burstable", "BestEffort"] {
                n += 1;
                let name = format!("p{n}-{driver}-{runtime}-{}", qos.to_lowercase());
                let container = root.pod(driver, runtime, qos, &uid(n));
                pods.push(pod(
                    "ci",
                    &name,
                    &uid(n),
                    "node-a",
                    qos,
                    json!({"netcontrol.io/policy": "web"}),
                ));
                cases.push((name, container));
            }
        }
        let api = KubeApi::start(std::mem::take(&mut pods));
        let mut d = Daemon::new(&config(&root.0, &allowed.target()));
        start_daemon(&mut d, &api);
        for (name, container) in cases.drain(..) {
            let s = d.sandbox(&format!("ci/{name}"));
            assert_eq!(s["state"], "enforcing", "{s:#}");
            assert!(container.starts_with(s["cgroup"].as_str().expect("cgroup")), "{s:#}");
            let p = probe_in(&container, &[("tcp", &denied.target()), ("tcp", &allowed.target())]);
            assert!(p[0].is_eperm(), "{name}: {:?}", p[0]);
            assert!(p[1].ok, "{name}: {:?}", p[1]);
        }
        d.stop();
    }
}

#[test]
fn the_watcher_follows_adds_changes_deletes_and_resyncs() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.10", "127.0.0.11"]);
    let (denied, allowed) = (Server::start("127.0.0.10"), Server::start("127.0.0.11"));
    let root = NodeRoot::new();
    let labelled = pod(
        "ci",
        "labelled",
        &uid(1),
        "node-a",
        "Burstable",
        json!({"netcontrol.io/policy": "web"}),
    );
    let by_namespace = pod("team-a", "by-namespace", &uid(2), "node-a", "BestEffort", json!({}));
    let unmanaged = pod("other", "unmanaged", &uid(3), "node-a", "Burstable", json!({}));
    let elsewhere = pod(
        "ci",
        "elsewhere",
        &uid(4),
        "node-b",
        "Burstable",
        json!({"netcontrol.io/policy": "web"}),
    );
    let c1 = root.pod("systemd", "containerd", "Burstable", &uid(1));
    let c2 = root.pod("systemd", "containerd", "BestEffort", &uid(2));
    let c3 = root.pod("systemd", "containerd", "Burstable", &uid(3));
    let c4 = root.pod("systemd", "containerd", "Burstable", &uid(4));
    let api = KubeApi::start(vec![labelled.clone(), by_namespace.clone(), unmanaged, elsewhere]);
    let mut d = Daemon::new(&config(&root.0, &allowed.target()));
    start_daemon(&mut d, &api);
    let blocked = |c: &Path| probe_in(c, &[("tcp", &denied.target())])[0].is_eperm();
    let reaches_allowed = |c: &Path| probe_in(c, &[("tcp", &allowed.target())])[0].ok;

    // The list: labelled and namespace-default pods are enforced; the others are not, and a
    // pod of another node is not even listed (the field selector).
    assert!(blocked(&c1) && reaches_allowed(&c1));
    assert!(blocked(&c2) && reaches_allowed(&c2));
    assert!(!blocked(&c3), "a pod without a policy is not enforced");
    assert!(!blocked(&c4), "a pod of another node is not ours");
    assert!(
        api.requests().iter().all(|r| r.contains("fieldSelector=spec.nodeName=node-a")),
        "{:?}",
        api.requests()
    );
    assert_eq!(d.sandbox("ci/labelled")["origin"], "pod");

    // Events and metrics name the namespace and the pod.
    let ev = events_at_least(&d.events, 1);
    let e = find_event(&ev, &[("pod_name", json!("labelled"))]);
    assert_eq!(e["pod_namespace"], "ci");
    let (_, metrics) = d.get("/metrics");
    assert!(
        metrics.contains(r#"sandbox="ci/labelled",namespace="ci",pod="labelled""#),
        "{metrics}"
    );

    let until = |what: &str, f: &dyn Fn() -> bool| {
        assert!(within(Duration::from_secs(10), f).is_some(), "{what}:\n{:#}", d.status());
    };

    // Added: attached when its cgroup appears.
    let added =
        pod("ci", "added", &uid(5), "node-a", "Guaranteed", json!({"netcontrol.io/policy": "web"}));
    api.add(added);
    until("the added pod waits for its cgroup", &|| {
        d.state_of("ci/added").as_deref() == Some("waiting")
    });
    let c5 = root.pod("systemd", "cri-o", "Guaranteed", &uid(5));
    until("attached once its cgroup exists", &|| blocked(&c5));

    // Modified: a new policy label applies at once.
    let mut relabelled = labelled;
    relabelled["metadata"]["labels"] = json!({"netcontrol.io/policy": "none"});
    api.modify(relabelled);
    until("the new policy", &|| !reaches_allowed(&c1));
    assert_eq!(d.sandbox("ci/labelled")["policy"], "none");

    // Deleted: detached.
    api.delete(by_namespace);
    until("the deleted pod is let go", &|| !blocked(&c2));

    // A dropped watch resumes from where it was: the next change still arrives.
    api.drop_watches();
    let later =
        pod("ci", "later", &uid(6), "node-a", "BestEffort", json!({"netcontrol.io/policy": "web"}));
    let c6 = root.pod("cgroupfs", "containerd", "BestEffort", &uid(6));
    api.add(later);
    until("a pod added after the watch was dropped", &|| blocked(&c6));

    // Expired history: the watcher lists again, and what vanished meanwhile is let go.
    api.expire(|pods| {
        pods.remove(&uid(5));
    });
    until("the re-list drops the pod deleted meanwhile", &|| !blocked(&c5));
    assert!(blocked(&c6) && blocked(&c1), "the others stay enforced across the re-list");
    let relists = api.requests().iter().filter(|r| !r.contains("watch=")).count();
    assert!(relists >= 2, "{:?}", api.requests());

    // A restarted agent re-adopts its pods (nothing attached twice, no gap) and resyncs.
    d.stop();
    assert!(blocked(&c1), "enforced while the agent is down");
    d.start();
    assert_eq!(d.sandbox("ci/labelled")["adopted"], true, "{:#}", d.status());
    assert_eq!(d.sandbox("ci/later")["adopted"], true);
    assert!(blocked(&c1) && blocked(&c6));
    d.stop();
}

#[test]
fn a_pod_whose_label_names_no_policy_is_denied_everything_and_reported() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.10"]);
    let denied = Server::start("127.0.0.10");
    let root = NodeRoot::new();
    let c = root.pod("cgroupfs", "containerd", "Burstable", &uid(1));
    let typo_pod = || {
        pod("ci", "typo", &uid(1), "node-a", "Burstable", json!({"netcontrol.io/policy": "wbe"}))
    };
    let api = KubeApi::start(vec![typo_pod()]);
    let mut d = Daemon::new(&config(&root.0, "127.0.0.11:1"));
    start_daemon(&mut d, &api);
    let log = d.log();
    assert!(
        log.contains("ci/typo: the label netcontrol.io/policy of pod ci/typo names policy \"wbe\""),
        "{log}"
    );
    assert!(log.contains("it gets no egress at all (deny-all)"), "{log}");
    let (_, metrics) = d.get("/metrics");
    assert!(
        metrics.contains(r#"netcontrol_attach_errors_total{sandbox="ci/typo"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"netcontrol_sandbox_not_enforcing{sandbox="ci/typo",reason="policy_missing"} 1"#
        ),
        "{metrics}"
    );
    // Deny-all, never "not enforced"; and not a reason to take the node's agent out.
    assert!(probe_in(&c, &[("tcp", &denied.target())])[0].is_eperm());
    assert_eq!(d.get("/readyz").0, 200);
    let s = d.sandbox("ci/typo");
    assert_eq!(s["state"], "enforcing", "{s:#}");
    assert!(s["problem"].as_str().is_some_and(|p| p.contains("\"wbe\"")), "{s:#}");
    let events = events_at_least(&d.events, 2);
    let e = find_event(&events, &[("reason", json!("policy_not_found"))]);
    assert_eq!((e["policy"].clone(), e["sandbox"].clone()), (json!("wbe"), json!("ci/typo")));
    assert!(e["policy_source"].as_str().is_some_and(|s| s.contains("netcontrol.io/policy")));

    // Fixed: the pod gets its policy, without a gap.
    let mut fixed = typo_pod();
    fixed["metadata"]["labels"] = json!({"netcontrol.io/policy": "web"});
    api.modify(fixed);
    let fixed = within(Duration::from_secs(10), || d.sandbox("ci/typo")["policy"] == "web");
    assert!(fixed.is_some(), "{:#}", d.status());
    assert!(d.sandbox("ci/typo")["problem"].is_null(), "{:#}", d.status());
    assert!(probe_in(&c, &[("tcp", &denied.target())])[0].is_eperm());
    d.stop();
}

#[test]
fn kubernetes_mode_refuses_a_bpffs_it_would_have_to_mount_itself() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let d = Daemon::new("policies: {none: {allow: []}}\nkubernetes: {node_name: node-a}\n");
    let not_bpffs = d.dir.path().join("pins");
    let out = std::process::Command::new(netcontrol_tests::netcontrol_bin())
        .args(["daemon", "--config"])
        .arg(&d.config)
        .arg("--pin-root")
        .arg(&not_bpffs)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("is not on the node's bpf filesystem"), "{err}");
}

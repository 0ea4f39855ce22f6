//! Docker containers as sandboxes, against a real dockerd the test starts in its own network
//! namespace (`--iptables=false`, its own data root, a busybox image imported from the host).
//! Containers reach the test's servers on the bridge address, which exists only in that
//! namespace.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use netcontrol_tests::{
    Background, Server, TEST_PIN_ROOT,
    daemon::Daemon,
    docker::{BRIDGE_IP, Dockerd, IMAGE, ParentCgroup},
    events_at_least, find_event, isolate_network, kernel_tests_enabled, netcontrol, netcontrol_bin,
    show, within,
};
use serde_json::json;

/// Two servers on the bridge address: (allowed, denied) ports.
fn two_servers() -> (Server, Server) {
    (Server::start(BRIDGE_IP), Server::start(BRIDGE_IP))
}

/// `netcontrol attach ARGS` in the background against `docker`, waiting for `ready`.
fn attach(docker: &Dockerd, events: &std::path::Path, args: &[&str], ready: &str) -> Background {
    let mut cmd = Command::new(netcontrol_bin());
    cmd.arg("attach")
        .args(args)
        .arg("--events")
        .arg(events)
        .args(["--pin-root", TEST_PIN_ROOT])
        .env("DOCKER_HOST", &docker.host)
        .stdout(Stdio::null());
    let mut p = Background::spawn(cmd);
    p.wait_for_line(ready, Duration::from_secs(30));
    p
}

fn eperm(r: Result<(), String>) -> bool {
    matches!(r, Err(e) if e.contains("Operation not permitted"))
}

#[test]
fn a_container_is_enforced_named_and_followed_until_removed() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let docker = Dockerd::start();
    let (allowed, denied) = two_servers();
    let (a, d) = (allowed.addr.port(), denied.addr.port());
    let web = docker.sleeper("web", &[]);
    docker.sleeper("other", &[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.jsonl");
    let rule = format!("{BRIDGE_IP}:{a}");
    let mut nc = attach(
        &docker,
        &events,
        &["--container", "web", "--allow", &rule],
        "enforcing on container web",
    );

    assert!(eperm(docker.connect_from("web", BRIDGE_IP, d)), "denied from web");
    assert_eq!(docker.connect_from("web", BRIDGE_IP, a), Ok(()), "allowed from web");
    assert_eq!(
        docker.connect_from("other", BRIDGE_IP, d),
        Ok(()),
        "another container is not affected"
    );
    let ev = events_at_least(&events, 1);
    let e = find_event(&ev, &[("dst_port", json!(d))]);
    assert_eq!(e["container_name"], "web");
    assert_eq!(e["container_id"], &web[..12]);
    assert_eq!(e["sandbox"], "web");
    assert_eq!(e["comm"], "nc");

    // A restart: detached when it stops, enforced again when it starts.
    docker.ok(&["restart", "-t", "0", "web"]);
    nc.wait_for_line("container web started again: enforcing", Duration::from_secs(20));
    assert!(eperm(docker.connect_from("web", BRIDGE_IP, d)), "denied after a restart");
    assert_eq!(docker.connect_from("web", BRIDGE_IP, a), Ok(()));

    // Removed: attach ends, and leaves nothing pinned for it.
    docker.ok(&["rm", "-f", "web"]);
    nc.wait_for_line("container web was removed", Duration::from_secs(20));
    let log = nc.stop_after_exit(Duration::from_secs(10));
    assert!(log.contains("2 connection attempts blocked"), "{log}");
}

#[test]
fn container_errors_are_clear() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let docker = Dockerd::start();
    docker.ok(&["create", "--name", "idle", IMAGE, "true"]);
    let run = |host: &str, args: &[&str]| {
        let out = Command::new(netcontrol_bin())
            .arg("attach")
            .args(args)
            .env("DOCKER_HOST", host)
            .env("NETCONTROL_PIN_ROOT", TEST_PIN_ROOT)
            .output()
            .expect("netcontrol");
        assert!(!out.status.success(), "{}", show(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&docker.host, &["--container", "nope"]);
    assert!(e.contains("no such container: nope"), "{e}");
    let e = run(&docker.host, &["--container", "idle"]);
    assert!(e.contains("container idle") && e.contains("is not running"), "{e}");
    let e = run("unix:///nonexistent/docker.sock", &["--container", "idle"]);
    assert!(e.contains("Docker is not reachable at unix:///nonexistent/docker.sock"), "{e}");
    let e = run(&docker.host, &["--cgroup", "/sys/fs/cgroup", "--container", "idle"]);
    assert!(e.contains("cannot be used with"), "{e}");
}

#[test]
fn parent_cgroup_mode_blocks_the_very_first_connect() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let docker = Dockerd::start();
    let (allowed, denied) = two_servers();
    let (a, d) = (allowed.addr.port(), denied.addr.port());
    let guard = ParentCgroup::new();
    let parent = guard.name.clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.jsonl");
    let rule = format!("{BRIDGE_IP}:{a}");
    let mut nc = attach(
        &docker,
        &events,
        &["--docker-parent", &parent, "--allow", &rule],
        "--cgroup-parent=/",
    );

    // The container's command itself connects, first thing: blocked, never a window.
    let cgroup_parent = format!("--cgroup-parent=/{parent}");
    let first = docker.docker(&[
        "run",
        "--rm",
        "--name",
        "first",
        &cgroup_parent,
        IMAGE,
        "nc",
        "-w",
        "2",
        BRIDGE_IP,
        &d.to_string(),
    ]);
    assert!(
        !first.status.success()
            && String::from_utf8_lossy(&first.stderr).contains("Operation not permitted"),
        "the first connect of a container under the parent: {}",
        show(&first)
    );
    let ok = docker.docker(&[
        "run",
        "--rm",
        &cgroup_parent,
        IMAGE,
        "nc",
        "-w",
        "2",
        BRIDGE_IP,
        &a.to_string(),
    ]);
    assert!(ok.status.success(), "{}", show(&ok));
    // A container outside the parent is not affected.
    let outside =
        docker.docker(&["run", "--rm", IMAGE, "nc", "-w", "2", BRIDGE_IP, &d.to_string()]);
    assert!(outside.status.success(), "{}", show(&outside));
    let ev = events_at_least(&events, 1);
    assert!(find_event(&ev, &[("dst_port", json!(d))])["comm"] == "nc");

    // A long-running container gets a sandbox of its own, and events name it.
    docker.sleeper("svc", &[&cgroup_parent]);
    let named = within(Duration::from_secs(10), || {
        let _ = docker.connect_from("svc", BRIDGE_IP, d);
        netcontrol_tests::read_events(&events).iter().any(|e| e["container_name"] == "svc")
    });
    assert!(
        named.is_some(),
        "no event named the container: {:?}",
        netcontrol_tests::read_events(&events)
    );
    assert!(eperm(docker.connect_from("svc", BRIDGE_IP, d)));
    assert_eq!(docker.connect_from("svc", BRIDGE_IP, a), Ok(()));
    docker.ok(&["rm", "-f", "svc"]);
    nc.stop();
    assert!(
        !netcontrol_tests::cgroup2_mount().join(&parent).exists(),
        "the parent it created is removed"
    );
}

#[test]
fn the_daemon_follows_containers_by_name_and_label() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let docker = Dockerd::start();
    let (allowed, denied) = two_servers();
    let (a, d) = (allowed.addr.port(), denied.addr.port());
    let mut daemon = Daemon::new(&format!(
        "docker:\n  host: {}\npolicies:\n  web:\n    allow: [\"{BRIDGE_IP}:{a}\"]\n  none:\n    allow: []\n\
         sandboxes:\n  - name: web\n    containers: {{name: \"web-*\"}}\n    policy: web\n  - containers: {{label: netcontrol.policy}}\n",
        docker.host
    ));
    docker.sleeper("web-1", &[]);
    daemon.start();
    docker.sleeper("labelled", &["--label", "netcontrol.policy=none"]);
    docker.sleeper("other", &[]);
    let enforcing = |name: &str| {
        within(Duration::from_secs(10), || daemon.state_of(name).as_deref() == Some("enforcing"))
            .is_some()
    };
    assert!(enforcing("web-1") && enforcing("labelled"), "{:#}", daemon.status());
    assert!(eperm(docker.connect_from("web-1", BRIDGE_IP, d)));
    assert_eq!(docker.connect_from("web-1", BRIDGE_IP, a), Ok(()));
    assert!(eperm(docker.connect_from("labelled", BRIDGE_IP, a)), "policy `none` from the label");
    assert_eq!(docker.connect_from("other", BRIDGE_IP, d), Ok(()), "unmatched: not enforced");
    let web = daemon.sandbox("web-1");
    assert_eq!(web["policy"], "web");
    assert_eq!(web["origin"], "container");
    assert_eq!(daemon.sandbox("labelled")["policy"], "none");

    // Events and metrics name the container, with its short id.
    let id = docker.ok(&["inspect", "-f", "{{.Id}}", "web-1"]);
    let ev = events_at_least(&daemon.events, 2);
    let e = find_event(&ev, &[("container_name", json!("web-1"))]);
    assert_eq!(e["container_id"], &id[..12]);
    let (_, metrics) = daemon.get("/metrics");
    let series = format!(r#"sandbox="web-1",container_id="{}""#, &id[..12]);
    assert!(metrics.contains(&series), "{series} in:\n{metrics}");

    // A container restart: attached again, on its new cgroup.
    docker.ok(&["restart", "-t", "0", "web-1"]);
    let again = within(Duration::from_secs(15), || {
        docker
            .connect_from("web-1", BRIDGE_IP, d)
            .is_err_and(|e| e.contains("Operation not permitted"))
            && daemon.state_of("web-1").as_deref() == Some("enforcing")
    });
    assert!(again.is_some(), "{:#}", daemon.status());

    // A daemon restart: re-adopted, nothing attached twice.
    daemon.stop();
    assert!(eperm(docker.connect_from("web-1", BRIDGE_IP, d)), "enforced while the daemon is down");
    daemon.start();
    assert_eq!(daemon.sandbox("web-1")["adopted"], true, "{:#}\n{}", daemon.status(), daemon.log());
    assert!(eperm(docker.connect_from("web-1", BRIDGE_IP, d)));
}

#[test]
fn twenty_start_stop_cycles_leave_no_links_or_pins() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let docker = Dockerd::start();
    let (_allowed, denied) = two_servers();
    let d = denied.addr.port();
    let mut daemon = Daemon::new(&format!(
        "docker:\n  host: {}\npolicies:\n  none:\n    allow: []\nsandboxes:\n  - name: jobs\n    containers: {{name: \"job-*\"}}\n    policy: none\n",
        docker.host
    ));
    daemon.start();
    for i in 0..20 {
        let name = format!("job-{i}");
        docker.sleeper(&name, &[]);
        let enforced =
            within(Duration::from_secs(10), || eperm(docker.connect_from(&name, BRIDGE_IP, d)));
        assert!(enforced.is_some(), "cycle {i}: {:#}", daemon.status());
        docker.ok(&["rm", "-f", &name]);
    }
    let links = netcontrol_tests::pin_abi_dir(&daemon.pin_root).join("daemon/links");
    let empty = within(Duration::from_secs(10), || {
        std::fs::read_dir(&links).map(|d| d.count()).unwrap_or(0) == 0
            && daemon.status()["sandboxes"].as_array().is_some_and(Vec::is_empty)
    });
    assert!(
        empty.is_some(),
        "left behind: {:?}\n{:#}",
        std::fs::read_dir(&links).map(|d| d.count()),
        daemon.status()
    );
    let status = daemon.status();
    let maps = status["maps"].as_array().expect("maps");
    for m in maps.iter().filter(|m| m["map"] != "STATS") {
        assert_eq!(m["entries"], 0, "{m}");
    }
    let out = netcontrol(&["status", "--socket", daemon.socket.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", show(&out));
}

#[test]
fn the_daemon_guards_a_parent_cgroup_and_gives_its_containers_sandboxes() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let docker = Dockerd::start();
    let (allowed, denied) = two_servers();
    let (a, d) = (allowed.addr.port(), denied.addr.port());
    let guard = ParentCgroup::new();
    let mut daemon = Daemon::new(&format!(
        "docker:\n  host: {}\npolicies:\n  ci:\n    allow: [\"{BRIDGE_IP}:{a}\"]\n\
         sandboxes:\n  - name: ci\n    cgroup: {}\n    create: true\n    policy: ci\n",
        docker.host, guard.name
    ));
    daemon.start();
    assert_eq!(daemon.sandbox("ci")["state"], "enforcing");
    let parent = format!("--cgroup-parent=/{}", guard.name);
    let first =
        docker.docker(&["run", "--rm", &parent, IMAGE, "nc", "-w", "2", BRIDGE_IP, &d.to_string()]);
    assert!(
        String::from_utf8_lossy(&first.stderr).contains("Operation not permitted"),
        "the first connect: {}",
        show(&first)
    );
    docker.sleeper("job", &[&parent]);
    let child = within(Duration::from_secs(10), || {
        daemon.status()["sandboxes"].as_array().is_some_and(|l| {
            l.iter()
                .any(|s| s["name"] == "job" && s["origin"] == "child" && s["state"] == "enforcing")
        })
    });
    assert!(child.is_some(), "{:#}", daemon.status());
    assert!(eperm(docker.connect_from("job", BRIDGE_IP, d)));
    assert_eq!(docker.connect_from("job", BRIDGE_IP, a), Ok(()));
    let ev = events_at_least(&daemon.events, 2);
    let e = find_event(&ev, &[("container_name", json!("job"))]);
    assert_eq!(e["sandbox"], "job");
    assert_eq!(daemon.sandbox("job")["policy"], "ci");
    docker.ok(&["rm", "-f", "job"]);
    let gone = within(Duration::from_secs(10), || {
        daemon.status()["sandboxes"]
            .as_array()
            .is_some_and(|l| l.iter().all(|s| s["name"] != "job"))
    });
    assert!(gone.is_some(), "{:#}", daemon.status());
    // The parent stays (and stays enforced) until the configuration drops it.
    daemon.stop();
    drop(daemon);
}

#[test]
fn dns_aware_mode_answers_a_container_from_the_tests_dnsmasq() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let docker = Dockerd::start();
    let dns = netcontrol_tests::dns::Dnsmasq::start(BRIDGE_IP, 5);
    dns.set("api.test", &[BRIDGE_IP]);
    dns.set("evil.test", &[BRIDGE_IP]);
    let (allowed, _denied) = two_servers();
    let a = allowed.addr.port();
    docker.sleeper("app", &["--dns", BRIDGE_IP]);
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = netcontrol_tests::policy_file(
        dir.path(),
        &format!(
            // The names point at the bridge, an address of the host itself: rebinding
            // protection would refuse it even with allow_private.
            "allow: [\"api.test:{a}\"]\ndns:\n  servers: [{BRIDGE_IP}]\n  rebinding: allow\n"
        ),
    );
    let events = dir.path().join("events.jsonl");
    let mut nc = attach(
        &docker,
        &events,
        &["--container", "app", "--policy", policy.to_str().expect("utf-8")],
        "enforcing on container app",
    );
    // Nothing is allowed before the name is looked up...
    assert!(eperm(docker.connect_from("app", BRIDGE_IP, a)));
    // ...the container's own resolver (busybox, --dns) gets its answer through netcontrol...
    let ok = docker.docker(&["exec", "app", "nslookup", "api.test"]);
    let text = String::from_utf8_lossy(&ok.stdout);
    // The answer's line, not the server's ("Address:\t172.17.0.1:53").
    assert!(
        ok.status.success() && text.contains(&format!("Address: {BRIDGE_IP}")),
        "{}",
        show(&ok)
    );
    // ...and then the address is allowed, on the rule's port.
    assert_eq!(docker.connect_from("app", BRIDGE_IP, a), Ok(()));
    // A name the policy does not allow is refused, with an event naming the container.
    let refused = docker.docker(&["exec", "app", "nslookup", "evil.test"]);
    assert!(
        !String::from_utf8_lossy(&refused.stdout).contains("Address: 172.17.0.1"),
        "{}",
        show(&refused)
    );
    let ev = events_at_least(&events, 2);
    let e = find_event(&ev, &[("event", json!("dns")), ("domain", json!("evil.test"))]);
    assert_eq!(e["container_name"], "app");
    nc.stop();
}

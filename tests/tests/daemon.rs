//! `netcontrol daemon` on the real kernel: many sandboxes on one set of programs, a real
//! Prometheus scraping it, kill -9 without failing open, restarts that re-adopt pins, config
//! reloads validated first, the control socket.
//!
//! Every test runs in its own network namespace; "denied" destinations are servers the test
//! started on its private loopback.

use std::{
    io::Write,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use netcontrol_tests::{
    CGROUP_HOOKS, TestCgroup,
    daemon::{Daemon, METRICS_ADDR},
    events_at_least, find_event, in_cgroup, isolate_network, kernel_tests_enabled, parse_probes,
    probe_bin, probe_in,
    prometheus::Prometheus,
    servers, show, unique, within,
};
use serde_json::json;

fn sandbox_yaml(name: &str, cgroup: &Path, policy: &str) -> String {
    format!("  - name: {name}\n    cgroup: {}\n    policy: {policy}\n", cgroup.display())
}

/// A daemon (not started) with one sandbox, "job", on `cgroup`, whose policy "web" allows
/// `allowed`.
fn job_daemon(cgroup: &Path, allowed: &str) -> Daemon {
    Daemon::new(&format!(
        "policies:\n  web:\n    allow: [\"{allowed}\"]\nsandboxes:\n{}",
        sandbox_yaml("job", cgroup, "web")
    ))
}

fn tcp_in(cgroup: &Path, target: &str) -> netcontrol_tests::Probe {
    probe_in(cgroup, &[("tcp", target)]).remove(0)
}

/// The ids of the programs attached to a cgroup, as the kernel lists them.
fn program_ids(cgroup: &Path) -> Vec<u32> {
    netcontrol_tests::cgroup_program_ids(cgroup)
}

fn attached_programs(cgroup: &Path) -> usize {
    program_ids(cgroup).len()
}

/// A sandboxed shell loop trying `targets` over and over, its nc-probe lines going to `log`.
fn keep_trying(cgroup: &Path, targets: &[&str], log: &Path) -> std::process::Child {
    let ops: String = targets.iter().map(|t| format!(" tcp {t}")).collect();
    in_cgroup(cgroup, "sh")
        .arg("-c")
        .arg(format!(
            "while :; do {}{ops}; sleep 0.02; done >> {}",
            probe_bin().display(),
            log.display()
        ))
        .spawn()
        .expect("looper")
}

/// Every probe in `log`: none to `denied` got through, every other one did. Returns how many.
fn never_open(log: &Path, denied: &str) -> usize {
    let probes = parse_probes(&std::fs::read(log).expect("loop log"));
    for p in &probes {
        if p.target == denied {
            assert!(p.is_eperm(), "a denied attempt got through: {p:?}");
        } else {
            assert!(p.ok, "an allowed attempt failed: {p:?}");
        }
    }
    probes.len()
}

#[test]
fn prometheus_counts_blocked_attempts_per_sandbox() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.10", "127.0.0.11"]);
    let (_servers, port) = servers(&["127.0.0.10", "127.0.0.11"]);
    let (denied, allowed) = (format!("127.0.0.10:{port}"), format!("127.0.0.11:{port}"));
    let (alpha, beta) = (TestCgroup::new(), TestCgroup::new());
    let mut d = Daemon::new(&format!(
        "policies:\n  web:\n    allow: [\"{allowed}\"]\nsandboxes:\n{}{}",
        sandbox_yaml("alpha", &alpha.path, "web"),
        sandbox_yaml("beta", &beta.path, "web")
    ));
    d.start();
    let prom = Prometheus::start(METRICS_ADDR);

    const N: usize = 7;
    for _ in 0..N {
        let p = tcp_in(&alpha.path, &denied);
        assert!(p.is_eperm(), "{p:?}");
    }
    for _ in 0..2 {
        let p = tcp_in(&alpha.path, &allowed);
        assert!(p.ok, "{p:?}");
    }
    assert!(tcp_in(&beta.path, &denied).is_eperm());

    for (query, want) in [
        (r#"sum(netcontrol_egress_blocked_total{sandbox="alpha"})"#, N as f64),
        (r#"sum(netcontrol_egress_blocked_total{sandbox="beta"})"#, 1.0),
        (r#"sum(netcontrol_egress_allowed_total{sandbox="alpha",hook="connect4"})"#, 2.0),
        (r#"netcontrol_sandboxes{state="enforcing"}"#, 2.0),
        (r#"netcontrol_allowlist_entries{sandbox="alpha",family="ipv4"}"#, 1.0),
    ] {
        if let Err(last) = prom.wait_for(query, want) {
            panic!("{query}: want {want}, Prometheus says {last:?}\n{}", d.get("/metrics").1);
        }
    }
    // The blocked attempts' reason is a label, the destination is not.
    let (code, body) = d.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        body.contains(r#"netcontrol_egress_blocked_total{sandbox="alpha",hook="connect4",family="ipv4",protocol="tcp",reason="not_allowlisted"} 7"#),
        "{body}"
    );
    assert!(!body.contains("127.0.0.10"), "no destinations in labels: {body}");

    // promtool finds nothing to complain about.
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    lint.stdin.take().expect("stdin").write_all(body.as_bytes()).expect("write");
    let lint = lint.wait_with_output().expect("promtool");
    assert!(
        lint.status.success() && lint.stdout.is_empty() && lint.stderr.is_empty(),
        "promtool: {}",
        show(&lint)
    );

    assert_eq!(d.get("/healthz").0, 200);
    assert_eq!(d.get("/readyz").0, 200);

    // Status: sandboxes, policy, mode, counters, map usage against capacity.
    let a = d.sandbox("alpha");
    assert_eq!(a["state"], "enforcing");
    assert_eq!(a["policy"], "web");
    assert_eq!(a["mode"], "enforce");
    assert_eq!(a["blocked"], N);
    assert_eq!(a["allowed"], 2);
    assert_eq!(a["entries_v4"], 1);
    let status = d.status();
    let v4 = status["maps"]
        .as_array()
        .expect("maps")
        .iter()
        .find(|m| m["map"] == "ALLOW_V4")
        .expect("ALLOW_V4");
    assert_eq!(v4["entries"], 2, "one entry per sandbox: {status:#}");
    assert!(v4["capacity"].as_u64().expect("capacity") >= 1 << 20);
    let text = d.cli(&["status"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("alpha") && text.contains("enforcing") && text.contains("ALLOW_V4 2/"),
        "{text}"
    );
    // What `run` can confine commands to on this kernel is said, whatever it is.
    assert!(text.contains("landlock: "), "{text}");
    assert!(status["landlock"].is_string(), "{status:#}");

    // Events name the sandbox; per-attempt detail is there.
    let events = events_at_least(&d.events, N + 1);
    let e = find_event(&events, &[("sandbox", json!("beta"))]);
    assert_eq!(e["dst_ip"], "127.0.0.10");
    assert_eq!(e["dst_port"], port);
}

#[test]
fn kill_9_never_fails_open_and_a_restart_resumes() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.10", "127.0.0.11", "127.0.0.12"]);
    let (_servers, port) = servers(&["127.0.0.10", "127.0.0.11", "127.0.0.12"]);
    let (denied, allowed) = (format!("127.0.0.10:{port}"), format!("127.0.0.11:{port}"));
    let while_down = format!("127.0.0.12:{port}");
    let cg = TestCgroup::new();
    let mut d = job_daemon(&cg.path, &allowed);
    d.start();
    assert_eq!(attached_programs(&cg.path), CGROUP_HOOKS, "one program per hook");

    // A sandboxed process keeps trying both, the whole time.
    let loop_log = d.dir.path().join("loop.jsonl");
    let mut looper = keep_trying(&cg.path, &[&denied, &allowed], &loop_log);
    std::thread::sleep(Duration::from_millis(400));
    let blocked_before = d.sandbox("job")["blocked"].as_u64().expect("blocked");

    d.kill9();
    // Nothing detached: the kernel still runs the pinned links, and decides as before.
    assert_eq!(attached_programs(&cg.path), CGROUP_HOOKS);
    for _ in 0..5 {
        let p = probe_in(&cg.path, &[("tcp", &while_down), ("tcp", &allowed)]);
        assert!(p[0].is_eperm(), "denied while the daemon is down: {:?}", p[0]);
        assert!(p[1].ok, "allowed while the daemon is down: {:?}", p[1]);
    }
    std::thread::sleep(Duration::from_millis(500));

    d.start();
    std::thread::sleep(Duration::from_millis(400));
    let _ = looper.kill();
    let _ = looper.wait();

    // Attached nothing twice; re-adopted programs, maps and links.
    assert_eq!(attached_programs(&cg.path), CGROUP_HOOKS, "links adopted, not attached again");
    let status = d.status();
    assert_eq!(status["programs_adopted"], true, "{status:#}");
    let job = d.sandbox("job");
    assert_eq!(job["adopted"], true);
    assert_eq!(job["state"], "enforcing");

    // Before, during and after: never a denied connection, always the allowed one.
    let n = never_open(&loop_log, &denied);
    assert!(n > 40, "the loop ran throughout: {n} probes");
    // Counters resumed from the pinned maps, with the attempts made while it was down.
    let blocked_after = job["blocked"].as_u64().expect("blocked");
    assert!(blocked_after >= blocked_before + 5, "{blocked_before} -> {blocked_after}");
    // Events of the attempts made while it was down waited in the pinned ring buffer.
    let events = events_at_least(&d.events, 1);
    let down: Vec<_> = events.iter().filter(|e| e["dst_ip"] == "127.0.0.12").collect();
    let all = within(Duration::from_secs(5), || {
        netcontrol_tests::read_events(&d.events)
            .iter()
            .filter(|e| e["dst_ip"] == "127.0.0.12")
            .count()
            == 5
    });
    assert!(all.is_some(), "events while down: {}", down.len());
    // And the new daemon keeps counting.
    assert!(tcp_in(&cg.path, &denied).is_eperm());
    assert_eq!(d.sandbox("job")["blocked"], blocked_after + 1);
}

#[test]
fn an_invalid_config_is_rejected_with_its_line_and_the_old_one_stays() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.10", "127.0.0.11"]);
    let (_servers, port) = servers(&["127.0.0.10", "127.0.0.11"]);
    let (ten, eleven) = (format!("127.0.0.10:{port}"), format!("127.0.0.11:{port}"));
    let cg = TestCgroup::new();
    let body = |allow: &str, extra: &str| {
        format!(
            "policies:\n  web:\n    allow: [\"{allow}\"]\n{extra}sandboxes:\n{}",
            sandbox_yaml("job", &cg.path, "web")
        )
    };
    let mut d = Daemon::new(&body(&eleven, ""));
    d.start();
    let header_lines = d.header().lines().count();

    // An unknown key: rejected when the file changes, naming file, line and column.
    d.write_config(&body(&ten, "    colour: red\n"));
    let line = d.wait_for_line("keeping the previous configuration", Duration::from_secs(10));
    let at = format!("daemon.yaml:{}:5", header_lines + 4);
    assert!(line.contains(&at) && line.contains("colour"), "want {at} in: {line}");
    // SIGHUP reads it again, and rejects it again.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .expect("SIGHUP");
    let line = d.wait_for_line("SIGHUP", Duration::from_secs(10));
    assert!(line.contains(&at), "{line}");
    // The old policy is enforced as before.
    assert!(tcp_in(&cg.path, &eleven).ok);
    assert!(tcp_in(&cg.path, &ten).is_eperm());
    let (_, metrics) = d.get("/metrics");
    assert!(metrics.contains("netcontrol_config_reload_failures_total 2"), "{metrics}");

    // A policy that parses but names a policy that does not exist: rejected too.
    d.write_config(&body(&ten, "").replace("policy: web", "policy: nope"));
    let line = d.wait_for_line("keeping the previous configuration", Duration::from_secs(10));
    assert!(line.contains("no policy named \"nope\""), "{line}");
    assert!(tcp_in(&cg.path, &eleven).ok);

    // A policy emptied by mistake is not deny-all: refused, the old one keeps working.
    d.write_config(&format!(
        "policies:\n  web: {{}}\nsandboxes:\n{}",
        sandbox_yaml("job", &cg.path, "web")
    ));
    let line = d.wait_for_line("keeping the previous configuration", Duration::from_secs(10));
    assert!(line.contains("the policy has no `allow:` list"), "{line}");
    assert!(tcp_in(&cg.path, &eleven).ok);

    // A valid change applies: the new destination opens, the old one closes.
    d.write_config(&body(&ten, ""));
    d.wait_for_line("reloaded", Duration::from_secs(10));
    assert!(tcp_in(&cg.path, &ten).ok);
    assert!(tcp_in(&cg.path, &eleven).is_eperm());
}

/// The kernel's ids of the cgroup links attached to `cgroup` itself.
fn link_ids(cgroup: &TestCgroup) -> Vec<u64> {
    let out = Command::new("bpftool").args(["-j", "link", "show"]).output().expect("bpftool");
    assert!(out.status.success(), "bpftool: {}", show(&out));
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or(json!([]));
    let mut ids: Vec<u64> = links
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|l| l["cgroup_id"].as_u64() == Some(cgroup.id()))
                .filter_map(|l| l["id"].as_u64())
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}

#[test]
fn entries_that_swap_or_rename_cgroups_keep_them_enforced_throughout() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.10", "127.0.0.11"]);
    let (_servers, port) = servers(&["127.0.0.10", "127.0.0.11"]);
    let (denied, allowed) = (format!("127.0.0.10:{port}"), format!("127.0.0.11:{port}"));
    let (one, two) = (TestCgroup::new(), TestCgroup::new());
    let body = |a: (&str, &TestCgroup), b: (&str, &TestCgroup)| {
        format!(
            "policies:\n  web:\n    allow: [\"{allowed}\"]\nsandboxes:\n{}{}",
            sandbox_yaml(a.0, &a.1.path, "web"),
            sandbox_yaml(b.0, &b.1.path, "web")
        )
    };
    let mut d = Daemon::new(&body(("alpha", &one), ("beta", &two)));
    d.start();
    let links = (link_ids(&one), link_ids(&two));
    assert_eq!(links.0.len(), CGROUP_HOOKS);
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = (dir.path().join("one.log"), dir.path().join("two.log"));
    let mut loops = [
        keep_trying(&one.path, &[&denied, &allowed], &logs.0),
        keep_trying(&two.path, &[&denied, &allowed], &logs.1),
    ];
    let cgroup_of = |d: &Daemon, name: &str| d.sandbox(name)["cgroup"].as_str().map(str::to_owned);
    let on = |c: &TestCgroup| Some(c.path.display().to_string());

    // The entries swap their cgroups, then one is renamed.
    d.write_config(&body(("alpha", &two), ("beta", &one)));
    let swapped = within(Duration::from_secs(20), || cgroup_of(&d, "alpha") == on(&two));
    assert!(swapped.is_some(), "the swap was not applied: {}", d.status());
    d.write_config(&body(("gamma", &two), ("beta", &one)));
    let renamed = within(Duration::from_secs(20), || {
        d.status()["sandboxes"].as_array().is_some_and(|a| a.iter().any(|s| s["name"] == "gamma"))
    });
    assert!(renamed.is_some(), "the rename was not applied: {}", d.status());
    assert_eq!(cgroup_of(&d, "gamma"), on(&two));
    for l in &mut loops {
        let _ = l.kill();
        let _ = l.wait();
    }

    // The same links throughout (never detached to be attached anew), and no denied attempt
    // of either loop got through meanwhile.
    assert_eq!((link_ids(&one), link_ids(&two)), links, "the links were replaced");
    let n = never_open(&logs.0, &denied) + never_open(&logs.1, &denied);
    assert!(n > 4, "the loops ran: {n} probes");
    let log = d.stop();
    assert!(log.contains("was beta: same cgroup, kept attached"), "{log}");
}

#[test]
fn sandboxes_follow_their_cgroups_and_restarts_clean_up() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.10"]);
    let (_servers, port) = servers(&["127.0.0.10"]);
    let denied = format!("127.0.0.10:{port}");
    let later = netcontrol_tests::cgroup2_mount().join(unique("nc-later"));
    let kept = TestCgroup::new();
    let config = |with_kept: bool| {
        format!(
            "policies:\n  none:\n    allow: []\nsandboxes:\n{}{}",
            sandbox_yaml("later", &later, "none"),
            if with_kept { sandbox_yaml("kept", &kept.path, "none") } else { String::new() }
        )
    };
    let mut d = Daemon::new(&config(true));
    d.start();
    assert_eq!(d.sandbox("later")["state"], "waiting");
    assert_eq!(d.status()["sandboxes"].as_array().map(Vec::len), Some(2));

    // The cgroup appears: attached within a second or two.
    std::fs::create_dir(&later).expect("create cgroup");
    let attached = within(Duration::from_secs(5), || d.sandbox("later")["state"] == "enforcing");
    assert!(attached.is_some(), "{:#}", d.status());
    assert!(tcp_in(&later, &denied).is_eperm());
    let id = d.sandbox("later")["cgroup_id"].as_u64().expect("id");
    let links = netcontrol_tests::pin_abi_dir(&d.pin_root).join(format!("daemon/links/{id}"));
    assert!(links.exists());

    // It goes away: its pins go too, and the sandbox waits for it again.
    std::fs::remove_dir(&later).expect("rmdir");
    let cleaned = within(Duration::from_secs(5), || !links.exists());
    assert!(cleaned.is_some(), "pins of a removed cgroup stay: {}", d.log());
    assert_eq!(d.sandbox("later")["state"], "waiting");

    // Stopped, the daemon leaves its sandboxes enforced...
    d.stop();
    assert!(tcp_in(&kept.path, &denied).is_eperm());
    // ...and one no longer configured when it starts again is let go.
    d.write_config(&config(false));
    d.start();
    assert!(
        !netcontrol_tests::pin_abi_dir(&d.pin_root)
            .join(format!("daemon/links/{}", kept.id()))
            .exists()
    );
    assert_eq!(attached_programs(&kept.path), 0);
    assert!(tcp_in(&kept.path, &denied).ok);
}

#[test]
fn the_control_socket_attaches_detaches_and_reports() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.10", "127.0.0.11"]);
    let (_servers, port) = servers(&["127.0.0.10", "127.0.0.11"]);
    let (denied, allowed) = (format!("127.0.0.10:{port}"), format!("127.0.0.11:{port}"));
    let cg = TestCgroup::new();
    let cgroup = cg.path.to_str().expect("utf-8 path");
    let mut d = Daemon::new(&format!("policies:\n  web:\n    allow: [\"{allowed}\"]\n"));
    d.start();

    let out =
        d.cli(&["attach", "--daemon", "--cgroup", cgroup, "--allow", &allowed, "--name", "dyn"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("enforcing on"), "{}", show(&out));
    assert!(tcp_in(&cg.path, &denied).is_eperm());
    assert!(tcp_in(&cg.path, &allowed).ok);
    let s = d.sandbox("dyn");
    assert_eq!(s["origin"], "control");
    assert_eq!(s["policy"], "--allow");

    // Root only: even if the socket's mode were opened up, the daemon checks who asks.
    {
        use std::os::unix::{fs::PermissionsExt, process::CommandExt};
        let (_copy_dir, bin) =
            netcontrol_tests::world_executable(&netcontrol_tests::netcontrol_bin());
        std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        std::fs::set_permissions(&d.socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let out = Command::new(bin)
            .args(["status", "--socket"])
            .arg(&d.socket)
            .uid(65534)
            .gid(65534)
            .output()
            .expect("status as nobody");
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("for root only"),
            "{}",
            show(&out)
        );
    }

    // Clear refusals.
    let again =
        d.cli(&["attach", "--daemon", "--cgroup", cgroup, "--policy-name", "web", "--name", "dyn"]);
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("already a sandbox named \"dyn\""),
        "{}",
        show(&again)
    );
    let other = TestCgroup::new();
    let other_path = other.path.to_str().expect("utf-8");
    let unknown = d.cli(&["attach", "--daemon", "--cgroup", other_path, "--policy-name", "nope"]);
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("no policy named \"nope\""),
        "{}",
        show(&unknown)
    );
    let by_name = d.cli(&["attach", "--daemon", "--cgroup", other_path, "--policy-name", "web"]);
    assert!(by_name.status.success(), "{}", show(&by_name));
    assert!(tcp_in(&other.path, &denied).is_eperm());

    // Kept across a restart of the daemon.
    d.stop();
    d.start();
    assert_eq!(d.sandbox("dyn")["adopted"], true);
    assert!(tcp_in(&cg.path, &denied).is_eperm());

    // Detach through the daemon.
    let out = d.cli(&["detach", "--cgroup", cgroup]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(tcp_in(&cg.path, &denied).ok);
    assert_eq!(attached_programs(&cg.path), 0);
    assert!(d.status()["sandboxes"].as_array().expect("list").iter().all(|s| s["name"] != "dyn"));

    // Without a daemon, detach removes the pins itself.
    d.stop();
    assert!(tcp_in(&other.path, &denied).is_eperm(), "still enforced by its pins");
    let out = d.cli(&["detach", "--cgroup", other_path]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(tcp_in(&other.path, &denied).ok);

    // uninstall refuses while a daemon answers, then removes every pin.
    d.start();
    let out = d.cli(&["attach", "--daemon", "--cgroup", cgroup, "--policy-name", "web"]);
    assert!(out.status.success(), "{}", show(&out));
    let refused = d.cli(&["uninstall"]);
    assert!(
        !refused.status.success()
            && String::from_utf8_lossy(&refused.stderr).contains("stop it first"),
        "{}",
        show(&refused)
    );
    d.stop();
    let out = d.cli(&["uninstall"]);
    assert!(out.status.success(), "{}", show(&out));
    assert!(!d.pin_root.exists(), "{}", show(&out));
    assert!(tcp_in(&cg.path, &denied).ok);
    assert_eq!(attached_programs(&cg.path), 0);
}

#[test]
fn pinned_maps_of_another_layout_are_refused() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let d = Daemon::new("sandboxes: []\n");
    // A STATS map as another version might have pinned it: other key size.
    let maps = netcontrol_tests::pin_abi_dir(&d.pin_root).join("daemon/maps");
    std::fs::create_dir_all(&maps).expect("mkdir on bpffs");
    let out = Command::new("bpftool")
        .args(["map", "create"])
        .arg(maps.join("STATS"))
        .args(["type", "percpu_hash", "key", "4", "value", "8", "entries", "16", "name", "STATS"])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "{}", show(&out));
    let out = d.start_failing();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("STATS was made by another netcontrol version")
            && err.contains("netcontrol uninstall"),
        "{}",
        show(&out)
    );
}

#[test]
fn addresses_learned_from_dns_stay_allowed_across_a_restart() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = netcontrol_tests::dns::Dnsmasq::start("127.0.0.53", 5);
    dns.set("api.test", &["127.0.0.20"]);
    let (_servers, port) = servers(&["127.0.0.20", "127.0.0.21"]);
    let cg = TestCgroup::new();
    let mut d = Daemon::new(&format!(
        "policies:\n  api:\n    allow: [\"api.test:{port}\"]\n    dns: {{servers: [127.0.0.53], rebinding: allow}}\nsandboxes:\n{}",
        sandbox_yaml("job", &cg.path, "api")
    ));
    d.start();
    let learned = format!("127.0.0.20:{port}");
    let (api, other) = (format!("{}/api.test", dns.addr), format!("{}/other.test", dns.addr));
    let p = probe_in(&cg.path, &[("dns", &api), ("tcp", &learned)]);
    assert_eq!(p[0].json["answers"], json!(["127.0.0.20"]), "{:?}", p[0]);
    assert!(p[1].ok, "{:?}", p[1]);

    d.kill9();
    assert!(tcp_in(&cg.path, &learned).ok, "learned entries stay in the pinned maps");
    d.start();
    // Carried over without a new DNS answer (the restarted daemon does not know the name yet).
    assert!(tcp_in(&cg.path, &learned).ok);
    assert!(tcp_in(&cg.path, &format!("127.0.0.21:{port}")).is_eperm());
    // DNS works again through the new daemon's proxy, and a blocked name is refused.
    let p = probe_in(&cg.path, &[("dns", &api), ("dns", &other)]);
    assert_eq!(p[0].json["answers"], json!(["127.0.0.20"]), "{:?}", p[0]);
    assert_eq!(p[1].json["rcode"], "Non-Existent Domain", "{:?}", p[1]);
    assert_eq!(d.sandbox("job")["dns_refused"], 1);
}

#[test]
fn other_programs_behind_the_links_are_replaced_without_a_gap() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.10", "127.0.0.11"]);
    let (_servers, port) = servers(&["127.0.0.10", "127.0.0.11"]);
    let (denied, allowed) = (format!("127.0.0.10:{port}"), format!("127.0.0.11:{port}"));
    let cg = TestCgroup::new();
    let mut d = job_daemon(&cg.path, &allowed);
    d.start();
    let before = program_ids(&cg.path);
    let loop_log = d.dir.path().join("loop.jsonl");
    let mut looper = keep_trying(&cg.path, &[&denied, &allowed], &loop_log);
    std::thread::sleep(Duration::from_millis(300));
    d.stop();
    // Other programs (as after an upgrade; here: with kernel-side logging compiled in): the
    // pinned links run the old ones, so each is replaced, the new one attached first.
    d.start_with(&["--bpf-log", "info"]);
    std::thread::sleep(Duration::from_millis(300));
    let after = program_ids(&cg.path);
    assert_eq!(after.len(), CGROUP_HOOKS, "one program per hook: {after:?}");
    assert!(after.iter().all(|id| !before.contains(id)), "{before:?} -> {after:?}");
    assert_eq!(d.status()["programs_adopted"], false);
    assert_eq!(d.sandbox("job")["adopted"], false);
    let _ = looper.kill();
    let _ = looper.wait();
    let n = never_open(&loop_log, &denied);
    assert!(n > 20, "the loop ran throughout: {n} probes");
    assert!(tcp_in(&cg.path, &denied).is_eperm());
}

/// A sandbox that makes more distinct denied attempts than the daemon's DENIALS map has room
/// for gets no more events than its budget from then on (the rest are counted as its lost
/// events, not pushed into the shared ring), and another sandbox's attempt is still reported.
#[test]
fn a_sandbox_that_fills_the_denials_map_hides_nothing_of_another() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.12"]);
    let (_servers, port) = servers(&["127.0.0.12"]);
    let (flood, quiet) = (TestCgroup::new(), TestCgroup::new());
    let mut d = Daemon::new(&format!(
        "policies:\n  none:\n    allow: []\nsandboxes:\n{}{}",
        sandbox_yaml("flood", &flood.path, "none"),
        sandbox_yaml("quiet", &quiet.path, "none")
    ));
    d.start();
    // Twice DENIALS' room (16 384), each a destination of its own.
    const SPRAY: u64 = 32_768;
    let started = std::time::Instant::now();
    let p = probe_in(&flood.path, &[(&format!("udp-spray:{SPRAY}"), "127.0.0.10:20000")]);
    assert!(p[0].ok, "{p:?}");
    let seconds = started.elapsed().as_secs() + 1;
    assert!(tcp_in(&quiet.path, &format!("127.0.0.12:{port}")).is_eperm());

    // Every attempt of the flood is in an event, a summary or its lost count.
    let accounted = || {
        let events = netcontrol_tests::read_events(&d.events);
        let counted: u64 = events
            .iter()
            .filter(|e| e["sandbox"] == "flood")
            .map(|e| e["count"].as_u64().unwrap_or(0))
            .sum();
        (events, counted + d.sandbox("flood")["events_lost"].as_u64().unwrap_or(0))
    };
    let mut last = (Vec::new(), 0);
    let done = within(Duration::from_secs(20), || {
        last = accounted();
        last.1 == SPRAY
    });
    let (events, n) = last;
    assert!(done.is_some(), "flood accounted: {n} of {SPRAY}");
    let own = events.iter().filter(|e| e["sandbox"] == "flood" && e["summary"] != true).count();
    assert!(
        own as u64 <= 500 * (seconds + 1),
        "{own} events of their own in {seconds} s: beyond the sandbox's budget of 500 a second"
    );
    assert!(d.sandbox("flood")["events_lost"].as_u64() > Some(0), "{}", d.status());
    let e = find_event(&events, &[("sandbox", json!("quiet"))]);
    assert_eq!((e["dst_ip"].clone(), e["count"].clone()), (json!("127.0.0.12"), json!(1)));
    d.stop();
}

/// When joining a sandbox's network namespace is refused (here a seccomp filter fails the
/// daemon's setns(2), as a missing capability or an LSM would), the sandbox is enforced
/// anyway and its DNS fails closed; the daemon is not ready and says which sandbox and why.
#[test]
fn a_dns_proxy_that_cannot_be_placed_leaves_nothing_open() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let ns = unique("nc-ns");
    netcontrol_tests::sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up"));
    let ours = std::fs::read_link("/proc/thread-self/ns/net").expect("our netns");
    let cg = TestCgroup::new();
    let mut resident =
        cg.command("ip").args(["netns", "exec", &ns, "sleep", "600"]).spawn().expect("ip");
    let moved = within(Duration::from_secs(10), || {
        std::fs::read_link(format!("/proc/{}/ns/net", resident.id())).is_ok_and(|l| l != ours)
    });
    assert!(moved.is_some(), "the resident is in its namespace");
    let mut d = Daemon::new(&format!(
        "policies:\n  web:\n    allow: [\"api.example.test:443\"]\n    dns: {{servers: [\"127.0.0.1:53\"]}}\nsandboxes:\n{}",
        sandbox_yaml("job", &cg.path, "web")
    ));
    d.wrapper = vec![probe_bin(), "--deny-setns".into()];
    d.start();
    let inside = |op: &str, target: &str| {
        let out = cg
            .command("ip")
            .args(["netns", "exec", &ns])
            .arg(probe_bin())
            .args([op, target])
            .output()
            .expect("probe");
        parse_probes(&out.stdout).remove(0)
    };
    // Enforced: refused by netcontrol (EPERM), not by the absent listener (ECONNREFUSED).
    let p = inside("tcp", "127.0.0.10:9");
    assert!(p.is_eperm(), "{p:?}");
    // Its DNS finds no proxy: no answer, for an allowed name either.
    let p = inside("dns", "127.0.0.53:53/api.example.test");
    assert!(!p.ok, "{p:?}");

    let s = d.sandbox("job");
    assert_eq!(s["state"], "enforcing", "{s:#}");
    assert!(s["problem"].as_str().is_some_and(|p| p.starts_with("dns_proxy_unplaced")), "{s:#}");
    let (code, body) = d.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("job: dns_proxy_unplaced"), "{body}");
    let (_, metrics) = d.get("/metrics");
    assert!(
        metrics.contains(
            r#"netcontrol_sandbox_not_enforcing{sandbox="job",reason="dns_proxy_unplaced"} 1"#
        ),
        "{metrics}"
    );
    let log = d.stop();
    assert!(log.contains("its DNS proxy cannot be placed in its network namespace"), "{log}");
    let _ = resident.kill();
    let _ = resident.wait();
    netcontrol_tests::sh(&format!("ip netns del {ns}"));
}

/// A daemon of another pin ABI version left its links (a fixture: this version's tree, stopped
/// and renamed to the previous version's name, so that the new daemon neither reads nor
/// updates it). The new daemon attaches its own first, then removes the old ones: a loop
/// sees no gap, a destination the new configuration adds is reachable (no intersection with
/// the old policy), and the old tree is gone.
#[test]
fn another_abi_version_is_taken_over_without_a_gap() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.10", "127.0.0.11", "127.0.0.12"]);
    let (_servers, port) = servers(&["127.0.0.10", "127.0.0.11", "127.0.0.12"]);
    let (denied, allowed) = (format!("127.0.0.10:{port}"), format!("127.0.0.11:{port}"));
    let added = format!("127.0.0.12:{port}");
    let cg = TestCgroup::new();
    let config = |allow: &str| {
        format!(
            "policies:\n  web:\n    allow: [{allow}]\nsandboxes:\n{}",
            sandbox_yaml("job", &cg.path, "web")
        )
    };
    let mut d = Daemon::new(&config(&format!("\"{allowed}\"")));
    d.start();
    d.stop();
    let version = netcontrol_common::abi::PIN_ABI_VERSION;
    let (ours, previous) =
        (d.pin_root.join(format!("v{version}")), d.pin_root.join(format!("v{}", version - 1)));
    std::fs::rename(&ours, &previous).expect("the fixture: rename the tree");
    assert!(tcp_in(&cg.path, &denied).is_eperm(), "the old version's links enforce");
    assert!(!tcp_in(&cg.path, &added).ok, "and know nothing of the addition");

    let loop_log = d.dir.path().join("loop.jsonl");
    let mut looper = keep_trying(&cg.path, &[&denied, &allowed], &loop_log);
    d.write_config(&config(&format!("\"{allowed}\", \"{added}\"")));
    d.start();
    let took_over = within(Duration::from_secs(10), || !previous.exists());
    assert!(took_over.is_some(), "the old tree is removed: {}", d.log());
    assert!(tcp_in(&cg.path, &added).ok, "the addition takes effect");
    assert!(tcp_in(&cg.path, &denied).is_eperm());
    let _ = looper.kill();
    let _ = looper.wait();
    assert!(never_open(&loop_log, &denied) > 0, "the loop ran");
    assert_eq!(attached_programs(&cg.path), CGROUP_HOOKS, "no lingering old links");
    let log = d.stop();
    assert!(log.contains("took over cgroup"), "{log}");
}

/// Pinned maps cannot be resized: a daemon started with another `--event-buffer` sets the old
/// pins aside, starts its own, and takes over from the old ones without a gap.
#[test]
fn a_changed_event_buffer_takes_effect_without_a_gap() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.10", "127.0.0.11"]);
    let (_servers, port) = servers(&["127.0.0.10", "127.0.0.11"]);
    let (denied, allowed) = (format!("127.0.0.10:{port}"), format!("127.0.0.11:{port}"));
    let cg = TestCgroup::new();
    let mut d = job_daemon(&cg.path, &allowed);
    d.start();
    d.stop();
    let loop_log = d.dir.path().join("loop.jsonl");
    let mut looper = keep_trying(&cg.path, &[&denied, &allowed], &loop_log);
    d.start_with(&["--event-buffer", "512"]);
    let version = netcontrol_common::abi::PIN_ABI_VERSION;
    let aside = || {
        std::fs::read_dir(&d.pin_root)
            .expect("pin root")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&format!("v{version}_aside_")))
    };
    assert!(within(Duration::from_secs(10), || !aside()).is_some(), "taken over: {}", d.log());
    let _ = looper.kill();
    let _ = looper.wait();
    assert!(never_open(&loop_log, &denied) > 0, "the loop ran");
    assert_eq!(attached_programs(&cg.path), CGROUP_HOOKS, "no lingering old links");
    let events = d.pin_root.join(format!("v{version}/daemon/maps/EVENTS"));
    let out = Command::new("bpftool")
        .args(["-j", "map", "show", "pinned"])
        .arg(&events)
        .output()
        .expect("bpftool");
    let map: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(map["max_entries"], 512 * 1024, "{map}");
    let log = d.stop();
    assert!(log.contains("holds 1048576 entries, this daemon wants 524288"), "{log}");
}

#[test]
fn a_reload_that_waits_on_dns_holds_up_no_other_sandbox_s_answers() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = netcontrol_tests::dns::Dnsmasq::start("127.0.0.53", 5);
    let ips: Vec<String> = (1..=40).map(|i| format!("127.0.1.{i}")).collect();
    let names: Vec<(String, String)> =
        ips.iter().enumerate().map(|(i, ip)| (format!("n{i}.api.test"), ip.clone())).collect();
    dns.set_many(&names);
    let (_servers, port) = servers(&ips.iter().map(String::as_str).collect::<Vec<_>>());
    // A DNS server that never answers: a resolver-mode sandbox waits for it on its start.
    let silent = std::net::UdpSocket::bind("127.0.0.54:53").expect("bind the silent server");
    silent.set_nonblocking(true).expect("nonblocking");
    let (job, slow) = (TestCgroup::new(), TestCgroup::new());
    let base = format!(
        "policies:\n  api:\n    allow: [\"*.api.test:{port}\"]\n    dns: {{servers: [127.0.0.53], rebinding: allow}}\n  \
         slow:\n    allow: [\"never.test:{port}\"]\n    dns: {{mode: resolver, servers: [127.0.0.54], timeout: 3s}}\n\
         sandboxes:\n{}",
        sandbox_yaml("job", &job.path, "api")
    );
    let mut d = Daemon::new(&base);
    d.start();
    let lookup_and_connect = |i: usize| {
        let (name, ip) = &names[i % names.len()];
        let p = probe_in(
            &job.path,
            &[("dns", &format!("{}/{name}", dns.addr)), ("tcp", &format!("{ip}:{port}"))],
        );
        p[0].json["answers"] == json!([ip]) && p[1].ok
    };
    assert!(lookup_and_connect(0));

    // The reload starts "slow", which waits (about 7 s) for an answer that never comes.
    d.write_config(&format!("{base}{}", sandbox_yaml("slow", &slow.path, "slow")));
    let mut buf = [0u8; 512];
    let asked = within(Duration::from_secs(30), || silent.recv_from(&mut buf).is_ok());
    assert!(asked.is_some(), "the reload never asked the silent server: {}", d.log());
    // Meanwhile every answer of "job" is allowed before it is released: each name is new to
    // the sandbox, so each connect needs its own map write.
    let mut during = 0;
    for i in 1..=20 {
        let ok = lookup_and_connect(i);
        let log = d.log();
        assert!(ok, "lookup and connect {i}: {log}");
        if !log.contains("reloaded") {
            during += 1;
        }
    }
    assert!(during >= 3, "only {during} lookups while the reload ran");
    d.wait_for_line("reloaded", Duration::from_secs(30));
    assert!(lookup_and_connect(21));
    let (_, metrics) = d.get("/metrics");
    let held = metrics.lines().find(|l| {
        l.contains("netcontrol_dns_queries") && l.contains("hold_timeout") && l.contains("\"job\"")
    });
    assert!(held.is_none_or(|l| l.ends_with(" 0")), "{held:?}");
}

/// Clients that connect and stall, or send garbage, hold nothing for long: the control socket
/// answers bytes that are not UTF-8 and cuts off a silent client, and the metrics server closes
/// connections that never finish their headers, while scrapes and status keep working.
#[test]
fn stalled_and_garbled_clients_of_the_daemon_s_sockets_are_cut_off() {
    use std::io::Read;
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let cg = TestCgroup::new();
    let mut d = job_daemon(&cg.path, "127.0.0.1:1");
    d.start();
    let unix = || std::os::unix::net::UnixStream::connect(&d.socket).expect("connect");

    let mut garbled = unix();
    garbled.write_all(b"{\"op\": \"st\xffatus\"}\n").expect("write");
    let mut answer = String::new();
    garbled.read_to_string(&mut answer).expect("an answer");
    assert!(answer.contains("not a valid request"), "{answer}");

    // Silent clients (more than the socket serves at once) and half-sent HTTP requests.
    let silent: Vec<_> = (0..40).map(|_| unix()).collect();
    let stalled: Vec<std::net::TcpStream> = (0..200)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(METRICS_ADDR).expect("connect to metrics");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").expect("half a request");
            s
        })
        .collect();
    // Status and scrapes still answer: the first within the socket's share, the others once
    // the stalled ones are gone.
    assert_eq!(d.sandbox("job")["state"], "enforcing");
    let scraped = within(Duration::from_secs(30), || d.get("/metrics").0 == 200);
    assert!(scraped.is_some(), "no scrape while clients stall");
    // Every stalled client is closed by the daemon (EOF or reset), none after more than
    // the timeouts (5 s for headers, 10 s for a request) plus slack.
    let closed = |mut s: &std::net::TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut buf = [0u8; 256];
        !matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    };
    assert!(stalled.iter().all(closed), "a stalled HTTP client was kept open");
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(40))).expect("timeout");
        let mut answer = String::new();
        // Served (after the others) or cut off: an answer saying so, or EOF.
        s.read_to_string(&mut answer).expect("the daemon ends a silent connection");
        assert!(answer.is_empty() || answer.contains("no request within"), "{answer}");
    }
    assert_eq!(d.sandbox("job")["state"], "enforcing");
}

#[test]
fn an_edited_policy_file_is_applied_without_a_signal() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.10", "127.0.0.11"]);
    let (_servers, port) = servers(&["127.0.0.10", "127.0.0.11"]);
    let (ten, eleven) = (format!("127.0.0.10:{port}"), format!("127.0.0.11:{port}"));
    let cg = TestCgroup::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let web = dir.path().join("web.yaml");
    netcontrol_tests::write_atomic(&web, &format!("allow: [\"{eleven}\"]\n"));
    let mut d = Daemon::new(&format!(
        "policy_files:\n  web: {}\nsandboxes:\n{}",
        web.display(),
        sandbox_yaml("job", &cg.path, "web")
    ));
    d.start();
    assert!(tcp_in(&cg.path, &eleven).ok);
    assert!(tcp_in(&cg.path, &ten).is_eperm());

    netcontrol_tests::write_atomic(&web, &format!("allow: [\"{ten}\"]\n"));
    d.wait_for_line("reloaded", Duration::from_secs(10));
    assert!(tcp_in(&cg.path, &ten).ok);
    assert!(tcp_in(&cg.path, &eleven).is_eperm());
    // A broken edit is refused, naming the policy file, and the policy stays.
    netcontrol_tests::write_atomic(&web, "allow: [\"nope:99999\"]\n");
    let line = d.wait_for_line("keeping the previous configuration", Duration::from_secs(10));
    assert!(line.contains("web.yaml:1:"), "{line}");
    assert!(tcp_in(&cg.path, &ten).ok);
}

/// A daemon (not started) whose open-files limit is `files`, with `n` sandboxes "s<i>" on
/// cgroups of their own, each DNS-aware with a domain rule (so each needs a DNS proxy).
fn proxied_daemon(n: usize, files: usize) -> (Daemon, Vec<TestCgroup>) {
    let cgroups: Vec<TestCgroup> = (0..n).map(|_| TestCgroup::new()).collect();
    let sandboxes: String = cgroups
        .iter()
        .enumerate()
        .map(|(i, cg)| sandbox_yaml(&format!("s{i}"), &cg.path, "api"))
        .collect();
    let mut d = Daemon::new(&format!(
        "policies:\n  api:\n    allow: [\"api.test:443\"]\n    dns: {{servers: [127.0.0.53]}}\nsandboxes:\n{sandboxes}"
    ));
    d.wrapper = vec!["prlimit".into(), format!("--nofile={files}:{files}").into(), "--".into()];
    (d, cgroups)
}

/// Out of file descriptors is never unenforced: under a low open-files limit, sandboxes whose
/// DNS proxy gets no sockets are denied everything instead (a stand-in that needs no fd of
/// its own), and the daemon says it is not ready.
#[test]
fn running_out_of_file_descriptors_leaves_no_sandbox_open() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = netcontrol_tests::Server::start("127.0.0.10");
    // Enough for the daemon itself and some sandboxes' DNS proxies, not for all 60.
    let (mut d, cgroups) = proxied_daemon(60, 160);
    d.start();
    let status = d.status();
    let all = status["sandboxes"].as_array().expect("sandboxes");
    let stand_ins = all.iter().filter(|s| s["problem"].is_string()).count();
    assert!(stand_ins > 0, "the limit was not reached: {status:#}");
    assert!(stand_ins < all.len(), "no sandbox got its policy: {status:#}");
    for (i, cg) in cgroups.iter().enumerate() {
        let p = tcp_in(&cg.path, &denied.target());
        if !p.is_eperm() {
            panic!(
                "s{i} ({}) is open: {p:?}\nprograms {:?}\n{}",
                d.sandbox(&format!("s{i}"))["problem"],
                program_ids(&cg.path),
                d.log()
            );
        }
    }
    assert_eq!(d.get("/readyz").0, 503, "ready while sandboxes only stand in");
    let (_, metrics) = d.get("/metrics");
    assert!(metrics.contains("reason=\"deny_all_stand_in\""), "{metrics}");
}

/// A sandbox that varies what it attempts (200 raw-socket protocols, each a key of its own in
/// STATS) gets its share of the counters and no more: its totals stay right (what is beyond
/// its share is counted under folded keys), and every other sandbox is still counted.
#[test]
fn one_sandbox_cannot_fill_the_counters_of_all() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = netcontrol_tests::Server::start("127.0.0.10");
    let (hog, other) = (TestCgroup::new(), TestCgroup::new());
    let mut d = Daemon::new(&format!(
        "policies:\n  none:\n    allow: []\nsandboxes:\n{}{}",
        sandbox_yaml("hog", &hog.path, "none"),
        sandbox_yaml("other", &other.path, "none")
    ));
    d.start();
    let p = probe_in(&hog.path, &[("raw-protocols:200", "-")]).remove(0);
    assert!(p.ok, "{p:?}");
    assert!(tcp_in(&other.path, &denied.target()).is_eperm());
    assert_eq!(d.sandbox("hog")["blocked"], 200, "every attempt counted");
    assert_eq!(d.sandbox("other")["blocked"], 1);
    let (_, metrics) = d.get("/metrics");
    let series = |sandbox: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with("netcontrol_egress_blocked_total{"))
            .filter(|l| l.contains(&format!("sandbox=\"{sandbox}\"")))
            .count() as u64
    };
    let share = netcontrol_common::abi::STATS_KEYS_PER_SANDBOX
        + netcontrol_common::abi::STATS_FOLDED_PER_SANDBOX;
    assert!(series("hog") <= share, "{} series for hog: {metrics}", series("hog"));
    assert!(metrics.contains("hook=\"beyond_share\""), "{metrics}");
    assert!(metrics.contains("netcontrol_stats_map_full_total 0"), "{metrics}");
}

/// One tenant holding thousands of TCP connections to its DNS proxy takes only its share:
/// another sandbox's lookups (UDP and TCP) keep working, the daemon's open files and memory
/// stay bounded, and status answers.
#[test]
fn a_sandbox_flooding_its_dns_proxy_leaves_other_tenants_their_dns() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dns = netcontrol_tests::dns::Dnsmasq::start("127.0.0.53", 5);
    dns.set("api.test", &["127.0.0.20"]);
    let (hog, quiet) = (TestCgroup::new(), TestCgroup::new());
    let mut d = Daemon::new(&format!(
        "policies:\n  api:\n    allow: [\"api.test:443\"]\n    dns: {{servers: [127.0.0.53], rebinding: allow}}\nsandboxes:\n{}{}",
        sandbox_yaml("hog", &hog.path, "api"),
        sandbox_yaml("quiet", &quiet.path, "api")
    ));
    d.start();
    let fds = netcontrol_tests::open_fds;
    let rss_kib = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok()))
            })
            .unwrap_or(0)
    };
    let (fds_before, rss_before) = (fds(d.pid()), rss_kib(d.pid()));
    let mut flood = netcontrol_tests::hold_connections(
        in_cgroup(&hog.path, probe_bin()),
        2000,
        "127.0.0.53:53",
    );
    let lookups = probe_in(
        &quiet.path,
        &[("dns", "127.0.0.53:53/api.test"), ("dns-tcp", "127.0.0.53:53/api.test")],
    );
    for p in &lookups {
        assert_eq!(p.json["answers"], json!(["127.0.0.20"]), "{p:?}");
    }
    assert_eq!(d.sandbox("quiet")["state"], "enforcing");
    let (fds_during, rss_during) = (fds(d.pid()), rss_kib(d.pid()));
    assert!(
        fds_during < fds_before + 32 + 16, // 32: a sandbox's share of TCP DNS connections
        "the daemon went from {fds_before} to {fds_during} open files"
    );
    assert!(
        rss_during < rss_before + 32 * 1024,
        "the daemon grew from {rss_before} KiB to {rss_during} KiB"
    );
    drop(flood.stdin.take());
    let _ = flood.wait();
}

/// The scale of the open-files test above: 2000 DNS-aware sandboxes under the common limit of
/// 1024 files. Those whose proxy gets no sockets are denied everything; none is open, and the
/// daemon says it is not ready.
#[test]
fn two_thousand_sandboxes_under_1024_files_leave_none_open() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = netcontrol_tests::Server::start("127.0.0.10");
    let (mut d, cgroups) = proxied_daemon(2000, 1024);
    d.ready_timeout = Duration::from_secs(180);
    d.start();
    let status = d.status();
    let all = status["sandboxes"].as_array().expect("sandboxes");
    assert_eq!(all.len(), 2000);
    let not_enforcing: Vec<&serde_json::Value> =
        all.iter().filter(|s| s["state"] != "enforcing").collect();
    assert!(
        not_enforcing.is_empty(),
        "{} not enforcing: {:#}",
        not_enforcing.len(),
        not_enforcing[0]
    );
    let stand_ins = all.iter().filter(|s| s["problem"].is_string()).count();
    assert!(stand_ins > 0 && stand_ins < 2000, "{stand_ins} stand-ins");
    // The kernel agrees: a sample (every 10th) has netcontrol's programs, every 20th is probed.
    for (i, cg) in cgroups.iter().enumerate().filter(|(i, _)| i % 10 == 0) {
        assert!(attached_programs(&cg.path) > 0, "s{i} has no programs attached");
        if i % 20 == 0 {
            let p = tcp_in(&cg.path, &denied.target());
            assert!(
                p.is_eperm(),
                "s{i} ({}) is open: {p:?}",
                d.sandbox(&format!("s{i}"))["problem"]
            );
        }
    }
    assert_eq!(d.get("/readyz").0, 503);
}

/// `--max-open-files` raises the hard limit where the agent may (CAP_SYS_RESOURCE), and says
/// so where it may not, starting anyway with what it has.
#[test]
fn the_open_files_limit_is_raised_or_the_daemon_says_why_not() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let cg = TestCgroup::new();
    let mut d = job_daemon(&cg.path, "127.0.0.1:1");
    d.wrapper = vec!["prlimit".into(), "--nofile=512:512".into(), "--".into()];
    d.start_with(&["--max-open-files", "4096"]);
    let log = d.log();
    assert!(
        log.contains("open files limit: 4096")
            || log.contains("raising the open-files limit to 4096: Operation not permitted"),
        "{log}"
    );
    assert_eq!(d.sandbox("job")["state"], "enforcing");
}

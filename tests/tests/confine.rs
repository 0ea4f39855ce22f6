//! `netcontrol run` confines its command beyond its sockets: a user of its own (`--user
//! auto`), no privilege gain, no ptrace or fd theft from processes outside its sandbox (also of
//! the same user, another sandbox's included), no signals or abstract unix sockets outside it
//! (Landlock), and no socket families beyond IP, unix and netlink.

use std::{
    os::unix::net::UnixListener,
    process::{Child, Command, Stdio},
    time::Duration,
};

use netcontrol_tests::{
    Probe, find_event, isolate_network, kernel_tests_enabled, netcontrol, parse_probes, probe_bin,
    read_events, show, unique, world_executable,
};
use serde_json::json;

/// `netcontrol run ARGS -- nc-probe OPS`, the probe runnable by any user; its probes, its
/// stderr and the events.
fn run_probe(args: &[&str], ops: &[(&str, &str)]) -> (Vec<Probe>, String, Vec<serde_json::Value>) {
    let (_dir, probe) = world_executable(&probe_bin());
    let events = tempfile::tempdir().expect("tempdir");
    let path = events.path().join("e.jsonl");
    let mut argv: Vec<String> = vec!["run".into(), "--events".into(), path.display().to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    argv.push("--".into());
    argv.push(probe.display().to_string());
    for (op, target) in ops {
        argv.push(op.to_string());
        argv.push(target.to_string());
    }
    let refs: Vec<&str> = argv.iter().map(String::as_str).collect();
    let out = netcontrol(&refs);
    let probes = parse_probes(&out.stdout);
    assert_eq!(probes.len(), ops.len(), "{}", show(&out));
    (probes, String::from_utf8_lossy(&out.stderr).into_owned(), read_events(&path))
}

/// A process outside any sandbox, as `user`, holding an fd 3 (for pidfd_getfd).
fn bystander(user: &str) -> Child {
    Command::new("setpriv")
        .args([
            "--reuid",
            user,
            "--regid",
            "65534",
            "--clear-groups",
            "sh",
            "-c",
            "exec 3</dev/null; exec sleep 600",
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("setpriv sleep")
}

/// Wait until `child` runs its final program (sleep), so its fd 3 is there.
fn settled(child: &Child) {
    let comm = format!("/proc/{}/comm", child.id());
    let ok = netcontrol_tests::within(Duration::from_secs(10), || {
        std::fs::read_to_string(&comm).is_ok_and(|c| c.trim() == "sleep")
    });
    assert!(ok.is_some(), "the bystander did not start");
}

fn assert_eperm(p: &Probe) {
    assert!(p.is_eperm(), "{} {} should fail with EPERM: {p:?}", p.op, p.target);
}

#[test]
fn a_sandbox_cannot_reach_into_other_processes_of_its_user() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let mut other = bystander("nobody");
    settled(&other);
    let pid = other.id().to_string();
    // Outside a sandbox, the same user can (this is what a shared uid gives away).
    let (_d, probe) = world_executable(&probe_bin());
    let out = Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "65534", "--clear-groups"])
        .arg(&probe)
        .args(["ptrace", &pid, "pidfd-getfd", &format!("{pid}:3"), "signal", &pid])
        .output()
        .expect("setpriv nc-probe");
    let baseline = parse_probes(&out.stdout);
    assert!(baseline.iter().all(|p| p.ok), "the same user outside a sandbox: {baseline:?}");

    let (p, stderr, _) = run_probe(
        &["--user", "nobody"],
        &[("ptrace", &pid), ("pidfd-getfd", &format!("{pid}:3")), ("signal", &pid)],
    );
    assert_eperm(&p[0]);
    assert_eperm(&p[1]);
    assert_eperm(&p[2]);
    assert!(!stderr.contains("Landlock"), "this kernel has Landlock ABI 6: {stderr}");

    // Nor into another sandbox of the same user.
    let (_d2, sleeper) = world_executable(std::path::Path::new("/bin/sleep"));
    let mut other_sandbox = Command::new(netcontrol_tests::netcontrol_bin())
        .args(["run", "--user", "nobody", "--"])
        .arg(&sleeper)
        .arg("600")
        .env("NETCONTROL_PIN_ROOT", netcontrol_tests::TEST_PIN_ROOT)
        .stderr(Stdio::null())
        .spawn()
        .expect("a second sandbox");
    let inner = netcontrol_tests::within(Duration::from_secs(20), || {
        children_of(other_sandbox.id()).iter().any(|c| comm(*c) == "sleep")
    });
    assert!(inner.is_some(), "the second sandbox did not start");
    let target =
        children_of(other_sandbox.id()).into_iter().find(|c| comm(*c) == "sleep").expect("sleep");
    let (p, _, _) = run_probe(&["--user", "nobody"], &[("ptrace", &target.to_string())]);
    assert_eperm(&p[0]);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(other_sandbox.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let _ = other_sandbox.wait();
    let _ = other.kill();
    let _ = other.wait();
}

fn children_of(pid: u32) -> Vec<u32> {
    // The sandboxed command is netcontrol's child.
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default().trim().to_owned()
}

/// `--user auto`: a uid of the sandbox's own, which no other process has, and no way back
/// to privileges (no_new_privs, an empty bounding set).
#[test]
fn user_auto_gives_each_sandbox_its_own_uid() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let show_ids = "id -u; grep -E '^(NoNewPrivs|CapBnd|CapEff)' /proc/self/status";
    let run = |tag: &str| {
        let out = netcontrol(&["run", "--user", "auto", "--", "sh", "-c", show_ids]);
        assert!(out.status.success(), "{tag}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let (a, b) = (run("a"), run("b"));
    let uid = |s: &str| s.lines().next().expect("uid").trim().parse::<u32>().expect("number");
    for out in [&a, &b] {
        assert!((1_900_000_000..=1_900_065_535).contains(&uid(out)), "{out}");
        assert!(out.contains("NoNewPrivs:\t1"), "{out}");
        assert!(out.contains("CapBnd:\t0000000000000000"), "{out}");
        assert!(out.contains("CapEff:\t0000000000000000"), "{out}");
    }
    // Two at once get two uids.
    let slow = "id -u; sleep 2";
    let first = Command::new(netcontrol_tests::netcontrol_bin())
        .args(["run", "--user", "auto", "--", "sh", "-c", slow])
        .env("NETCONTROL_PIN_ROOT", netcontrol_tests::TEST_PIN_ROOT)
        .stdout(Stdio::piped())
        .spawn()
        .expect("first");
    let second = netcontrol(&["run", "--user", "auto", "--", "sh", "-c", "id -u"]);
    let first = first.wait_with_output().expect("first");
    let (u1, u2) = (
        uid(&String::from_utf8_lossy(&first.stdout)),
        uid(&String::from_utf8_lossy(&second.stdout)),
    );
    assert_ne!(u1, u2, "two sandboxes at once share a uid");
}

/// Socket families beyond IP, unix and netlink: refused (here by the seccomp filter, as this
/// kernel runs no BPF LSM) and reported; a policy can open one. io_uring, which could make
/// sockets past the filter, is refused too.
#[test]
fn other_socket_families_are_refused_and_reported() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let (p, stderr, events) = run_probe(
        &["--user", "nobody"],
        &[("family", "40"), ("family", "17"), ("io-uring", "-"), ("udp-sendto", "127.0.0.1:9")],
    );
    assert_eperm(&p[0]);
    assert_eperm(&p[1]);
    assert_eperm(&p[2]);
    assert!(p[3].is_eperm(), "IP still goes through the hooks: {:?}", p[3]);
    let e = find_event(
        &events,
        &[("reason", json!("socket_family")), ("socket_family", json!("vsock"))],
    );
    assert_eq!(e["event"], "socket");
    assert!(e["hook"] == "seccomp" || e["hook"] == "lsm_socket_create", "{e}");
    assert!(e["pid"].as_u64().is_some_and(|p| p > 0) && e["comm"] == "nc-probe", "{e}");
    find_event(&events, &[("reason", json!("socket_family")), ("socket_family", json!("packet"))]);
    assert!(
        stderr.contains("connection attempts blocked") || stderr.contains("blocked"),
        "{stderr}"
    );

    let (p, _, _) =
        run_probe(&["--user", "nobody", "--allow-family", "vsock"], &[("family", "40")]);
    assert!(p[0].ok || !p[0].is_eperm(), "an allowed family is not refused: {:?}", p[0]);
}

/// Typing into the terminal (TIOCSTI) would have the shell that started netcontrol run it,
/// outside the sandbox: refused and reported, whatever fd it goes through (here one that is no
/// terminal, where the kernel itself would say ENOTTY, not EPERM). And socket(AF_INET,
/// SOCK_PACKET), which the kernel makes a packet socket, is a packet socket to netcontrol too
/// (root command: as another user the kernel refuses it anyway).
#[test]
fn terminal_input_and_packet_sockets_by_another_name_are_refused() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let outside = netcontrol_tests::probe_outside("tiocsti", "1");
    assert!(!outside.ok && !outside.is_eperm(), "outside: ENOTTY, not EPERM: {outside:?}");
    let (p, stderr, events) = run_probe(&["--user", "auto"], &[("tiocsti", "0"), ("tiocsti", "1")]);
    p.iter().for_each(assert_eperm);
    let e =
        find_event(&events, &[("event", json!("terminal")), ("reason", json!("terminal_input"))]);
    assert!(e["hook"] == "seccomp" && e["comm"] == "nc-probe", "{e}");
    assert!(stderr.contains("2 attempts to type into the terminal refused"), "{stderr}");

    let (p, _, events) = run_probe(&[], &[("sock-packet", "-")]);
    assert_eperm(&p[0]);
    find_event(&events, &[("reason", json!("socket_family")), ("socket_family", json!("packet"))]);
}

/// Abstract unix sockets of the host (here one the test listens on) are out of reach of a
/// `run` sandbox, which shares the host's network namespace.
#[test]
fn host_abstract_unix_sockets_are_out_of_reach() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let name = unique("nctest-abstract");
    let addr =
        <std::os::unix::net::SocketAddr as std::os::linux::net::SocketAddrExt>::from_abstract_name(
            name.as_bytes(),
        )
        .expect("abstract address");
    let listener = UnixListener::bind_addr(&addr).expect("listen on an abstract socket");
    listener.set_nonblocking(true).expect("nonblocking");
    let (p, _, _) = run_probe(&["--user", "nobody"], &[("abstract-connect", &name)]);
    assert_eperm(&p[0]);
    assert!(listener.accept().is_err(), "the host's socket got a connection");
    let (p, _, _) =
        run_probe(&["--user", "nobody", "--allow-abstract-unix"], &[("abstract-connect", &name)]);
    assert!(p[0].ok, "{:?}", p[0]);
}

/// A sandbox in the host's network namespace listens on loopback, or where its listen rules
/// say; bind() elsewhere fails at once and is reported.
#[test]
fn listening_is_for_loopback_and_listen_rules() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let (p, _, events) = run_probe(
        &[],
        &[
            ("listen", "0.0.0.0:18080"),
            ("listen", "[::]:18081"),
            ("listen", "192.0.2.1:18082"),
            ("listen", "127.0.0.1:18083"),
            ("listen", "[::1]:18084"),
        ],
    );
    assert_eperm(&p[0]);
    assert_eperm(&p[1]);
    assert_eperm(&p[2]);
    assert!(p[3].ok && p[4].ok, "{p:?}");
    let e = find_event(&events, &[("hook", json!("bind4")), ("dst_port", json!(18080))]);
    assert_eq!(
        (e["event"].clone(), e["reason"].clone()),
        (json!("listen"), json!("listen_not_allowed"))
    );
    let (p, _, _) = run_probe(
        &["--listen", "18080", "--listen", "[::]:18081"],
        &[("listen", "0.0.0.0:18080"), ("listen", "[::]:18081"), ("listen", "0.0.0.0:18085")],
    );
    assert!(p[0].ok && p[1].ok, "{p:?}");
    assert_eperm(&p[2]);
}

/// SCTP associations can be made by sendmsg() alone, which the address hooks may not see:
/// SCTP sockets need a rule that allows SCTP.
#[test]
fn sctp_needs_a_rule() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let outside = netcontrol_tests::probe_outside("sctp", "-");
    if outside.errno == libc::EPROTONOSUPPORT {
        eprintln!(
            "NOT APPLICABLE on this kernel: it has no SCTP (CONFIG_IP_SCTP); the kernel lane runs it"
        );
        return;
    }
    let (p, _, events) = run_probe(&[], &[("sctp", "-")]);
    assert_eperm(&p[0]);
    find_event(&events, &[("reason", json!("sctp_socket"))]);
    let (p, _, _) = run_probe(&["--allow", "127.0.0.1:2905/sctp"], &[("sctp", "-")]);
    assert!(p[0].ok, "{:?}", p[0]);
}

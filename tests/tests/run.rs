//! `netcontrol run`: the command runs sandboxed from its first instruction, its exit status
//! comes back, and the sandbox (cgroup, links, pins) is gone afterwards, whichever way it
//! ended: normal exit, Ctrl-C, SIGTERM, the command killed, or netcontrol itself killed.

use std::{
    io::{BufRead, BufReader, Write},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use netcontrol_tests::{
    Attached, HttpServer, Server, TEST_PIN_ROOT, cgroup2_mount, find_event, isolate_network,
    kernel_tests_enabled, netcontrol, netcontrol_bin, parse_probes, probe_bin, read_events, show,
};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::json;

fn run_parent() -> PathBuf {
    cgroup2_mount().join("netcontrol")
}

/// The run cgroups and pin directories left by netcontrol process `pid`.
fn leftovers(pid: u32) -> Vec<PathBuf> {
    leftovers_under(pid, Path::new(TEST_PIN_ROOT))
}

fn leftovers_under(pid: u32, root: &Path) -> Vec<PathBuf> {
    let mut left = Vec::new();
    let run_prefix = format!("netcontrol-run-{pid}-");
    if let Ok(d) = std::fs::read_dir(run_parent()) {
        left.extend(
            d.flatten().map(|e| e.path()).filter(|p| file_name(p).starts_with(&run_prefix)),
        );
    }
    if let Ok(d) = std::fs::read_dir(netcontrol_tests::pin_abi_dir(root).join("standalone")) {
        left.extend(
            d.flatten()
                .map(|e| e.path())
                .filter(|p| file_name(p).split('-').nth(1) == Some(&pid.to_string())),
        );
    }
    left
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn spawn_run(args: &[&str]) -> Child {
    Command::new(netcontrol_bin())
        .arg("run")
        .args(args)
        .env("NETCONTROL_PIN_ROOT", TEST_PIN_ROOT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netcontrol run")
}

/// Wait until netcontrol `pid` has a run cgroup with a process in it.
fn wait_sandboxed(pid: u32) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(cg) = leftovers(pid).into_iter().find(|p| p.starts_with(run_parent()))
            && std::fs::read_to_string(cg.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty())
        {
            return cg;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("netcontrol {pid} never started its command");
}

fn wait_exit(child: &mut Child) -> (i32, String) {
    let status = child.wait().expect("wait");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut err).expect("stderr");
    }
    (status.code().expect("exit code, not a signal"), err)
}

/// The acceptance check: curl to a non-allowed address fails at once with EPERM and an
/// event names curl and the destination; the allowed address works.
#[test]
fn curl_is_blocked_immediately_with_an_event() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let _http: Vec<HttpServer> =
        ["127.0.0.10", "127.0.0.11"].iter().map(|ip| HttpServer::start(ip, 8080)).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("events.jsonl");
    let ev = events.to_str().expect("utf8");

    let ok = netcontrol(&[
        "run",
        "--allow",
        "127.0.0.11:8080",
        "--events",
        ev,
        "--",
        "curl",
        "-sS",
        "-o",
        "/dev/null",
        "http://127.0.0.11:8080/",
    ]);
    assert!(ok.status.success(), "{}", show(&ok));
    assert!(read_events(&events).is_empty());

    let started = Instant::now();
    let out = netcontrol(&[
        "run",
        "--allow",
        "127.0.0.11:8080",
        "--",
        "curl",
        "-sS",
        "http://127.0.0.10:8080/",
    ]);
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(7), "curl's 'could not connect': {}", show(&out));
    // The whole run, program loading included (stretched under emulation).
    let limit = netcontrol_tests::slow(Duration::from_secs(10));
    assert!(elapsed < limit, "took {elapsed:?}");
    assert!(
        stderr.contains("netcontrol: blocked curl (pid ")
            && stderr.contains(
                "tcp connect to 127.0.0.10:8080: not allowlisted (Operation not permitted)"
            ),
        "{stderr}"
    );
    assert!(stderr.contains("netcontrol: 1 connection attempt blocked"), "{stderr}");
    // Nothing else: no warnings about its own bookkeeping.
    assert!(!stderr.contains("WARN") && !stderr.contains("ERROR"), "{stderr}");

    let out = netcontrol(&[
        "run",
        "--allow",
        "127.0.0.11:8080",
        "--events",
        ev,
        "--",
        "curl",
        "-sS",
        "http://127.0.0.10:8080/",
    ]);
    assert_eq!(out.status.code(), Some(7), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("1 connection attempt blocked (see events in {ev})")),
        "{stderr}"
    );
    find_event(
        &read_events(&events),
        &[
            ("comm", json!("curl")),
            ("dst_ip", json!("127.0.0.10")),
            ("dst_port", json!(8080)),
            ("hook", json!("connect4")),
            ("verdict", json!("blocked")),
        ],
    );
}

#[test]
fn exit_status_is_the_commands() {
    if !kernel_tests_enabled() {
        return;
    }
    let code = |args: &[&str]| {
        let mut full = vec!["run", "--"];
        full.extend_from_slice(args);
        let out = netcontrol(&full);
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    assert_eq!(code(&["sh", "-c", "exit 7"]).0, Some(7));
    assert_eq!(code(&["true"]).0, Some(0));
    assert_eq!(code(&["sh", "-c", "kill -9 $$"]).0, Some(137));
    let (c, err) = code(&["/nonexistent/command"]);
    assert_eq!(c, Some(127), "{err}");
    assert!(err.contains("netcontrol: /nonexistent/command: command not found"), "{err}");
    let dir = tempfile::tempdir().expect("tempdir");
    let not_executable = dir.path().join("script");
    std::fs::write(&not_executable, "#!/bin/sh\nexit 0\n").expect("write");
    let (c, err) = code(&[not_executable.to_str().expect("utf8")]);
    assert_eq!(c, Some(126), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
}

/// The command's descendants are in the sandbox, and what it leaves running is ended with it.
#[test]
fn grandchildren_are_covered_and_leftovers_are_killed() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = Server::start("127.0.0.10");
    let script = format!(
        "sleep 300 & echo $!; python3 -c 'import socket; socket.create_connection((\"127.0.0.10\", {}), timeout=3)'",
        denied.addr.port()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("e.jsonl");
    let mut child =
        spawn_run(&["--events", events.to_str().expect("utf8"), "--", "sh", "-c", &script]);
    let pid = child.id();
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut first).expect("sleep pid");
    let sleeper: i32 = first.trim().parse().expect("pid");
    let (code, stderr) = wait_exit(&mut child);
    assert_eq!(code, 1, "python fails: {stderr}");
    assert!(stderr.contains("PermissionError: [Errno 1] Operation not permitted"), "{stderr}");
    find_event(
        &read_events(&events),
        &[("comm", json!("python3")), ("dst_port", json!(denied.addr.port()))],
    );
    assert!(dead(sleeper), "the background sleep was killed");
    assert!(leftovers(pid).is_empty(), "{:?}", leftovers(pid));
}

/// Gone, or a zombie waiting for whoever adopted it to reap it.
fn dead(pid: i32) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.chars().next().unwrap_or('?')));
        match state {
            None | Some('Z' | 'X') => return true,
            Some(_) if Instant::now() > deadline => return false,
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn interrupted(sig: Signal, expected: i32) {
    let mut child = spawn_run(&["--", "sleep", "30"]);
    let pid = child.id();
    wait_sandboxed(pid);
    kill(Pid::from_raw(pid as i32), sig).expect("signal netcontrol");
    let (code, stderr) = wait_exit(&mut child);
    assert_eq!(code, expected, "{stderr}");
    assert!(leftovers(pid).is_empty(), "{:?}", leftovers(pid));
}

#[test]
fn ctrl_c_and_sigterm_end_the_command_and_clean_up() {
    if !kernel_tests_enabled() {
        return;
    }
    // Not from a terminal, so netcontrol relays them; sleep dies of them: 128 + signal.
    interrupted(Signal::SIGINT, 130);
    interrupted(Signal::SIGTERM, 143);
}

#[test]
fn command_killed_cleans_up() {
    if !kernel_tests_enabled() {
        return;
    }
    let mut child = spawn_run(&["--", "sh", "-c", "echo $$; exec sleep 30"]);
    let pid = child.id();
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("pid");
    kill(Pid::from_raw(line.trim().parse().expect("pid")), Signal::SIGKILL)
        .expect("kill the command");
    let (code, stderr) = wait_exit(&mut child);
    assert_eq!(code, 137, "{stderr}");
    assert!(leftovers(pid).is_empty(), "{:?}", leftovers(pid));
}

/// kill -9 of netcontrol: its pinned links keep enforcing (fail closed) while the command
/// runs on; the next netcontrol collects the pins and the cgroup once the command is gone.
#[test]
fn killed_netcontrol_fails_closed_and_is_collected_later() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let (allowed, denied) = (Server::start("127.0.0.11"), Server::start("127.0.0.10"));
    let probe = probe_bin();
    let script =
        format!("read x; {} tcp {} tcp {}", probe.display(), denied.target(), allowed.target());
    // A pin root of its own: the netcontrol that collects the pins is this test's.
    let root = format!("{TEST_PIN_ROOT}-killed-{}", std::process::id());
    let mut child = Command::new(netcontrol_bin())
        .args(["run", "--allow", &allowed.target(), "--", "sh", "-c", &script])
        .env("NETCONTROL_PIN_ROOT", &root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn netcontrol run");
    let pid = child.id();
    let cgroup = wait_sandboxed(pid);
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).expect("kill -9 netcontrol");
    // Child::wait would close stdin: take it first.
    let mut stdin = child.stdin.take().expect("stdin");
    let _ = child.wait();
    // The command outlives netcontrol and is still enforced.
    writeln!(stdin).expect("go");
    drop(stdin);
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut child.stdout.take().expect("stdout"), &mut out)
        .expect("probe output");
    let probes = parse_probes(&out);
    assert_eq!(probes.len(), 2, "{}", String::from_utf8_lossy(&out));
    assert!(probes[0].is_eperm(), "denied while netcontrol is dead: {:?}", probes[0]);
    assert!(probes[1].ok, "allowed while netcontrol is dead: {:?}", probes[1]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(cgroup.join("cgroup.events"))
        .is_ok_and(|s| s.contains("populated 1"))
    {
        assert!(Instant::now() < deadline, "the command did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The next netcontrol collects them, and says what they did meanwhile: the blocked
    // attempt is counted, its event (queued, never read) is not lost without a word.
    let next = Command::new(netcontrol_bin())
        .args(["run", "--", "true"])
        .env("NETCONTROL_PIN_ROOT", &root)
        .output()
        .expect("run netcontrol");
    assert!(next.status.success(), "{}", show(&next));
    let said = String::from_utf8_lossy(&next.stderr);
    assert!(
        said.contains(&format!("netcontrol pid {pid} ended without detaching"))
            && said.contains("1 connection attempts blocked in all")
            && said.contains("1 allowed")
            && said.contains("1 events it never delivered"),
        "{said}"
    );
    let left = leftovers_under(pid, Path::new(&root));
    assert!(left.is_empty(), "collected: {left:?}");
    let gone = Command::new(netcontrol_bin())
        .args(["uninstall", "--force", "--pin-root", &root])
        .output()
        .expect("uninstall");
    assert!(gone.status.success(), "{}", show(&gone));
}

#[test]
fn audit_mode_lets_everything_through_and_says_so() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = Server::start("127.0.0.10");
    let probe = probe_bin();
    let out = netcontrol(&[
        "run",
        "--audit",
        "--",
        probe.to_str().expect("utf8"),
        "tcp",
        &denied.target(),
        "raw4",
        "-",
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("netcontrol: would block nc-probe"), "{stderr}");
    assert!(
        stderr.contains("netcontrol: audit mode: 2 connection attempts would have been blocked"),
        "{stderr}"
    );
}

#[test]
fn events_to_stdout() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = Server::start("127.0.0.10");
    let probe = probe_bin();
    let out = netcontrol(&[
        "run",
        "--events",
        "-",
        "--",
        probe.to_str().expect("utf8"),
        "udp-sendto",
        &denied.target(),
    ]);
    assert_eq!(out.status.code(), Some(1), "the probe failed: {}", show(&out));
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v.get("verdict").is_some())
        .collect();
    find_event(&events, &[("hook", json!("sendmsg4")), ("dst_port", json!(denied.addr.port()))]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("(see events)"), "{}", show(&out));
    assert!(stderr.contains("events go to stdout, which the command shares"), "{stderr}");
}

/// The command shares netcontrol's stderr and stdout: making them non-blocking and filling
/// them neither kills netcontrol nor costs a line (each blocked attempt is still described,
/// the summary is there, the exit status is the command's).
#[test]
fn a_command_that_jams_the_shared_output_hides_nothing() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = Server::start("127.0.0.10");
    // Before each attempt the command fills both pipes (writes until EAGAIN): netcontrol's
    // line about it meets a full, non-blocking pipe.
    let script = format!(
        "import fcntl, os, socket\n\
         def fill():\n\
         \x20   for fd in (1, 2):\n\
         \x20       try:\n\
         \x20           while True: os.write(fd, b'x' * 65536)\n\
         \x20       except BlockingIOError: pass\n\
         for fd in (1, 2):\n\
         \x20   fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)\n\
         for i in range(20):\n\
         \x20   fill()\n\
         \x20   s = socket.socket()\n\
         \x20   try: s.connect(('127.0.0.10', {}))\n\
         \x20   except PermissionError: pass\n\
         \x20   s.close()\n",
        denied.addr.port()
    );
    let out = netcontrol(&["run", "--", "python3", "-c", &script]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr:.2000}");
    // Five a second get a line of their own, the rest one summary line (lines may follow
    // the command's own output on the same line: it wrote no newline).
    let described: u64 = stderr
        .split("netcontrol: blocked ")
        .skip(1)
        .map(|l| match l.lines().next().unwrap_or("").split_once(" more like this") {
            Some((n, _)) => n.parse::<u64>().expect("a count"),
            None => 1,
        })
        .sum();
    assert_eq!(described, 20, "{stderr:.2000}");
    assert!(stderr.contains("netcontrol: 20 connection attempts blocked"), "{stderr:.2000}");
}

/// --user: the command runs unprivileged, is still enforced, and cannot move itself out of
/// the sandbox cgroup (as root it could).
#[test]
fn user_option_runs_unprivileged_and_cannot_leave() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = Server::start("127.0.0.10");
    let probe = probe_bin();
    let (_dir, probe_copy) = netcontrol_tests::world_executable(&probe);
    let escape = cgroup2_mount().join("cgroup.procs");
    let script = format!(
        "id -u; if echo $$ > {}; then echo escaped; else echo stayed; fi; {} tcp {}",
        escape.display(),
        probe_copy.display(),
        denied.target()
    );
    let out = netcontrol(&["run", "--user", "nobody", "--", "sh", "-c", &script]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("65534"), "{}", show(&out));
    assert_eq!(lines.next(), Some("stayed"), "{}", show(&out));
    let probes = parse_probes(stdout.as_bytes());
    assert!(probes.len() == 1 && probes[0].is_eperm(), "{}", show(&out));
}

/// --bpf-log: the programs' own diagnostics reach netcontrol's log.
#[test]
fn kernel_side_logs_on_request() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = Server::start("127.0.0.10");
    let probe = probe_bin();
    let out = netcontrol(&[
        "run",
        "--bpf-log",
        "debug",
        "--",
        probe.to_str().expect("utf8"),
        "tcp",
        &denied.target(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = format!("bpf: hook=1 port={} verdict=1 reason=1", denied.addr.port());
    assert!(stderr.contains(&line), "{}", show(&out));
    let quiet = netcontrol(&["run", "--", probe.to_str().expect("utf8"), "tcp", &denied.target()]);
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("bpf:"), "{}", show(&quiet));
}

/// Events wake the reader only now and then during a burst (a wakeup per denial is what made
/// denials slow): a lone denial is still reported at once. A burst of the same attempt gets a
/// few events of its own and the rest in a summary record whose count makes the total, which
/// arrives while the agent keeps running, with nothing more happening to wake it.
#[test]
fn a_lone_denial_at_once_and_a_burst_in_full() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = Server::start("127.0.0.10");
    let sb = Attached::start(&["--allow", "127.0.0.1:1"]);
    let start = Instant::now();
    let p = sb.probe(&[("tcp", &denied.target())]);
    assert!(p[0].is_eperm(), "{p:?}");
    let ev = sb.events_at_least(1);
    let lone = start.elapsed();
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(ev[0]["count"], 1);
    assert!(lone < Duration::from_secs(1), "a lone denial took {lone:?} to be reported");
    let n = 5_000;
    let p = sb.probe(&[(&format!("udp-storm:{n}"), &denied.target())]);
    assert!(p[0].ok, "every send was denied: {p:?}");
    let start = Instant::now();
    let udp = |ev: &[serde_json::Value]| -> (u64, usize, usize) {
        let of_burst: Vec<&serde_json::Value> =
            ev.iter().filter(|e| e["protocol"] == "udp").collect();
        let total = of_burst.iter().map(|e| e["count"].as_u64().expect("count")).sum();
        let own = of_burst.iter().filter(|e| e["summary"] == false).count();
        (total, own, of_burst.len() - own)
    };
    let ok =
        netcontrol_tests::within(Duration::from_secs(10), || udp(&read_events(&sb.events)).0 == n);
    let (total, own, summaries) = udp(&read_events(&sb.events));
    assert!(
        ok.is_some(),
        "the burst's {n} attempts are not all reported: {total} ({own} events, {summaries} summaries)"
    );
    assert!(own <= 10, "a flood of one attempt got {own} events of its own");
    assert!(summaries >= 1, "{own} events, no summary");
    assert!(start.elapsed() < Duration::from_secs(5), "the tail took {:?}", start.elapsed());
}

/// Two processes flood denied attempts through a tiny event buffer, one of them to thousands
/// of distinct ports, while a third makes one distinctive attempt: every attempt is counted,
/// every distinct destination is reported with its count, the distinctive one has an event
/// of its own, and nothing is lost.
#[test]
fn floods_hide_no_attempt() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&["127.0.0.12"]);
    let denied = Server::start("127.0.0.10");
    let distinct = Server::start("127.0.0.12");
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("e.jsonl");
    let probe = probe_bin();
    let (storm, ports): (u32, u32) = (20_000, 2_000);
    let script = format!(
        "{p} udp-storm:{storm} {d} >/dev/null & {p} udp-spray:{ports} 127.0.0.10:20000 >/dev/null & \
         {p} tcp {x} >/dev/null; wait",
        p = probe.display(),
        d = denied.target(),
        x = distinct.target()
    );
    let out = netcontrol(&[
        "run",
        "--event-buffer",
        "4",
        "--events",
        events.to_str().expect("utf8"),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(out.status.success(), "{}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let blocked = storm + ports + 1;
    let summary = stderr
        .lines()
        .find(|l| l.contains("connection attempts blocked"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        summary.starts_with(&format!("netcontrol: {blocked} connection attempts blocked")),
        "{summary}"
    );
    assert!(!summary.contains("lost"), "{summary}");
    let ev = read_events(&events);
    let total: u64 = ev.iter().map(|e| e["count"].as_u64().expect("count")).sum();
    assert_eq!(total, u64::from(blocked), "every attempt is in an event or a summary");
    // The distinct attempt is there: as an event of its own, or (when the spray spent the
    // sandbox's budget for that second first) in a summary record of its own.
    let distinct = find_event(&ev, &[("dst_ip", json!("127.0.0.12"))]);
    assert_eq!(distinct["count"], 1, "{distinct}");
    for port in [20_000u16, 20_999, 21_999] {
        assert!(
            ev.iter().any(|e| e["dst_port"] == port),
            "port {port} of the spray is not reported"
        );
    }
}

/// An events file that cannot be written any more (a full disk) stops neither the pump nor
/// the run: it is said once, the records that could not be written are counted as lost, and
/// the command's status is the run's.
#[test]
fn a_full_disk_under_the_events_file_is_said_and_survived() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let small = dir.path().join("small");
    std::fs::create_dir(&small).expect("mkdir");
    netcontrol_tests::sh(&format!("mount -t tmpfs -o size=8k,mode=0755 none {}", small.display()));
    let events = small.join("e.jsonl");
    let probe = probe_bin();
    let out = netcontrol(&[
        "run",
        "--events",
        events.to_str().expect("utf8"),
        "--",
        probe.to_str().expect("utf8"),
        "udp-spray:400",
        "127.0.0.10:20000",
    ]);
    netcontrol_tests::sh(&format!("umount {}", small.display()));
    assert_eq!(out.status.code(), Some(0), "the command's status: {}", show(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("writing events failed").count(), 1, "said once: {stderr}");
    assert!(stderr.contains("netcontrol: 400 connection attempts blocked"), "{stderr}");
    assert!(stderr.contains("lost"), "the lost records are counted: {stderr}");
}

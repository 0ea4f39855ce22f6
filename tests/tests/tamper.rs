//! What a sandbox's user (or a root command) might do to netcontrol itself: plant links or
//! files at the events path, squat the pin root, detach the links. Each is refused or
//! noticed, said, and put right.

use std::{
    fs,
    os::unix::fs::{PermissionsExt, symlink},
    path::Path,
    process::Command,
    time::Duration,
};

use netcontrol_tests::{
    Attached, Server, find_event, isolate_network, kernel_tests_enabled, netcontrol, show, tcp,
    unique,
};
use serde_json::{Value, json};

/// The id of the link that attaches `attach_type` (bpftool's name) to the cgroup `cgroup_id`.
fn link_id(cgroup_id: u64, attach_type: &str) -> u64 {
    let out = Command::new("bpftool").args(["link", "show", "-j"]).output().expect("bpftool");
    let links: Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    links
        .as_array()
        .expect("a list")
        .iter()
        .find(|l| l["cgroup_id"] == json!(cgroup_id) && l["attach_type"] == attach_type)
        .and_then(|l| l["id"].as_u64())
        .unwrap_or_else(|| panic!("no {attach_type} link on cgroup {cgroup_id}: {links}"))
}

#[test]
fn a_detached_link_is_reported_and_attached_again() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = Server::start("127.0.0.10");
    let mut sb = Attached::start(&["--allow", "127.0.0.1:1"]);
    assert!(tcp(&sb, "127.0.0.10", denied.addr.port()).is_eperm());
    // What a root command could do: detach the link.
    let id = link_id(sb.cgroup.id(), "cgroup_inet4_connect");
    let out = Command::new("bpftool")
        .args(["link", "detach", "id", &id.to_string()])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "{}", show(&out));
    let line =
        sb.wait_for_line("tampering: the connect4 link was detached", Duration::from_secs(10));
    assert!(line.contains("attached again"), "{line}");
    assert!(tcp(&sb, "127.0.0.10", denied.addr.port()).is_eperm(), "enforced again");
    let events = sb.events_at_least(3);
    let e = find_event(&events, &[("event", json!("tamper")), ("hook", json!("connect4"))]);
    assert_eq!(
        (e["reason"].clone(), e["repaired"].clone()),
        (json!("link_detached"), json!(true)),
        "{e}"
    );
    assert_ne!(link_id(sb.cgroup.id(), "cgroup_inet4_connect"), id, "a new link");
    sb.stop();
}

/// What a root command could do instead of detaching: make netcontrol's connect4 link run a
/// program that allows everything (BPF_LINK_UPDATE), so the hook is still there.
fn replace_program_of_link(id: u64) {
    use std::os::fd::{FromRawFd, OwnedFd};
    fn bpf<T>(cmd: i64, attr: &mut T) -> i64 {
        // SAFETY: a zero-padded attribute struct of the command, valid for the call.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as u32) }
    }
    // r0 = 1 (allow); exit.
    let insns: [u64; 2] = [u64::from_le_bytes([0xb7, 0, 0, 0, 1, 0, 0, 0]), 0x95];
    let license = c"GPL";
    #[repr(C)]
    struct ProgLoad {
        prog_type: u32,
        insn_cnt: u32,
        insns: u64,
        license: u64,
        _log: [u32; 4],
        _kern_version_flags: [u32; 2],
        _name: [u8; 16],
        _ifindex: u32,
        expected_attach_type: u32,
        _rest: [u64; 8],
    }
    let mut load = ProgLoad {
        prog_type: 18, // BPF_PROG_TYPE_CGROUP_SOCK_ADDR
        insn_cnt: 2,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        _log: [0; 4],
        _kern_version_flags: [0; 2],
        _name: [0; 16],
        _ifindex: 0,
        expected_attach_type: 10, // BPF_CGROUP_INET4_CONNECT
        _rest: [0; 8],
    };
    let prog = bpf(5, &mut load);
    assert!(prog >= 0, "loading: {}", std::io::Error::last_os_error());
    // SAFETY: new fds, owned here.
    let prog = unsafe { OwnedFd::from_raw_fd(prog as i32) };
    let mut get = [id as u32, 0, 0];
    let link = bpf(30, &mut get);
    assert!(link >= 0, "the link: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let link = unsafe { OwnedFd::from_raw_fd(link as i32) };
    use std::os::fd::AsRawFd;
    let mut update = [link.as_raw_fd() as u32, prog.as_raw_fd() as u32, 0, 0];
    assert_eq!(bpf(29, &mut update), 0, "updating: {}", std::io::Error::last_os_error());
}

/// The program a link runs (bpftool's view).
fn prog_of_link(id: u64) -> u64 {
    let out = Command::new("bpftool")
        .args(["link", "show", "id", &id.to_string(), "-j"])
        .output()
        .expect("bpftool");
    let link: Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    link["prog_id"].as_u64().unwrap_or_else(|| panic!("no prog_id: {link}"))
}

#[test]
fn a_link_given_another_program_gets_ours_back() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = Server::start("127.0.0.10");
    let mut sb = Attached::start(&["--allow", "127.0.0.1:1"]);
    let id = link_id(sb.cgroup.id(), "cgroup_inet4_connect");
    let ours = prog_of_link(id);
    replace_program_of_link(id);
    let line = sb.wait_for_line(
        "tampering: the connect4 link was given another program",
        Duration::from_secs(10),
    );
    assert!(line.contains("netcontrol's program put back"), "{line}");
    assert_eq!(prog_of_link(id), ours, "the same link runs netcontrol's program again");
    assert!(tcp(&sb, "127.0.0.10", denied.addr.port()).is_eperm(), "enforced again");
    let events = sb.events_at_least(2);
    let e = find_event(&events, &[("event", json!("tamper")), ("hook", json!("connect4"))]);
    assert_eq!(
        (e["reason"].clone(), e["repaired"].clone()),
        (json!("program_replaced"), json!(true)),
        "{e}"
    );
    sb.stop();
}

#[test]
fn planted_events_files_are_refused() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let precious = dir.path().join("precious");
    fs::write(&precious, "root's\n").expect("write");
    fs::set_permissions(&precious, fs::Permissions::from_mode(0o600)).expect("chmod");
    let link = dir.path().join("events.jsonl");
    symlink(&precious, &link).expect("symlink");
    let out = netcontrol(&["run", "--events", link.to_str().expect("utf8"), "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing to write events there: it is a symbolic link"), "{err}");
    assert_eq!(fs::read_to_string(&precious).expect("read"), "root's\n");

    // In a directory anyone may write to (sticky, like /tmp): a file the sandbox's user made
    // beforehand is refused.
    let shared = dir.path().join("shared");
    fs::create_dir(&shared).expect("mkdir");
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).expect("chmod");
    let theirs = shared.join("events.jsonl");
    fs::write(&theirs, "").expect("write");
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
    let out = netcontrol(&["run", "--events", theirs.to_str().expect("utf8"), "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("owned by uid 65534"), "{}", show(&out));

    // The file netcontrol makes is root's (0600): the sandbox's user cannot erase it.
    let ours = shared.join("ours.jsonl");
    let script = format!(": > {0}; echo gone >> {0}", ours.display());
    let out = netcontrol(&[
        "run",
        "--user",
        "nobody",
        "--events",
        ours.to_str().expect("utf8"),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"), "{}", show(&out));
    let mode = fs::metadata(&ours).expect("made").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    assert!(!fs::read_to_string(&ours).expect("read").contains("gone"));
}

#[test]
fn squatted_pin_roots_are_refused() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let bpffs = Path::new(netcontrol_tests::TEST_PIN_ROOT).parent().expect("bpffs");
    // Another user made it first (bpffs lets anyone make directories).
    let theirs = bpffs.join(unique("nc-squat"));
    fs::create_dir(&theirs).expect("mkdir");
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).expect("chown");
    let out = Command::new(netcontrol_tests::netcontrol_bin())
        .args(["run", "--pin-root", theirs.to_str().expect("utf8"), "--", "true"])
        .output()
        .expect("netcontrol");
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refusing pin directory") && err.contains("owned by uid 65534"), "{err}");
    assert!(fs::read_dir(&theirs).expect("read").next().is_none(), "nothing was pinned there");
    fs::remove_dir(&theirs).expect("rmdir");
    // Writable by others, or a symbolic link: refused too.
    let open = bpffs.join(unique("nc-open"));
    fs::create_dir(&open).expect("mkdir");
    fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = Command::new(netcontrol_tests::netcontrol_bin())
        .args(["run", "--pin-root", open.to_str().expect("utf8"), "--", "true"])
        .output()
        .expect("netcontrol");
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lets other users change"),
        "{}",
        show(&out)
    );
    fs::remove_dir(&open).expect("rmdir");
    // A pin root netcontrol makes is root's alone.
    let fresh = bpffs.join(unique("nc-fresh"));
    let out = Command::new(netcontrol_tests::netcontrol_bin())
        .args(["run", "--pin-root", fresh.to_str().expect("utf8"), "--", "true"])
        .output()
        .expect("netcontrol");
    assert!(out.status.success(), "{}", show(&out));
    assert_eq!(fs::metadata(&fresh).expect("made").permissions().mode() & 0o7777, 0o700);
    let _ = fs::remove_dir_all(&fresh);
}

/// The daemon notices a detached link on its own (every second) and at once on `status`:
/// it attaches it again, says so in status and in metrics.
#[test]
fn the_daemon_puts_detached_links_back() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = Server::start("127.0.0.10");
    let cg = netcontrol_tests::TestCgroup::new();
    let mut d = netcontrol_tests::daemon::Daemon::new(&format!(
        "policies:\n  none:\n    allow: []\nsandboxes:\n  - name: job\n    cgroup: {}\n    policy: none\n",
        cg.path.display()
    ));
    d.start();
    let id = link_id(cg.id(), "cgroup_inet4_connect");
    let out = Command::new("bpftool")
        .args(["link", "detach", "id", &id.to_string()])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "{}", show(&out));
    // status checks before it answers.
    assert_eq!(d.sandbox("job")["tampered"], 1, "{}", d.status());
    assert!(netcontrol_tests::probe_in(&cg.path, &[("tcp", &denied.target())])[0].is_eperm());
    let (code, metrics) = d.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("netcontrol_tamper_detected_total{sandbox=\"job\"} 1")),
        "{metrics}"
    );
    assert!(
        metrics.lines().any(|l| l.starts_with("netcontrol_links_detached{sandbox=\"job\"} 0")),
        "{metrics}"
    );
    // The daemon holds no fd of its sandboxes' links (thousands of sandboxes would not fit
    // the open-files limit): a removed pin takes its link along, and a new one is attached.
    let pin = netcontrol_tests::pin_abi_dir(&d.pin_root)
        .join("daemon/links")
        .join(cg.id().to_string())
        .join("connect4");
    fs::remove_file(&pin).unwrap_or_else(|e| panic!("removing {}: {e}", pin.display()));
    assert_eq!(d.sandbox("job")["tampered"], 2, "{}", d.status());
    assert!(pin.exists(), "pinned again");
    assert!(netcontrol_tests::probe_in(&cg.path, &[("tcp", &denied.target())])[0].is_eperm());
    let log = d.stop();
    assert!(log.contains("tampering: the connect4 link was detached"), "{log}");
    assert!(log.contains("tampering: the connect4 link was unpinned"), "{log}");
}

/// `status` of hundreds of sandboxes looks at their links on several threads: a link
/// detached and a pin removed in two of them are found and put right all the same.
#[test]
fn among_hundreds_of_sandboxes_status_finds_the_ones_tampered_with() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let denied = Server::start("127.0.0.10");
    let cgroups: Vec<netcontrol_tests::TestCgroup> =
        (0..300).map(|_| netcontrol_tests::TestCgroup::new()).collect();
    let mut config = String::from("policies:\n  none:\n    allow: []\nsandboxes:\n");
    for (i, c) in cgroups.iter().enumerate() {
        config
            .push_str(&format!("  - {{name: s{i}, cgroup: {}, policy: none}}\n", c.path.display()));
    }
    let mut d = netcontrol_tests::daemon::Daemon::new(&config);
    d.ready_timeout = Duration::from_secs(120);
    d.start();
    let (detached, unpinned) = (&cgroups[200], &cgroups[299]);
    let id = link_id(detached.id(), "cgroup_inet4_connect");
    let out = Command::new("bpftool")
        .args(["link", "detach", "id", &id.to_string()])
        .output()
        .expect("bpftool");
    assert!(out.status.success(), "{}", show(&out));
    let pin = netcontrol_tests::pin_abi_dir(&d.pin_root)
        .join("daemon/links")
        .join(unpinned.id().to_string())
        .join("connect6");
    fs::remove_file(&pin).unwrap_or_else(|e| panic!("removing {}: {e}", pin.display()));
    // Found by this status (or by a tick just before it): either way, once.
    assert_eq!(d.sandbox("s200")["tampered"], 1, "{}", d.sandbox("s200"));
    assert_eq!(d.sandbox("s299")["tampered"], 1, "{}", d.sandbox("s299"));
    assert_eq!(d.sandbox("s100")["tampered"], 0);
    assert!(pin.exists(), "pinned again");
    assert!(netcontrol_tests::probe_in(&detached.path, &[("tcp", &denied.target())])[0].is_eperm());
    assert_eq!(denied.accepted(), 0);
    d.stop();
}

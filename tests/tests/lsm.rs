//! The BPF LSM programs, where the kernel runs them (the kernel lane: Debian's 6.12 under
//! QEMU, `cargo xtask test` runs it): socket families and abstract unix sockets of an
//! attached cgroup, which no cgroup hook sees, are refused and reported by them; `run` leaves
//! families to them instead of its seccomp filter. On a kernel without the BPF LSM these tests
//! say that they do not apply (the host's own tests cover `run`'s other means).

use std::os::unix::net::{UnixDatagram, UnixListener};

use netcontrol_tests::{
    Attached, find_event, isolate_network, kernel_tests_enabled, lsm_applies, netcontrol,
    parse_probes, probe_bin, read_events, show, unique,
};
use serde_json::json;

#[test]
fn families_and_abstract_unix_sockets_of_an_attached_cgroup() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let mut sb = Attached::start(&[]);
    if !lsm_applies(&sb.stderr_so_far()) {
        return;
    }
    // A host daemon's abstract sockets (the test's, outside any sandbox).
    let (stream, dgram) = (unique("nc-lsm-s"), unique("nc-lsm-d"));
    let listener = UnixListener::bind_addr(&abstract_addr(&stream)).expect("abstract listener");
    let receiver = UnixDatagram::bind_addr(&abstract_addr(&dgram)).expect("abstract datagram");
    listener.set_nonblocking(true).expect("nonblocking");
    receiver.set_nonblocking(true).expect("nonblocking");
    let r = sb.probe(&[
        ("family", "40"),
        ("abstract-connect", &stream),
        ("abstract-sendto", &dgram),
        ("udp-sendto", "127.0.0.1:9"),
    ]);
    for p in &r[..3] {
        assert!(p.is_eperm(), "{} {}: {p:?}", p.op, p.target);
    }
    assert!(r[3].is_eperm(), "IP still goes through the cgroup hooks: {:?}", r[3]);
    let events = sb.events_at_least(4);
    let e = find_event(&events, &[("hook", json!("lsm_socket_create"))]);
    assert_eq!(
        (e["socket_family"].clone(), e["reason"].clone()),
        (json!("vsock"), json!("socket_family"))
    );
    for hook in ["lsm_socket_connect", "lsm_socket_sendmsg"] {
        let e = find_event(&events, &[("hook", json!(hook))]);
        assert_eq!(e["reason"], "abstract_unix_socket", "{e}");
        assert!(e["unix_address"].as_str().is_some_and(|a| a.starts_with("@nc-lsm")), "{e}");
    }
    sb.stop();
    // The host daemon got nothing: no connection waits, no datagram.
    let nothing = std::io::ErrorKind::WouldBlock;
    assert_eq!(listener.accept().map(drop).map_err(|e| e.kind()), Err(nothing));
    let mut buf = [0u8; 16];
    assert_eq!(receiver.recv(&mut buf).map_err(|e| e.kind()), Err(nothing));
    // Processes outside every sandbox are untouched by the programs that see all of them.
    let outside = UnixDatagram::unbound().expect("socket");
    outside.send_to_addr(b"x", &abstract_addr(&dgram)).expect("outside: allowed");
    receiver.set_nonblocking(false).expect("blocking");
    assert_eq!(receiver.recv(&mut buf).expect("the outside datagram"), 1);
}

fn abstract_addr(name: &str) -> std::os::unix::net::SocketAddr {
    use std::os::linux::net::SocketAddrExt;
    std::os::unix::net::SocketAddr::from_abstract_name(name).expect("name")
}

#[test]
fn run_leaves_families_to_the_lsm() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let probe_sb = Attached::start(&[]);
    if !lsm_applies(&probe_sb.stderr_so_far()) {
        return;
    }
    drop(probe_sb);
    let dir = tempfile::tempdir().expect("tempdir");
    let events = dir.path().join("e.jsonl");
    let out = netcontrol(&[
        "run",
        "--events",
        events.to_str().expect("utf8"),
        "--",
        probe_bin().to_str().expect("utf8"),
        "family",
        "40",
    ]);
    let p = parse_probes(&out.stdout);
    assert!(p.first().is_some_and(|p| p.is_eperm()), "{}", show(&out));
    let events = read_events(&events);
    let e = find_event(&events, &[("socket_family", json!("vsock"))]);
    assert_eq!(e["hook"], "lsm_socket_create", "the LSM judged it, not the filter: {e}");
}

/// Inet protocols whose connect() and sendmsg() run no cgroup hook (L2TP/IP here, which the
/// kernel loads for anyone who asks) are refused at socket(). Needs a kernel with L2TP/IP
/// (the lane's; NETCONTROL_REQUIRE_L2TP=1 there), not the BPF LSM.
#[test]
fn protocols_no_hook_judges_are_refused() {
    if !kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let make = "import socket\n\
                try:\n\
                \x20   socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 115); print('made')\n\
                except OSError as e:\n\
                \x20   print(e.errno)\n";
    let outside = std::process::Command::new("python3").args(["-c", make]).output().expect("py");
    if String::from_utf8_lossy(&outside.stdout).trim() != "made" {
        let required = std::env::var("NETCONTROL_REQUIRE_L2TP").is_ok_and(|v| v == "1");
        assert!(!required, "NETCONTROL_REQUIRE_L2TP=1, but: {}", show(&outside));
        eprintln!("NOT APPLICABLE: this kernel has no L2TP/IP ({})", show(&outside));
        return;
    }
    let mut sb = Attached::start(&[]);
    let inside = sb.cgroup.command("python3").args(["-c", make]).output().expect("python3");
    assert_eq!(String::from_utf8_lossy(&inside.stdout).trim(), "1", "EPERM: {}", show(&inside));
    let events = sb.events_at_least(1);
    let e = find_event(&events, &[("reason", json!("protocol_not_allowed"))]);
    assert_eq!(
        (e["hook"].clone(), e["socket_type"].clone()),
        (json!("sock_create"), json!("dgram"))
    );
    sb.stop();
}

//! The command line without privileges: help, and input errors that are caught before any
//! kernel work (so these run in plain `cargo test`).

use std::process::{Command, Output};

fn netcontrol(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_netcontrol")).args(args).output().expect("run netcontrol")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn help_explains_commands_and_rules() {
    let out = netcontrol(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["run", "attach", "127.0.0.11:8080", "[::1]:443", "169.254.169.254", "EPERM"] {
        assert!(text.contains(needle), "--help lacks {needle:?}:\n{text}");
    }
    let out = netcontrol(&["run", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["--allow", "--audit", "--events", "127 if it was not found", "125"] {
        assert!(text.contains(needle), "run --help lacks {needle:?}:\n{text}");
    }
}

#[test]
fn a_bad_rule_is_a_usage_error_that_says_what_is_wrong() {
    let out = netcontrol(&["run", "--allow", "10.0.0.1/8", "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("10.0.0.1/8 has host bits set (did you mean 10.0.0.0/8?)"),
        "{}",
        stderr(&out)
    );
    let out = netcontrol(&["attach", "--cgroup", "/x", "--allow", "[::1]:99999"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("port 99999 is out of range 1-65535"), "{}", stderr(&out));
}

#[test]
fn domains_are_refused_clearly_until_they_are_supported() {
    let out = netcontrol(&["run", "--allow", "api.github.com:443", "--", "true"]);
    assert_eq!(out.status.code(), Some(125), "netcontrol's own failure in run");
    assert!(
        stderr(&out).contains("domain rules are not supported yet (api.github.com:443)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn run_needs_a_command() {
    let out = netcontrol(&["run", "--allow", "10.0.0.0/8"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("CMD"), "{}", stderr(&out));
}

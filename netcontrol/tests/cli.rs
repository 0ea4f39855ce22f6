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
fn check_policy_prints_the_normalized_policy_that_loads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("p.yaml");
    std::fs::write(
        &file,
        "allow:\n  - API.GitHub.com.:443\n  - \"*.Example.test\"\n  - domain: bücher.example\n    ports: [80, 443]\ndns:\n  servers: [127.0.0.53]\n",
    )
    .expect("write");
    let out = netcontrol(&["check-policy", file.to_str().expect("utf8")]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "valid; 4 rules, 2 names to follow in DNS, 1 wildcard pattern",
        "- \"api.github.com:443\"",
        "- \"*.example.test\"\n",
        "mode: proxy",
        "- \"xn--bcher-kva.example:80\"",
        "servers: [\"127.0.0.53:53\"]",
        "grace: \"5m\"",
    ] {
        assert!(text.contains(needle), "lacks {needle:?}:\n{text}");
    }
    let again = dir.path().join("again.yaml");
    std::fs::write(&again, text.as_bytes()).expect("write");
    let out2 = netcontrol(&["check-policy", again.to_str().expect("utf8")]);
    assert!(out2.status.success(), "{}", stderr(&out2));
    let body = |o: &Output| {
        String::from_utf8_lossy(&o.stdout).lines().skip(1).collect::<Vec<_>>().join("\n")
    };
    assert_eq!(body(&out2), body(&out), "the normalized form is a fixed point");
}

#[test]
fn broken_policy_files_name_the_file_line_and_column() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        "mode: enforce\nallow:\n  - api.github.com:443\n  - domain: x.test\n    prots: [443]\n",
    )
    .expect("write");
    let out = netcontrol(&["check-policy", file.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:5:5: unknown field `prots`, expected one of", file.display())),
        "{err}"
    );
    assert!(err.contains("5 |     prots: [443]"), "{err}");
    // The same file through run: rejected before anything is created (125: netcontrol's own error).
    let out = netcontrol(&["run", "--policy", file.to_str().expect("utf8"), "--", "true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(stderr(&out).contains(":5:5: unknown field `prots`"), "{}", stderr(&out));
    let missing = netcontrol(&["check-policy", "/nonexistent/p.yaml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("/nonexistent/p.yaml: No such file or directory"),
        "{}",
        stderr(&missing)
    );
}

#[test]
fn run_needs_a_command() {
    let out = netcontrol(&["run", "--allow", "10.0.0.0/8"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("CMD"), "{}", stderr(&out));
}

//! `netcontrol daemon` as the tests run it: its own pin root, control socket, events file and
//! configuration in a temporary directory; metrics on the test's private loopback.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{Background, TEST_PIN_ROOT, netcontrol_bin, show, unique, write_atomic};

/// Where the daemon serves metrics (each test has its own network namespace).
pub const METRICS_ADDR: &str = "127.0.0.1:9477";

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub socket: PathBuf,
    pub events: PathBuf,
    pub pin_root: PathBuf,
    /// Extra environment for the daemon process.
    pub env: Vec<(String, PathBuf)>,
    /// A command the daemon runs under (its arguments come after).
    pub wrapper: Vec<PathBuf>,
    /// How long `start` waits for it to be ready.
    pub ready_timeout: Duration,
    proc: Option<Background>,
}

impl Daemon {
    /// A daemon (not started yet) whose configuration is `body` plus the test's own pin root,
    /// socket, events file and metrics address.
    pub fn new(body: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let this = Self {
            config: dir.path().join("daemon.yaml"),
            socket: dir.path().join("control.sock"),
            events: dir.path().join("events.jsonl"),
            pin_root: Path::new(TEST_PIN_ROOT).join(unique("daemon")),
            dir,
            env: Vec::new(),
            wrapper: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            proc: None,
        };
        this.write_config(body);
        this
    }

    /// Replace the configuration (atomically, as an editor or a ConfigMap would).
    pub fn write_config(&self, body: &str) {
        write_atomic(&self.config, &format!("{}{body}", self.header()));
    }

    /// The settings every test's configuration starts with.
    pub fn header(&self) -> String {
        format!(
            "pin_root: {}\ncontrol_socket: {}\nmetrics_addr: {METRICS_ADDR}\nevents:\n  path: {}\n",
            self.pin_root.display(),
            self.socket.display(),
            self.events.display()
        )
    }

    /// Start it and wait until it is ready.
    pub fn start(&mut self) -> &mut Self {
        self.start_with(&[])
    }

    /// Start it with extra command-line arguments.
    pub fn start_with(&mut self, args: &[&str]) -> &mut Self {
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(netcontrol_bin());
                c
            }
            None => Command::new(netcontrol_bin()),
        };
        cmd.args(["daemon", "--log-level", "info", "--config"])
            .arg(&self.config)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null());
        let mut proc = Background::spawn(cmd);
        proc.wait_for_line("ready:", self.ready_timeout);
        self.proc = Some(proc);
        self
    }

    /// Run it expecting it to fail at start; its output.
    pub fn start_failing(&self) -> Output {
        let out = Command::new(netcontrol_bin())
            .args(["daemon", "--config"])
            .arg(&self.config)
            .output()
            .expect("run netcontrol daemon");
        assert!(!out.status.success(), "the daemon started: {}", show(&out));
        out
    }

    fn proc(&mut self) -> &mut Background {
        self.proc.as_mut().expect("the daemon runs")
    }

    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        self.proc().wait_for_line(needle, timeout)
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("the daemon runs").pid()
    }

    /// SIGKILL: no cleanup at all.
    pub fn kill9(&mut self) {
        self.proc().kill9();
        self.proc = None;
    }

    /// SIGTERM; returns its stderr.
    pub fn stop(&mut self) -> String {
        let log = self.proc().stop();
        self.proc = None;
        log
    }

    pub fn log(&mut self) -> String {
        self.proc().log()
    }

    /// `netcontrol ARGS --socket <ours>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(netcontrol_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .env("NETCONTROL_PIN_ROOT", &self.pin_root)
            .output()
            .expect("run netcontrol")
    }

    /// `netcontrol status --json`.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(out.status.success(), "status: {}", show(&out));
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// One sandbox of `status`.
    pub fn sandbox(&self, name: &str) -> Value {
        let status = self.status();
        status["sandboxes"]
            .as_array()
            .and_then(|a| a.iter().find(|s| s["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no sandbox {name:?} in {status:#}"))
    }

    /// A sandbox's state (`enforcing`, `waiting`), or None if there is no such sandbox.
    pub fn state_of(&self, name: &str) -> Option<String> {
        self.status()["sandboxes"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .and_then(|s| s["state"].as_str().map(str::to_owned))
    }

    /// GET a path of the metrics server (status, body).
    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(METRICS_ADDR, path)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.proc = None; // killed by Background's drop
        let out = Command::new(netcontrol_bin())
            .args(["uninstall", "--force", "--pin-root"])
            .arg(&self.pin_root)
            .arg("--socket")
            .arg(&self.socket)
            .output();
        if let Ok(o) = out
            && !o.status.success()
        {
            eprintln!("cleaning up {}: {}", self.pin_root.display(), show(&o));
        }
    }
}

/// A plain HTTP/1.0 GET on loopback: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "10", "-w", "\n%{http_code}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

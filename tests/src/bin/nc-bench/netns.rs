//! Network namespaces of the benchmark's own, each held open by a sleeping process, and
//! commands run inside one (and inside a cgroup).

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

pub struct Netns {
    holder: Child,
    pub path: PathBuf,
}

impl Netns {
    /// A new namespace with loopback up.
    pub fn new() -> Self {
        let holder = Command::new("unshare")
            .args(["--net", "sleep", "1000000"])
            .stdout(Stdio::null())
            .spawn()
            .expect("unshare --net");
        let path = PathBuf::from(format!("/proc/{}/ns/net", holder.id()));
        let ours = std::fs::read_link("/proc/thread-self/ns/net").expect("our netns");
        // unshare switches namespaces before it execs sleep.
        let switched = netcontrol_tests::within(Duration::from_secs(5), || {
            std::fs::read_link(&path).is_ok_and(|ns| ns != ours)
        });
        assert!(switched.is_some(), "the namespace holder did not start");
        let this = Self { holder, path };
        this.sh("ip link set lo up");
        this
    }

    /// A shell command inside; panics if it fails.
    pub fn sh(&self, script: &str) -> String {
        let out = self.command("sh").arg("-c").arg(script).output().expect("sh");
        assert!(out.status.success(), "`{script}` failed: {}", netcontrol_tests::show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A command that enters this namespace before exec.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        enter(Command::new(program), Some(&self.path), None)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// `cmd`, made to enter the network namespace at `netns` and the cgroup at `cgroup` (as the
/// forked child, before exec).
pub fn enter(mut cmd: Command, netns: Option<&Path>, cgroup: Option<&Path>) -> Command {
    let ns = netns.map(|p| File::open(p).expect("open netns"));
    let procs = cgroup.map(|c| {
        std::fs::OpenOptions::new().write(true).open(c.join("cgroup.procs")).expect("cgroup.procs")
    });
    // SAFETY: only syscalls in the forked child; the fds live as long as the Command.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(ns) = &ns
                && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(p) = &procs
                && libc::write(p.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

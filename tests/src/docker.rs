//! A real dockerd for one test, in the test's own network namespace: its own data root, exec
//! root, socket and default cgroup parent, `--iptables=false`, and a busybox image imported
//! from the host's busybox-static (no registry). Containers reach only the test's namespace.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use crate::{Background, cgroup2_mount, show, unique, within};

pub const IMAGE: &str = "local/busybox:latest";
/// The bridge's address in the test's namespace: where containers find the test's servers.
pub const BRIDGE_IP: &str = "172.17.0.1";

pub struct Dockerd {
    dir: tempfile::TempDir,
    /// `unix://...`, for DOCKER_HOST.
    pub host: String,
    /// The cgroup (relative to the cgroup mounts) containers go under by default.
    pub cgroup_parent: String,
    proc: Option<Background>,
}

impl Dockerd {
    /// Start dockerd in the calling thread's network namespace and import the image.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let host = format!("unix://{}", d.join("docker.sock").display());
        let cgroup_parent = unique("nc-docker");
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("-H")
            .arg(&host)
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .args(["--iptables=false", "--ip-forward=false", "--ip-masq=false"])
            .arg(format!("--cgroup-parent=/{cgroup_parent}"))
            .stdout(Stdio::null());
        let mut this = Self { host, cgroup_parent, proc: Some(Background::spawn(cmd)), dir };
        let up = within(Duration::from_secs(30), || this.docker(&["version"]).status.success());
        assert!(up.is_some(), "dockerd did not start:\n{}", this.log());
        this.import_busybox();
        this
    }

    fn log(&mut self) -> String {
        self.proc.as_mut().map(Background::log).unwrap_or_default()
    }

    /// `docker ARGS` against this dockerd.
    pub fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker").args(args).env("DOCKER_HOST", &self.host).output().expect("docker")
    }

    /// `docker ARGS`, which must succeed; its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(out.status.success(), "docker {args:?}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Start a container that sleeps, with extra `docker run` options; its full id.
    pub fn sleeper(&self, name: &str, opts: &[&str]) -> String {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(opts);
        args.extend_from_slice(&[IMAGE, "sleep", "3600"]);
        self.ok(&args)
    }

    /// `nc` from inside a running container: Ok(()) if it connected, Err(its stderr) if not.
    pub fn connect_from(&self, container: &str, ip: &str, port: u16) -> Result<(), String> {
        let out = self.docker(&["exec", container, "nc", "-w", "2", ip, &port.to_string()]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The host pid of a container's init process.
    pub fn pid(&self, container: &str) -> u32 {
        self.ok(&["inspect", "-f", "{{.State.Pid}}", container]).parse().expect("pid")
    }

    /// The unified-hierarchy cgroup directory of the containers' default parent.
    pub fn parent_dir(&self) -> PathBuf {
        cgroup2_mount().join(&self.cgroup_parent)
    }

    fn import_busybox(&self) {
        let root = self.dir.path().join("rootfs");
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "root", "usr"] {
            std::fs::create_dir_all(root.join(d)).expect("mkdir");
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
        let list = Command::new("/bin/busybox").arg("--list").output().expect("busybox --list");
        for applet in String::from_utf8_lossy(&list.stdout).lines().filter(|a| *a != "busybox") {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
        }
        std::os::unix::fs::symlink("bin", root.join("sbin")).expect("sbin");
        std::os::unix::fs::symlink("../bin", root.join("usr/bin")).expect("usr/bin");
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").expect("passwd");
        std::fs::write(root.join("etc/group"), "root:x:0:\n").expect("group");
        let script = format!(
            "tar -C {} -c . | docker import -c 'CMD [\"/bin/sh\"]' - {IMAGE}",
            root.display()
        );
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .env("DOCKER_HOST", &self.host)
            .output()
            .expect("docker import");
        assert!(out.status.success(), "docker import: {}", show(&out));
    }
}

/// A cgroup name used as `--cgroup-parent`: Docker creates it in every hierarchy (cgroup v1
/// controllers too, on a hybrid host) and never removes it; this does, on drop.
pub struct ParentCgroup {
    pub name: String,
}

impl ParentCgroup {
    pub fn new() -> Self {
        Self { name: unique("nc-parent") }
    }
}

impl Default for ParentCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ParentCgroup {
    fn drop(&mut self) {
        remove_everywhere(&self.name);
    }
}

/// Remove an (empty) cgroup of this name from every hierarchy.
fn remove_everywhere(name: &str) {
    if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir(e.path().join(name));
        }
    }
    let _ = std::fs::remove_dir(cgroup2_mount().join(name));
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // Containers first (so their cgroups go), then dockerd itself, gently.
        let ids = self.docker(&["ps", "-aq"]);
        let ids: Vec<String> =
            String::from_utf8_lossy(&ids.stdout).split_whitespace().map(str::to_owned).collect();
        if !ids.is_empty() {
            let mut args = vec!["rm", "-f"];
            args.extend(ids.iter().map(String::as_str));
            let _ = self.docker(&args);
        }
        if let Some(mut p) = self.proc.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p.pid() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let stopped = within(Duration::from_secs(15), || {
                !Path::new(&format!("/proc/{}", p.pid())).exists()
                    || std::fs::read_to_string(format!("/proc/{}/stat", p.pid()))
                        .is_ok_and(|s| s.contains(") Z "))
            });
            if stopped.is_none() {
                p.kill9();
            }
        }
        // What dockerd leaves mounted under its roots.
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(1))
            .filter(|m| Path::new(m).starts_with(self.dir.path()))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
        remove_everywhere(&self.cgroup_parent);
    }
}

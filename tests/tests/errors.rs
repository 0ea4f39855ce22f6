//! Errors a user can act on, produced for real: no privileges, no cgroup v2, a path that is not
//! a cgroup, a verifier rejection with its log.

use std::{ffi::CString, os::unix::process::CommandExt, process::Command};

use netcontrol_tests::{
    TEST_PIN_ROOT, kernel_tests_enabled, netcontrol, netcontrol_bin, show, world_executable,
};

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn without_privileges_it_says_to_run_as_root() {
    if !kernel_tests_enabled() {
        return;
    }
    let (_dir, bin) = world_executable(&netcontrol_bin());
    for (args, code) in
        [(&["run", "--", "true"][..], 125), (&["attach", "--cgroup", "/sys/fs/cgroup"][..], 1)]
    {
        let out =
            Command::new(&bin).args(args).uid(65534).gid(65534).output().expect("run as nobody");
        assert_eq!(out.status.code(), Some(code), "{}", show(&out));
        let err = stderr(&out);
        assert!(
            err.contains("netcontrol needs root privileges") && err.contains("CAP_BPF"),
            "{err}"
        );
    }
}

#[test]
fn attach_to_something_that_is_not_a_cgroup() {
    if !kernel_tests_enabled() {
        return;
    }
    let out = netcontrol(&["attach", "--cgroup", "/tmp"]);
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        stderr(&out).contains("/tmp is not a cgroup v2 directory (cgroup2 is mounted at"),
        "{}",
        stderr(&out)
    );
    let out = netcontrol(&["attach", "--cgroup", "/nonexistent/cgroup"]);
    assert!(
        stderr(&out).contains("cgroup opening /nonexistent/cgroup: No such file or directory"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn no_cgroup2_mounted() {
    if !kernel_tests_enabled() {
        return;
    }
    // In a private mount namespace, detach every cgroup2 mount before running netcontrol.
    let mounts: Vec<CString> = std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| l.split_once(" - ").is_some_and(|(_, r)| r.starts_with("cgroup2 ")))
        .map(|l| CString::new(l.split(' ').nth(4).expect("mount point")).expect("cstring"))
        .collect();
    let mut cmd = Command::new(netcontrol_bin());
    cmd.args(["run", "--", "true"]).env("NETCONTROL_PIN_ROOT", TEST_PIN_ROOT);
    // SAFETY: only syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for m in &mounts {
                if libc::umount2(m.as_ptr(), libc::MNT_DETACH) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("netcontrol in a namespace without cgroup2");
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    assert!(stderr(&out).contains("no cgroup v2 hierarchy is mounted"), "{}", stderr(&out));
}

/// A program the verifier rejects (a context read far out of bounds): the error names the
/// program and carries the verifier's log.
#[test]
fn verifier_rejection_prints_the_log() {
    if !kernel_tests_enabled() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("bad.c");
    let obj = dir.path().join("bad.o");
    std::fs::write(
        &src,
        "struct bpf_sock;\n\
         __attribute__((section(\"cgroup/sock_create\"), used))\n\
         int nc_sock_create(struct bpf_sock *ctx) { return *(volatile unsigned int *)((char *)ctx + 1000); }\n\
         char LICENSE[] __attribute__((section(\"license\"), used)) = \"GPL\";\n",
    )
    .expect("write");
    let clang = ["clang-22", "clang"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok());
    let clang = clang
        .expect("clang (installed by `cargo xtask setup`) to build a deliberately bad program");
    let built = Command::new(clang)
        .args(["-target", "bpf", "-O2", "-c"])
        .arg(&src)
        .arg("-o")
        .arg(&obj)
        .output()
        .expect("clang");
    assert!(built.status.success(), "{}", show(&built));
    let out = Command::new(netcontrol_bin())
        .args(["run", "--", "true"])
        .env("NETCONTROL_PIN_ROOT", TEST_PIN_ROOT)
        .env("NETCONTROL_EBPF_OBJECT", &obj)
        .output()
        .expect("netcontrol");
    assert_eq!(out.status.code(), Some(125), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("the kernel verifier rejected program nc_sock_create"), "{err}");
    assert!(
        err.contains("--- verifier log ---") && err.contains("invalid bpf_context access"),
        "{err}"
    );
}

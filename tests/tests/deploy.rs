//! The Kubernetes deployment: manifests rendered by kustomize validate offline against several
//! Kubernetes versions (kubernetes-validate, strict), say what an agent needs, carry a valid
//! daemon configuration; the image builds from deploy/Dockerfile with the test's own dockerd
//! and runs.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use netcontrol_tests::{docker::Dockerd, isolate_network, netcontrol_bin, show};
use serde_json::Value;

/// Kubernetes versions to validate against (kubernetes-validate 1.37 has 1.25 ... 1.37).
const VERSIONS: &[&str] = &["1.30.0", "1.33.0", "1.37.0"];

fn required() -> bool {
    std::env::var("NETCONTROL_REQUIRE_KERNEL_TESTS").is_ok_and(|v| v == "1")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace").to_owned()
}

/// The test tools' venv (`cargo xtask setup` makes it).
fn tool(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("NETCONTROL_TOOLS")
        .map_or_else(|| PathBuf::from("/opt/netcontrol-tools"), PathBuf::from);
    let path = dir.join("kv/bin").join(name);
    if path.exists() {
        return Some(path);
    }
    assert!(!required(), "{} is missing: run `cargo xtask setup`", path.display());
    eprintln!("SKIPPED: {} is missing (cargo xtask setup installs it)", path.display());
    None
}

/// `kubectl kustomize DIR`, as YAML.
fn kustomize(dir: &str) -> Option<String> {
    let out = match Command::new("kubectl").arg("kustomize").arg(repo().join(dir)).output() {
        Ok(o) => o,
        Err(e) => {
            assert!(!required(), "kubectl (for `kubectl kustomize`) is missing: {e}");
            eprintln!("SKIPPED: no kubectl to render {dir}");
            return None;
        }
    };
    assert!(out.status.success(), "kubectl kustomize {dir}: {}", show(&out));
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// YAML documents as JSON values (with the venv's PyYAML, which kubernetes-validate uses).
fn documents(yaml: &str, python: &Path) -> Vec<Value> {
    let mut child = Command::new(python)
        .args(["-c", "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), yaml.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python");
    assert!(out.status.success(), "{}", show(&out));
    serde_json::from_slice::<Vec<Value>>(&out.stdout).expect("json")
}

#[test]
fn manifests_validate_against_several_kubernetes_versions() {
    let Some(validate) = tool("kubernetes-validate") else { return };
    for dir in ["deploy/base", "deploy/overlays/gke", "deploy/overlays/prometheus-operator"] {
        let Some(yaml) = kustomize(dir) else { return };
        let file = tempfile::NamedTempFile::new().expect("temp");
        std::fs::write(file.path(), &yaml).expect("write");
        for v in VERSIONS {
            let out = Command::new(&validate)
                .args(["--strict", "-k", v])
                .arg(file.path())
                .output()
                .expect("run");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success() && !text.contains("ERROR"), "{dir} against {v}:\n{text}");
            assert!(
                text.contains("passed for resource daemonset/netcontrol"),
                "{dir} against {v}:\n{text}"
            );
        }
    }
}

#[test]
fn the_daemonset_asks_for_what_the_agent_needs_and_no_more() {
    let Some(python) = tool("python") else { return };
    let Some(yaml) = kustomize("deploy/overlays/gke") else { return };
    let docs = documents(&yaml, &python);
    let find =
        |kind: &str| docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"));
    let ds = find("DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    let c = &spec["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert!(
        args.windows(2).any(|w| w[0] == "--max-open-files"),
        "pods cannot set limits: the agent raises its own ({args:?})"
    );
    assert_eq!(c["securityContext"]["privileged"], false, "explicit capabilities, not privileged");
    let caps: Vec<&str> = c["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for needed in ["BPF", "NET_ADMIN", "SYS_ADMIN"] {
        assert!(caps.contains(&needed), "{needed} in {caps:?}");
    }
    assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert!(
        c["resources"]["requests"]["memory"].is_string()
            && c["resources"]["limits"]["memory"].is_string()
    );
    assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    assert_eq!(spec["priorityClassName"], "system-node-critical");
    assert_eq!(spec["hostPID"], true);
    assert_eq!(spec["tolerations"][0]["operator"], "Exists");
    assert_eq!(ds["spec"]["updateStrategy"]["type"], "RollingUpdate");
    let paths: Vec<&str> = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert!(paths.contains(&"/sys/fs/cgroup") && paths.contains(&"/sys/fs/bpf"), "{paths:?}");
    // The least rights: pods, read only.
    let role = find("ClusterRole");
    assert_eq!(role["rules"].as_array().map(Vec::len), Some(1));
    assert_eq!(role["rules"][0]["resources"], serde_json::json!(["pods"]));
    assert_eq!(role["rules"][0]["verbs"], serde_json::json!(["get", "list", "watch"]));
    let svc = find("Service");
    assert_eq!(svc["metadata"]["annotations"]["prometheus.io/scrape"], "true");
    assert!(docs.iter().any(|d| d["kind"] == "PodMonitoring"));
}

#[test]
fn the_configmap_holds_a_valid_daemon_configuration() {
    let Some(python) = tool("python") else { return };
    for dir in ["deploy/base", "deploy/overlays/gke"] {
        let Some(yaml) = kustomize(dir) else { return };
        let docs = documents(&yaml, &python);
        let cm = docs.iter().find(|d| d["kind"] == "ConfigMap").expect("ConfigMap");
        let config = cm["data"]["daemon.yaml"].as_str().expect("daemon.yaml");
        let dir_ = tempfile::tempdir().expect("tempdir");
        let path = dir_.path().join("daemon.yaml");
        std::fs::write(&path, config).expect("write");
        let out = Command::new(netcontrol_bin())
            .args(["daemon", "--check", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        assert!(out.status.success(), "{dir}: {}", show(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("Kubernetes pods"), "{}", show(&out));
    }
}

#[test]
fn the_image_builds_from_the_dockerfile_and_runs() {
    let Some(bin) = std::env::var_os("NETCONTROL_STATIC_BIN").map(PathBuf::from) else {
        assert!(
            !required(),
            "NETCONTROL_STATIC_BIN is not set (cargo xtask test builds the static binary)"
        );
        eprintln!("SKIPPED: no NETCONTROL_STATIC_BIN");
        return;
    };
    if !netcontrol_tests::kernel_tests_enabled() {
        return;
    }
    isolate_network(&[]);
    let docker = Dockerd::start();
    let context = tempfile::tempdir().expect("tempdir");
    std::fs::copy(&bin, context.path().join("netcontrol")).expect("copy the static binary");
    let out = Command::new("docker")
        .args(["build", "-t", "netcontrol:test", "-f"])
        .arg(repo().join("deploy/Dockerfile"))
        .arg(context.path())
        .env("DOCKER_HOST", &docker.host)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .expect("docker build");
    assert!(out.status.success(), "{}", show(&out));
    let version = docker.ok(&["run", "--rm", "--network", "none", "netcontrol:test", "--version"]);
    assert_eq!(version, format!("netcontrol {}", env!("CARGO_PKG_VERSION")));
    // The image's default command reads the ConfigMap's file: check one the same way.
    let cfg = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        cfg.path().join("daemon.yaml"),
        "policies: {none: {allow: []}}\nkubernetes: {}\n",
    )
    .expect("write");
    let mount = format!("{}:/etc/netcontrol:ro", cfg.path().display());
    let out = docker.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &mount,
        "netcontrol:test",
        "daemon",
        "--check",
        "--config",
        "/etc/netcontrol/daemon.yaml",
    ]);
    assert!(out.contains("valid: 1 policies"), "{out}");
}

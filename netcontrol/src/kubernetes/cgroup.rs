//! Where a pod's cgroup is. The kubelet names it after the pod's uid and QoS class, in one of
//! two schemes depending on its cgroup driver; the container runtime (containerd, CRI-O) names
//! only the containers' cgroups below it, which the pod cgroup covers:
//!
//! | driver | Guaranteed | Burstable / BestEffort |
//! |---|---|---|
//! | cgroupfs | `kubepods/pod<uid>` | `kubepods/burstable/pod<uid>` |
//! | systemd | `kubepods.slice/kubepods-pod<uid_>.slice` | `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice` |
//!
//! (`<uid_>`: the uid with `_` for `-`.) Containers below: `cri-containerd-<id>.scope` /
//! `crio-<id>.scope` (systemd), `<id>` / `crio-<id>` (cgroupfs).

use std::path::{Path, PathBuf};

use super::{Pod, Qos};

/// Where the pod's cgroup is, if it exists under `root` (the kubelet's cgroup root, usually
/// the cgroup2 mount).
pub fn find(root: &Path, pod: &Pod) -> Option<PathBuf> {
    candidates(root, pod).into_iter().find(|p| p.is_dir())
}

/// Where the pod's cgroup will be: the existing one, else the one of the driver whose
/// hierarchy exists (`kubepods.slice`: systemd), else the cgroupfs one.
pub fn expected(root: &Path, pod: &Pod) -> PathBuf {
    if let Some(p) = find(root, pod) {
        return p;
    }
    let [systemd, cgroupfs] = candidates(root, pod);
    if root.join("kubepods.slice").is_dir() { systemd } else { cgroupfs }
}

/// The systemd and the cgroupfs path, in that order.
pub fn candidates(root: &Path, pod: &Pod) -> [PathBuf; 2] {
    let uid = pod.uid.as_str();
    let escaped = uid.replace('-', "_");
    let (systemd, cgroupfs) = match pod.qos {
        Qos::Guaranteed => (
            root.join("kubepods.slice").join(format!("kubepods-pod{escaped}.slice")),
            root.join("kubepods").join(format!("pod{uid}")),
        ),
        Qos::Burstable | Qos::BestEffort => {
            let class = if pod.qos == Qos::Burstable { "burstable" } else { "besteffort" };
            (
                root.join("kubepods.slice")
                    .join(format!("kubepods-{class}.slice"))
                    .join(format!("kubepods-{class}-pod{escaped}.slice")),
                root.join("kubepods").join(class).join(format!("pod{uid}")),
            )
        }
    };
    [systemd, cgroupfs]
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0d8a4c43-6a6c-4c1e-9c6f-2f5f0f2a1b3c";

    fn pod(qos: Qos) -> Pod {
        Pod {
            uid: UID.into(),
            namespace: "ns".into(),
            name: "p".into(),
            labels: Default::default(),
            qos,
            finished: false,
        }
    }

    #[test]
    fn every_driver_and_class() {
        let r = Path::new("/sys/fs/cgroup");
        let esc = UID.replace('-', "_");
        assert_eq!(
            candidates(r, &pod(Qos::Guaranteed)),
            [
                r.join(format!("kubepods.slice/kubepods-pod{esc}.slice")),
                r.join(format!("kubepods/pod{UID}"))
            ]
        );
        assert_eq!(
            candidates(r, &pod(Qos::Burstable)),
            [
                r.join(format!(
                    "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{esc}.slice"
                )),
                r.join(format!("kubepods/burstable/pod{UID}"))
            ]
        );
        assert_eq!(
            candidates(r, &pod(Qos::BestEffort)),
            [
                r.join(format!(
                    "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{esc}.slice"
                )),
                r.join(format!("kubepods/besteffort/pod{UID}"))
            ]
        );
    }

    #[test]
    fn the_existing_hierarchy_decides() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = pod(Qos::Burstable);
        assert!(expected(dir.path(), &p).starts_with(dir.path().join("kubepods")));
        std::fs::create_dir(dir.path().join("kubepods.slice")).expect("mkdir");
        assert!(expected(dir.path(), &p).starts_with(dir.path().join("kubepods.slice")));
        assert_eq!(find(dir.path(), &p), None);
        let [systemd, _] = candidates(dir.path(), &p);
        std::fs::create_dir_all(&systemd).expect("mkdir");
        assert_eq!(find(dir.path(), &p), Some(systemd));
    }
}

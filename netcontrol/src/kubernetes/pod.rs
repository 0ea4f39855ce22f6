//! A pod as the daemon sees it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub qos: Qos,
    /// Succeeded or Failed: its containers are gone for good.
    pub finished: bool,
}

impl Pod {
    /// From an API object; None without a uid, name or namespace (never so from a server).
    pub fn from_api(p: &v1::Pod) -> Option<Self> {
        let meta = &p.metadata;
        let status = p.status.as_ref();
        Some(Self {
            uid: meta.uid.clone()?,
            namespace: meta.namespace.clone()?,
            name: meta.name.clone()?,
            labels: meta.labels.clone().unwrap_or_default(),
            qos: match status.and_then(|s| s.qos_class.as_deref()) {
                Some("Guaranteed") => Qos::Guaranteed,
                Some("BestEffort") => Qos::BestEffort,
                // The API server always sets it; Burstable is the class of everything else.
                _ => Qos::Burstable,
            },
            finished: matches!(
                status.and_then(|s| s.phase.as_deref()),
                Some("Succeeded" | "Failed")
            ),
        })
    }

    /// `namespace/name`: how status, events and metrics name it.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_an_api_object() {
        let p: v1::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "job-1", "namespace": "ci", "uid": "0d8a4c43-6a6c-4c1e-9c6f-2f5f0f2a1b3c",
                         "labels": {"netcontrol.io/policy": "web"}},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
            "status": {"qosClass": "BestEffort", "phase": "Running"}
        }))
        .expect("pod");
        let pod = Pod::from_api(&p).expect("complete");
        assert_eq!(pod.full_name(), "ci/job-1");
        assert_eq!(pod.qos, Qos::BestEffort);
        assert!(!pod.finished);
        assert_eq!(pod.labels["netcontrol.io/policy"], "web");
    }
}

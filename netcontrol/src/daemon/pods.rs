//! The daemon's Kubernetes pods as a source: the pods of this node as the API server reports
//! them (which sandbox each one is, at its pod cgroup so that every container of the pod —
//! init containers included — is covered: wanted.rs).

use super::supervisor::Supervisor;
use crate::kubernetes::PodEvent;

impl Supervisor {
    pub async fn pod_event(&mut self, event: PodEvent) {
        match event {
            PodEvent::Resync(list) => {
                let first = !self.pods_synced;
                self.pods = list.into_iter().map(|p| (p.uid.clone(), p)).collect();
                self.pods_synced = true;
                self.converge().await;
                if first {
                    self.collect_garbage();
                }
            }
            PodEvent::Applied(pod) => {
                self.pods.insert(pod.uid.clone(), pod);
                self.converge().await;
            }
            PodEvent::Deleted(uid) => {
                self.pods.remove(&uid);
                self.converge().await;
            }
            PodEvent::Unreachable(why) => {
                tracing::warn!(
                    "{why}; sandboxes stay enforced, new pods are picked up when the API answers again"
                );
            }
        }
        self.publish();
    }
}

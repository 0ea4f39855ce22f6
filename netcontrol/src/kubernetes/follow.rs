//! The pods of this node, as the API server reports them: a kube-rs watcher with a field
//! selector on the node name. It lists, then watches; when a watch breaks it resumes, and when
//! the server says its resource version is too old it lists again (a resync). Credentials:
//! the pod's service account in the cluster, else KUBECONFIG.

use futures_util::StreamExt;
use k8s_openapi::api::core::v1;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::mpsc;

use super::Pod;

#[derive(Debug)]
pub enum PodEvent {
    /// Every pod of the node, after a (re)list: any other one is gone.
    Resync(Vec<Pod>),
    /// Added or changed.
    Applied(Pod),
    /// Deleted (its uid).
    Deleted(String),
    /// The API server cannot be reached (retrying).
    Unreachable(String),
}

/// Follow the pods scheduled on `node`.
pub fn follow(node: String) -> mpsc::Receiver<PodEvent> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let client = loop {
            match Client::try_default().await {
                Ok(c) => break c,
                Err(e) => {
                    let why = format!(
                        "no Kubernetes API client (in-cluster service account or KUBECONFIG): {e}"
                    );
                    if tx.send(PodEvent::Unreachable(why)).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                }
            }
        };
        let pods: Api<v1::Pod> = Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        let mut stream = Box::pin(watcher(pods, config).default_backoff());
        let mut listing: Option<Vec<Pod>> = None;
        while let Some(event) = stream.next().await {
            let message = match event {
                Ok(watcher::Event::Init) => {
                    listing = Some(Vec::new());
                    continue;
                }
                Ok(watcher::Event::InitApply(p)) => {
                    if let (Some(list), Some(pod)) = (listing.as_mut(), Pod::from_api(&p)) {
                        list.push(pod);
                    }
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    PodEvent::Resync(listing.take().unwrap_or_default())
                }
                Ok(watcher::Event::Apply(p)) => match Pod::from_api(&p) {
                    Some(pod) => PodEvent::Applied(pod),
                    None => continue,
                },
                Ok(watcher::Event::Delete(p)) => match p.metadata.uid {
                    Some(uid) => PodEvent::Deleted(uid),
                    None => continue,
                },
                Err(e) => PodEvent::Unreachable(format!("watching the pods of node {node}: {e}")),
            };
            if tx.send(message).await.is_err() {
                return;
            }
        }
    });
    rx
}

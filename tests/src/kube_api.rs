//! A stand-in for the Kubernetes API server: it speaks the list/watch protocol for pods
//! (`GET /api/v1/pods`, with `?watch=true` a stream of JSON event lines) from objects the
//! test gives it, so that the daemon's real kube-rs watcher can be tested where no API server
//! can run. The test adds, modifies and deletes pods, drops the watch, or expires the
//! resource version (410 Gone) to force a full re-list.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use axum::{
    Router,
    body::Body,
    extract::{Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
};
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

pub struct KubeApi {
    pub addr: SocketAddr,
    state: Arc<Shared>,
    _runtime: std::thread::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

struct Shared {
    inner: Mutex<Inner>,
    /// Every change, to each open watch.
    changes: broadcast::Sender<Change>,
}

#[derive(Default)]
struct Inner {
    /// uid -> pod object.
    pods: BTreeMap<String, Value>,
    version: u64,
    /// Watches from a version older than this get 410 Gone.
    oldest: u64,
    /// Requests seen, for assertions ("GET /api/v1/pods?...").
    requests: Vec<String>,
    /// Every change since `oldest`, for watches that resume from a version.
    history: Vec<(u64, &'static str, Value)>,
}

#[derive(Clone, Debug)]
enum Change {
    Event(u64, &'static str, Value),
    /// End every open watch.
    Drop,
}

impl KubeApi {
    /// Start on 127.0.0.1 (in the calling thread's network namespace) with `pods`.
    pub fn start(pods: Vec<Value>) -> Self {
        let (changes, _) = broadcast::channel(1024);
        let state = Arc::new(Shared { inner: Mutex::new(Inner::default()), changes });
        for p in pods {
            state.apply("ADDED", p);
        }
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app_state = state.clone();
        let runtime = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                let app =
                    Router::new().route("/api/v1/pods", get(pods_handler)).with_state(app_state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        Self { addr, state, _runtime: runtime, stop: Some(stop) }
    }

    /// A kubeconfig file naming this server (no credentials: it asks for none).
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: http://{}\n\
             users:\n- name: test\n  user: {{}}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n\
             current-context: test\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    pub fn add(&self, pod: Value) {
        self.state.apply("ADDED", pod);
    }

    pub fn modify(&self, pod: Value) {
        self.state.apply("MODIFIED", pod);
    }

    pub fn delete(&self, pod: Value) {
        self.state.apply("DELETED", pod);
    }

    /// End every open watch (as a restarting API server or a load balancer would): the
    /// client watches again from the last version it saw.
    pub fn drop_watches(&self) {
        let _ = self.state.changes.send(Change::Drop);
    }

    /// Forget history: the next watch from an older version gets 410 Gone, so the client
    /// must list everything again. `silently` changes made meanwhile are seen only that way.
    pub fn expire(&self, silently: impl FnOnce(&mut BTreeMap<String, Value>)) {
        let mut inner = self.state.inner.lock().expect("lock");
        silently(&mut inner.pods);
        inner.version += 1;
        inner.oldest = inner.version;
        inner.history.clear();
        drop(inner);
        self.drop_watches();
    }

    /// The requests served so far.
    pub fn requests(&self) -> Vec<String> {
        self.state.inner.lock().expect("lock").requests.clone()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        self.drop_watches();
    }
}

impl Shared {
    fn apply(&self, kind: &'static str, mut pod: Value) {
        let mut inner = self.inner.lock().expect("lock");
        inner.version += 1;
        let version = inner.version;
        pod["metadata"]["resourceVersion"] = json!(version.to_string());
        let uid = pod["metadata"]["uid"].as_str().expect("pods have a uid").to_owned();
        if kind == "DELETED" {
            inner.pods.remove(&uid);
        } else {
            inner.pods.insert(uid, pod.clone());
        }
        inner.history.push((version, kind, pod.clone()));
        // Sent under the lock, so that a watch starting now sees it in the history or live,
        // never in neither.
        let _ = self.changes.send(Change::Event(version, kind, pod));
        drop(inner);
    }
}

/// `spec.nodeName=X` out of a field selector.
fn node_of(selector: Option<&String>) -> Option<String> {
    selector?.split(',').find_map(|s| s.strip_prefix("spec.nodeName=")).map(str::to_owned)
}

fn on_node(pod: &Value, node: Option<&str>) -> bool {
    node.is_none_or(|n| pod["spec"]["nodeName"] == n)
}

async fn pods_handler(
    State(state): State<Arc<Shared>>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    let node = node_of(q.get("fieldSelector"));
    {
        let mut inner = state.inner.lock().expect("lock");
        let query: Vec<String> = q.iter().map(|(k, v)| format!("{k}={v}")).collect();
        inner.requests.push(format!("GET /api/v1/pods?{}", query.join("&")));
    }
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    if !watch {
        let inner = state.inner.lock().expect("lock");
        let items: Vec<&Value> =
            inner.pods.values().filter(|p| on_node(p, node.as_deref())).collect();
        let list = json!({
            "kind": "PodList", "apiVersion": "v1",
            "metadata": {"resourceVersion": inner.version.to_string()},
            "items": items,
        });
        return (StatusCode::OK, [("content-type", "application/json")], list.to_string())
            .into_response();
    }
    let from: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    let (mut changes, expired, replay) = {
        let inner = state.inner.lock().expect("lock");
        let replay: Vec<_> = inner.history.iter().filter(|(v, ..)| *v > from).cloned().collect();
        (state.changes.subscribe(), from < inner.oldest, replay)
    };
    tokio::spawn(async move {
        let mut last = from;
        for (version, kind, pod) in replay {
            last = version;
            if on_node(&pod, node.as_deref()) {
                let line = json!({"type": kind, "object": pod});
                if tx.send(Ok(Bytes::from(format!("{line}\n")))).await.is_err() {
                    return;
                }
            }
        }
        if expired {
            let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "too old resource version", "reason": "Expired", "code": 410}});
            let _ = tx.send(Ok(Bytes::from(format!("{gone}\n")))).await;
            return;
        }
        loop {
            match changes.recv().await {
                Ok(Change::Event(version, kind, pod))
                    if version > last && on_node(&pod, node.as_deref()) =>
                {
                    let line = json!({"type": kind, "object": pod});
                    if tx.send(Ok(Bytes::from(format!("{line}\n")))).await.is_err() {
                        return;
                    }
                }
                Ok(Change::Event(..)) => {}
                Ok(Change::Drop) | Err(_) => return,
            }
        }
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }));
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}

/// A pod object as the API server returns it, with the fields the daemon reads.
pub fn pod(namespace: &str, name: &str, uid: &str, node: &str, qos: &str, labels: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "uid": uid,
            "creationTimestamp": "2026-11-22T10:00:00Z",
        },
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
        },
        "status": {"phase": "Running", "qosClass": qos},
    });
    pod["metadata"]["labels"] = labels;
    pod
}

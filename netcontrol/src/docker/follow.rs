//! Following containers as they start and stop: a task that lists the running containers,
//! then streams Docker's events, and starts over (list included) whenever the connection to
//! dockerd breaks, so that nothing is missed across a restart of dockerd. Events are hints,
//! checked against the container's state before they are passed on: a replayed or late event
//! must never detach a container that runs.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{Container, Docker};

#[derive(Debug)]
pub enum Lifecycle {
    /// Every running container, after (re)connecting: anything not in it has stopped.
    Running(Vec<Container>),
    Started(Container),
    /// Its processes ended (the id); it may start again.
    Died(String),
    /// It was removed (the id).
    Removed(String),
    /// dockerd cannot be reached (retrying).
    Unreachable(String),
}

/// Follow `host`'s containers (None: DOCKER_HOST or the default socket).
pub fn follow(host: Option<String>) -> mpsc::Receiver<Lifecycle> {
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            match session(host.as_deref(), &tx).await {
                Ok(()) => return, // nobody listens any more
                Err(why) => {
                    if tx.send(Lifecycle::Unreachable(why)).await.is_err() {
                        return;
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    });
    rx
}

/// One connection: list, then events until it breaks. Ok when the receiver is gone.
async fn session(host: Option<&str>, tx: &mpsc::Sender<Lifecycle>) -> Result<(), String> {
    let docker = Docker::connect(host).await.map_err(|e| e.to_string())?;
    // Events from a second before the list on: a container starting in between is seen twice
    // rather than not at all.
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64 - 1);
    let mut events = Box::pin(docker.lifecycle_events(since));
    let running = docker.running().await.map_err(|e| e.to_string())?;
    if tx.send(Lifecycle::Running(running)).await.is_err() {
        return Ok(());
    }
    while let Some(event) = events.next().await {
        let event =
            event.map_err(|e| format!("Docker's event stream at {}: {e}", docker.host()))?;
        let id = event.actor.and_then(|a| a.id).unwrap_or_default();
        let message = match event.action.as_deref() {
            Some("start") => match docker.inspect(&id).await {
                Ok(c) if c.running => Lifecycle::Started(c),
                // Already gone again: its die event follows.
                Ok(_) | Err(_) => continue,
            },
            // Events are replayed from a little before the list: a death of an earlier run
            // of a container that runs again now is old news (its start follows).
            Some("die") => match docker.inspect(&id).await {
                Ok(c) if c.running => continue,
                _ => Lifecycle::Died(id),
            },
            Some("destroy") => Lifecycle::Removed(id),
            _ => continue,
        };
        if tx.send(message).await.is_err() {
            return Ok(());
        }
    }
    Err(format!("Docker's event stream at {} ended", docker.host()))
}

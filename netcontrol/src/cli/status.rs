//! `netcontrol status`: what the running daemon enforces, and how full its maps are.

use std::{fmt::Write as _, time::Duration};

use super::StatusArgs;
use crate::{
    daemon::control::{self, Request, Status},
    error::{Error, Result},
};

pub async fn main(args: &StatusArgs) -> Result<i32> {
    let response =
        control::call(&args.socket.path, &Request::Status, Duration::from_secs(10)).await?;
    let status = match (response.ok, response.status) {
        (true, Some(s)) => s,
        _ => {
            return Err(Error::Daemon(
                response.error.unwrap_or_else(|| "no status in the answer".into()),
            ));
        }
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&status).map_err(|e| Error::io("encoding", e.into()))?
        );
    } else {
        print!("{}", render(&status));
    }
    Ok(0)
}

/// The status as a table a person reads.
pub fn render(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "netcontrol daemon {} (pid {}), config {}, pins {}{}",
        s.version,
        s.pid,
        s.config.display(),
        s.pin_root.display(),
        if s.programs_adopted { " (programs re-adopted)" } else { "" }
    );
    let header = [
        "SANDBOX",
        "STATE",
        "POLICY",
        "MODE",
        "BLOCKED",
        "ALLOWED",
        "DNS-REFUSED",
        "ENTRIES",
        "CGROUP",
    ];
    let rows: Vec<[String; 9]> = s
        .sandboxes
        .iter()
        .map(|b| {
            [
                b.name.clone(),
                b.state.clone(),
                b.policy.clone(),
                format!("{}/{}", b.mode, b.dns_mode),
                if b.mode == "audit" {
                    format!("{} (audit)", b.would_block)
                } else {
                    b.blocked.to_string()
                },
                b.allowed.to_string(),
                b.dns_refused.to_string(),
                format!("{}+{}", b.entries_v4, b.entries_v6),
                b.cgroup.display().to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        l.trim_end().to_owned()
    };
    let _ = writeln!(out, "{}", line(&header.map(str::to_owned)));
    for r in &rows {
        let _ = writeln!(out, "{}", line(r));
    }
    if s.sandboxes.is_empty() {
        let _ = writeln!(out, "(no sandboxes)");
    }
    for b in s.sandboxes.iter().filter(|b| b.detail.is_some() || b.problem.is_some()) {
        let what = b.problem.as_deref().or(b.detail.as_deref()).unwrap_or_default();
        let _ = writeln!(out, "{}: {what}", b.name);
    }
    if !s.ready {
        let _ = writeln!(out, "NOT READY: a sandbox does not enforce its policy (see above)");
    }
    let maps: Vec<String> = s
        .maps
        .iter()
        .map(|m| {
            format!(
                "{} {}/{} ({:.1}%)",
                m.map,
                m.entries,
                m.capacity,
                100.0 * m.entries as f64 / f64::from(m.capacity.max(1))
            )
        })
        .collect();
    let _ = writeln!(out, "maps: {}", maps.join(", "));
    let _ = writeln!(out, "events lost: {}", s.events_lost);
    if let Some(g) = &s.kernel_gaps {
        let _ = writeln!(out, "{g}");
    }
    if let Some(l) = &s.landlock {
        let _ = writeln!(out, "landlock: {l}");
    }
    out
}

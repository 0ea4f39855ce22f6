//! A real Prometheus server, started by the test on its private loopback, scraping the
//! daemon every second.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::Value;

use crate::{Background, daemon::http_get, within};

const ADDR: &str = "127.0.0.1:19090";

pub struct Prometheus {
    _dir: tempfile::TempDir,
    _proc: Background,
}

impl Prometheus {
    /// Start scraping `target` (host:port) and wait until Prometheus is ready.
    pub fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: netcontrol\n    static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .expect("write prometheus.yml");
        let mut cmd = Command::new("prometheus");
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={ADDR}"))
            .stdout(Stdio::null());
        let proc = Background::spawn(cmd);
        within(Duration::from_secs(30), || http_get(ADDR, "/-/ready").0 == 200)
            .expect("prometheus did not become ready");
        Self { _dir: dir, _proc: proc }
    }

    /// An instant PromQL query: the value of its single sample, if there is one.
    pub fn value(&self, promql: &str) -> Option<f64> {
        let out = Command::new("curl")
            .args(["-s", "-m", "10", "--get", "--data-urlencode"])
            .arg(format!("query={promql}"))
            .arg(format!("http://{ADDR}/api/v1/query"))
            .output()
            .expect("curl");
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Poll `promql` until it equals `want` (Prometheus scrapes every second).
    pub fn wait_for(&self, promql: &str, want: f64) -> Result<(), Option<f64>> {
        let mut last = None;
        match within(Duration::from_secs(20), || {
            last = self.value(promql);
            last == Some(want)
        }) {
            Some(_) => Ok(()),
            None => Err(last),
        }
    }
}

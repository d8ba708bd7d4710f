//! A local swarm of real `shoal run` processes on loopback, for `shoal demo`, `shoal bench
//! pipeline` and the multi-process tests.
//!
//! [`LocalSwarm::start`] writes one config per node into a work directory (fresh key and data
//! dir, loopback TCP only, mDNS off, short liveness timeouts so a dead node is noticed in
//! seconds, bandwidth probes every 2 s so a pair missed at start is measured before a re-plan
//! needs it, and the memory budget the caller asks for), starts the first node, reads its
//! `shoal-ready` line for a bootstrap address, then starts the others against it. Each
//! child's stderr goes to `node<i>.log` in the work directory. Dropping the swarm kills every
//! child that is still running; [`LocalSwarm::shutdown`] first asks them to stop (SIGTERM).
//! [`gemma`] finds the fetched Gemma-3-270M and its q4 shards.

pub mod gemma;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::node::ModelInfo;

/// How long a node may take to print its ready line (it calibrates its compute speed first).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `shutdown` waits for a node to exit after SIGTERM.
const EXIT_GRACE: Duration = Duration::from_secs(3);

/// Errors of the local swarm.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was attempted.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A node exited or never became ready.
    #[error("node {index} did not start: {reason} (log: {log})")]
    NotReady {
        /// The node.
        index: usize,
        /// What happened.
        reason: String,
        /// Its log file.
        log: String,
    },
    /// An HTTP request to a node failed.
    #[error("http: {0}")]
    Http(String),
    /// The swarm did not agree on the expected plan in time.
    #[error("no plan with {stages} or more stages within {waited:?}; last status: {last}")]
    NoPlan {
        /// Stages wanted.
        stages: usize,
        /// How long we waited.
        waited: Duration,
        /// The last status seen.
        last: String,
    },
    /// The model's manifest could not be read.
    #[error("model: {0}")]
    Model(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LaunchError {
    let what = what.into();
    move |source| LaunchError::Io { what, source }
}

/// How to start the swarm.
#[derive(Debug, Clone, Default)]
pub struct LaunchOptions {
    /// The `shoal` binary.
    pub bin: PathBuf,
    /// Work directory (configs, keys, stores, logs); created if missing.
    pub dir: PathBuf,
    /// The model every node holds; empty: the node starts without one.
    pub model: PathBuf,
    /// Memory each node offers, bytes, one entry per node.
    pub memory: Vec<u64>,
    /// Log filter of the children.
    pub log: String,
    /// TOML appended to every node's config after its own sections (e.g. a `[pipeline]`
    /// section); empty for none.
    pub extra_config: String,
    /// Environment variables set for the node processes, on top of this process's.
    pub env: Vec<(String, String)>,
    /// Top-level TOML keys added to every node's config before its sections (e.g.
    /// `api_keys = [...]`); empty for none.
    pub top_config: String,
    /// The API key the swarm's own client sends (for nodes started with `api_keys`).
    pub api_key: Option<String>,
    /// Give each node its own power-supply and thermal folders (`nodeN/power_supply`,
    /// `nodeN/thermal`, empty: no battery, no sensor) read every 200 ms, and its own throttle
    /// knob file `nodeN/throttle` ([`crate::power::THROTTLE_FILE_ENV`]), for tests to
    /// control; otherwise the nodes read this machine's.
    pub own_power: bool,
}

/// The power folders and throttle knob of node `i` under `dir` (see
/// [`LaunchOptions::own_power`]): `(power_supply, thermal, throttle)`.
pub fn power_paths(dir: &Path, i: usize) -> (PathBuf, PathBuf, PathBuf) {
    let n = dir.join(format!("node{i}"));
    (
        n.join("power_supply"),
        n.join("thermal"),
        n.join("throttle"),
    )
}

/// One running node process.
#[derive(Debug)]
pub struct LocalNode {
    /// Its node id.
    pub id: String,
    /// Its HTTP API address (`ip:port`).
    pub api: String,
    /// Its listen addresses.
    pub listen: Vec<String>,
    /// Its log file.
    pub log: PathBuf,
    child: Child,
}

impl LocalNode {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// Real `shoal run` processes on loopback.
#[derive(Debug)]
pub struct LocalSwarm {
    /// The nodes, in start order (node 0 is everyone's bootstrap peer).
    pub nodes: Vec<LocalNode>,
    http: reqwest::Client,
}

/// Memory per node that forces `model` to span `n` nodes: enough for the best split into
/// `n` contiguous parts, not enough for `n - 1` (when the layers allow it). Returns the bytes
/// to offer (the planner uses `memory_fraction` of it).
pub fn spanning_budget(model: &Path, n: usize, memory_fraction: f64) -> Result<u64, LaunchError> {
    let info = ModelInfo::load(model).map_err(|e| LaunchError::Model(e.to_string()))?;
    let need: Vec<f64> = info
        .layers
        .iter()
        .map(|l| l.param_bytes + l.kv_bytes_per_token * info.context_tokens)
        .collect();
    let best_n = min_max_partition(&need, n.max(1));
    let best_less = if n > 1 {
        min_max_partition(&need, n - 1)
    } else {
        f64::INFINITY
    };
    // Between the two optima: n parts fit, n - 1 do not.
    let per_node = if best_less.is_finite() {
        best_n + (best_less - best_n) * 0.25
    } else {
        best_n * 1.1
    };
    Ok((per_node.max(best_n * 1.001) / memory_fraction).ceil() as u64 + 1)
}

/// The smallest possible largest part when `w` is cut into at most `k` contiguous parts.
fn min_max_partition(w: &[f64], k: usize) -> f64 {
    let feasible = |cap: f64| {
        let (mut parts, mut cur) = (1, 0.0);
        for &x in w {
            if x > cap {
                return false;
            }
            if cur + x > cap {
                parts += 1;
                cur = 0.0;
            }
            cur += x;
        }
        parts <= k
    };
    let (mut lo, mut hi) = (0.0f64, w.iter().sum::<f64>());
    for _ in 0..100 {
        let mid = (lo + hi) / 2.0;
        if feasible(mid) { hi = mid } else { lo = mid }
    }
    hi
}

fn config_text(opts: &LaunchOptions, i: usize, bootstrap: &[String]) -> String {
    let node_dir = opts.dir.join(format!("node{i}"));
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let boot: Vec<String> = bootstrap.iter().map(|b| format!("{b:?}")).collect();
    // A local swarm is public unless the caller chose a key (every node would otherwise make
    // its own private swarm).
    let public = if opts.top_config.contains("psk_file") || opts.top_config.contains("public") {
        ""
    } else {
        "public = true\n"
    };
    // An empty model path: a node that starts without the model (it fetches it when it joins
    // by invite).
    let model = if opts.model.as_os_str().is_empty() {
        String::new()
    } else {
        format!("model = {}\n", q(&opts.model))
    };
    let power = if opts.own_power {
        let (supply, thermal, _) = power_paths(&opts.dir, i);
        format!(
            "[power]\nsupply_dir = {}\nthermal_dir = {}\ntermux = false\npoll_ms = 200\n\n",
            q(&supply),
            q(&thermal)
        )
    } else {
        String::new()
    };
    format!(
        "listen = [\"/ip4/127.0.0.1/tcp/0\"]\nbootstrap = [{}]\ndata_dir = {}\nkey_file = {}\n{}\
         api = \"127.0.0.1:0\"\nmdns = false\nquic = false\nort_spin = false\nmemory_offered = {}\n{}{}\n\n\
         [membership]\nliveness_timeout_ms = 2500\nannounce_interval_ms = 400\nsettle_ms = 1000\n\n\
         [probe]\nping_interval_ms = 500\nbandwidth_interval_ms = 2000\nbandwidth_bytes = 262144\nloss_rate_hz = 20\nloss_window = 100\n\n{}{}\n",
        boot.join(", "),
        q(&node_dir.join("data")),
        q(&node_dir.join("node.key")),
        model,
        opts.memory.get(i).copied().unwrap_or(u64::MAX / 4),
        public,
        opts.top_config,
        power,
        opts.extra_config,
    )
}

impl LocalSwarm {
    /// Starts `opts.memory.len()` nodes and waits for each one's ready line.
    pub async fn start(opts: &LaunchOptions) -> Result<Self, LaunchError> {
        std::fs::create_dir_all(&opts.dir).map_err(io(format!("create {}", opts.dir.display())))?;
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(key) = &opts.api_key {
            let value = format!("Bearer {key}")
                .parse()
                .map_err(|_| LaunchError::Http("the API key is not a valid header value".into()))?;
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let http = reqwest::Client::builder()
            .no_proxy()
            .default_headers(headers)
            .build()
            .map_err(|e| LaunchError::Http(e.to_string()))?;
        let mut swarm = LocalSwarm {
            nodes: Vec::new(),
            http,
        };
        for i in 0..opts.memory.len() {
            let bootstrap: Vec<String> = swarm
                .nodes
                .first()
                .map(|n| n.listen.clone())
                .unwrap_or_default();
            let node = spawn_node(opts, i, &bootstrap).await?;
            swarm.nodes.push(node);
        }
        Ok(swarm)
    }

    /// GETs `path` of node `i`'s API as JSON.
    pub async fn get_json(&self, i: usize, path: &str) -> Result<Value, LaunchError> {
        self.client().get_json(i, path).await
    }

    /// GETs `path` of node `i`'s API as text.
    pub async fn get_text(&self, i: usize, path: &str) -> Result<String, LaunchError> {
        self.client().get_text(i, path).await
    }

    /// POSTs `body` to `path` of node `i` and returns the status and JSON answer.
    pub async fn post_json(
        &self,
        i: usize,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value), LaunchError> {
        self.client().post_json(i, path, body).await
    }

    /// POSTs `body` to `path` of node `i` and feeds each server-sent event's `data` to
    /// `on_data` as it arrives; returns the HTTP status once the stream ends.
    pub async fn post_sse(
        &self,
        i: usize,
        path: &str,
        body: &Value,
        on_data: impl FnMut(&str),
    ) -> Result<u16, LaunchError> {
        self.client().post_sse(i, path, body, on_data).await
    }

    /// A client of the nodes' APIs that does not borrow the swarm (for requests that run
    /// while the swarm changes: a node killed or joining). Node indices are those of now.
    pub fn client(&self) -> ApiClient {
        ApiClient {
            http: self.http.clone(),
            apis: self.nodes.iter().map(|n| n.api.clone()).collect(),
        }
    }

    /// Starts one more node, index `self.nodes.len()`, offering `memory` bytes, with node 0
    /// as its bootstrap peer; returns its index once it printed its ready line.
    pub async fn join(&mut self, opts: &LaunchOptions, memory: u64) -> Result<usize, LaunchError> {
        let bootstrap = self
            .nodes
            .first()
            .map(|n| n.listen.clone())
            .unwrap_or_default();
        self.add_node(opts.clone(), memory, &bootstrap).await
    }

    /// Starts one more node that is told no member's address: it joins with an invite token
    /// alone (`shoal run --join`, given through `SHOAL_JOIN`), offering `memory` bytes.
    pub async fn join_by_invite(
        &mut self,
        opts: &LaunchOptions,
        memory: u64,
        token: &str,
    ) -> Result<usize, LaunchError> {
        let mut opts = opts.clone();
        opts.env.push(("SHOAL_JOIN".into(), token.into()));
        self.add_node(opts, memory, &[]).await
    }

    /// Starts node `self.nodes.len()` with `opts`, offering `memory` bytes, dialling `bootstrap`.
    async fn add_node(
        &mut self,
        mut opts: LaunchOptions,
        memory: u64,
        bootstrap: &[String],
    ) -> Result<usize, LaunchError> {
        let i = self.nodes.len();
        opts.memory.resize(i, 0);
        opts.memory.push(memory);
        let node = spawn_node(&opts, i, bootstrap).await?;
        self.nodes.push(node);
        Ok(i)
    }

    /// Waits until every running node reports the same plan with at least `stages` stages
    /// (and an epoch above `after`); returns that plan's JSON.
    pub async fn wait_plan(
        &self,
        stages: usize,
        after: u64,
        timeout: Duration,
    ) -> Result<Value, LaunchError> {
        let start = Instant::now();
        let mut last = String::from("none");
        while start.elapsed() < timeout {
            if let Some(plan) = self.agreed_plan(stages, after, &mut last).await {
                return Ok(plan);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(LaunchError::NoPlan {
            stages,
            waited: timeout,
            last,
        })
    }

    async fn agreed_plan(&self, stages: usize, after: u64, last: &mut String) -> Option<Value> {
        let this = self;
        let mut plan: Option<Value> = None;
        for (i, n) in this.nodes.iter().enumerate() {
            if n.child.id().is_none() {
                continue;
            }
            let status = this.get_json(i, "/v1/status").await.ok()?;
            let p = status.get("plan").filter(|p| !p.is_null())?.clone();
            *last = p.to_string();
            let epoch = p.get("epoch").and_then(Value::as_u64)?;
            let n_stages = p
                .get("stages")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if epoch <= after || n_stages < stages {
                return None;
            }
            match &plan {
                Some(q) if q.get("epoch") != p.get("epoch") => return None,
                _ => plan = Some(p),
            }
        }
        plan
    }

    /// Waits until every stage node of `plan` (its JSON) reports its layers loaded for the
    /// plan's epoch (`shoal_stage_loaded_epoch` in `/metrics`), so timings exclude loading.
    pub async fn wait_ready(&self, plan: &Value, timeout: Duration) -> Result<(), LaunchError> {
        let epoch = plan["epoch"].as_u64().unwrap_or(0) as f64;
        let start = Instant::now();
        for s in plan["stages"].as_array().into_iter().flatten() {
            let Some(i) = s["device"].as_str().and_then(|d| self.index_of(d)) else {
                continue;
            };
            loop {
                let text = self.get_text(i, "/metrics").await.unwrap_or_default();
                let loaded = text
                    .lines()
                    .find_map(|l| l.strip_prefix("shoal_stage_loaded_epoch "))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0);
                if loaded >= epoch {
                    break;
                }
                if start.elapsed() > timeout {
                    return Err(LaunchError::NotReady {
                        index: i,
                        reason: format!("stage layers not loaded within {timeout:?}"),
                        log: self.nodes[i].log.display().to_string(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(())
    }

    /// The index of the node with id `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == id)
    }

    /// Kills node `i` with SIGKILL and waits for it to exit.
    pub async fn kill(&mut self, i: usize) -> Result<(), LaunchError> {
        let child = &mut self.nodes[i].child;
        child.start_kill().map_err(io(format!("kill node {i}")))?;
        child
            .wait()
            .await
            .map_err(io(format!("wait for node {i}")))?;
        Ok(())
    }

    /// Asks every node to stop (SIGTERM), waits briefly, then kills what is left.
    pub async fn shutdown(mut self) {
        for n in &self.nodes {
            if let Some(pid) = n.child.id() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
            }
        }
        for n in &mut self.nodes {
            if tokio::time::timeout(EXIT_GRACE, n.child.wait())
                .await
                .is_err()
            {
                let _ = n.child.start_kill();
                let _ = n.child.wait().await;
            }
        }
    }
}

/// The nodes' HTTP APIs, by node index (see [`LocalSwarm::client`]).
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    apis: Vec<String>,
}

impl ApiClient {
    /// GETs `path` of node `i`'s API as JSON.
    pub async fn get_json(&self, i: usize, path: &str) -> Result<Value, LaunchError> {
        let (url, r) = self.get(i, path).await?;
        r.json()
            .await
            .map_err(|e| LaunchError::Http(format!("{url}: {e}")))
    }

    /// GETs `path` of node `i`'s API as text.
    pub async fn get_text(&self, i: usize, path: &str) -> Result<String, LaunchError> {
        let (url, r) = self.get(i, path).await?;
        r.text()
            .await
            .map_err(|e| LaunchError::Http(format!("{url}: {e}")))
    }

    /// Sends a GET for `path` to node `i`'s API; returns the URL (for errors) and the response.
    async fn get(&self, i: usize, path: &str) -> Result<(String, reqwest::Response), LaunchError> {
        let url = format!("http://{}{path}", self.apis[i]);
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| LaunchError::Http(format!("{url}: {e}")))?;
        Ok((url, r))
    }

    /// POSTs `body` to `path` of node `i` and returns the status and JSON answer.
    pub async fn post_json(
        &self,
        i: usize,
        path: &str,
        body: &Value,
    ) -> Result<(u16, Value), LaunchError> {
        let url = format!("http://{}{path}", self.apis[i]);
        let r = self
            .http
            .post(&url)
            .json(body)
            .send()
            .await
            .map_err(|e| LaunchError::Http(format!("{url}: {e}")))?;
        let status = r.status().as_u16();
        let v = r
            .json()
            .await
            .map_err(|e| LaunchError::Http(format!("{url}: {e}")))?;
        Ok((status, v))
    }

    /// POSTs `body` to `path` of node `i` and feeds each server-sent event's `data` to
    /// `on_data` as it arrives; returns the HTTP status once the stream ends.
    pub async fn post_sse(
        &self,
        i: usize,
        path: &str,
        body: &Value,
        mut on_data: impl FnMut(&str),
    ) -> Result<u16, LaunchError> {
        use futures::StreamExt;
        let url = format!("http://{}{path}", self.apis[i]);
        let http = |e: reqwest::Error| LaunchError::Http(format!("{url}: {e}"));
        let r = self.http.post(&url).json(body).send().await.map_err(http)?;
        let status = r.status().as_u16();
        let mut bytes = r.bytes_stream();
        let mut buf = String::new();
        while let Some(chunk) = bytes.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk.map_err(http)?));
            while let Some(end) = buf.find("\n\n") {
                let event: String = buf.drain(..end + 2).collect();
                for line in event.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        on_data(data.trim_start());
                    }
                }
            }
        }
        Ok(status)
    }
}

async fn spawn_node(
    opts: &LaunchOptions,
    i: usize,
    bootstrap: &[String],
) -> Result<LocalNode, LaunchError> {
    let node_dir = opts.dir.join(format!("node{i}"));
    std::fs::create_dir_all(&node_dir).map_err(io(format!("create {}", node_dir.display())))?;
    let config = node_dir.join("node.toml");
    std::fs::write(&config, config_text(opts, i, bootstrap))
        .map_err(io(format!("write {}", config.display())))?;
    let log = node_dir.join("node.log");
    let log_file = std::fs::File::create(&log).map_err(io(format!("create {}", log.display())))?;
    let mut env = opts.env.clone();
    if opts.own_power {
        let (supply, thermal, knob) = power_paths(&opts.dir, i);
        for d in [&supply, &thermal] {
            std::fs::create_dir_all(d).map_err(io(format!("create {}", d.display())))?;
        }
        env.push((
            crate::power::THROTTLE_FILE_ENV.into(),
            knob.display().to_string(),
        ));
    }
    let mut child = Command::new(&opts.bin)
        .arg("--log")
        .arg(&opts.log)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .map_err(io(format!("start {}", opts.bin.display())))?;
    let not_ready = |reason: String| LaunchError::NotReady {
        index: i,
        reason,
        log: log.display().to_string(),
    };
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| not_ready("no stdout".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let ready = tokio::time::timeout(READY_TIMEOUT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.starts_with("shoal-ready ") {
                return Some(line);
            }
        }
        None
    })
    .await;
    let line = match ready {
        Ok(Some(l)) => l,
        Ok(None) => return Err(not_ready("exited before its ready line".into())),
        Err(_) => return Err(not_ready(format!("no ready line within {READY_TIMEOUT:?}"))),
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k))
            .map(str::to_string)
            .unwrap_or_default()
    };
    Ok(LocalNode {
        id: field("node="),
        api: field("api="),
        listen: field("listen=")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        log,
        child,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_bounds() {
        let w = [1.0, 2.0, 2.0, 2.0, 1.0];
        assert!((min_max_partition(&w, 1) - 8.0).abs() < 1e-6);
        assert!((min_max_partition(&w, 2) - 5.0).abs() < 1e-6);
        assert!((min_max_partition(&w, 3) - 3.0).abs() < 1e-6);
    }
}

//! Real `shoal run` processes in a bed: one per node namespace, listening on the node's bed
//! address, API on the namespace's own loopback, mDNS off, every node but the first joining
//! through the first one only. Helpers read `/v1/status`, wait for an agreed plan and run
//! generations through the OpenAI endpoint, timing them from the client side.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

use super::bed::{ProcId, Testbed};
use super::http;

/// Port of every node's API, on the namespace's loopback.
pub const API_PORT: u16 = 7070;
/// libp2p TCP and QUIC port of every node, on its bed address.
pub const P2P_PORT: u16 = 4001;
/// How long a node may take to print its ready line (it calibrates its compute speed first).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Timeout of one API request (a generation through a weak link takes a while).
const HTTP_TIMEOUT: Duration = Duration::from_secs(120);

/// The `shoal` binary: `SHOAL_BIN`, else `target/release/shoal`, else `target/debug/shoal`
/// of the workspace.
pub fn shoal_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SHOAL_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for profile in ["release", "debug"] {
        let p = root.join("target").join(profile).join("shoal");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!("no shoal binary: set SHOAL_BIN or `cargo build -p shoal-node --bin shoal`")
}

/// How to configure one node.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Name of this start (one bed can host several swarms one after the other): names the
    /// node's data directory and log, so a later swarm never sees an earlier one's store.
    pub run: String,
    /// Model directory every node holds.
    pub model: PathBuf,
    /// Memory offered for layers, bytes.
    pub memory: u64,
    /// Planner strategy forced through `[planner] strategy`.
    pub strategy: String,
    /// Extra TOML appended at the end of the config (tables such as `[probe]` overrides).
    pub extra: String,
    /// Extra top-level TOML lines (e.g. `psk_file = "..."`), placed before any table.
    pub top: String,
    /// A fixed identity (secret key bytes) instead of a fresh one: the coordinator of an
    /// epoch follows from the members' ids, and plans are made for the coordinator as the
    /// origin, so scenarios pick identities to decide who coordinates.
    pub secret: Option<[u8; 32]>,
}

/// A node process that printed its ready line.
#[derive(Clone, Debug)]
pub struct BedNode {
    /// Bed index (namespace).
    pub index: usize,
    /// Its node id.
    pub id: String,
    /// Its listen multiaddrs, each ending in `/p2p/<id>`.
    pub listen: Vec<String>,
    /// Its process in the bed.
    pub proc: ProcId,
}

/// The config text of node `i`: listens on its bed address, API on its loopback, mDNS off,
/// membership timings short enough for tests.
pub fn config_text(bed: &Testbed, i: usize, spec: &NodeSpec, bootstrap: &[String]) -> String {
    let dir = bed.log_dir().join(format!("{}-node{i}", spec.run));
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let addr = bed.addr(i);
    let boot: Vec<String> = bootstrap.iter().map(|b| format!("{b:?}")).collect();
    let mut t = String::new();
    let _ = writeln!(
        t,
        "listen = [\"/ip4/{addr}/tcp/{P2P_PORT}\", \"/ip4/{addr}/udp/{P2P_PORT}/quic-v1\"]"
    );
    let _ = writeln!(t, "bootstrap = [{}]", boot.join(", "));
    let _ = writeln!(
        t,
        "data_dir = {}\nkey_file = {}",
        q(&dir.join("data")),
        q(&dir.join("node.key"))
    );
    let _ = writeln!(
        t,
        "model = {}\napi = \"127.0.0.1:{API_PORT}\"\nmdns = false\nort_spin = false",
        q(&spec.model)
    );
    let _ = writeln!(t, "memory_offered = {}\n{}", spec.memory, spec.top);
    // The bed's swarms are public unless the spec chose a key.
    if !spec.top.contains("psk_file") && !spec.top.contains("public") {
        let _ = writeln!(t, "public = true");
    }
    let _ = writeln!(
        t,
        "[membership]\nliveness_timeout_ms = 4000\nannounce_interval_ms = 500\nsettle_ms = 2000\n"
    );
    let _ = writeln!(t, "[planner]\nstrategy = {:?}\n", spec.strategy);
    t + &spec.extra
}

/// Starts `shoal run` in node `i` and waits for its ready line.
pub fn start_node(
    bed: &mut Testbed,
    i: usize,
    spec: &NodeSpec,
    bootstrap: &[String],
) -> Result<BedNode> {
    let name = format!("{}-node{i}", spec.run);
    let cfg = bed.log_dir().join(format!("{name}.toml"));
    std::fs::create_dir_all(bed.log_dir().join(&name))?;
    if let Some(secret) = spec.secret {
        let key = bed.log_dir().join(&name).join("node.key");
        shoal_keys::Identity::from_secret_bytes(secret)
            .write_new(&key)
            .with_context(|| format!("writing {}", key.display()))?;
    }
    std::fs::write(&cfg, config_text(bed, i, spec, bootstrap))?;
    let bin = shoal_bin()?;
    let args = vec![
        "run".to_string(),
        "--config".to_string(),
        cfg.display().to_string(),
    ];
    // Info-level node events (refusals, score changes) in plain text for the tests to read.
    let envs = vec![
        (
            "SHOAL_LOG".to_string(),
            std::env::var("SHOAL_BED_LOG").unwrap_or_else(|_| "warn,shoal_node=info".into()),
        ),
        ("NO_COLOR".to_string(), "1".to_string()),
    ];
    let proc = bed.spawn(i, &name, &bin, &args, &envs)?;
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(bed.process(proc).log_path()).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.starts_with("shoal-ready ")) {
            return parse_ready(i, line, proc);
        }
        if !bed.process(proc).is_running() {
            bail!(
                "node {i} exited before it was ready:\n{}",
                bed.process(proc).log_tail(30)
            );
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!(
                "node {i} not ready after {READY_TIMEOUT:?}:\n{}",
                bed.process(proc).log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Reads `shoal-ready node=<id> api=<addr> listen=<a>,<b>`.
fn parse_ready(index: usize, line: &str, proc: ProcId) -> Result<BedNode> {
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_string)
    };
    let id = field("node=").context("ready line without node=")?;
    let listen = field("listen=").context("ready line without listen=")?;
    Ok(BedNode {
        index,
        id,
        listen: listen.split(',').map(str::to_string).collect(),
        proc,
    })
}

/// The bootstrap list the other nodes join through: `node`'s TCP listen address.
pub fn bootstrap_of(node: &BedNode) -> Result<Vec<String>> {
    let boot: Vec<String> = node
        .listen
        .iter()
        .filter(|a| a.contains("/tcp/"))
        .take(1)
        .cloned()
        .collect();
    ensure!(
        !boot.is_empty(),
        "node {} has no TCP listen address: {:?}",
        node.index,
        node.listen
    );
    Ok(boot)
}

/// Starts one node per spec: node 0 first, then every other node with node 0's TCP listen
/// address as its only bootstrap peer.
pub fn start_swarm(bed: &mut Testbed, specs: &[NodeSpec]) -> Result<Vec<BedNode>> {
    let first = start_node(bed, 0, &specs[0], &[])?;
    let boot = bootstrap_of(&first)?;
    let mut nodes = vec![first];
    for (i, spec) in specs.iter().enumerate().skip(1) {
        nodes.push(start_node(bed, i, spec, &boot)?);
    }
    Ok(nodes)
}

/// Kills every node of `nodes` (SIGKILL) so the bed can host the next swarm.
pub fn stop_swarm(bed: &mut Testbed, nodes: &[BedNode]) {
    for n in nodes {
        bed.process(n.proc).kill();
    }
}

/// Node `i`'s API address inside its namespace.
pub fn api(_i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], API_PORT))
}

/// GETs node `i`'s `/v1/status`.
pub fn status(bed: &Testbed, i: usize) -> Result<Value> {
    let (code, body) = http::request(
        &bed.ns(i),
        api(i),
        "GET",
        "/v1/status",
        None,
        Duration::from_secs(5),
    )?;
    ensure!(code == 200, "status of node {i}: HTTP {code}: {body}");
    serde_json::from_str(&body).context("status is not JSON")
}

/// Waits until every node in `nodes` reports the same plan (same epoch) that satisfies
/// `accept`, and returns node 0's status document of it.
pub fn wait_plan(
    bed: &Testbed,
    nodes: &[usize],
    timeout: Duration,
    accept: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let start = Instant::now();
    let mut last = Value::Null;
    while start.elapsed() < timeout {
        let docs: Vec<Value> = nodes.iter().filter_map(|&i| status(bed, i).ok()).collect();
        if docs.len() == nodes.len() {
            let epochs: Vec<&Value> = docs.iter().map(|d| &d["plan"]["epoch"]).collect();
            if !docs[0]["plan"].is_null()
                && epochs.iter().all(|e| *e == epochs[0])
                && accept(&docs[0])
            {
                return Ok(docs[0].clone());
            }
        }
        last = docs.into_iter().next().unwrap_or(Value::Null);
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!(
        "no agreed plan within {timeout:?}; node {} last said: {last}",
        nodes[0]
    )
}

/// Waits until every node of `nodes` has held the same plan (same epoch), satisfying
/// `accept`, for `stable` in a row (link estimates settle and may trigger re-plans first).
pub fn wait_stable_plan(
    bed: &Testbed,
    nodes: &[usize],
    stable: Duration,
    timeout: Duration,
    accept: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let start = Instant::now();
    let mut held: Option<(Value, Instant)> = None;
    while start.elapsed() < timeout {
        let left = timeout.saturating_sub(start.elapsed());
        let doc = wait_plan(bed, nodes, left, &accept)?;
        let epoch = doc["plan"]["epoch"].clone();
        match &held {
            Some((e, since)) if *e == epoch => {
                if since.elapsed() >= stable {
                    return Ok(doc);
                }
            }
            _ => held = Some((epoch, Instant::now())),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("no plan held still for {stable:?} within {timeout:?}")
}

/// One generation as timed by the client.
#[derive(Clone, Debug)]
pub struct Generation {
    /// Generated token ids.
    pub token_ids: Vec<u64>,
    /// The node's own figures: wall time from start to last token, prefill time.
    pub elapsed_s: f64,
    /// Time of the first (prefill) step.
    pub prefill_s: f64,
    /// Failovers and retries the origin needed.
    pub retries: u64,
    /// Plan epoch of the last token.
    pub epoch: u64,
    /// Client-side wall time of the whole request.
    pub client_s: f64,
}

impl Generation {
    /// Mean decode time per token after the first: `(elapsed - prefill) / (n - 1)`.
    pub fn per_token_s(&self) -> f64 {
        let n = self.token_ids.len();
        if n < 2 {
            return f64::NAN;
        }
        (self.elapsed_s - self.prefill_s) / (n - 1) as f64
    }
}

/// Greedy completion of `prompt` token ids at node `i` (`POST /v1/completions`).
pub fn generate(bed: &Testbed, i: usize, prompt: &[u32], max_tokens: usize) -> Result<Generation> {
    let body =
        json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": false});
    let t0 = Instant::now();
    let (code, text) = http::request(
        &bed.ns(i),
        api(i),
        "POST",
        "/v1/completions",
        Some(body.to_string()),
        HTTP_TIMEOUT,
    )?;
    let client_s = t0.elapsed().as_secs_f64();
    ensure!(code == 200, "completion at node {i}: HTTP {code}: {text}");
    let v: Value = serde_json::from_str(&text).context("completion is not JSON")?;
    let s = &v["shoal"];
    let ids = s["token_ids"].as_array().context("no shoal.token_ids")?;
    Ok(Generation {
        token_ids: ids.iter().filter_map(Value::as_u64).collect(),
        elapsed_s: s["elapsed_s"].as_f64().context("no shoal.elapsed_s")?,
        prefill_s: s["prefill_s"].as_f64().unwrap_or(0.0),
        retries: s["retries"].as_u64().unwrap_or(0),
        epoch: s["epoch"].as_u64().unwrap_or(0),
        client_s,
    })
}

/// Secret keys for `n` nodes such that node `avoid` coordinates none of the epochs
/// `1..=epochs` (DESIGN.md's rotation, computed with the node's own function). Node `k`'s key
/// is `[k + 1; 32]` except `avoid`'s, which is searched; deterministic.
pub fn secrets_avoiding_coordinator(n: usize, avoid: usize, epochs: u64) -> Result<Vec<[u8; 32]>> {
    ensure!(
        n >= 2 && avoid < n,
        "need two nodes or more, one of them to avoid"
    );
    secrets_where(n, avoid, |ids| {
        (1..=epochs).all(|e| shoal_node::coordinator::coordinator(e, ids) != Some(ids[avoid]))
    })
    .with_context(|| {
        format!("no identity keeps node {avoid} from coordinating epochs 1..={epochs}")
    })
}

/// Secret keys for `n` nodes whose ids satisfy `accept`: node `k`'s key is `[k + 1; 32]`
/// except node `vary`'s, which is searched; deterministic.
pub fn secrets_where(
    n: usize,
    vary: usize,
    accept: impl Fn(&[shoal_keys::NodeId]) -> bool,
) -> Result<Vec<[u8; 32]>> {
    let id = |s: &[u8; 32]| shoal_keys::Identity::from_secret_bytes(*s).node_id();
    let mut secrets: Vec<[u8; 32]> = (0..n).map(|k| [k as u8 + 1; 32]).collect();
    for attempt in 0u64..1_000_000 {
        secrets[vary][..8].copy_from_slice(&attempt.to_le_bytes());
        let ids: Vec<_> = secrets.iter().map(id).collect();
        if accept(&ids) {
            return Ok(secrets);
        }
    }
    bail!("no key for node {vary} among 1,000,000 gives ids that fit")
}

/// The node index in `nodes` whose id is `id`.
pub fn index_of(nodes: &[BedNode], id: &str) -> Option<usize> {
    nodes.iter().find(|n| n.id == id).map(|n| n.index)
}

/// The bed indices of a plan's stages, in order.
pub fn plan_devices(nodes: &[BedNode], status: &Value) -> Vec<Option<usize>> {
    let empty = Vec::new();
    status["plan"]["stages"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|s| s["device"].as_str().and_then(|d| index_of(nodes, d)))
        .collect()
}

//! The node's configuration: one serde [`Config`] with a [`Default`], read from TOML.
//!
//! Every field says its unit and default; `configs/node.example.toml` lists every key with its
//! default and a test parses every file in `configs/`. The CLI only overrides a few fields
//! (`shoal run --listen/--bootstrap/...`); everything else is data.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Errors of reading a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("config {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for [`Config`] (unknown keys are errors).
    #[error("config {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        source: Box<toml::de::Error>,
    },
}

/// Everything a node needs to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Multiaddrs to listen on. Default: `/ip4/0.0.0.0/tcp/0` and `/ip4/0.0.0.0/udp/0/quic-v1`
    /// (port 0: the OS picks one; the ready line of `shoal run` prints the real ones).
    pub listen: Vec<String>,
    /// Multiaddrs of peers to join through, each ending in `/p2p/<node id>`. Default: none.
    pub bootstrap: Vec<String>,
    /// Serve as a circuit relay (libp2p relay v2) for peers that cannot be dialled (behind
    /// NAT): they reserve a slot here and others reach them through this node. Circuits carry
    /// activations, so they have no byte limit and last a day. Default: `false`.
    pub relay_server: bool,
    /// Relays to reserve a slot on, each ending in `/p2p/<node id>` (a node with
    /// `relay_server = true`): the node then also listens at `<relay>/p2p-circuit` and announces
    /// that address, so peers that cannot dial it directly reach it through the relay; DCUtR
    /// then tries to upgrade each relayed connection to a direct one. Default: none.
    pub relays: Vec<String>,
    /// Directory of the sled store (peer addresses, last accepted plan). Default: `~/.shoal/data`
    /// (empty path: resolved by the CLI).
    pub data_dir: PathBuf,
    /// The node's ed25519 secret key file, created (mode 0600) if missing.
    /// Default: `~/.shoal/node.key` (empty path: resolved by the CLI).
    pub key_file: PathBuf,
    /// A model directory (with `manifest.json`) whose layers this node can serve and plan.
    /// Default: none (the node joins the swarm but holds no model).
    pub model: Option<PathBuf>,
    /// Address of the HTTP API (`GET /v1/status`, ...). Default: `127.0.0.1:7070`.
    /// Use port 0 to let the OS pick (the ready line prints it).
    pub api: Option<SocketAddr>,
    /// API keys: with any set (here or in `api_key_file`), every API route but `GET /health`
    /// and the page (`GET /`) needs `Authorization: Bearer KEY`. Each at least 16 visible ASCII
    /// characters. Default: none (an open API).
    pub api_keys: ApiKeyList,
    /// A file of API keys, one per line (blank lines and `#` comments skipped). Default: none.
    pub api_key_file: Option<PathBuf>,
    /// Serve the API on a non-loopback address without keys, so that anyone who reaches it can
    /// generate. Default: `false`: such a node refuses to start.
    pub api_insecure: bool,
    /// Discover peers on the local network with mDNS. Default: `true`.
    pub mdns: bool,
    /// Also use QUIC (needs the `quic` cargo feature; ignored with `psk_file`). Default: `true`.
    pub quic: bool,
    /// A libp2p pre-shared key file (`/key/swarm/psk/1.0.0/` format) that makes a private
    /// swarm: outsiders cannot complete a handshake. TCP only: QUIC is switched off when it is
    /// set. Default: none.
    pub psk_file: Option<PathBuf>,
    /// Run a public swarm: a node that starts a swarm (no `psk_file`, no bootstrap address)
    /// generates no swarm key, so anyone who reaches it can join. Default: `false`: such a
    /// node generates `<data_dir>/swarm.key` on its first start and keeps it (a private
    /// swarm); `shoal invite` hands the key to new devices.
    pub public: bool,
    /// Memory this node offers for model layers, in bytes. Default: none, meaning 70% of the
    /// available memory (`MemAvailable` in `/proc/meminfo`).
    pub memory_offered: Option<u64>,
    /// ONNX Runtime shared library; when absent the `ORT_DYLIB_PATH` environment variable is
    /// used. Default: none.
    pub ort_dylib: Option<PathBuf>,
    /// ONNX Runtime's threads spin between parallel sections: about 20% faster decode when the
    /// node has the device's cores to itself; turn it off when several nodes share a machine.
    /// Default: `true`.
    pub ort_spin: bool,
    /// Membership and gossip timing.
    pub membership: MembershipConfig,
    /// Link probing.
    pub probe: ProbeConfig,
    /// Re-planning triggers and the plan's fixed knobs.
    pub planner: PlannerConfig,
    /// Pipeline timeouts, failover and bounds (see [`PipelineConfig`]).
    pub pipeline: PipelineConfig,
    /// Fetching model files from the swarm.
    pub layers: LayersConfig,
    /// Battery, temperature and throttling.
    pub power: PowerConfig,
    /// The swarm's model, to fetch from peers into `model` when that directory has no
    /// `manifest.json` yet (set by `shoal run --join`). Default: none.
    pub join_model: Option<JoinModel>,
}

/// A model to fetch from the swarm by its id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinModel {
    /// The manifest's model name.
    pub name: String,
    /// sha256 of its `manifest.json`, hex.
    pub manifest_sha256: String,
}

/// Fetching model files from the swarm: the `[layers]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LayersConfig {
    /// Share of a link's measured rate a fetch may use, in (0, 1], so activations on the same
    /// link keep room. Default: `0.8`.
    pub link_share: f64,
    /// How long a node started without its model waits for a peer to serve the manifest, in
    /// milliseconds. Default: `120000`.
    pub bootstrap_timeout_ms: u64,
}

impl LayersConfig {
    /// `link_share` clamped to (0, 1] (1 when it is not a number in range).
    pub fn share(&self) -> f64 {
        let s = self.link_share;
        if s.is_finite() && s > 0.0 {
            s.min(1.0)
        } else {
            1.0
        }
    }
}

impl Default for LayersConfig {
    fn default() -> Self {
        LayersConfig {
            link_share: 0.8,
            bootstrap_timeout_ms: 120_000,
        }
    }
}

/// Battery, temperature and throttling: the `[power]` section (`crate::power`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PowerConfig {
    /// Where batteries are reported. Default: `/sys/class/power_supply`.
    pub supply_dir: PathBuf,
    /// Where temperatures are reported. Default: `/sys/class/thermal`.
    pub thermal_dir: PathBuf,
    /// Ask `termux-battery-status` (Termux:API) when `supply_dir` shows no battery, as on
    /// Android 10 and later. Default: `true`.
    pub termux: bool,
    /// How often the battery and temperature are read, milliseconds. Default: `5000`.
    pub poll_ms: u64,
    /// Watts this device draws computing, announced while on battery when the OS measures
    /// none. Default: none, meaning 4 W on Android and 15 W elsewhere.
    pub watts: Option<f64>,
    /// Decode steps per window of the throttling watch. Default: `25`.
    pub throttle_window: usize,
    /// Two windows slower than this share of the best pace seen count as throttling.
    /// Default: `0.6`.
    pub throttle_below: f64,
    /// Two windows faster than this share end it. Default: `0.85`.
    pub recover_above: f64,
    /// Least time between two changes of the announced throttle, milliseconds. Default:
    /// `30000`.
    pub throttle_hold_ms: u64,
    /// A throttled node that ran no step for this long counts as cooled down, milliseconds.
    /// Default: `300000`.
    pub idle_recover_ms: u64,
}

impl Default for PowerConfig {
    fn default() -> Self {
        PowerConfig {
            supply_dir: PathBuf::from("/sys/class/power_supply"),
            thermal_dir: PathBuf::from("/sys/class/thermal"),
            termux: true,
            poll_ms: 5_000,
            watts: None,
            throttle_window: 25,
            throttle_below: 0.6,
            recover_above: 0.85,
            throttle_hold_ms: 30_000,
            idle_recover_ms: 300_000,
        }
    }
}

/// The `api_keys` of the config: plain strings in TOML, never shown by `Debug` (a config may
/// be logged; a key must not be).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiKeyList(pub Vec<String>);

impl std::fmt::Debug for ApiKeyList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "[{} API keys]", self.0.len())
    }
}

/// Timeouts and bounds of the pipeline: the `[pipeline]` section of the node config. Every
/// field has its default in [`PipelineConfig::default`]; durations are milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// How long a generation waits for a first plan, ms. Default 30000.
    pub plan_wait_ms: u64,
    /// How long the origin waits for one step's answer before it treats the pipeline as
    /// failed, ms. Default 60000 (a long prefill on a slow device).
    pub step_timeout_ms: u64,
    /// How long a stage waits for the next stage, ms. Default 60000.
    pub hop_timeout_ms: u64,
    /// After a stage failure, how long the origin waits for a newer plan before retrying the
    /// current one, ms. Default 20000 (above the default liveness timeout).
    pub failover_wait_ms: u64,
    /// Failovers per generation before it gives up with an error. Default 4.
    pub max_failovers: u32,
    /// Quick retries (a stage behind on the plan, busy) per generation. Default 40.
    pub max_transient: u32,
    /// Pause before a quick retry, ms. Default 250.
    pub transient_pause_ms: u64,
    /// Inbound activations processed at once; more are answered `busy`. Default 32.
    pub max_inbound: usize,
    /// Generations this node runs as origin at once; more are refused as busy. Default 16.
    pub max_generations: usize,
    /// Speculative decoding's drafter for generations this node runs as origin, unless the
    /// request names one: `off`, `ngram` (prompt lookup) or `model` (needs `draft_model`).
    /// Default `off`.
    pub drafter: DrafterKind,
    /// Most draft tokens per pass (1..=8); the number used adapts to the measured acceptance
    /// rate and pass time. Default 6.
    pub max_draft: usize,
    /// Folder of a small model (imported like the main one, same vocabulary) that drafts on
    /// this node when the drafter is `model`. Default none.
    pub draft_model: Option<std::path::PathBuf>,
    /// Most sessions whose decode steps a stage runs in one model call when they wait for it
    /// together (1: one at a time). Default 1: a batched row's logits agree with its lone
    /// step's only up to float reassociation (docs/pipeline.md, "Concurrent sessions").
    pub max_batch: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            plan_wait_ms: 30_000,
            step_timeout_ms: 60_000,
            hop_timeout_ms: 60_000,
            failover_wait_ms: 20_000,
            max_failovers: 4,
            max_transient: 40,
            transient_pause_ms: 250,
            max_inbound: 32,
            max_generations: 16,
            drafter: DrafterKind::Off,
            max_draft: 6,
            draft_model: None,
            max_batch: 1,
        }
    }
}

impl PipelineConfig {
    /// `plan_wait_ms` as a duration.
    pub(crate) fn plan_wait(&self) -> Duration {
        Duration::from_millis(self.plan_wait_ms)
    }
    /// `step_timeout_ms` as a duration.
    pub(crate) fn step_timeout(&self) -> Duration {
        Duration::from_millis(self.step_timeout_ms)
    }
    /// `failover_wait_ms` as a duration.
    pub(crate) fn failover_wait(&self) -> Duration {
        Duration::from_millis(self.failover_wait_ms)
    }
    /// `transient_pause_ms` as a duration.
    pub(crate) fn transient_pause(&self) -> Duration {
        Duration::from_millis(self.transient_pause_ms)
    }
}

/// Where speculative decoding's draft tokens come from (`[pipeline] drafter`, or a request's
/// `speculation`; docs/pipeline.md, "Speculative decoding").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DrafterKind {
    /// No speculation: one token per pass.
    #[default]
    Off,
    /// Prompt lookup: the tokens that followed the latest earlier occurrence of the history's
    /// last n-gram (no second model; works on every model).
    Ngram,
    /// A small draft model run on the origin (`draft_model`; same vocabulary).
    Model,
}

impl std::str::FromStr for DrafterKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(DrafterKind::Off),
            "ngram" => Ok(DrafterKind::Ngram),
            "model" => Ok(DrafterKind::Model),
            other => Err(format!(
                "unknown drafter {other:?}: expected off, ngram or model"
            )),
        }
    }
}

impl std::fmt::Display for DrafterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DrafterKind::Off => "off",
            DrafterKind::Ngram => "ngram",
            DrafterKind::Model => "model",
        })
    }
}

/// Membership and gossip timing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MembershipConfig {
    /// A peer whose last capability announcement is older than this is no longer a member,
    /// in milliseconds. Default: `15000`.
    pub liveness_timeout_ms: u64,
    /// Interval of capability and link-report announcements, in milliseconds. Must be well
    /// below the liveness timeout. Default: `3000`.
    pub announce_interval_ms: u64,
    /// After start, wait this long before planning as coordinator, so the first plan sees the
    /// other members, in milliseconds. Default: `2000`.
    pub settle_ms: u64,
}

/// Link probing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProbeConfig {
    /// Interval of libp2p pings (RTT and jitter samples), in milliseconds. Default: `1000`.
    pub ping_interval_ms: u64,
    /// Interval between bandwidth probes of one peer, in milliseconds. Default: `30000`.
    pub bandwidth_interval_ms: u64,
    /// Size of the large bandwidth probe transfer, in bytes. Default: `1048576` (1 MiB).
    pub bandwidth_bytes: u64,
    /// Size of the UDP datagram train that measures the link rate (sent with each bandwidth
    /// probe to peers that run a UDP echo), in bytes; `0` turns it off and the rate comes from
    /// the timed transfers alone. Default: `262144` (256 KiB).
    pub train_bytes: u64,
    /// UDP address of the loss-probe echo socket (port 0: any free port; the port is announced
    /// in the capability message). Default: `0.0.0.0:0`.
    pub udp_echo: SocketAddr,
    /// UDP loss probes sent per second to each peer. Default: `50`.
    pub loss_rate_hz: u32,
    /// Loss is estimated over this many most recent probes; 1500 keeps 5% and 10% more than
    /// three standard errors from their midpoint (30 s of probes at 50 Hz). Default: `1500`.
    pub loss_window: u32,
    /// A probe unanswered after this long counts as lost, in milliseconds. Default: `1000`.
    pub loss_timeout_ms: u64,
    /// Weight of a new sample in the exponentially weighted moving averages of RTT, jitter and
    /// bandwidth (0..1]. Default: `0.25`.
    pub ewma_alpha: f64,
}

/// Re-planning triggers, hysteresis and the plan's fixed knobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlannerConfig {
    /// Objective: `latency` or `throughput`. Default: `latency`.
    pub objective: String,
    /// Strategy forced on the planner (`milp`, `even`, `memory`, `greedy`, `exhaustive`);
    /// tests use `even` to get a fast, predictable plan. Default: `milp`.
    pub strategy: String,
    /// Re-plan when a link's RTT moves by more than this fraction of its value in the current
    /// plan. Default: `0.5`.
    pub rtt_change: f64,
    /// Re-plan when a link's bandwidth moves by more than this fraction. Default: `0.5`.
    pub bandwidth_change: f64,
    /// Re-plan when a link's loss moves by more than this absolute amount. Default: `0.03`.
    pub loss_change: f64,
    /// Hysteresis: no link-triggered re-plan sooner than this after the last plan, in
    /// milliseconds (membership changes re-plan at once). Default: `30000`.
    pub min_replan_interval_ms: u64,
    /// The coordinator re-publishes the current plan this often, so late joiners and peers
    /// whose view was behind accept it, in milliseconds. Default: `5000`.
    pub republish_interval_ms: u64,
    /// Fraction of each device's offered memory a plan may fill. Default: `0.8`.
    pub memory_fraction: f64,
    /// Risk factor on a hop's standard deviation. Default: `1.0`.
    pub risk_kappa: f64,
    /// Fixed per-stage overhead added to every device, in seconds. Default: `0.0005`.
    pub overhead_s: f64,
    /// Extra latency charged per additional stage, in seconds. Default: `0.0`.
    pub stage_penalty_s: f64,
    /// Time limit of a re-plan's solve, in seconds: past it the best placement found is
    /// published with `optimal: false` (and its proven gap in the log). Default: `3.0`.
    pub solve_time_limit_s: f64,
    /// After a plan that is not proven optimal, the next epoch's coordinator keeps solving the
    /// same view in the background for up to this long, in seconds (`0` turns it off).
    /// Default: `60.0`.
    pub improve_time_limit_s: f64,
    /// A placement found in the background replaces the held plan (at the next epoch) only if
    /// it costs at least this fraction less than the held plan in the same view. Default:
    /// `0.05`.
    pub improve_margin: f64,
    /// Tokens a plan is expected to serve: a layer a node must fetch first costs its transfer
    /// time spread over them (planner/README.md, "Layers on disk"). Default: `4096`.
    pub fetch_horizon_tokens: f64,
    /// A node on battery below this charge holds no layers unless the model does not fit
    /// without it (planner/README.md, "Energy"). Default: `20`.
    pub min_battery_percent: f64,
    /// Seconds of objective one joule from a full battery costs; the price rises as the
    /// charge falls. 0 turns the energy term off (the floor still holds). Default: `0.02`.
    pub energy_price_s_per_j: f64,
    /// A battery's charge counts as changed for re-planning in steps of this many percent.
    /// Default: `10`.
    pub battery_step_percent: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".to_string(),
                "/ip4/0.0.0.0/udp/0/quic-v1".to_string(),
            ],
            bootstrap: Vec::new(),
            relay_server: false,
            relays: Vec::new(),
            data_dir: PathBuf::new(),
            key_file: PathBuf::new(),
            model: None,
            api: Some(SocketAddr::from(([127, 0, 0, 1], 7070))),
            api_keys: ApiKeyList::default(),
            api_key_file: None,
            api_insecure: false,
            mdns: true,
            quic: true,
            psk_file: None,
            public: false,
            memory_offered: None,
            ort_dylib: None,
            ort_spin: true,
            membership: MembershipConfig::default(),
            probe: ProbeConfig::default(),
            planner: PlannerConfig::default(),
            pipeline: PipelineConfig::default(),
            layers: LayersConfig::default(),
            power: PowerConfig::default(),
            join_model: None,
        }
    }
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            liveness_timeout_ms: 15_000,
            announce_interval_ms: 3_000,
            settle_ms: 2_000,
        }
    }
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            ping_interval_ms: 1_000,
            bandwidth_interval_ms: 30_000,
            bandwidth_bytes: 1 << 20,
            train_bytes: 256 << 10,
            udp_echo: SocketAddr::from(([0, 0, 0, 0], 0)),
            loss_rate_hz: 50,
            loss_window: 1500,
            loss_timeout_ms: 1_000,
            ewma_alpha: 0.25,
        }
    }
}

impl Default for PlannerConfig {
    fn default() -> Self {
        PlannerConfig {
            objective: "latency".to_string(),
            strategy: "milp".to_string(),
            rtt_change: 0.5,
            bandwidth_change: 0.5,
            loss_change: 0.03,
            min_replan_interval_ms: 30_000,
            republish_interval_ms: 5_000,
            memory_fraction: 0.8,
            risk_kappa: 1.0,
            overhead_s: 0.0005,
            stage_penalty_s: 0.0,
            solve_time_limit_s: 3.0,
            improve_time_limit_s: 60.0,
            improve_margin: 0.05,
            fetch_horizon_tokens: 4096.0,
            min_battery_percent: 20.0,
            energy_price_s_per_j: 0.02,
            battery_step_percent: 10.0,
        }
    }
}

impl Config {
    /// Reads and parses a TOML file; missing keys take their defaults, unknown keys are errors.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The model runtime's settings: the stages run with them, and the node times its compute
    /// with them at start.
    pub fn runtime(&self) -> shoal_model::RuntimeConfig {
        shoal_model::RuntimeConfig {
            ort_dylib_path: self.ort_dylib.clone(),
            idle_timeout: Duration::from_secs(120),
            ..shoal_model::RuntimeConfig::default()
        }
    }
}

/// Milliseconds to a [`Duration`].
pub(crate) fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_text_is_the_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(Config::parse("no_such_key = 1").is_err());
        assert!(Config::parse("[membership]\nliveness = 3").is_err());
    }

    #[test]
    fn nested_override() {
        let c = Config::parse("mdns = false\n[membership]\nliveness_timeout_ms = 3000\n").unwrap();
        assert!(!c.mdns);
        assert_eq!(c.membership.liveness_timeout_ms, 3000);
        assert_eq!(c.membership.announce_interval_ms, 3000);
    }
}

//! The node task: owns the membership table, link estimators, plan gate and store, and reacts
//! to swarm events, probe results, solver results and its announce timer. One-line `select!`
//! arms call `on_*` methods; gossip handling lives in `gossip.rs`, planning in `coord.rs`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use shoal_keys::{Identity, NodeId};
use shoal_protocol::{Capability, ModelRef};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::model::ModelInfo;
use super::state::{BandwidthProbeOutcome, BandwidthResult, NodeTask, SolveOutcome, unix_ms};
use super::{NodeError, NodeHandle, PipelineStreams, with_peer};
use crate::capability;
use crate::config::{Config, ms};
use crate::coordinator::{LinkMatrix, PlanGate};
use crate::layers::{self, serve::FileIndex};
use crate::links::LinkEstimator;
use crate::membership::{Membership, MembershipEvent};
use crate::power;
use crate::probe::{self, LossProber, LossSample, UdpEcho};
use crate::store::Store;
use crate::swarm::{self, NetEvent, NetworkHandle, SwarmParts};
use crate::view::View;

/// Capacity of the loss-sample channel.
const LOSS_CAPACITY: usize = 4096;
/// Capacity of the bandwidth-result and solve-result channels.
const RESULT_CAPACITY: usize = 16;
/// Largest `/shoal/generate/1` frame, bytes.
const GENERATE_MAX: usize = 8 << 20;

/// How long a paced train keeps the probed link busy (at 300 ms, single trains on a jittery
/// 5 Mbit/s link were off by up to 25%).
const TRAIN_BUSY: Duration = Duration::from_millis(500);
/// How soon a link that still has no rate sample is probed again after a probe gave none.
const BANDWIDTH_RETRY: Duration = Duration::from_secs(3);

/// Starts the swarm, the probes and the node task; returns the handle and the swarm's pipeline
/// traffic for the pipeline to serve. Everything stops when `cancel` fires.
pub async fn start(
    config: Config,
    identity: Identity,
    cancel: CancellationToken,
) -> Result<(NodeHandle, PipelineStreams), NodeError> {
    let cfg = Arc::new(config);
    let identity = Arc::new(identity);
    let me = identity.node_id();
    // A model directory without a manifest, with the swarm's model named: fetched from peers
    // once the swarm runs (`layers::bootstrap`).
    let join = join_model(&cfg)?;
    let mut model = match (&cfg.model, &join) {
        (Some(_), Some(_)) => None,
        (Some(dir), None) => Some(Arc::new(ModelInfo::load(dir)?)),
        (None, _) => None,
    };
    if cfg.data_dir.as_os_str().is_empty() {
        return Err(NodeError::Config("data_dir is empty".into()));
    }
    let store = Store::open(&cfg.data_dir)?;

    let activity = probe::TrainActivity::default();
    let echo = UdpEcho::bind(cfg.probe.udp_echo, activity.clone())
        .await
        .map_err(|e| NodeError::Config(format!("udp echo: {e}")))?;
    let echo_port = echo
        .port()
        .map_err(|e| NodeError::Config(format!("udp echo: {e}")))?;
    tokio::spawn(echo.run(cancel.clone()));

    let parts = swarm_parts(&cfg)?;
    let (net, events, inbound) = swarm::spawn(&identity, parts, cancel.clone())?;
    tokio::spawn(probe::serve_probes(
        inbound.probe,
        net.clone(),
        cancel.clone(),
    ));

    let (targets_tx, targets_rx) = watch::channel(BTreeMap::new());
    let (loss_tx, loss_rx) = mpsc::channel(LOSS_CAPACITY);
    let prober = LossProber::new(
        SocketAddr::from(([0, 0, 0, 0], 0)),
        targets_rx,
        loss_tx,
        (cfg.probe.loss_rate_hz, ms(cfg.probe.loss_timeout_ms)),
        activity.clone(),
    )
    .await
    .map_err(|e| NodeError::Config(format!("loss prober: {e}")))?;
    tokio::spawn(prober.run(cancel.clone()));

    for (peer, addrs) in store.peers()? {
        for addr in addrs {
            let _ = net.add_address(peer, addr.clone()).await;
            if let Ok(id) = NodeId::from_peer_id(peer) {
                let _ = net.dial(with_peer(&addr, id)).await;
            }
        }
    }
    // A relay's circuit address counts as one more listener once the reservation is granted.
    let listen = wait_listen(&net, cfg.listen.len() + cfg.relays.len()).await;
    let listen: Vec<Multiaddr> = listen.iter().map(|a| with_peer(a, me)).collect();

    if let (Some(dir), Some(want)) = (&cfg.model, &join) {
        let wait = ms(cfg.layers.bootstrap_timeout_ms);
        let t = Instant::now();
        let (_, got) = layers::bootstrap(&net, want, dir, wait)
            .await
            .map_err(|e| NodeError::Config(format!("fetching the model: {e}")))?;
        tracing::info!(node = %me.short(), model = %want.name, bytes = got.bytes, seconds = t.elapsed().as_secs_f64(), "model manifest and tokenizer fetched from the swarm");
        model = Some(Arc::new(ModelInfo::load(dir)?));
    }
    let hidden = model.as_ref().map_or(1024, |m| m.hidden);
    // Compute is timed through the runtime the stages will use, with the same settings.
    let runtime = model.as_ref().map(|_| cfg.runtime());
    let speeds = tokio::task::spawn_blocking(move || capability::measure(hidden, runtime.as_ref()))
        .await
        .map_err(|e| NodeError::Config(format!("calibration thread: {e}")))?;
    tracing::info!(node = %me.short(), flops = speeds.flops, mem_bw = speeds.mem_bw, "measured capability");

    // The model's files: served to peers, and fetched when a plan wants layers not on disk.
    let files = match (&cfg.model, &model) {
        (Some(dir), Some(m)) => {
            let manifest = shoal_model::Manifest::load(dir)
                .map_err(|e| NodeError::Config(format!("model manifest: {e}")))?;
            Some((dir.clone(), Arc::new(manifest), m.model_ref.clone()))
        }
        _ => None,
    };
    let index = files
        .as_ref()
        .map_or_else(FileIndex::default, |(dir, man, r)| {
            FileIndex::new(layers::disk::index(dir, man, r.manifest_sha256))
        });
    tokio::spawn(layers::serve::serve(
        inbound.layers,
        index.clone(),
        net.clone(),
        cancel.clone(),
    ));
    let held_now = files.as_ref().map_or_else(Vec::new, |(dir, man, _)| {
        layers::disk::held_ranges(dir, man)
    });
    let (held_tx, held_rx) = watch::channel(held_now.clone());
    let (fetch_tx, fetch_rx) = watch::channel(None);

    let own = Capability {
        node: me,
        seq: 0,
        timestamp_ms: 0,
        model: model.as_ref().map(|m| m.model_ref.clone()),
        flops: speeds.flops,
        mem_bw: Some(speeds.mem_bw),
        mem_bytes: capability::memory_offered(cfg.memory_offered),
        overhead_s: cfg.planner.overhead_s,
        battery: None,
        listen_addrs: listen
            .iter()
            .take(shoal_protocol::MAX_LISTEN_ADDRS)
            .map(|a| a.to_string())
            .collect(),
        loss_probe_port: Some(echo_port),
        speculation: None,
        held: model
            .as_ref()
            .and_then(|m| held_field(&held_now, m.layers.len())),
        temp_c: None,
        throttle: None,
    };
    let power_rx = spawn_power(&cfg.power, cancel.clone());
    let pc = &cfg.power;
    let speed = Arc::new(power::SpeedWatch::new(power::WatchConfig {
        window: pc.throttle_window.max(3),
        below: pc.throttle_below,
        above: pc.recover_above.max(pc.throttle_below),
        hold: ms(pc.throttle_hold_ms),
        idle_recover: ms(pc.idle_recover_ms),
    }));
    let (view_tx, view_rx) = watch::channel(Arc::new(View::empty(me)));
    let (spec_tx, spec_rx) = watch::channel(None);
    let (bw_tx, bw_rx) = mpsc::channel(RESULT_CAPACITY);
    let (solve_tx, solve_rx) = mpsc::channel(RESULT_CAPACITY);
    let mut task = NodeTask {
        membership: Membership::new(ms(cfg.membership.liveness_timeout_ms)),
        cfg: cfg.clone(),
        identity: identity.clone(),
        me,
        net: net.clone(),
        model: model.clone(),
        own,
        link_seq: HashMap::new(),
        reports: BTreeMap::new(),
        estimators: BTreeMap::new(),
        last_sample: BTreeMap::new(),
        gate: PlanGate::default(),
        seen_epoch: 0,
        plan: None,
        deferred_plan: None,
        baseline: None,
        store,
        clock: Instant::now(),
        solving: false,
        improved_epoch: None,
        improving: false,
        failed_view: None,
        last_republish: Instant::now(),
        refused: BTreeMap::new(),
        view_tx,
        loss_targets: targets_tx,
        bw_due: BTreeMap::new(),
        bw_busy: false,
        bw_tx,
        train_activity: activity,
        solve_tx,
        connected: Default::default(),
        routes: BTreeMap::new(),
        speculation: spec_rx,
        held: held_rx,
        _held_tx: files.is_none().then_some(held_tx.clone()),
        power_baseline: BTreeMap::new(),
        power: power_rx,
        throttle: speed.subscribe(),
        speed: speed.clone(),
    };
    task.own_power();
    task.restore_plan();
    task.announce().await;
    task.publish_view();

    let handle = NodeHandle {
        identity,
        net,
        view: view_rx,
        listen,
        model,
        config: cfg,
        cancel: cancel.clone(),
        speculation: Arc::new(spec_tx),
        fetch: fetch_rx,
        speed,
    };
    if let Some((dir, manifest, model_ref)) = files {
        let follower = layers::follow::Follower {
            net: handle.net.clone(),
            me,
            dir,
            manifest,
            model: model_ref,
            index,
            link_share: handle.config.layers.share(),
            held: held_tx,
            status: fetch_tx,
        };
        tokio::spawn(follower.run(handle.view.clone(), cancel.clone()));
    }
    let streams = PipelineStreams {
        activation: inbound.activation,
        generate: inbound.generate,
    };
    let span = tracing::info_span!("node", id = %me.short());
    tokio::spawn(
        task.run(events, loss_rx, bw_rx, solve_rx, cancel)
            .instrument(span),
    );
    Ok((handle, streams))
}

/// The swarm's model to fetch, when `model` names a directory without a manifest and the
/// config names the model (`shoal run --join`).
fn join_model(cfg: &Config) -> Result<Option<ModelRef>, NodeError> {
    let (Some(dir), Some(j)) = (&cfg.model, &cfg.join_model) else {
        return Ok(None);
    };
    if dir.join(shoal_model::manifest::MANIFEST_FILE).is_file() {
        return Ok(None);
    }
    let sha = layers::disk::parse_sha(&j.manifest_sha256).ok_or_else(|| {
        NodeError::Config(format!(
            "join_model.manifest_sha256 {:?} is not a sha256",
            j.manifest_sha256
        ))
    })?;
    Ok(Some(ModelRef {
        name: j.name.clone(),
        manifest_sha256: sha,
    }))
}

/// `held` as the capability carries it: absent when every one of `layers` is on disk.
pub(super) fn held_field(held: &[(u32, u32)], layers: usize) -> Option<Vec<(u32, u32)>> {
    (held != [(0, layers as u32)]).then(|| held.to_vec())
}

fn swarm_parts(cfg: &Config) -> Result<SwarmParts, NodeError> {
    let parse = |list: &[String], what: &str| -> Result<Vec<Multiaddr>, NodeError> {
        list.iter()
            .map(|s| {
                Multiaddr::from_str(s).map_err(|e| NodeError::Config(format!("{what} {s:?}: {e}")))
            })
            .collect()
    };
    let psk = match &cfg.psk_file {
        Some(path) => Some(read_psk(path)?),
        None => None,
    };
    Ok(SwarmParts {
        listen: parse(&cfg.listen, "listen address")?
            .into_iter()
            .filter(|a| (cfg!(feature = "quic") && cfg.quic && psk.is_none()) || !is_quic(a))
            .collect(),
        bootstrap: parse(&cfg.bootstrap, "bootstrap address")?,
        relays: parse(&cfg.relays, "relay address")?,
        psk,
        quic: cfg.quic,
        options: swarm::BehaviourOptions {
            mdns: cfg.mdns,
            relay_server: cfg.relay_server,
            ping_interval: ms(cfg.probe.ping_interval_ms),
            activation_max: swarm::ACTIVATION_FRAME_MAX,
            generate_max: GENERATE_MAX,
        },
    })
}

fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| {
        matches!(
            p,
            libp2p::multiaddr::Protocol::QuicV1 | libp2p::multiaddr::Protocol::Udp(_)
        )
    })
}

fn read_psk(path: &PathBuf) -> Result<libp2p::pnet::PreSharedKey, NodeError> {
    let text = std::fs::read_to_string(path).map_err(|source| NodeError::Io {
        what: "psk file",
        source,
    })?;
    libp2p::pnet::PreSharedKey::from_str(&text)
        .map_err(|e| NodeError::Config(format!("psk file {}: {e}", path.display())))
}

/// Waits until each listener reported an address (or [`super::LISTEN_WAIT`] passed).
async fn wait_listen(net: &NetworkHandle, listeners: usize) -> Vec<Multiaddr> {
    let deadline = Instant::now() + super::LISTEN_WAIT;
    loop {
        let addrs = net.listen_addrs().await.unwrap_or_default();
        if addrs.len() >= listeners.max(1) || Instant::now() > deadline {
            return addrs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads the battery and temperature at once and then every `poll_ms`, on a blocking thread (it
/// may run `termux-battery-status`), publishing changes on the returned channel.
fn spawn_power(
    cfg: &crate::config::PowerConfig,
    cancel: CancellationToken,
) -> watch::Receiver<power::Reading> {
    let reader = Arc::new(std::sync::Mutex::new(power::Reader::new(power::Sources {
        supply_dir: cfg.supply_dir.clone(),
        thermal_dir: cfg.thermal_dir.clone(),
        termux: cfg.termux,
        watts: cfg.watts.filter(|w| w.is_finite() && *w > 0.0),
    })));
    let read = |r: Arc<std::sync::Mutex<power::Reader>>| async move {
        tokio::task::spawn_blocking(move || r.lock().map(|mut r| r.read()).unwrap_or_default())
            .await
            .unwrap_or_default()
    };
    let every = ms(cfg.poll_ms.max(100));
    let (tx, rx) = watch::channel(power::Reading::default());
    tokio::spawn(async move {
        // The first reading at once (off the start path), then every `poll_ms`.
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = every;
            let reading = read(reader.clone()).await;
            tx.send_if_modified(|old| {
                let changed = *old != reading;
                *old = reading;
                changed
            });
        }
    });
    rx
}

impl NodeTask {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<NetEvent>,
        mut loss: mpsc::Receiver<LossSample>,
        mut bw: mpsc::Receiver<BandwidthResult>,
        mut solved: mpsc::Receiver<SolveOutcome>,
        cancel: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(ms(self.cfg.membership.announce_interval_ms));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(e) = events.recv() => self.on_net_event(e).await,
                Some(s) = loss.recv() => self.on_loss(s),
                Some(r) = bw.recv() => self.on_bandwidth(r),
                Some(o) = solved.recv() => self.on_solved(o).await,
                Ok(()) = self.held.changed() => self.on_held().await,
                Ok(()) = self.power.changed() => self.on_power().await,
                Ok(()) = self.throttle.changed() => self.on_power().await,
                _ = tick.tick() => self.on_tick().await,
            }
        }
        tracing::debug!(node = %self.me.short(), "node task stopped");
    }

    /// Time on the membership clock.
    pub(super) fn now(&self) -> Duration {
        self.clock.elapsed()
    }

    async fn on_net_event(&mut self, event: NetEvent) {
        match event {
            NetEvent::Gossip {
                topic,
                propagation,
                id,
                data,
                ..
            } => self.on_gossip(topic, propagation, id, &data).await,
            NetEvent::Rtt { peer, rtt } => self.on_rtt(peer, rtt),
            NetEvent::Addresses { peer, addrs } => self.on_addresses(peer, &addrs),
            NetEvent::Connected(peer) => {
                self.connected.insert(peer);
            }
            NetEvent::Disconnected(peer) => {
                self.connected.remove(&peer);
            }
            NetEvent::Route { peer, via } => {
                let (Ok(peer), via) = (
                    NodeId::from_peer_id(peer),
                    via.and_then(|v| NodeId::from_peer_id(v).ok()),
                ) else {
                    return;
                };
                let changed = match via {
                    Some(relay) => self.routes.insert(peer, relay) != Some(relay),
                    None => self.routes.remove(&peer).is_some(),
                };
                // A new path (a hole punched, or a fall back to the relay) is probed at once:
                // the rate measured on the old one does not describe it, and a link has no
                // figure for the planner until its first rate sample.
                if changed && self.bw_due.contains_key(&peer) {
                    self.bw_due.insert(peer, Instant::now());
                }
                self.update_loss_targets();
            }
        }
    }

    fn estimator(&mut self, peer: NodeId) -> &mut LinkEstimator {
        let (alpha, window) = (
            self.cfg.probe.ewma_alpha,
            self.cfg.probe.loss_window as usize,
        );
        self.last_sample.insert(peer, Instant::now());
        self.estimators
            .entry(peer)
            .or_insert_with(|| LinkEstimator::new(alpha, window))
    }

    fn on_rtt(&mut self, peer: PeerId, rtt: Duration) {
        if let Ok(id) = NodeId::from_peer_id(peer) {
            self.estimator(id).on_rtt(rtt.as_secs_f64());
        }
    }

    fn on_loss(&mut self, s: LossSample) {
        tracing::trace!(peer = %s.peer.short(), lost = s.lost, rtt_us = ?s.rtt.map(|r| r.as_micros()), disturbed = s.disturbed, "echo");
        if s.disturbed {
            return;
        }
        let e = self.estimator(s.peer);
        e.on_probe(s.lost);
        if let Some(rtt) = s.rtt {
            e.on_echo_rtt(rtt.as_secs_f64());
        }
    }

    fn on_bandwidth(&mut self, (peer, outcome): BandwidthResult) {
        self.bw_busy = false;
        match outcome {
            BandwidthProbeOutcome::Train {
                rate_bps,
                arrivals,
                paced,
            } => {
                let e = self.estimator(peer);
                if paced {
                    e.on_train(rate_bps);
                } else {
                    e.on_scout_train(rate_bps);
                }
                let bps = self.estimators.get(&peer).and_then(|e| e.bandwidth());
                tracing::debug!(node = %self.me.short(), peer = %peer.short(), arrivals, paced, train_bps = rate_bps, bandwidth_bps = ?bps, "train probe");
            }
            BandwidthProbeOutcome::Transfers(Ok((small, large))) => {
                self.estimator(peer).on_transfers(small, large);
                let bps = self.estimators.get(&peer).and_then(|e| e.goodput());
                tracing::debug!(node = %self.me.short(), peer = %peer.short(), small_s = small.1, large_s = large.1, goodput_bps = ?bps, "bandwidth probe");
            }
            BandwidthProbeOutcome::Transfers(Err(e)) => {
                tracing::debug!(peer = %peer.short(), error = %e, "bandwidth probe failed");
            }
            BandwidthProbeOutcome::Shared => {
                tracing::debug!(peer = %peer.short(), "train met another train; no sample");
            }
        }
        // A link without any rate sample is not in the matrix the planner sees: after a probe
        // that gave none, try again soon instead of a whole interval later.
        let has_rate = self
            .estimators
            .get(&peer)
            .is_some_and(|e| e.bandwidth().is_some());
        if !has_rate && let Some(due) = self.bw_due.get_mut(&peer) {
            *due = (*due).min(Instant::now() + BANDWIDTH_RETRY);
        }
    }

    fn on_addresses(&mut self, peer: PeerId, addrs: &[Multiaddr]) {
        if let Err(e) = self.store.put_peer_addrs(&peer, addrs) {
            tracing::warn!(error = %e, "cannot store peer addresses");
        }
    }

    async fn on_tick(&mut self) {
        self.speed.tick();
        let now = self.now();
        for ev in self.membership.expire(now) {
            self.on_membership(ev);
        }
        self.announce().await;
        self.schedule_bandwidth();
        self.maybe_replan();
        self.maybe_republish().await;
        self.publish_view();
    }

    pub(super) fn on_membership(&mut self, ev: MembershipEvent) {
        match ev {
            MembershipEvent::Joined(id) => {
                tracing::info!(node = %self.me.short(), peer = %id.short(), "member joined");
                if id != self.me {
                    self.bw_due.insert(id, Instant::now());
                }
            }
            MembershipEvent::Left(id) => {
                tracing::info!(node = %self.me.short(), peer = %id.short(), "member left");
                self.bw_due.remove(&id);
                self.estimators.remove(&id);
                self.last_sample.remove(&id);
                self.reports.remove(&id);
            }
        }
        self.update_loss_targets();
        self.recheck_deferred_plan();
    }

    /// Loss-probe targets: every member with an echo port and an IP address we can reach
    /// (not the peers reached only through a relay: UDP does not cross a circuit, and their
    /// links are charged as the relay's two legs).
    pub(super) fn update_loss_targets(&mut self) {
        let mut targets = BTreeMap::new();
        for (id, m) in self.membership.iter() {
            if *id == self.me || self.routes.contains_key(id) {
                continue;
            }
            let Some(port) = m.info.loss_probe_port else {
                continue;
            };
            let ip = m.info.listen_addrs.iter().find_map(|a| {
                Multiaddr::from_str(a).ok()?.iter().find_map(|p| match p {
                    libp2p::multiaddr::Protocol::Ip4(ip) if !ip.is_unspecified() => {
                        Some(std::net::IpAddr::V4(ip))
                    }
                    libp2p::multiaddr::Protocol::Ip6(ip) if !ip.is_unspecified() => {
                        Some(std::net::IpAddr::V6(ip))
                    }
                    _ => None,
                })
            });
            if let Some(ip) = ip {
                targets.insert(*id, SocketAddr::new(ip, port));
            }
        }
        self.loss_targets.send_if_modified(|t| {
            let changed = *t != targets;
            *t = targets;
            changed
        });
    }

    /// Starts the next due bandwidth probe, one at a time.
    fn schedule_bandwidth(&mut self) {
        if self.bw_busy {
            return;
        }
        let now = Instant::now();
        let Some((&peer, _)) = self.bw_due.iter().find(|(_, due)| **due <= now) else {
            return;
        };
        // Spread over 0.5-1.5 intervals: nodes that started together would otherwise probe
        // in step, and trains that share a link measure half of it each.
        let spread = rand::Rng::random_range(&mut rand::rng(), 0.5..1.5);
        self.bw_due.insert(
            peer,
            now + ms(self.cfg.probe.bandwidth_interval_ms).mul_f64(spread),
        );
        self.bw_busy = true;
        let net = self.net.clone();
        let tx = self.bw_tx.clone();
        let small = self
            .model
            .as_ref()
            .map_or(16 * 1024, |m| m.activation_bytes());
        let large = usize::try_from(self.cfg.probe.bandwidth_bytes).unwrap_or(1 << 20);
        let train_bytes = usize::try_from(self.cfg.probe.train_bytes).unwrap_or(0);
        let echo = self.loss_targets.borrow().get(&peer).copied();
        let pace = self.estimators.get(&peer).and_then(|e| e.train_pace());
        let activity = self.train_activity.clone();
        // Paced trains are sized to keep the link busy for about TRAIN_BUSY at the rate last
        // seen: long enough to measure well, short enough not to crowd out the link's traffic.
        let train_bytes = pace.map_or(train_bytes, |p| {
            let rate = p / crate::links::TRAIN_PACE;
            train_bytes.min((rate * TRAIN_BUSY.as_secs_f64() / 8.0) as usize)
        });
        tokio::spawn(async move {
            let train = match echo {
                Some(addr) if train_bytes > 0 => {
                    probe::measure_train(addr, train_bytes, pace, &activity).await
                }
                _ => Ok(probe::Train {
                    arrivals: Vec::new(),
                    shared: false,
                }),
            };
            let outcome = match train {
                Ok(t) if t.shared => Some(BandwidthProbeOutcome::Shared),
                Ok(probe::Train { arrivals, .. }) => {
                    crate::links::train_rate(&arrivals).map(|rate_bps| {
                        BandwidthProbeOutcome::Train {
                            rate_bps,
                            arrivals: arrivals.len(),
                            paced: pace.is_some(),
                        }
                    })
                }
                Err(e) => {
                    tracing::debug!(peer = %peer.short(), error = %e, "train probe failed");
                    None
                }
            };
            let outcome = match outcome {
                Some(o) => o,
                None => BandwidthProbeOutcome::Transfers(
                    probe::measure_bandwidth(&net, peer, small, large).await,
                ),
            };
            let _ = tx.send((peer, outcome)).await;
        });
    }

    /// Copies the power poller's and the speed watch's latest into the own capability;
    /// returns whether anything planning cares about changed.
    pub(super) fn own_power(&mut self) -> bool {
        let reading = *self.power.borrow_and_update();
        let throttle = *self.throttle.borrow_and_update();
        let before = crate::coordinator::PowerState::of(&self.own);
        self.own.battery = reading.battery;
        self.own.temp_c = reading.temp_c;
        self.own.throttle = throttle;
        crate::coordinator::PowerState::of(&self.own) != before
    }

    /// The battery, temperature or throttle changed: a change that matters to planning is
    /// announced now, and re-planned at once where this node coordinates next.
    async fn on_power(&mut self) {
        if !self.own_power() {
            return;
        }
        tracing::info!(
            node = %self.me.short(), battery = ?self.own.battery, throttle = ?self.own.throttle,
            "power state changed"
        );
        self.announce().await;
        self.maybe_replan();
        self.publish_view();
    }

    /// The layers on disk changed (a fetch finished): announce them now.
    async fn on_held(&mut self) {
        let held = self.held.borrow_and_update().clone();
        let Some(model) = &self.model else { return };
        self.own.held = held_field(&held, model.layers.len());
        tracing::info!(node = %self.me.short(), held = ?held, "layers on disk changed");
        self.announce().await;
        self.publish_view();
    }

    /// Publishes this node's capability and link report, and refreshes its own membership.
    pub(super) async fn announce(&mut self) {
        self.own.seq += 1;
        self.own.timestamp_ms = unix_ms();
        // Battery, temperature and throttle as last read (a change that matters to planning
        // was announced when it happened).
        self.own_power();
        self.own.speculation = *self.speculation.borrow();
        let now = self.now();
        if let Some(ev) = self.membership.observe(self.me, self.own.clone(), now) {
            self.on_membership(ev);
        }
        self.publish_capability().await;
        self.publish_links().await;
    }

    /// The link matrix: own estimates plus members' reports.
    pub(super) fn link_matrix(&self) -> LinkMatrix {
        let mut m = LinkMatrix::new();
        let mut relayed = Vec::new();
        for (peer, e) in &self.estimators {
            if let Some(metrics) = e.metrics() {
                m.insert((self.me, *peer), metrics);
            }
            if let Some(relay) = self.routes.get(peer) {
                relayed.push((self.me, *peer, *relay));
            }
        }
        for (from, report) in &self.reports {
            for l in &report.links {
                if let Some(relay) = l.via {
                    relayed.push((*from, l.to, relay));
                }
                let (Some(bw), true) = (l.bandwidth_bps, self.membership.contains(&l.to)) else {
                    continue;
                };
                m.insert(
                    (*from, l.to),
                    crate::links::LinkMetrics {
                        rtt_s: l.rtt_s,
                        jitter_s: l.jitter_s,
                        bandwidth_bps: bw,
                        loss: l.loss.unwrap_or(0.0),
                    },
                );
            }
        }
        crate::coordinator::charge_relayed(&mut m, &relayed);
        m
    }
}

//! Power and heat: what the node's battery, temperature and own step times say about how much
//! it should carry.
//!
//! - **Battery**: `/sys/class/power_supply` (a `type` of `Battery`: `capacity`, `status`, and
//!   the draw from `power_now` or `current_now * voltage_now` where the kernel reports it).
//!   Android 10 and later hide that folder from apps; there the node runs
//!   `termux-battery-status` (the Termux:API package) at most once a minute. Without either the
//!   node announces no battery and the planner treats it as on mains.
//! - **Draw**: measured watts when the OS gives them while discharging, else the class figure
//!   [`default_watts`] (planner/README.md, "Energy", justifies both figures).
//! - **Temperature**: the hottest `/sys/class/thermal/thermal_zone*/temp`.
//! - **Throttling** ([`SpeedWatch`]): the model thread reports the CPU time the process spent
//!   during every single-position decode step it runs alone; the watch compares windows of
//!   those against the best pace it has seen at that context length, and reports a sustained
//!   slowdown as a throttle factor with hysteresis. CPU time, not wall time: a step that waits
//!   for a core (another process, a frozen peer) is not slower work, while a throttled core
//!   takes more CPU time for the same work. The process's, not the model thread's: ONNX
//!   Runtime splits a step between the calling thread and its pool as the threads happen to
//!   be scheduled, so one thread's share swings with the load while the sum does not.
//!
//! Pure readers and a small state machine; the node task polls them (`node/task.rs`) and the
//! model thread feeds the watch (`pipeline/runtime.rs`).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Watts a phone-class device (Android) draws running model layers: a big-core cluster under
/// sustained load draws 3-5 W.
pub const PHONE_WATTS: f64 = 4.0;
/// Watts a laptop or single-board computer draws running model layers (a 15 W TDP class).
pub const LAPTOP_WATTS: f64 = 15.0;
/// How often `termux-battery-status` may run (it starts a Java process).
pub const TERMUX_EVERY: Duration = Duration::from_secs(60);
/// Longest `termux-battery-status` may take before its answer is ignored.
const TERMUX_TIMEOUT: Duration = Duration::from_secs(10);

/// Battery state as read from the OS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatteryState {
    /// Running on battery (discharging).
    pub on_battery: bool,
    /// Charge level in [0, 1], if known.
    pub level: Option<f64>,
    /// Measured draw in watts while discharging, if the OS reports it.
    pub watts: Option<f64>,
}

/// The battery under `root` (normally `/sys/class/power_supply`), if there is one.
pub fn battery(root: &Path) -> Option<BatteryState> {
    let entries = std::fs::read_dir(root).ok()?;
    for entry in entries.flatten() {
        let dir = entry.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).map(|s| s.trim().to_string());
        let num = |f: &str| read(f).ok().and_then(|v| v.parse::<f64>().ok());
        if read("type").ok().as_deref() != Some("Battery") {
            continue;
        }
        let level = num("capacity").map(|p| (p / 100.0).clamp(0.0, 1.0));
        let on_battery = read("status").ok().as_deref() == Some("Discharging");
        // Microwatts, or microamps times microvolts.
        let watts = num("power_now")
            .map(|uw| uw / 1e6)
            .or_else(|| Some(num("current_now")?.abs() / 1e6 * num("voltage_now")? / 1e6))
            .filter(|w| on_battery && w.is_finite() && *w > 0.1 && *w <= 1000.0);
        return Some(BatteryState {
            on_battery,
            level,
            watts,
        });
    }
    None
}

/// Parses the JSON `termux-battery-status` prints (`percentage`, `plugged`, `status`,
/// `current` in microamps).
pub fn parse_termux(json: &str) -> Option<BatteryState> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let level = v
        .get("percentage")
        .and_then(|p| p.as_f64())
        .map(|p| (p / 100.0).clamp(0.0, 1.0));
    let plugged = v.get("plugged").and_then(|p| p.as_str());
    let status = v.get("status").and_then(|p| p.as_str());
    let on_battery = status == Some("DISCHARGING") || plugged == Some("UNPLUGGED");
    if level.is_none() && plugged.is_none() && status.is_none() {
        return None;
    }
    Some(BatteryState {
        on_battery,
        level,
        watts: None,
    })
}

/// Runs `termux-battery-status`, if it is installed, and parses its answer.
pub fn termux_battery() -> Option<BatteryState> {
    let mut child = std::process::Command::new("termux-battery-status")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = Instant::now() + TERMUX_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take()?, &mut out).ok()?;
    parse_termux(&out)
}

/// The hottest thermal zone under `root` (normally `/sys/class/thermal`), degrees Celsius.
pub fn hottest(root: &Path) -> Option<f64> {
    std::fs::read_dir(root)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| {
            let milli: f64 = std::fs::read_to_string(e.path().join("temp"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            let c = milli / 1000.0;
            shoal_protocol::TEMP_RANGE_C.contains(&c).then_some(c)
        })
        .reduce(f64::max)
}

/// Whether this is an Android system (Termux runs there).
pub fn is_android() -> bool {
    std::env::var_os("ANDROID_ROOT").is_some() || Path::new("/system/build.prop").exists()
}

/// The draw of this device's class while it computes: [`PHONE_WATTS`] on Android, else
/// [`LAPTOP_WATTS`].
pub fn default_watts() -> f64 {
    if is_android() {
        PHONE_WATTS
    } else {
        LAPTOP_WATTS
    }
}

/// Where to read and how to price: the node's `[power]` settings.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The power-supply folder.
    pub supply_dir: PathBuf,
    /// The thermal folder.
    pub thermal_dir: PathBuf,
    /// Ask `termux-battery-status` when the power-supply folder shows no battery.
    pub termux: bool,
    /// Watts to announce while on battery when the OS measures none (None: the class figure).
    pub watts: Option<f64>,
}

/// Battery and temperature as the capability carries them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Reading {
    /// The battery, if any.
    pub battery: Option<shoal_protocol::Battery>,
    /// The hottest temperature, if any.
    pub temp_c: Option<f64>,
}

/// Reads [`Sources`], keeping the last `termux-battery-status` answer for [`TERMUX_EVERY`].
#[derive(Debug)]
pub struct Reader {
    sources: Sources,
    termux: Option<(Instant, Option<BatteryState>)>,
}

impl Reader {
    /// A reader of `sources`.
    pub fn new(sources: Sources) -> Self {
        Self {
            sources,
            termux: None,
        }
    }

    /// Reads the battery and temperature now (blocking: may run `termux-battery-status`).
    pub fn read(&mut self) -> Reading {
        let s = &self.sources;
        let mut state = battery(&s.supply_dir);
        if state.is_none() && s.termux {
            let fresh = self
                .termux
                .is_some_and(|(at, _)| at.elapsed() < TERMUX_EVERY);
            if !fresh {
                self.termux = Some((Instant::now(), termux_battery()));
            }
            state = self.termux.and_then(|(_, b)| b);
        }
        let watts = s.watts.unwrap_or_else(default_watts);
        Reading {
            battery: state.map(|b| shoal_protocol::Battery {
                on_battery: b.on_battery,
                level: b.level,
                watts: Some(
                    b.watts
                        .unwrap_or(watts)
                        .clamp(0.1, shoal_protocol::MAX_WATTS),
                ),
            }),
            temp_c: hottest(&s.thermal_dir),
        }
    }
}

/// The context-length bucket of a step at `position`: 0 below 128 positions (where attention
/// costs little next to the weights), then one per doubling.
fn bucket(position: usize) -> u32 {
    (position as u64 / 128 + 1).ilog2()
}

/// Knobs of the [`SpeedWatch`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchConfig {
    /// Decode steps per window.
    pub window: usize,
    /// A window slower than this share of the full-speed pace counts as throttled.
    pub below: f64,
    /// A throttled node counts as recovered when a window is faster than this share.
    pub above: f64,
    /// Least time between two changes of the announced factor.
    pub hold: Duration,
    /// A throttled node that ran no step for this long counts as cooled down.
    pub idle_recover: Duration,
}

/// One decode step's cost: CPU seconds of the model thread and of the whole process.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCost {
    /// CPU seconds of the thread that ran the step.
    pub thread_s: f64,
    /// CPU seconds of every thread of the process while it ran.
    pub process_s: f64,
}

/// The full-speed pace of one stage range at one context-length bucket ([`bucket`]): the
/// slower of its first two windows (a conservative figure: a warm-up window errs towards
/// seeing less throttling, never more). `exact` is false when it was estimated while the node
/// was throttled (the window's pace times the factor).
#[derive(Debug, Clone, Copy)]
struct Baseline {
    pace: StepCost,
    windows: u8,
    exact: bool,
}

#[derive(Debug)]
struct WatchState {
    cfg: WatchConfig,
    layers: Range<usize>,
    baselines: BTreeMap<u32, Baseline>,
    window: Vec<(StepCost, usize)>,
    /// The factor the previous window proposed (a change needs two agreeing windows).
    pending: Option<f64>,
    current: f64,
    changed: Option<Instant>,
    last_step: Instant,
}

/// Re-measures this node's speed from its own decode steps and reports throttling. A window
/// of [`WatchConfig::window`] single-position decode steps is summarised by its medians of
/// thread and process CPU time; each is compared with the full-speed pace of the same stage
/// range and context-length bucket, and the window's share of full speed is the *larger* of
/// the two ratios (both must show the slowdown: the model thread's share of a step swings
/// when ONNX Runtime's pool threads are descheduled, the process's when other threads work
/// beside the step; a slower core slows both). Two consecutive windows below
/// [`WatchConfig::below`] announce that share (rounded to 5%); two above
/// [`WatchConfig::above`] announce full speed again, as does [`WatchConfig::idle_recover`]
/// without steps (a node that was given no layers has cooled). A throttled node's factor is
/// not re-estimated (it only recovers), and no change follows another within
/// [`WatchConfig::hold`].
#[derive(Debug)]
pub struct SpeedWatch {
    state: Mutex<WatchState>,
    tx: watch::Sender<Option<f64>>,
}

impl SpeedWatch {
    /// A watch at full speed.
    pub fn new(cfg: WatchConfig) -> Self {
        Self {
            state: Mutex::new(WatchState {
                cfg,
                layers: 0..0,
                baselines: BTreeMap::new(),
                window: Vec::new(),
                pending: None,
                current: 1.0,
                changed: None,
                last_step: Instant::now(),
            }),
            tx: watch::channel(None).0,
        }
    }

    /// The throttle factor as announced (`None`: full speed), to watch for changes.
    pub fn subscribe(&self) -> watch::Receiver<Option<f64>> {
        self.tx.subscribe()
    }

    /// Records one single-position decode step of `layers` at cache `position`.
    pub fn record(&self, layers: &Range<usize>, position: usize, cost: StepCost) {
        let Ok(mut s) = self.state.lock() else { return };
        s.last_step = Instant::now();
        let fine = |x: f64| x.is_finite() && x > 0.0;
        if !(fine(cost.thread_s) && fine(cost.process_s)) {
            return;
        }
        if s.layers != *layers {
            s.layers = layers.clone();
            s.baselines.clear();
            s.window.clear();
            s.pending = None;
        }
        s.window.push((cost, position));
        if s.window.len() < s.cfg.window {
            return;
        }
        let window = std::mem::take(&mut s.window);
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let pace = StepCost {
            thread_s: median(window.iter().map(|w| w.0.thread_s).collect()),
            process_s: median(window.iter().map(|w| w.0.process_s).collect()),
        };
        let mut positions: Vec<usize> = window.iter().map(|w| w.1).collect();
        positions.sort_unstable();
        let bucket = bucket(positions[positions.len() / 2]);
        let current = s.current;
        let base = s.baselines.entry(bucket).or_insert(Baseline {
            pace: StepCost {
                thread_s: 0.0,
                process_s: 0.0,
            },
            windows: 0,
            exact: current >= 1.0,
        });
        if base.windows < 2 {
            // Learning this range's pace: the slower of two windows, as at full speed.
            base.pace.thread_s = base.pace.thread_s.max(pace.thread_s * current);
            base.pace.process_s = base.pace.process_s.max(pace.process_s * current);
            base.windows += 1;
            return;
        }
        let base = *base;
        let share = (base.pace.thread_s / pace.thread_s)
            .max(base.pace.process_s / pace.process_s)
            .min(1.0);
        let proposal = if current < 1.0 {
            // Throttled: only recovery counts.
            (share > s.cfg.above).then_some(1.0)
        } else if share < s.cfg.below && base.exact {
            Some(((share * 20.0).round() / 20.0).clamp(0.05, 0.95))
        } else {
            None
        };
        let Some(proposal) = proposal else {
            s.pending = None;
            return;
        };
        let held = s.changed.is_some_and(|t| t.elapsed() < s.cfg.hold);
        match s.pending {
            Some(p) if (p - proposal).abs() < 0.1 && !held => {
                tracing::info!(
                    share = proposal,
                    thread_ms = pace.thread_s * 1e3,
                    process_ms = pace.process_s * 1e3,
                    full_speed_thread_ms = base.pace.thread_s * 1e3,
                    full_speed_process_ms = base.pace.process_s * 1e3,
                    bucket,
                    "speed watch: two windows agree"
                );
                s.pending = None;
                s.current = proposal;
                s.changed = Some(Instant::now());
                let _ = self.tx.send((proposal < 1.0).then_some(proposal));
            }
            _ => s.pending = Some(proposal),
        }
    }

    /// Counts a throttled node as recovered after the idle time without steps.
    pub fn tick(&self) {
        let Ok(mut s) = self.state.lock() else { return };
        if s.current < 1.0 && s.last_step.elapsed() >= s.cfg.idle_recover {
            s.current = 1.0;
            s.pending = None;
            s.window.clear();
            s.changed = Some(Instant::now());
            let _ = self.tx.send(None);
        }
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// CPU time of the whole process (every thread).
pub fn process_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// The environment variable naming a file whose number (>= 1) slows every model step by that
/// factor, spent on the CPU like a throttled core: for the tests of throttling only.
pub const THROTTLE_FILE_ENV: &str = "SHOAL_THROTTLE_FILE";

/// The slowdown [`THROTTLE_FILE_ENV`] asks for now (1 without it).
pub fn test_slowdown() -> f64 {
    static PATH: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let Some(path) = PATH.get_or_init(|| std::env::var_os(THROTTLE_FILE_ENV).map(PathBuf::from))
    else {
        return 1.0;
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|f| f.is_finite())
        .map_or(1.0, |f| f.clamp(1.0, 100.0))
}

/// Spins the calling thread until it has used `factor - 1` times `spent` more CPU time.
pub fn stretch(spent: Duration, factor: f64) {
    if factor <= 1.0 {
        return;
    }
    let target = thread_cpu() + spent.mul_f64(factor - 1.0);
    while thread_cpu() < target {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn battery_from_sysfs_layout() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(battery(root.path()), None);
        let ac = root.path().join("AC");
        std::fs::create_dir(&ac).unwrap();
        std::fs::write(ac.join("type"), "Mains\n").unwrap();
        let bat = root.path().join("BAT0");
        std::fs::create_dir(&bat).unwrap();
        std::fs::write(bat.join("type"), "Battery\n").unwrap();
        std::fs::write(bat.join("capacity"), "57\n").unwrap();
        std::fs::write(bat.join("status"), "Discharging\n").unwrap();
        let b = battery(root.path()).unwrap();
        assert_eq!((b.on_battery, b.level, b.watts), (true, Some(0.57), None));
        std::fs::write(bat.join("current_now"), "-500000\n").unwrap();
        std::fs::write(bat.join("voltage_now"), "8000000\n").unwrap();
        assert_eq!(battery(root.path()).unwrap().watts, Some(4.0));
        std::fs::write(bat.join("power_now"), "6500000\n").unwrap();
        assert_eq!(battery(root.path()).unwrap().watts, Some(6.5));
        std::fs::write(bat.join("status"), "Charging\n").unwrap();
        let b = battery(root.path()).unwrap();
        assert_eq!((b.on_battery, b.watts), (false, None));
    }

    #[test]
    fn termux_answer() {
        let out = r#"{"health": "GOOD", "percentage": 18, "plugged": "UNPLUGGED",
            "status": "DISCHARGING", "temperature": 31.2, "current": -420000}"#;
        let b = parse_termux(out).unwrap();
        assert_eq!((b.on_battery, b.level), (true, Some(0.18)));
        let b =
            parse_termux(r#"{"percentage": 90, "plugged": "PLUGGED_AC", "status": "CHARGING"}"#)
                .unwrap();
        assert!(!b.on_battery);
        assert_eq!(parse_termux("termux-api not installed"), None);
        assert_eq!(parse_termux("{}"), None);
    }

    #[test]
    fn hottest_zone_in_celsius() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(hottest(root.path()), None);
        for (zone, milli) in [("thermal_zone0", "41500"), ("thermal_zone1", "55000")] {
            std::fs::create_dir(root.path().join(zone)).unwrap();
            std::fs::write(root.path().join(zone).join("temp"), milli).unwrap();
        }
        // A broken sensor's nonsense is ignored.
        std::fs::create_dir(root.path().join("thermal_zone2")).unwrap();
        std::fs::write(root.path().join("thermal_zone2/temp"), "-273000").unwrap();
        assert_eq!(hottest(root.path()), Some(55.0));
    }

    fn watch(hold_ms: u64) -> SpeedWatch {
        SpeedWatch::new(WatchConfig {
            window: 5,
            below: 0.6,
            above: 0.85,
            hold: Duration::from_millis(hold_ms),
            idle_recover: Duration::from_millis(50),
        })
    }

    /// Feeds `windows` windows of steps costing `thread` and `process` CPU seconds.
    fn feed_both(w: &SpeedWatch, windows: usize, (thread, process): (f64, f64), position: usize) {
        for _ in 0..windows * 5 {
            let cost = StepCost {
                thread_s: thread,
                process_s: process,
            };
            w.record(&(0..4), position, cost);
        }
    }

    /// Feeds windows of steps of `pace` CPU seconds on the thread and the process alike.
    fn feed(w: &SpeedWatch, windows: usize, pace: f64, position: usize) {
        feed_both(w, windows, (pace, pace), position);
    }

    #[test]
    fn a_sustained_slowdown_is_reported_once_and_recovery_too() {
        let w = watch(0);
        let rx = w.subscribe();
        // Two windows learn the pace, then it holds.
        feed(&w, 4, 0.010, 20);
        assert_eq!(*rx.borrow(), None);
        // One slow window is noise.
        feed(&w, 1, 0.040, 20);
        feed(&w, 1, 0.010, 20);
        assert_eq!(*rx.borrow(), None);
        // Two in a row: throttled to a quarter.
        feed(&w, 2, 0.040, 20);
        assert_eq!(*rx.borrow(), Some(0.25));
        // Staying there, or slowing further, changes nothing: only recovery counts.
        feed(&w, 4, 0.080, 20);
        assert_eq!(*rx.borrow(), Some(0.25));
        // Back to speed for two windows.
        feed(&w, 1, 0.010, 20);
        assert_eq!(*rx.borrow(), Some(0.25));
        feed(&w, 1, 0.011, 20);
        assert_eq!(*rx.borrow(), None);
    }

    #[test]
    fn only_a_slowdown_of_both_thread_and_process_counts() {
        let w = watch(0);
        let rx = w.subscribe();
        feed(&w, 2, 0.010, 20);
        // The model thread did the pool's share (its threads were descheduled).
        feed_both(&w, 4, (0.020, 0.010), 20);
        // Other threads of the process worked beside the step.
        feed_both(&w, 4, (0.010, 0.030), 20);
        assert_eq!(*rx.borrow(), None);
        feed_both(&w, 2, (0.030, 0.030), 20);
        assert_eq!(*rx.borrow(), Some(0.35));
    }

    #[test]
    fn changes_are_held_apart() {
        let w = watch(60_000);
        let rx = w.subscribe();
        feed(&w, 2, 0.010, 20);
        feed(&w, 2, 0.040, 20);
        assert_eq!(*rx.borrow(), Some(0.25));
        // Recovered at once: not announced within the hold.
        feed(&w, 4, 0.010, 20);
        assert_eq!(*rx.borrow(), Some(0.25));
    }

    #[test]
    fn moderate_noise_and_longer_contexts_are_not_throttling() {
        let w = watch(0);
        let rx = w.subscribe();
        feed(&w, 2, 0.010, 20);
        // 30% slower: above the 0.6 threshold.
        feed(&w, 6, 0.013, 20);
        // A long context takes longer per step: a new bucket, judged on its own.
        feed(&w, 6, 0.030, 2000);
        assert_eq!(*rx.borrow(), None);
        // A new stage range starts over.
        for _ in 0..20 {
            let cost = StepCost {
                thread_s: 0.050,
                process_s: 0.050,
            };
            w.record(&(4..9), 20, cost);
        }
        assert_eq!(*rx.borrow(), None);
    }

    #[test]
    fn an_idle_throttled_node_counts_as_cooled() {
        let w = watch(0);
        let rx = w.subscribe();
        feed(&w, 2, 0.010, 20);
        feed(&w, 2, 0.050, 20);
        assert_eq!(*rx.borrow(), Some(0.2));
        w.tick();
        assert_eq!(*rx.borrow(), Some(0.2));
        std::thread::sleep(Duration::from_millis(60));
        w.tick();
        assert_eq!(*rx.borrow(), None);
    }

    #[test]
    fn buckets_double() {
        assert_eq!(
            [0, 126, 127, 383, 384, 895, 896].map(bucket),
            [0, 0, 0, 1, 2, 2, 3]
        );
    }

    #[test]
    fn stretch_spends_cpu_time() {
        let t = thread_cpu();
        stretch(Duration::from_millis(10), 3.0);
        assert!(thread_cpu() - t >= Duration::from_millis(20));
    }
}

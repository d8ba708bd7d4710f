//! The test bed checked with tools that are not shoal: every impaired link's round-trip time
//! and jitter (ping), bandwidth (a UDP stream above the shaped rate) and loss (a paced UDP
//! count), each direction separately where it can be, must be within 20% (or 2 percentage
//! points for loss) of what was imposed. Needs root; prints SKIP otherwise.

use std::time::Duration;

use anyhow::{Result, ensure};
use shoal_tests::netns::{self, LinkProfile, Testbed, measure};

/// What one link measured.
#[derive(Debug, Default)]
struct Measured {
    rtt_ms: f64,
    jitter_ms: f64,
    pings: usize,
    bw_up: f64,
    bw_down: f64,
    loss_up: f64,
    loss_down: f64,
}

fn measure_link(bed: &Testbed, i: usize) -> Result<Measured> {
    let p = bed.profile(i);
    let rtts = measure::ping_rtts(bed, i, 0, 500, Duration::from_millis(40))?;
    ensure!(
        rtts.len() > 300,
        "link {i}: only {} of 500 pings came back",
        rtts.len()
    );
    let (rtt, sd) = measure::mean_sd(&rtts);
    let rate = p.rate_bps.map_or(100e6, |r| r as f64);
    let port = 40_000 + i as u16 * 10;
    // Loss probes: half the shaped rate, at most ~2000 datagrams/s so that no socket buffer
    // or queue of the bed itself drops any.
    let probe_rate = (rate / 2.0).min(2_000.0 * 128.0 * 8.0);
    let (loss_up, loss_down) = std::thread::scope(|s| {
        let up = s.spawn(|| measure::udp_loss(bed, i, 0, port, 3_000, probe_rate));
        let down = measure::udp_loss(bed, 0, i, port + 1, 3_000, probe_rate);
        (
            up.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked"))),
            down,
        )
    });
    let (loss_up, loss_down) = (loss_up?, loss_down?);
    let (bw_up, bw_down) = std::thread::scope(|s| {
        let up = s.spawn(|| measure::udp_bandwidth(bed, i, 0, port + 2, rate * 1.5, 2.0, loss_up));
        let down = measure::udp_bandwidth(bed, 0, i, port + 3, rate * 1.5, 2.0, loss_down);
        (
            up.join()
                .unwrap_or_else(|_| Err(anyhow::anyhow!("panicked"))),
            down,
        )
    });
    Ok(Measured {
        rtt_ms: rtt * 1e3,
        // Both directions carry independent jitter: Var(rtt) = 2 * jitter^2.
        jitter_ms: sd / 2f64.sqrt() * 1e3,
        pings: rtts.len(),
        bw_up: bw_up?,
        bw_down: bw_down?,
        loss_up,
        loss_down,
    })
}

fn within(measured: f64, imposed: f64, rel: f64) -> bool {
    (measured - imposed).abs() <= rel * imposed
}

/// Readings of a link whose figures are judged on their medians: a link that misses a bound is
/// measured again, up to this many times in all, before the test fails on it. A bed that
/// imposes other figures misses every time (planted errors it catches, `SHOAL_BED_PLANT`:
/// `rate=0.7`, `rtt=1.3`, `jitter=1.5`, `loss=+3`).
const READINGS: usize = 3;

/// The per-figure medians of a link's readings.
fn medians(ms: &[Measured]) -> Measured {
    let m = |f: fn(&Measured) -> f64| measure::median(&ms.iter().map(f).collect::<Vec<_>>());
    Measured {
        rtt_ms: m(|x| x.rtt_ms),
        jitter_ms: m(|x| x.jitter_ms),
        pings: ms.iter().map(|x| x.pings).min().unwrap_or(0),
        bw_up: m(|x| x.bw_up),
        bw_down: m(|x| x.bw_down),
        loss_up: m(|x| x.loss_up),
        loss_down: m(|x| x.loss_down),
    }
}

/// The figures of `m` outside their bounds for profile `p`.
fn misses(p: &LinkProfile, m: &Measured) -> Vec<&'static str> {
    let (rtt, jit) = (p.rtt.as_secs_f64() * 1e3, p.jitter.as_secs_f64() * 1e3);
    let rate = p.rate_bps.map_or(f64::NAN, |r| r as f64);
    let loss = f64::from(p.loss_pct);
    [
        ("rtt", within(m.rtt_ms, rtt, 0.2)),
        ("jitter", within(m.jitter_ms, jit, 0.2)),
        ("bandwidth up", within(m.bw_up, rate, 0.2)),
        ("bandwidth down", within(m.bw_down, rate, 0.2)),
        ("loss up", (m.loss_up * 100.0 - loss).abs() <= 2.0),
        ("loss down", (m.loss_down * 100.0 - loss).abs() <= 2.0),
    ]
    .into_iter()
    .filter(|c| !c.1)
    .map(|c| c.0)
    .collect()
}

/// Measures the links `which` at once, one thread each.
fn measure_links(bed: &Testbed, which: &[usize]) -> Vec<Result<Measured>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = which
            .iter()
            .map(|&i| s.spawn(move || measure_link(bed, i)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("measurement panicked")))
            })
            .collect()
    })
}

#[test]
fn imposed_impairments_match_independent_measurements() -> Result<()> {
    if netns::skip_unless_root("netns_impairment") {
        return Ok(());
    }
    let profiles = [
        LinkProfile::CLEAN,
        LinkProfile::new(40.0, 15.0, 2.0, 10),
        LinkProfile::new(80.0, 10.0, 10.0, 3),
        LinkProfile::new(10.0, 2.0, 40.0, 1),
    ];
    let bed = Testbed::new("imp", &profiles)?;
    let clean = measure::ping_rtts(&bed, 0, 0, 5, Duration::from_millis(20))?;
    ensure!(clean.len() == 5, "node 0 cannot reach itself");
    let mut readings: Vec<Vec<Measured>> = (0..bed.len()).map(|_| Vec::new()).collect();
    let mut pending: Vec<usize> = (1..bed.len()).collect();
    for _ in 0..READINGS {
        if pending.is_empty() {
            break;
        }
        for (i, r) in pending
            .clone()
            .into_iter()
            .zip(measure_links(&bed, &pending))
        {
            readings[i].push(r?);
        }
        pending.retain(|&i| !misses(&bed.profile(i), &medians(&readings[i])).is_empty());
    }
    println!("\nnetns_impairment: imposed vs measured (link of node i to a clean node)");
    println!(
        "{:<22} {:>13} {:>15} {:>21} {:>21} {:>17} {:>17}",
        "profile",
        "rtt ms",
        "jitter ms",
        "bw up Mbit/s",
        "bw down Mbit/s",
        "loss up %",
        "loss down %"
    );
    let mut failures = Vec::new();
    for (i, r) in readings.iter().enumerate().skip(1) {
        let p = bed.profile(i);
        let m = medians(r);
        let (rtt, jit) = (p.rtt.as_secs_f64() * 1e3, p.jitter.as_secs_f64() * 1e3);
        let rate = p.rate_bps.map_or(f64::NAN, |r| r as f64);
        let loss = f64::from(p.loss_pct);
        println!(
            "{:<22} {:>5.1} / {:>5.1} {:>6.1} / {:>6.2} {:>9.2} / {:>9.2} {:>9.2} / {:>9.2} {:>7.1} / {:>7.2} {:>7.1} / {:>7.2}   ({} pings, median of {} readings)",
            p.label(),
            rtt,
            m.rtt_ms,
            jit,
            m.jitter_ms,
            rate / 1e6,
            m.bw_up / 1e6,
            rate / 1e6,
            m.bw_down / 1e6,
            loss,
            m.loss_up * 100.0,
            loss,
            m.loss_down * 100.0,
            m.pings,
            r.len()
        );
        failures.extend(
            misses(&p, &m)
                .into_iter()
                .map(|c| format!("{c} on {}", p.label())),
        );
    }
    println!(
        "(each cell: imposed / measured; delay line forwarded, overflowed: {:?})",
        bed.delay_counts()
    );
    ensure!(
        failures.is_empty(),
        "measured figures off by more than 20% / 2 pp in {READINGS} readings: {failures:?}"
    );
    Ok(())
}

//! `shoal status`: asks a running node's API for `/v1/status` and prints it as tables (or the
//! raw JSON with `--json`).

use std::fmt::Write;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use serde_json::Value;

/// Arguments of `shoal status`.
#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The node's HTTP API.
    #[arg(long, default_value = "127.0.0.1:7070")]
    api: SocketAddr,
    /// Print the JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// An API key of the node (when it has `api_keys`), sent as a bearer token.
    #[arg(long, env = "SHOAL_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

pub(crate) fn run(args: StatusArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new().context("tokio runtime")?;
    let url = format!("http://{}/v1/status", args.api);
    let v: Value = rt.block_on(async {
        let mut req = reqwest::Client::builder().no_proxy().build()?.get(&url);
        if let Some(key) = &args.api_key {
            req = req.bearer_auth(key);
        }
        let resp = req.send().await.with_context(|| format!("GET {url}"))?;
        let resp = resp
            .error_for_status()
            .with_context(|| format!("GET {url}"))?;
        resp.json().await.context("status is not JSON")
    })?;
    if args.json {
        println!("{v}");
    } else {
        print!("{}", render(&v));
    }
    Ok(())
}

/// Last 8 characters of a node id, as in the logs.
fn short(id: &Value) -> String {
    let s = id.as_str().unwrap_or("?");
    s[s.len().saturating_sub(8)..].to_string()
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

fn fmt_opt(x: Option<f64>, scale: f64, prec: usize) -> String {
    x.map_or("-".to_string(), |x| format!("{:.prec$}", x / scale))
}

/// The status document as text tables.
pub(crate) fn render(v: &Value) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "node {}  epoch {}  next coordinator {}",
        v["node"].as_str().unwrap_or("?"),
        v["epoch"],
        v.get("next_coordinator").map_or("-".to_string(), short)
    );
    let empty = Vec::new();
    let members = v["members"].as_array().unwrap_or(&empty);
    let _ = writeln!(o, "\nmembers ({})", members.len());
    let _ = writeln!(
        o,
        "  {:<8}  {:<16}  {:>9}  {:>10}  {:>8}  {:>8}  {:>5}",
        "ID", "MODEL", "GFLOP/s", "MEMBW GB/s", "MEM MiB", "BATTERY", "AGE s"
    );
    for m in members {
        let battery = match m.get("battery") {
            Some(b) if !b.is_null() => match num(b, "level") {
                Some(l) => format!("{:.0}%", l * 100.0),
                None => "yes".into(),
            },
            _ => "-".into(),
        };
        let _ = writeln!(
            o,
            "  {:<8}  {:<16}  {:>9}  {:>10}  {:>8}  {:>8}  {:>5}",
            short(&m["id"]),
            m["model"].as_str().unwrap_or("-"),
            fmt_opt(num(m, "flops"), 1e9, 2),
            fmt_opt(num(m, "mem_bw"), 1e9, 2),
            fmt_opt(num(m, "mem_bytes"), (1u64 << 20) as f64, 1),
            battery,
            fmt_opt(num(m, "age_s"), 1.0, 1),
        );
    }
    let links = v["links"].as_array().unwrap_or(&empty);
    let _ = writeln!(o, "\nlinks ({})", links.len());
    let _ = writeln!(
        o,
        "  {:<8} -> {:<8}  {:>8}  {:>9}  {:>10}  {:>6}",
        "FROM", "TO", "RTT ms", "JITTER ms", "BW Mbit/s", "LOSS %"
    );
    for l in links {
        let _ = writeln!(
            o,
            "  {:<8} -> {:<8}  {:>8}  {:>9}  {:>10}  {:>6}",
            short(&l["from"]),
            short(&l["to"]),
            fmt_opt(num(l, "rtt_s"), 1e-3, 3),
            fmt_opt(num(l, "jitter_s"), 1e-3, 3),
            fmt_opt(num(l, "bandwidth_bps"), 1e6, 1),
            fmt_opt(num(l, "loss").map(|x| x * 100.0), 1.0, 1),
        );
    }
    match v.get("plan").filter(|p| !p.is_null()) {
        None => {
            let _ = writeln!(o, "\nplan: none yet");
        }
        Some(p) => {
            let _ = writeln!(
                o,
                "\nplan: epoch {}  coordinator {}  model {}  {} {} ms  strategy {}{}",
                p["epoch"],
                short(&p["coordinator"]),
                p["model"].as_str().unwrap_or("?"),
                p["objective"].as_str().unwrap_or("?"),
                fmt_opt(num(p, "cost_s"), 1e-3, 3),
                p["strategy"].as_str().unwrap_or("?"),
                if p["optimal"].as_bool() == Some(true) {
                    " (optimal)"
                } else {
                    ""
                },
            );
            let _ = writeln!(o, "  {:<5}  {:<8}  LAYERS", "STAGE", "DEVICE");
            for (i, s) in p["stages"].as_array().unwrap_or(&empty).iter().enumerate() {
                let _ = writeln!(
                    o,
                    "  {:<5}  {:<8}  [{}, {})",
                    i,
                    short(&s["device"]),
                    s["layers"][0],
                    s["layers"][1]
                );
            }
        }
    }
    let _ = writeln!(
        o,
        "\npredicted latency per token: {} ms",
        fmt_opt(num(v, "predicted_latency_s"), 1e-3, 3)
    );
    if let Some(r) = v["refused"].as_object().filter(|r| !r.is_empty()) {
        let list: Vec<String> = r.iter().map(|(k, n)| format!("{k}={n}")).collect();
        let _ = writeln!(o, "refused: {}", list.join(" "));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_an_empty_and_a_planned_status() {
        let v = serde_json::json!({"node": "12D3KooWabcdefgh", "epoch": 0, "next_coordinator": null,
            "members": [], "links": [], "plan": null, "predicted_latency_s": null, "refused": {}});
        let text = render(&v);
        assert!(text.contains("plan: none yet"), "{text}");
        let v = serde_json::json!({"node": "12D3KooWabcdefgh", "epoch": 2, "next_coordinator": "xxxxAAAABBBB",
            "members": [{"id": "12D3KooWabcdefgh", "model": "tiny", "flops": 2e9, "mem_bw": 8e9,
                "mem_bytes": 1073741824u64, "battery": null, "age_s": 0.5}],
            "links": [{"from": "aaaaaaaaaaaa", "to": "bbbbbbbbbbbb", "rtt_s": 0.0002, "jitter_s": 0.00001,
                "bandwidth_bps": 1e9, "loss": 0.0}],
            "plan": {"epoch": 2, "coordinator": "12D3KooWabcdefgh", "model": "tiny", "objective": "latency",
                "cost_s": 0.0042, "strategy": "milp", "optimal": true,
                "stages": [{"device": "12D3KooWabcdefgh", "layers": [0, 4]}]},
            "predicted_latency_s": 0.0042, "refused": {"plan_stale_epoch": 1}});
        let text = render(&v);
        assert!(text.contains("[0, 4)"), "{text}");
        assert!(text.contains("plan_stale_epoch=1"), "{text}");
        assert!(text.contains("abcdefgh"), "{text}");
    }
}

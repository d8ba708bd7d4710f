//! The test bed: N node namespaces, each joined by a veth pair to one hub namespace that
//! routes between them and imposes each node's [`LinkProfile`], plus the processes started in
//! the nodes. Dropping the bed kills the processes, stops the delay line and deletes every
//! namespace whose name carries the bed's prefix, also after a panic.
//!
//! Layout (node i, 0-based): namespace `shoal-TAG-n{i}`, interface `eth0` with 198.18.i.2/24
//! (RFC 2544 benchmarking range, never routed outside), default route via 198.18.i.1 which
//! is `h{i}` in `shoal-TAG-hub`. For an impaired node the hub also has TUN interfaces `up{i}`
//! and `dn{i}` served by the [`DelayLine`] and policy routes:
//!
//! ```text
//! node i --eth0[tbf]--> h{i} -(rule iif h{i}: table 100+i, nft loss)-> up{i} -> delay line
//!        -> back in on up{i} -> main table -> ... -> dn{j}[tbf] -> delay line
//!        -> back in on dn{j} -(rule iif dn{j}: table 1000+j, nft loss)-> h{j} --> node j
//! ```
//!
//! A node behind NAT ([`Testbed::with_nat`]) lives one namespace further in: `shoal-TAG-n{i}`
//! has `eth0` with 10.77.i.2/24 and its default route via 10.77.i.1, which is `lan0` of the
//! router namespace `shoal-TAG-nat{i}`; the router's `eth0` takes the node's place on the hub
//! (198.18.i.2) and masquerades what leaves through it. Its forward chain lets in only what
//! belongs to connections opened from inside, so the node cannot be dialled. [`Nat::Cone`]
//! keeps the inside port (hole punching can work); [`Nat::Symmetric`] maps every connection
//! to a random port (it cannot).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use super::cmd::{run, run_in, run_with_input, sysctl_in};
use super::delay::{DelayLine, DelaySpec};
use super::proc::NsProcess;
use super::profile::{LinkProfile, PathFigures, Plant, path};

/// Every bed's namespaces start with this, then the test's tag and a dash.
pub const NS_PREFIX: &str = "shoal-";

/// How a node reaches the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// Directly: it can be dialled.
    None,
    /// Behind a masquerading router that keeps the inside port when it can (Linux's default).
    Cone,
    /// Behind a masquerading router that picks a random port for every connection.
    Symmetric,
}

/// Handle to a process started with [`Testbed::spawn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcId(usize);

/// N namespaces on one impaired hub; see the module doc.
#[derive(Debug)]
pub struct Testbed {
    prefix: String,
    /// What the tests are told the links are (see [`Testbed::profile`]).
    profiles: Vec<LinkProfile>,
    /// What the bed imposes: `profiles`, unless `SHOAL_BED_PLANT` plants an error.
    imposed: Vec<LinkProfile>,
    nat: Vec<Nat>,
    procs: Vec<NsProcess>,
    delay: Option<DelayLine>,
    logs: tempfile::TempDir,
}

impl Testbed {
    /// Builds a bed with one node per profile. `tag` must be unique per test (it names the
    /// namespaces); leftovers of an earlier run with the same tag are removed first.
    pub fn new(tag: &str, profiles: &[LinkProfile]) -> Result<Self> {
        Self::with_nat(tag, profiles, &vec![Nat::None; profiles.len()])
    }

    /// Like [`Testbed::new`], with node `i` behind `nat[i]` (see the module doc).
    pub fn with_nat(tag: &str, profiles: &[LinkProfile], nat: &[Nat]) -> Result<Self> {
        if nat.len() != profiles.len() {
            bail!("{} NAT kinds for {} nodes", nat.len(), profiles.len());
        }
        if !(1..=200).contains(&profiles.len()) {
            bail!("a bed has 1..=200 nodes, not {}", profiles.len());
        }
        if tag.is_empty() || tag.len() > 20 || !tag.chars().all(|c| c.is_ascii_alphanumeric()) {
            bail!("bed tag {tag:?} must be 1..=20 ASCII letters or digits");
        }
        for p in profiles {
            p.validate()?;
        }
        let plant = match std::env::var("SHOAL_BED_PLANT") {
            Ok(text) => Plant::parse(&text).context("SHOAL_BED_PLANT")?,
            Err(_) => Plant::NONE,
        };
        let imposed: Vec<LinkProfile> = profiles.iter().map(|p| plant.apply(p)).collect();
        for p in &imposed {
            p.validate().context("the planted profile")?;
        }
        if plant != Plant::NONE {
            eprintln!(
                "netns: bed {tag} plants an error: imposes {plant:?} of the profiles it reports"
            );
        }
        let prefix = format!("{NS_PREFIX}{tag}-");
        sweep(&prefix)?;
        let mut bed = Testbed {
            prefix,
            profiles: profiles.to_vec(),
            imposed,
            nat: nat.to_vec(),
            procs: Vec::new(),
            delay: None,
            // SHOAL_BED_KEEP=1 keeps the logs (and prints where) for a look after the test.
            logs: tempfile::Builder::new()
                .prefix("shoal-bed-")
                .disable_cleanup(std::env::var_os("SHOAL_BED_KEEP").is_some())
                .tempdir()?,
        };
        if std::env::var_os("SHOAL_BED_KEEP").is_some() {
            eprintln!(
                "netns: bed {tag} keeps its logs in {}",
                bed.logs.path().display()
            );
        }
        // On error `bed` drops here and removes whatever was already created.
        bed.build()
            .with_context(|| format!("building test bed {tag}"))?;
        Ok(bed)
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    /// Whether the bed has no nodes (never true: `new` refuses that).
    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    /// The hub namespace's name.
    pub fn hub(&self) -> String {
        format!("{}hub", self.prefix)
    }

    /// Namespace name of node `i`.
    pub fn ns(&self, i: usize) -> String {
        format!("{}n{i}", self.prefix)
    }

    /// IPv4 address of node `i` (inside its NAT, for a node behind one).
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        match self.nat[i] {
            Nat::None => self.public_addr(i),
            Nat::Cone | Nat::Symmetric => Ipv4Addr::new(10, 77, i as u8, 2),
        }
    }

    /// The address node `i`'s traffic comes from on the hub (its NAT's, behind one).
    pub fn public_addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, i as u8, 2)
    }

    /// Namespace of node `i`'s NAT router (exists only behind a NAT).
    pub fn nat_ns(&self, i: usize) -> String {
        format!("{}nat{i}", self.prefix)
    }

    /// The profile imposed on node `i`'s access link.
    pub fn profile(&self, i: usize) -> LinkProfile {
        self.profiles[i]
    }

    /// What the path from node `a` to node `b` should look like.
    pub fn path(&self, a: usize, b: usize) -> PathFigures {
        path(&self.profiles[a], &self.profiles[b])
    }

    /// Directory of the process logs (removed with the bed).
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// Starts `program args...` in node `i`'s namespace; it is killed when the bed drops.
    pub fn spawn(
        &mut self,
        i: usize,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
    ) -> Result<ProcId> {
        let p = NsProcess::spawn(&self.ns(i), name, program, args, envs, self.logs.path())?;
        self.procs.push(p);
        Ok(ProcId(self.procs.len() - 1))
    }

    /// The process behind `id`.
    pub fn process(&mut self, id: ProcId) -> &mut NsProcess {
        &mut self.procs[id.0]
    }

    /// Runs `f` on a thread inside node `i`'s namespace (sockets it opens live there).
    pub fn in_ns<T, F>(&self, i: usize, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T> + Send + 'static,
    {
        in_netns(&self.ns(i), f)
    }

    /// Counts of the delay line: packets forwarded, packets dropped for overflow.
    pub fn delay_counts(&self) -> (u64, u64) {
        self.delay.as_ref().map_or((0, 0), DelayLine::counts)
    }

    /// The last lines of every process log, for a failure message.
    pub fn logs_tail(&self, lines: usize) -> String {
        self.procs
            .iter()
            .map(|p| {
                format!(
                    "--- {} ({})\n{}",
                    p.name(),
                    p.log_path().display(),
                    p.log_tail(lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn build(&mut self) -> Result<()> {
        let hub = self.hub();
        run("ip", &["netns", "add", &hub])?;
        run("ip", &["-n", &hub, "link", "set", "lo", "up"])?;
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
        ] {
            sysctl_in(&hub, key, value)?;
        }
        for i in 0..self.len() {
            self.add_node(i)?;
        }
        self.start_delay_line()?;
        for i in 0..self.len() {
            if !self.imposed[i].is_clean() {
                self.impair(i)?;
            }
        }
        let rules = nft_ruleset(&self.imposed);
        run_with_input(
            "ip",
            &["netns", "exec", &hub, "nft", "-f", "-"],
            Some(&rules),
        )?;
        Ok(())
    }

    fn add_node(&self, i: usize) -> Result<()> {
        if self.nat[i] != Nat::None {
            return self.add_natted_node(i);
        }
        let (ns, hub) = (self.ns(i), self.hub());
        let (h, addr) = (format!("h{i}"), self.addr(i));
        let gw = Ipv4Addr::new(198, 18, i as u8, 1);
        run("ip", &["netns", "add", &ns])?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        run(
            "ip",
            &[
                "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &h, "netns",
                &hub,
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ],
        )?;
        run(
            "ip",
            &["-n", &hub, "addr", "add", &format!("{gw}/24"), "dev", &h],
        )?;
        run("ip", &["-n", &ns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &hub, "link", "set", &h, "up"])?;
        run(
            "ip",
            &["-n", &ns, "route", "add", "default", "via", &gw.to_string()],
        )?;
        Ok(())
    }

    /// Node `i` behind its NAT router (see the module doc).
    fn add_natted_node(&self, i: usize) -> Result<()> {
        let (ns, nat, hub) = (self.ns(i), self.nat_ns(i), self.hub());
        let h = format!("h{i}");
        let (inside, lan_gw) = (self.addr(i), Ipv4Addr::new(10, 77, i as u8, 1));
        let (outside, hub_gw) = (self.public_addr(i), Ipv4Addr::new(198, 18, i as u8, 1));
        for n in [&ns, &nat] {
            run("ip", &["netns", "add", n])?;
            run("ip", &["-n", n, "link", "set", "lo", "up"])?;
        }
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
        ] {
            sysctl_in(&nat, key, value)?;
        }
        let link = |a: &str, a_ns: &str, b: &str, b_ns: &str| {
            run(
                "ip",
                &[
                    "link", "add", a, "netns", a_ns, "type", "veth", "peer", "name", b, "netns",
                    b_ns,
                ],
            )
        };
        link("eth0", &ns, "lan0", &nat)?;
        link("eth0", &nat, &h, &hub)?;
        for (n, dev, addr) in [
            (&ns, "eth0", inside),
            (&nat, "lan0", lan_gw),
            (&nat, "eth0", outside),
            (&hub, h.as_str(), hub_gw),
        ] {
            run(
                "ip",
                &["-n", n, "addr", "add", &format!("{addr}/24"), "dev", dev],
            )?;
            run("ip", &["-n", n, "link", "set", dev, "up"])?;
        }
        run(
            "ip",
            &[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &lan_gw.to_string(),
            ],
        )?;
        run(
            "ip",
            &[
                "-n",
                &nat,
                "route",
                "add",
                "default",
                "via",
                &hub_gw.to_string(),
            ],
        )?;
        run_with_input(
            "ip",
            &["netns", "exec", &nat, "nft", "-f", "-"],
            Some(&nat_ruleset(self.nat[i])),
        )?;
        Ok(())
    }

    fn start_delay_line(&mut self) -> Result<()> {
        let specs: Vec<DelaySpec> = (0..self.len())
            .filter(|&i| !self.imposed[i].is_clean())
            .flat_map(|i| {
                let p = self.imposed[i];
                ["up", "dn"].map(|d| DelaySpec {
                    tun: format!("{d}{i}"),
                    base: p.rtt / 2,
                    jitter: p.jitter,
                })
            })
            .collect();
        if specs.is_empty() {
            return Ok(());
        }
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        self.delay = Some(DelayLine::start(&self.hub(), specs, seed)?);
        Ok(())
    }

    /// Routes node `i`'s traffic through its TUN pair and shapes both directions.
    fn impair(&self, i: usize) -> Result<()> {
        let (ns, hub) = (self.ns(i), self.hub());
        let (h, up, dn) = (format!("h{i}"), format!("up{i}"), format!("dn{i}"));
        let net = format!("198.18.{i}.0/24");
        let (t_up, t_dn) = ((100 + i).to_string(), (1000 + i).to_string());
        for dev in [&up, &dn] {
            run(
                "ip",
                &["-n", &hub, "link", "set", dev, "txqueuelen", "10000", "up"],
            )?;
        }
        run(
            "ip",
            &[
                "-n", &hub, "rule", "add", "pref", "100", "iif", &h, "lookup", &t_up,
            ],
        )?;
        run(
            "ip",
            &[
                "-n", &hub, "route", "add", "default", "dev", &up, "table", &t_up,
            ],
        )?;
        run("ip", &["-n", &hub, "route", "replace", &net, "dev", &dn])?;
        run(
            "ip",
            &[
                "-n", &hub, "rule", "add", "pref", "200", "iif", &dn, "lookup", &t_dn,
            ],
        )?;
        run(
            "ip",
            &["-n", &hub, "route", "add", &net, "dev", &h, "table", &t_dn],
        )?;
        if let Some(rate) = self.imposed[i].rate_bps {
            let tbf = tbf_args(rate);
            let tbf: Vec<&str> = tbf.iter().map(String::as_str).collect();
            let mut up_cmd = vec!["qdisc", "replace", "dev", "eth0", "root"];
            up_cmd.extend(&tbf);
            run_in(&ns, "tc", &up_cmd)?;
            let mut dn_cmd = vec!["qdisc", "replace", "dev", dn.as_str(), "root"];
            dn_cmd.extend(&tbf);
            run_in(&hub, "tc", &dn_cmd)?;
        }
        Ok(())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if std::thread::panicking() && !self.procs.is_empty() {
            eprintln!(
                "netns: test failed; last log lines of bed {}:\n{}",
                self.prefix,
                self.logs_tail(40)
            );
        }
        self.procs.clear();
        self.delay = None;
        if let Err(e) = sweep(&self.prefix) {
            eprintln!("netns: cleaning up {}: {e:#}", self.prefix);
        }
    }
}

/// `tbf` arguments for `rate` bit/s: a burst of 10 ms (at least two full frames) and a queue
/// of 100 ms, about what a Wi-Fi driver buffers.
pub fn tbf_args(rate: u64) -> Vec<String> {
    let bytes_per_s = rate / 8;
    let burst = (bytes_per_s / 100).max(3_100);
    let limit = (bytes_per_s / 10).max(3 * 1_514) + burst;
    [
        "tbf",
        "rate",
        &format!("{rate}bit"),
        "burst",
        &burst.to_string(),
        "limit",
        &limit.to_string(),
    ]
    .map(str::to_string)
    .to_vec()
}

/// The hub's nftables ruleset: per impaired node, drop `loss_pct`% of what it sends (on the
/// way in from `h{i}`) and of what it receives (on the way out of the delay line `dn{i}`).
pub fn nft_ruleset(profiles: &[LinkProfile]) -> String {
    let mut rules = String::new();
    for (i, p) in profiles.iter().enumerate().filter(|(_, p)| p.loss_pct > 0) {
        for dev in [format!("h{i}"), format!("dn{i}")] {
            rules += &format!(
                "    iifname \"{dev}\" numgen random mod 100 < {} drop\n",
                p.loss_pct
            );
        }
    }
    format!(
        "table inet shoalbed {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n{rules}  }}\n}}\n"
    )
}

/// A NAT router's nftables ruleset: masquerade what leaves through `eth0` (keeping the inside
/// port when it can, or a random port per connection for [`Nat::Symmetric`]) and forward
/// inwards only what belongs to connections opened from inside.
pub fn nat_ruleset(nat: Nat) -> String {
    let how = match nat {
        Nat::Symmetric => " random,fully-random",
        Nat::None | Nat::Cone => "",
    };
    format!(
        "table ip shoalnat {{\n  chain outbound {{\n    type nat hook postrouting priority 100; policy accept;\n    oifname \"eth0\" masquerade{how}\n  }}\n  chain inbound {{\n    type filter hook forward priority 0; policy drop;\n    ct state established,related accept\n    iifname \"lan0\" accept\n  }}\n}}\n"
    )
}

/// Runs `f` on a fresh thread moved into namespace `ns`.
pub fn in_netns<T, F>(ns: &str, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let ns = ns.to_string();
    let handle = std::thread::Builder::new()
        .name(format!("in-{ns}"))
        .spawn(move || {
            super::sys::enter_netns(&ns).with_context(|| format!("entering {ns}"))?;
            f()
        })
        .context("spawning a namespace thread")?;
    match handle.join() {
        Ok(r) => r,
        Err(_) => bail!("a thread inside a namespace panicked"),
    }
}

/// Kills every process in, then deletes, each namespace whose name starts with `prefix`.
pub fn sweep(prefix: &str) -> Result<()> {
    let me = std::process::id().to_string();
    for line in run("ip", &["netns", "list"])?.lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        if !name.starts_with(prefix) {
            continue;
        }
        let pids = run("ip", &["netns", "pids", name]).unwrap_or_default();
        let pids: Vec<&str> = pids.split_whitespace().filter(|p| *p != me).collect();
        if !pids.is_empty() {
            let mut args = vec!["-9"];
            args.extend(&pids);
            let _ = run("kill", &args);
        }
        run("ip", &["netns", "del", name])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruleset_drops_both_directions_of_lossy_links_only() {
        let r = nft_ruleset(&[LinkProfile::CLEAN, LinkProfile::new(40.0, 15.0, 2.0, 10)]);
        assert!(r.contains("iifname \"h1\" numgen random mod 100 < 10 drop"));
        assert!(r.contains("iifname \"dn1\" numgen random mod 100 < 10 drop"));
        assert!(!r.contains("\"h0\""));
    }

    #[test]
    fn a_nat_lets_in_only_answers_and_symmetric_ones_randomise_ports() {
        let cone = nat_ruleset(Nat::Cone);
        assert!(cone.contains("oifname \"eth0\" masquerade\n"));
        assert!(cone.contains("policy drop;\n    ct state established,related accept"));
        assert!(nat_ruleset(Nat::Symmetric).contains("masquerade random,fully-random"));
    }

    #[test]
    fn tbf_queue_holds_a_tenth_of_a_second() {
        let a = tbf_args(2_000_000);
        assert_eq!(a[..3], ["tbf", "rate", "2000000bit"]);
        assert_eq!(a[4], "3100");
        assert_eq!(a[6], (25_000 + 3_100).to_string());
    }
}

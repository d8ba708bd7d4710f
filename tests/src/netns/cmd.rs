//! Running the system tools the bed is built with (`ip`, `tc`, `nft`, `kill`), with the
//! command line and its stderr in every error so a failed set-up says exactly what failed.

use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// Runs `prog args...` and returns its stdout; a non-zero exit is an error with stderr.
pub fn run(prog: &str, args: &[&str]) -> Result<String> {
    run_with_input(prog, args, None)
}

/// Runs `prog args...` with `input` on stdin (e.g. an nft ruleset).
pub fn run_with_input(prog: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let line = format!("{prog} {}", args.join(" "));
    let mut child = Command::new(prog)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{line}` (is it installed? scripts/setup.sh)"))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .with_context(|| format!("writing stdin of `{line}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `prog args...` inside network namespace `ns` (`ip netns exec`).
pub fn run_in(ns: &str, prog: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", ns, prog];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Writes `value` to a sysctl file under `/proc/sys` as seen from namespace `ns`.
pub fn sysctl_in(ns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    run_in(ns, "sh", &["-c", &format!("echo {value} > {path}")]).map(|_| ())
}

/// Whether `prog` can be started at all (used to explain a missing apt package).
pub fn available(prog: &str) -> bool {
    Command::new(prog)
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

//! One process running inside a bed namespace (`ip netns exec NS PROGRAM ...`), its output in
//! a log file, killed and reaped when dropped so a failing test leaves no process behind.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

/// A process started in a namespace; `ip netns exec` execs the program in place, so the
/// child's pid is the program's pid.
#[derive(Debug)]
pub struct NsProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

impl NsProcess {
    /// Starts `program args...` in namespace `ns` with extra `envs`; stdout and stderr go to
    /// `log_dir/NAME.log`.
    pub fn spawn(
        ns: &str,
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        log_dir: &Path,
    ) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone().context("duplicating the log descriptor")?;
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .arg(program)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {} in {ns}", program.display()))?;
        Ok(NsProcess {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// The name given at spawn (also the log file's stem).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operating-system process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILLs the process (like a device dropping off the network) and reaps it.
    pub fn kill(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }

    /// The log file path.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the log, for failure reports.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

//! Child processes that never outlive the harness.
//!
//! Every process is started through a small `sh` guard in its own process group. The guard
//! holds the read end of a pipe whose write end only the harness holds: when the harness
//! exits for any reason (a panic, an abort, SIGKILL, a test binary whose statics are never
//! dropped), the pipe closes and the guard stops the process (SIGTERM, then SIGKILL after a
//! few seconds). The guard exits with the process's status, and forwards SIGTERM to it.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use rustix::process::{Pid, Signal};
use tokio::process::{Child, ChildStdin, Command};

const GUARD: &str = r#"
exec 3<&0
"$@" </dev/null 3<&- &
pid=$!
( while read -r _; do :; done; kill -TERM "$pid" 2>/dev/null; sleep 5; kill -KILL "$pid" 2>/dev/null ) <&3 >/dev/null 2>&1 &
watcher=$!
exec 3<&-
trap 'kill -TERM "$pid" 2>/dev/null' TERM
while :; do
    wait "$pid"
    status=$?
    kill -0 "$pid" 2>/dev/null || break
done
kill "$watcher" 2>/dev/null
exit "$status"
"#;

/// A process started by the harness, with its output appended to a log file.
pub struct Proc {
    name: String,
    child: Child,
    pgid: Option<Pid>,
    // Closing this stops the process (see the module docs).
    _lifeline: Option<ChildStdin>,
    log: PathBuf,
}

impl Proc {
    /// Starts `program args...` with exactly `env` (nothing inherited), in `cwd`, appending
    /// stdout and stderr to `log`.
    pub fn spawn<I, S>(
        name: &str,
        program: &Path,
        args: I,
        env: &[(String, String)],
        cwd: &Path,
        log: &Path,
    ) -> Result<Proc>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        writeln!(
            out,
            "--- [ringstore-e2e] starting {} ({})",
            name,
            program.display()
        )?;
        let err = out.try_clone()?;
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(GUARD)
            .arg("ringstore-e2e-guard")
            .arg(program)
            .args(args)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .process_group(0)
            .kill_on_drop(false);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {} ({})", name, program.display()))?;
        let pgid = child.id().and_then(|id| Pid::from_raw(id as i32));
        let lifeline = child.stdin.take();
        Ok(Proc {
            name: name.to_string(),
            child,
            pgid,
            _lifeline: lifeline,
            log: log.to_path_buf(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The process's exit status if it has exited.
    pub fn try_exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// SIGTERM, then SIGKILL to the whole group after `grace`. Returns the exit status.
    pub async fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.try_exited() {
            self.kill_group();
            return Some(status);
        }
        if let Some(pid) = self.pgid {
            // the guard forwards SIGTERM to the process
            let _ = rustix::process::kill_process(pid, Signal::TERM);
        }
        let status = match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                self.kill_group();
                self.child.wait().await.ok()
            }
        };
        // whatever is left in the group (normally nothing)
        self.kill_group();
        status
    }

    fn kill_group(&mut self) {
        if let Some(pid) = self.pgid {
            let _ = rustix::process::kill_process_group(pid, Signal::KILL);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill_group();
        }
    }
}

/// The last `lines` lines of a log file, for failure messages.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            all[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

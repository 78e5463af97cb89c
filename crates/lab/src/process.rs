//! A guard for a spawned program: output to files, killed and reaped on Drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use crate::cmd::{describe, wait_child};
use crate::error::{LabError, Result};

/// How long a process gets to exit after SIGTERM before it gets SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(3);

/// Lines of each log printed when a test panics.
pub const PANIC_TAIL_LINES: usize = 40;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A child process owned by a test.
///
/// Its stdout and stderr go to `<dir>/<label>.stdout` and `<dir>/<label>.stderr`. On Drop
/// it gets SIGTERM, then SIGKILL after [`TERM_GRACE`], and is reaped; if the thread is
/// panicking (the test failed) the tail of both logs is printed first.
#[derive(Debug)]
pub struct Process {
    child: Child,
    label: String,
    cmdline: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Spawns `cmd` with its output captured in `dir`. `label` names the log files
    /// (made unique if a file of that name exists).
    pub fn spawn(mut cmd: Command, dir: &Path, label: &str) -> Result<Process> {
        std::fs::create_dir_all(dir)?;
        let mut base = dir.join(label);
        if append_ext(&base, "stdout").exists() {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            base = dir.join(format!("{label}.{n}"));
        }
        let stdout_path = append_ext(&base, "stdout");
        let stderr_path = append_ext(&base, "stderr");
        let cmdline = describe(&cmd);
        cmd.stdin(Stdio::null())
            .stdout(File::create(&stdout_path)?)
            .stderr(File::create(&stderr_path)?);
        let child = cmd.spawn().map_err(|source| LabError::Spawn {
            cmd: cmdline.clone(),
            source,
        })?;
        Ok(Process {
            child,
            label: label.to_owned(),
            cmdline,
            stdout_path,
            stderr_path,
            exited: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything written to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Whether the process is still running (reaps it if it has exited).
    pub fn is_running(&mut self) -> bool {
        self.exit_status().is_none()
    }

    /// The exit status if the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Fails with the log tail if the process has exited: for "is the daemon still up"
    /// checks while waiting for it.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.exit_status() {
            None => Ok(()),
            Some(status) => Err(LabError::Exited {
                what: self.cmdline.clone(),
                status,
                tail: self.log_tail(PANIC_TAIL_LINES),
            }),
        }
    }

    /// Sends `sig` (no-op once the process has been reaped).
    pub fn signal(&mut self, sig: Signal) -> Result<()> {
        if self.exit_status().is_some() {
            return Ok(());
        }
        signal::kill(pid_of(&self.child), sig)?;
        Ok(())
    }

    /// Waits at most `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status() {
            return Ok(status);
        }
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            if start.elapsed() >= timeout {
                return Err(LabError::Timeout {
                    what: format!("{} to exit", self.label),
                    after: timeout,
                    last: String::new(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, then SIGKILL after [`TERM_GRACE`]; always reaps. Idempotent.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if let Some(status) = self.exit_status() {
            return Some(status);
        }
        let _ = signal::kill(pid_of(&self.child), Signal::SIGTERM);
        // wait_child sends SIGKILL and reaps when the grace period is over.
        let status = wait_child(&mut self.child, TERM_GRACE);
        if status.is_none() {
            // Killed by SIGKILL; reaped already by wait_child.
            self.exited = self.child.try_wait().ok().flatten();
        } else {
            self.exited = status;
        }
        self.exited
    }

    /// The last `lines` lines of stdout and stderr, labelled, for failure reports.
    pub fn log_tail(&self, lines: usize) -> String {
        format!(
            "--- {} ({}) stdout: {}\n{}--- {} stderr: {}\n{}",
            self.label,
            self.cmdline,
            self.stdout_path.display(),
            tail(&read_lossy(&self.stdout_path), lines),
            self.label,
            self.stderr_path.display(),
            tail(&read_lossy(&self.stderr_path), lines),
        )
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(PANIC_TAIL_LINES));
        }
        self.stop();
    }
}

/// The last `lines` lines of `text`, each ending in a newline.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut out = String::new();
    for l in &all[from..] {
        out.push_str(l);
        out.push('\n');
    }
    out
}

pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn append_ext(base: &Path, ext: &str) -> PathBuf {
    let mut s = base.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn pid_of(child: &Child) -> Pid {
    // Linux pids fit in i32 (pid_max is at most 2^22).
    Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail("a", 5), "a\n");
        assert_eq!(tail("", 5), "");
    }
}

//! Running external programs with a bound on their run time, and bounded polling.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// How long any single helper command (ip, swanctl, vtysh, nft ...) may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`wait_until`] polls.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// What a finished command printed.
#[derive(Debug, Clone)]
pub(crate) struct Captured {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion (at most `timeout`) and returns its stdout; a non-zero exit
/// is an error that carries stderr.
pub(crate) fn run(cmd: &mut Command) -> Result<String> {
    let what = describe(cmd);
    let out = output(cmd, None, COMMAND_TIMEOUT)?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: what,
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        });
    }
    Ok(out.stdout)
}

/// Like [`run`] with `input` written to the command's stdin.
pub(crate) fn run_with_input(cmd: &mut Command, input: &str) -> Result<String> {
    let what = describe(cmd);
    let out = output(cmd, Some(input.as_bytes()), COMMAND_TIMEOUT)?;
    if !out.status.success() {
        return Err(LabError::Command {
            cmd: what,
            status: out.status,
            stdout: out.stdout,
            stderr: out.stderr,
        });
    }
    Ok(out.stdout)
}

/// Runs `cmd`, whatever its exit status, killing it after `timeout`.
///
/// Output is drained by threads so that a chatty program cannot block on a full pipe
/// while we wait for it.
pub(crate) fn output(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Captured> {
    let what = describe(cmd);
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| LabError::Spawn {
        cmd: what.clone(),
        source,
    })?;
    if let (Some(data), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(data)?;
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_child(&mut child, timeout);
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) => Ok(Captured {
            status,
            stdout,
            stderr,
        }),
        None => Err(LabError::Timeout {
            what: format!("`{what}` to finish"),
            after: timeout,
            last: format!("; stderr: {stderr}"),
        }),
    }
}

/// Polls `probe` until it returns `Some`, at most `timeout`.
///
/// A probe error counts as "not yet" (a daemon that is still starting refuses its
/// control socket), but the last one is reported if time runs out.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        match probe() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("; last error: {e}"),
        }
        if start.elapsed() >= timeout {
            return Err(LabError::Timeout {
                what: what.to_owned(),
                after: timeout,
                last,
            });
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// The command line as one string, for error messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Waits for `child` at most `timeout`; kills and reaps it if it is still running then.
/// Returns `None` on timeout.
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            // ECHILD: somebody else reaped it; nothing left to wait for.
            Err(_) => return None,
        }
        if start.elapsed() >= timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

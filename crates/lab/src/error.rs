//! The one error type of the lab harness.

use std::process::ExitStatus;
use std::time::Duration;

/// What went wrong while building or driving the lab.
///
/// Messages carry the command line and its stderr so that a failing interop test says
/// which step broke. Secrets never reach a command line: strongSwan PSKs go through
/// files, so they cannot appear here.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A program could not be started at all (not installed, not executable).
    #[error("`{cmd}` could not be started: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: std::io::Error,
    },
    /// A program ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}{stdout}")]
    Command {
        cmd: String,
        status: ExitStatus,
        stdout: String,
        stderr: String,
    },
    /// A bounded wait ran out.
    #[error("timed out after {after:?} waiting for {what}{last}")]
    Timeout {
        what: String,
        after: Duration,
        /// The last observation or error seen while polling, for diagnosis.
        last: String,
    },
    /// Output of a tool could not be understood.
    #[error("could not parse {what}: {detail}")]
    Parse { what: String, detail: String },
    /// A caller passed something the lab cannot build (e.g. an interface name too long).
    #[error("invalid lab setup: {0}")]
    Invalid(String),
    /// A process of the lab died while it was expected to run.
    #[error("{what} exited unexpectedly ({status}); log tail:\n{tail}")]
    Exited {
        what: String,
        status: ExitStatus,
        tail: String,
    },
    /// Filesystem or process IO.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A system call (setns, kill) failed.
    #[error("system call: {0}")]
    Sys(#[from] nix::Error),
}

/// Result of every fallible lab operation.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

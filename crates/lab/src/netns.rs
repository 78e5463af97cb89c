//! Network namespaces that delete themselves.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cmd::run;
use crate::error::{LabError, Result};
use crate::process::Process;

/// Where `ip netns` keeps its namespace handles.
const NETNS_DIR: &str = "/run/netns";

/// Linux interface names are at most IFNAMSIZ - 1 bytes.
const IFNAMSIZ_MAX: usize = 15;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A named network namespace (`ip netns add`), unique per run: `<prefix>-<pid>-<n>`.
///
/// `lo` is up from the start. On Drop every process still inside is killed (SIGTERM,
/// then SIGKILL) and the namespace deleted; veth ends inside it go with it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings `lo` up.
    pub fn new(prefix: &str) -> Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{}-{n}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // From here on Drop cleans up, even if bringing lo up fails.
        let ns = Netns { name };
        ns.link_up("lo")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace handle (`/run/netns/<name>`).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`). Add
    /// arguments and environment as usual.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `args[0] args[1..]` inside the namespace to completion (bounded) and
    /// returns its stdout; a non-zero exit is an error.
    pub fn exec(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| LabError::Invalid("exec of an empty command".into()))?;
        run(self.command(program).args(rest))
    }

    /// Spawns `args` inside the namespace as a [`Process`] whose output goes to
    /// `<log_dir>/<label>.std{out,err}`.
    pub fn spawn(&self, args: &[&str], log_dir: &Path, label: &str) -> Result<Process> {
        let (program, rest) = args
            .split_first()
            .ok_or_else(|| LabError::Invalid("spawn of an empty command".into()))?;
        let mut cmd = self.command(program);
        cmd.args(rest);
        Process::spawn(cmd, log_dir, label)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Adds `cidr` (e.g. `192.0.2.1/24`) to `dev`.
    pub fn addr_add(&self, dev: &str, cidr: &str) -> Result<()> {
        self.ip(&["addr", "add", cidr, "dev", dev]).map(drop)
    }

    /// Adds a route to `dst` (a prefix or `default`) via the gateway `via`.
    pub fn route_add(&self, dst: &str, via: &str) -> Result<()> {
        self.ip(&["route", "add", dst, "via", via]).map(drop)
    }

    /// Adds a route to `dst` straight out of `dev`.
    pub fn route_add_dev(&self, dst: &str, dev: &str) -> Result<()> {
        self.ip(&["route", "add", dst, "dev", dev]).map(drop)
    }

    pub fn link_up(&self, dev: &str) -> Result<()> {
        self.ip(&["link", "set", dev, "up"]).map(drop)
    }

    pub fn link_down(&self, dev: &str) -> Result<()> {
        self.ip(&["link", "set", dev, "down"]).map(drop)
    }

    /// `sysctl -w key=value` inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec(&["sysctl", "-q", "-w", &format!("{key}={value}")])
            .map(drop)
    }

    /// Makes the namespace a router (`net.ipv4.ip_forward=1`).
    pub fn enable_forwarding(&self) -> Result<()> {
        self.sysctl("net.ipv4.ip_forward", "1")
    }

    /// Runs `f` on a fresh thread that has entered this namespace (`setns`) and returns
    /// its result. Sockets created by `f` belong to the namespace and stay there when
    /// they are handed to other threads. Threads that `f` starts inherit the namespace,
    /// so an async runtime built inside `f` runs entirely in it. A panic in `f` is
    /// propagated.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        Self::run_in_path(&self.path(), f)
    }

    /// [`Netns::run_in`] for the namespace whose handle is `path` (from
    /// [`Netns::path`]), for helpers that outlive a borrow of the [`Netns`].
    pub fn run_in_path<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T> {
        let handle = File::open(path)?;
        thread::scope(|s| {
            let joined = s
                .spawn(move || -> Result<T> {
                    // setns(CLONE_NEWNET) changes only the calling thread.
                    setns(&handle, CloneFlags::CLONE_NEWNET)?;
                    Ok(f())
                })
                .join();
            match joined {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Like [`Netns::run_in`] for long-running in-process code (a node under test, a
    /// UDP echo server): the thread is detached and its handle returned.
    pub fn spawn_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<thread::JoinHandle<Result<T>>> {
        let handle = File::open(self.path())?;
        Ok(thread::spawn(move || -> Result<T> {
            setns(&handle, CloneFlags::CLONE_NEWNET)?;
            drop(handle);
            Ok(f())
        }))
    }

    /// Pids of the processes whose network namespace is this one.
    pub fn pids(&self) -> Result<Vec<i32>> {
        let target = std::fs::metadata(self.path())?;
        let own = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc")? {
            let Ok(entry) = entry else { continue };
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<i32>().ok())
            else {
                continue;
            };
            // Processes come and go while we look: skip the ones that vanished.
            let Ok(meta) = std::fs::metadata(entry.path().join("ns/net")) else {
                continue;
            };
            // Never our own process: a thread of ours may have entered the namespace
            // with `run_in`, but /proc/<pid> describes the main thread anyway.
            if pid == own {
                continue;
            }
            if meta.dev() == target.dev() && meta.ino() == target.ino() {
                pids.push(pid);
            }
        }
        Ok(pids)
    }

    /// Kills everything still running in the namespace: SIGTERM, then SIGKILL after a
    /// bounded wait.
    pub fn kill_all(&self) -> Result<()> {
        let pids = self.pids()?;
        if pids.is_empty() {
            return Ok(());
        }
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let start = Instant::now();
        while start.elapsed() < crate::process::TERM_GRACE {
            if self.pids()?.is_empty() {
                return Ok(());
            }
            thread::sleep(Duration::from_millis(20));
        }
        for pid in self.pids()? {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = self.kill_all() {
            eprintln!("lab: netns {}: killing processes: {e}", self.name);
        }
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            eprintln!("lab: netns {}: {e}", self.name);
        }
    }
}

/// Creates a veth pair with one end (`a_if`) in `a` and the other (`b_if`) in `b`, both
/// up. Each end is created directly inside its namespace, so the names only need to be
/// unique per namespace.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    for name in [a_if, b_if] {
        if name.is_empty() || name.len() > IFNAMSIZ_MAX {
            return Err(LabError::Invalid(format!(
                "interface name {name:?} must be 1..={IFNAMSIZ_MAX} bytes"
            )));
        }
    }
    run(Command::new("ip").args([
        "link", "add", a_if, "netns", &a.name, "type", "veth", "peer", "name", b_if, "netns",
        &b.name,
    ]))?;
    a.link_up(a_if)?;
    b.link_up(b_if)
}

/// Names of all namespaces `ip netns list` shows (for leak checks in tests).
pub fn list_netns() -> Result<Vec<String>> {
    let out = run(Command::new("ip").args(["netns", "list"]))?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

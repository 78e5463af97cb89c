//! A per-test directory for configuration files, sockets and logs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::Result;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Set this environment variable to keep every work directory (to read the logs of a
/// passing run).
pub const KEEP_ENV: &str = "VPNGW_LAB_KEEP";

/// A directory under the system temp dir, unique per run, removed on Drop unless the
/// thread is panicking (a failing test) or [`KEEP_ENV`] is set: then it is kept and its
/// path printed, so charon.log, bgpd output and friends can be read.
#[derive(Debug)]
pub struct Workdir {
    path: PathBuf,
    keep: bool,
}

impl Workdir {
    /// Creates `$TMPDIR/vpngw-lab-<prefix>-<pid>-<n>`.
    pub fn new(prefix: &str) -> Result<Workdir> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("vpngw-lab-{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(Workdir { path, keep: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates (if needed) and returns `<workdir>/<name>`.
    pub fn subdir(&self, name: &str) -> Result<PathBuf> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }

    /// Keeps the directory after Drop.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        if self.keep || std::thread::panicking() || std::env::var_os(KEEP_ENV).is_some() {
            eprintln!("lab: kept work directory {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

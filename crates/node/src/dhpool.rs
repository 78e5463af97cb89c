//! Diffie-Hellman key pairs made ahead of time, off the control thread.
//!
//! Making a key pair is one modular exponentiation (or scalar multiplication): half of
//! the DH work of an IKE_SA_INIT, a Child SA rekey with PFS or an IKEv1 exchange, and it
//! needs nothing from the exchange. While many tunnels come up at once the control
//! thread spent three quarters of its time in DH (docs/PERFORMANCE.md); a filler thread
//! per group in use keeps a few key pairs ready so the control thread only computes the
//! shared secrets. Each key pair is handed out once (RFC 7296 §2.12 permits reusing
//! exponentials; we do not, so every exchange keeps its forward secrecy). When none is
//! ready the engine makes its own, so an empty pool never delays an exchange.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use crypto::{DhGroup, DhPrivate, OsRandom};

/// Key pairs kept ready per group: enough to cover a burst's first round trips, few
/// enough to cost nothing when idle (~0.3 KiB each for modp1024).
pub(crate) const DEPTH: usize = 64;

pub(crate) struct DhPool {
    depth: usize,
    /// `None`: the filler thread could not be started; the engine makes every key.
    groups: HashMap<DhGroup, Option<Receiver<DhPrivate>>>,
    /// Held by every filler thread while it runs (tests watch it).
    running: Arc<()>,
}

impl DhPool {
    pub(crate) fn new(depth: usize) -> Self {
        Self {
            depth,
            groups: HashMap::new(),
            running: Arc::new(()),
        }
    }

    /// Filler threads still running; they end once the pool is dropped.
    #[cfg(test)]
    fn fillers(&self) -> usize {
        Arc::strong_count(&self.running) - 1
    }

    fn start(&self, group: DhGroup) -> Option<Receiver<DhPrivate>> {
        let (tx, rx) = sync_channel(self.depth);
        let running = Arc::clone(&self.running);
        let spawned = std::thread::Builder::new()
            .name("node-dh".into())
            .spawn(move || fill(group, &tx, running));
        match spawned {
            Ok(_) => Some(rx),
            Err(e) => {
                tracing::warn!(group = group.name(), error = %e, "DH key pool not started; keys are made on the control thread");
                None
            }
        }
    }
}

impl ike::KeySource for DhPool {
    fn take(&mut self, group: DhGroup) -> Option<DhPrivate> {
        if let Some(slot) = self.groups.get(&group) {
            return slot.as_ref()?.try_recv().ok();
        }
        // The first key of a group starts its filler; this one the engine makes.
        let rx = self.start(group);
        self.groups.insert(group, rx);
        None
    }
}

/// Makes key pairs until the pool is gone: `send` blocks while `DEPTH` wait, and fails
/// once the receiver is dropped.
fn fill(group: DhGroup, tx: &SyncSender<DhPrivate>, _running: Arc<()>) {
    // Spare CPU only: a filler that wakes to replace the key just taken must not delay
    // the control thread, which installs the SAs the peer is about to use.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets this thread's (pid 0) scheduling policy; `param` lives for the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "DH key pool thread keeps its priority");
    }
    loop {
        let key = match DhPrivate::generate(group, &mut OsRandom) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(group = group.name(), error = %e, "DH key pool stopped");
                return;
            }
        };
        if tx.send(key).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::time::{Duration, Instant};

    use ike::KeySource;

    use super::*;

    fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn fills_in_the_background_and_hands_each_key_out_once() {
        let mut pool = DhPool::new(4);
        // The first request starts the group's filler and gets nothing.
        assert!(pool.take(DhGroup::Curve25519).is_none());
        assert_eq!(pool.fillers(), 1);
        let mut seen = HashSet::new();
        for _ in 0..12 {
            let key = wait_for("a ready key", || pool.take(DhGroup::Curve25519));
            assert_eq!(key.group(), DhGroup::Curve25519);
            assert!(
                seen.insert(key.public_value().to_vec()),
                "key handed out twice"
            );
        }
        // Another group gets its own filler.
        assert!(pool.take(DhGroup::Modp1024).is_none());
        let key = wait_for("a modp1024 key", || pool.take(DhGroup::Modp1024));
        assert_eq!(key.group(), DhGroup::Modp1024);
        assert_eq!(key.public_value().len(), 128);
        assert_eq!(pool.fillers(), 2);
    }

    #[test]
    fn keys_from_the_pool_agree_like_fresh_ones() {
        let mut pool = DhPool::new(2);
        assert!(pool.take(DhGroup::Modp1024).is_none());
        let ours = wait_for("a ready key", || pool.take(DhGroup::Modp1024));
        let theirs = DhPrivate::generate(DhGroup::Modp1024, &mut OsRandom).unwrap();
        assert_eq!(
            *ours.shared_secret(theirs.public_value()).unwrap(),
            *theirs.shared_secret(ours.public_value()).unwrap()
        );
    }

    #[test]
    fn fillers_end_with_the_pool() {
        let mut pool = DhPool::new(2);
        assert!(pool.take(DhGroup::Curve25519).is_none());
        // Let it fill up and block in send.
        wait_for("a ready key", || pool.take(DhGroup::Curve25519));
        let running = Arc::clone(&pool.running);
        drop(pool);
        wait_for("the filler to end", || {
            (Arc::strong_count(&running) == 1).then_some(())
        });
    }
}

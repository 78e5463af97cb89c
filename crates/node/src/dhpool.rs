//! Diffie-Hellman off the control thread: key pairs made ahead of time (`DhPool`) and
//! the shared secrets of IKE_SA_INIT, CREATE_CHILD_SA with a KE payload (PFS, IKE SA
//! rekeys), IKEv1 Main and Aggressive Mode and Quick Mode PFS computed by a few worker
//! threads (`DhWorkers`).
//!
//! Making a key pair is one modular exponentiation (or scalar multiplication): half of
//! the DH work of an IKE_SA_INIT, a Child SA rekey with PFS or an IKEv1 exchange, and it
//! needs nothing from the exchange. While many tunnels come up at once the control
//! thread spent three quarters of its time in DH (docs/PERFORMANCE.md); a filler thread
//! per group in use keeps a few key pairs ready so the control thread only computes the
//! shared secrets. Each key pair is handed out once (RFC 7296 §2.12 permits reusing
//! exponentials; we do not, so every exchange keeps its forward secrecy). When none is
//! ready the engine makes its own, so an empty pool never delays an exchange.
//!
//! The filler runs on spare CPU only, and during a burst of setups there is none: the
//! pool ran dry and the control thread made a quarter of the responder's key pairs
//! itself at 10,000 tunnels (docs/PERFORMANCE.md). So each DH worker, after a job, also
//! puts one key pair back into a pool that is not full ([`TopUp`]): every exchange that
//! offloads a secret took one key pair, and the workers replace it at the rate they are
//! taken, at the priority the secrets themselves run at.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};

use crypto::{DhGroup, DhPrivate, OsRandom};
use ike::{DhDone, DhJob};

/// Key pairs kept ready per group: enough to cover a burst's first round trips, few
/// enough to cost nothing when idle (~0.3 KiB each for modp1024).
pub(crate) const DEPTH: usize = 64;

pub(crate) struct DhPool {
    depth: usize,
    /// `None`: the filler thread could not be started; the engine makes every key.
    groups: HashMap<DhGroup, Option<Ready>>,
    /// The way in for the DH workers.
    top_up: TopUp,
    /// Held by every filler thread while it runs (tests watch it).
    running: Arc<()>,
    /// Tests: no filler threads, so that only [`TopUp`] fills the pool.
    fillers: bool,
}

/// One group's key pairs, as the control thread takes them.
struct Ready {
    rx: Receiver<DhPrivate>,
    /// Shared with the group's [`Slot`].
    count: Arc<AtomicUsize>,
}

/// Lets the DH workers put key pairs into the pool (see the module docs).
#[derive(Clone, Default)]
pub(crate) struct TopUp(Arc<Mutex<HashMap<DhGroup, Slot>>>);

/// One group's way into the pool.
#[derive(Clone)]
struct Slot {
    tx: SyncSender<DhPrivate>,
    /// Key pairs waiting in the pool (approximately: the sides count on their own).
    ready: Arc<AtomicUsize>,
    depth: usize,
}

impl TopUp {
    /// After a job of `group`: one key pair into the pool unless it is full (or the group
    /// has no pool yet).
    fn after_job(&self, group: DhGroup) {
        let slot = match self.0.lock() {
            Ok(m) => m.get(&group).cloned(),
            Err(_) => None,
        };
        let Some(slot) = slot else { return };
        if slot.ready.load(Ordering::Relaxed) >= slot.depth {
            return;
        }
        if let Ok(key) = DhPrivate::generate(group, &mut OsRandom)
            && slot.tx.try_send(key).is_ok()
        {
            slot.ready.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl DhPool {
    pub(crate) fn new(depth: usize) -> Self {
        Self {
            depth,
            groups: HashMap::new(),
            top_up: TopUp::default(),
            running: Arc::new(()),
            fillers: true,
        }
    }

    /// A pool that only the DH workers fill.
    #[cfg(test)]
    fn without_fillers(depth: usize) -> Self {
        Self {
            fillers: false,
            ..Self::new(depth)
        }
    }

    /// The handle for [`DhWorkers::start`].
    pub(crate) fn top_up(&self) -> TopUp {
        self.top_up.clone()
    }

    /// Filler threads still running; they end once the pool is dropped.
    #[cfg(test)]
    fn fillers(&self) -> usize {
        Arc::strong_count(&self.running) - 1
    }

    fn start(&self, group: DhGroup) -> Option<Ready> {
        let (tx, rx) = sync_channel(self.depth);
        let ready = Arc::new(AtomicUsize::new(0));
        if let Ok(mut m) = self.top_up.0.lock() {
            let slot = Slot {
                tx: tx.clone(),
                ready: Arc::clone(&ready),
                depth: self.depth,
            };
            m.insert(group, slot);
        }
        if !self.fillers {
            return Some(Ready { rx, count: ready });
        }
        let running = Arc::clone(&self.running);
        let counter = Arc::clone(&ready);
        let spawned = std::thread::Builder::new()
            .name("node-dh".into())
            .spawn(move || fill(group, &tx, &counter, running));
        match spawned {
            Ok(_) => Some(Ready { rx, count: ready }),
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
            let ready = slot.as_ref()?;
            let key = ready.rx.try_recv().ok()?;
            // Saturating: a key counted after it was sent may be taken first.
            let _ = ready
                .count
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            return Some(key);
        }
        // The first key of a group starts its filler; this one the engine makes.
        let rx = self.start(group);
        self.groups.insert(group, rx);
        None
    }
}

/// Makes key pairs until the pool is gone: `send` blocks while `DEPTH` wait, and fails
/// once the receiver is dropped.
fn fill(group: DhGroup, tx: &SyncSender<DhPrivate>, ready: &AtomicUsize, _running: Arc<()>) {
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
        ready.fetch_add(1, Ordering::Relaxed);
    }
}

/// Most threads computing shared secrets: beyond the cores, more threads only queue.
const MAX_WORKERS: usize = 8;

/// The shared secrets ike's `DhOffload` hands out (IKE_SA_INIT, Main and Aggressive
/// Mode, Quick Mode PFS): a shared secret needs the
/// peer's public value, so unlike key pairs it cannot be made ahead; it is computed
/// here so the control thread goes on with other exchanges meanwhile. While many
/// tunnels come up, one thread per core runs them side by side.
pub(crate) struct DhWorkers {
    /// Unbounded: `submit` never blocks the control thread. One job per exchange in
    /// flight: the endpoint's pacing and half-open limits bound the initial exchanges;
    /// Quick Modes come only from peers that authenticated.
    jobs: Sender<Box<DhJob>>,
    /// Held by every worker thread while it runs (tests watch it).
    #[cfg_attr(not(test), allow(dead_code))]
    running: Arc<()>,
}

impl DhWorkers {
    /// Starts up to `threads` workers; each result goes to `deliver`, and a worker ends
    /// when `deliver` returns false or the `DhWorkers` is dropped. `None` if no thread
    /// could be started (the endpoint then computes in place).
    /// `top_up`: the key pool each job replaces a key pair of (see the module docs).
    pub(crate) fn start<F>(threads: usize, deliver: F, top_up: TopUp) -> Option<Self>
    where
        F: Fn(DhDone) -> bool + Clone + Send + 'static,
    {
        let (tx, rx) = channel::<Box<DhJob>>();
        let rx = Arc::new(Mutex::new(rx));
        let running = Arc::new(());
        let mut started = 0;
        for i in 0..threads.clamp(1, MAX_WORKERS) {
            let (rx, deliver, running) = (Arc::clone(&rx), deliver.clone(), Arc::clone(&running));
            let top_up = top_up.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("node-dh-{i}"))
                .spawn(move || work(&rx, &deliver, &top_up, running));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(error = %e, "DH worker thread not started"),
            }
        }
        (started > 0).then_some(Self { jobs: tx, running })
    }

    /// Worker threads still running.
    #[cfg(test)]
    fn workers(&self) -> usize {
        Arc::strong_count(&self.running) - 1
    }
}

impl ike::DhOffload for DhWorkers {
    fn submit(&mut self, job: Box<DhJob>) -> Result<(), Box<DhJob>> {
        self.jobs.send(job).map_err(|e| e.0)
    }
}

fn work(
    rx: &Mutex<Receiver<Box<DhJob>>>,
    deliver: &impl Fn(DhDone) -> bool,
    top_up: &TopUp,
    _running: Arc<()>,
) {
    loop {
        // The lock is held only while waiting for a job (one per tunnel setup), never
        // while computing, so the workers compute side by side.
        let job = {
            let Ok(rx) = rx.lock() else { return };
            match rx.recv() {
                Ok(job) => job,
                Err(_) => return, // the endpoint is gone
            }
        };
        let group = job.group();
        if !deliver(job.compute()) {
            return;
        }
        // After the result is on its way: the exchange goes on meanwhile.
        top_up.after_job(group);
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

    /// Two endpoints whose IKE_SA_INIT shared secrets are all computed by worker
    /// threads: datagrams and results interleave as the threads finish.
    #[test]
    fn workers_key_two_endpoints_back_to_back() {
        use std::net::{Ipv4Addr, SocketAddr};
        use std::sync::mpsc::RecvTimeoutError;
        use std::time::Duration;

        use ike::{Endpoint, EndpointConfig, EspProposal, Identity, IkeProposal, PeerConfig};

        let addr = |i: u8| SocketAddr::from((Ipv4Addr::new(192, 0, 2, i), 500));
        let config = |me: u8, them: u8| PeerConfig {
            version: ike::IkeVersion::V2,
            v1_mode: ike::V1Mode::Main,
            local: addr(me),
            remote: Some(addr(them)),
            local_id: Identity::Ipv4(Ipv4Addr::new(192, 0, 2, me)),
            remote_id: Identity::Ipv4(Ipv4Addr::new(192, 0, 2, them)),
            psk: ike::Psk::new("dh-workers-test"),
            ike: IkeProposal {
                encr: crypto::Encr::AesCbc128,
                integ: crypto::Integ::HmacSha1_96,
                dh: DhGroup::Modp1024,
            },
            esp: EspProposal {
                encr: crypto::Encr::AesCbc128,
                integ: crypto::Integ::HmacSha1_96,
                pfs: None,
            },
            ike_lifetime: Duration::ZERO,
            child_lifetime: Duration::ZERO,
            local_ts: vec![format!("10.{me}.0.0/16").parse().unwrap()],
            remote_ts: vec![format!("10.{them}.0.0/16").parse().unwrap()],
            dpd_interval: None,
            dpd_timeout: Duration::from_secs(30),
            nat_traversal: true,
        };
        let (tx, rx) = channel::<(usize, DhDone)>();
        let mut eps = Vec::new();
        for (i, (me, them)) in [(1, 2), (2, 1)].into_iter().enumerate() {
            let mut ep = Endpoint::new(EndpointConfig::default(), Box::new(OsRandom));
            ep.add_peer(ike::PeerId(1), config(me, them)).unwrap();
            let tx = tx.clone();
            let workers =
                DhWorkers::start(2, move |d| tx.send((i, d)).is_ok(), TopUp::default()).unwrap();
            assert_eq!(workers.workers(), 2);
            ep.set_dh_offload(Box::new(workers));
            eps.push(ep);
        }
        let now = Instant::now();
        eps[0].initiate(now, ike::PeerId(1)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while eps.iter().any(|e| e.child_sas(ike::PeerId(1)).is_empty()) {
            assert!(Instant::now() < deadline, "not keyed in time");
            for from in 0..2 {
                while let Some(t) = eps[from].poll_transmit() {
                    eps[1 - from].handle_datagram(now, t.remote, t.local, &t.payload);
                }
            }
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok((i, done)) => eps[i].handle_dh_done(now, done),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => panic!("workers gone"),
            }
        }
        let (a, b) = (
            &eps[0].child_sas(ike::PeerId(1))[0],
            &eps[1].child_sas(ike::PeerId(1))[0],
        );
        assert_eq!(a.encr_key_out, b.encr_key_in);
        assert_eq!(a.integ_key_in, b.integ_key_out);
        for e in &eps {
            assert_eq!(e.stats().dh_offloaded, 1);
        }
    }

    /// With no filler, only the workers fill the pool: a key pair per job while it is
    /// not full, and again once keys were taken (the channel's capacity bounds it).
    #[test]
    fn workers_replace_the_key_pairs_their_jobs_took() {
        use ike::DhOffload;

        let g = DhGroup::Modp1024;
        let mut pool = DhPool::without_fillers(4);
        // The first request opens the group's pool (and gets nothing).
        assert!(pool.take(g).is_none());
        assert_eq!(pool.fillers(), 0);
        let (tx, rx) = channel::<DhDone>();
        let mut workers = DhWorkers::start(2, move |d| tx.send(d).is_ok(), pool.top_up()).unwrap();
        let mut run_jobs = |n: usize| {
            for _ in 0..n {
                let key = DhPrivate::generate(g, &mut OsRandom).unwrap();
                let theirs = DhPrivate::generate(g, &mut OsRandom).unwrap();
                let job = DhJob::standalone(key, theirs.public_value().to_vec());
                assert!(workers.submit(job).is_ok());
            }
            for _ in 0..n {
                rx.recv_timeout(Duration::from_secs(20)).expect("a result");
            }
        };
        let mut seen = HashSet::new();
        let mut take = |pool: &mut DhPool, n: usize| {
            for _ in 0..n {
                let key = wait_for("a key from a worker", || pool.take(g));
                assert!(seen.insert(key.public_value().to_vec()), "key twice");
            }
        };
        run_jobs(6);
        take(&mut pool, 4);
        // Taking counts down, or the workers would believe the pool still full.
        run_jobs(4);
        take(&mut pool, 4);
    }

    #[test]
    fn workers_end_with_the_offload() {
        let (tx, _rx) = channel::<DhDone>();
        let workers = DhWorkers::start(3, move |d| tx.send(d).is_ok(), TopUp::default()).unwrap();
        assert_eq!(workers.workers(), 3);
        let running = Arc::clone(&workers.running);
        drop(workers);
        wait_for("the workers to end", || {
            (Arc::strong_count(&running) == 1).then_some(())
        });
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

//! Warm engine pools: per label set, idle engines kept ready ahead of demand.
//!
//! A label set is what an engine is reused by: the CORE labels of the ask
//! and the user files it names (the same key `try_reuse` matches). For each
//! set with pooling on (`manager.pool_enabled`, or `hangar.pool.max` >= 1 in
//! the ask's startup parameters, which the Entrance resolves from the
//! parameter configuration of the creator and engine type), the manager keeps
//! the last ask (user, labels, resolved startup parameters: what the next ask
//! would create) and its demand: asks in flight, the peak of concurrent
//! demand decaying with `manager.pool_half_life_ms`, and the recent burst's
//! peak. The keeper (one task, on the elected manager only) computes each
//! set's change with `pool_model::change` every `manager.pool_interval_ms`, when
//! woken by an ask, and at once when an ask finds no free engine (a miss: the
//! burst's peak is recalled, so the rest of the burst is created side by
//! side rather than one gated creation after another).
//!
//! A pooled engine is created by the normal path (`start_engine`: ECM
//! selection, the RM's reservation charged to its owner, engine key) with the
//! last ask's shape, except its idle time: at least `pool_memory_ms`, since
//! the pool gives its engines back itself. It stays Unlock, so `try_reuse`
//! finds it; an ask that finds none free but a
//! pooled one starting waits for it instead of creating its own. A creation
//! the RM or the ECMs refuse is not retried before a backoff (2 s doubling to
//! 60 s). Giving back takes the engine's lock first (an ask that got it first
//! keeps it), then ends it through `finish` (resources back once).
//!
//! After a long quiet time a set keeps `min_idle` engines (default 0) as long
//! as it is remembered: `manager.pool_memory_ms` after its last ask it is
//! forgotten and its engines given back, so nothing is created for a user
//! without recent demand.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hangar_protocol::label::{FIXED_ENGINE_CONN, REUSE_EXCLUSION};
use hangar_protocol::rpc::{EngineReply, EngineRequest, MaterialKind};
use hangar_protocol::{ErrorCode, LabelSet, NodeStatus};
use tokio::sync::Notify;

use crate::pool_model::{self, Supply, Want};
use crate::{AskRequest, EngineGrant, Manager, lock};

/// Startup parameter: most idle engines the pool holds for the set (0: none).
pub const POOL_MAX_KEY: &str = "hangar.pool.max";
/// Startup parameter: idle engines kept after demand dropped.
pub const POOL_MIN_IDLE_KEY: &str = "hangar.pool.min_idle";

/// What an engine reads as its idle time.
const ENGINE_MAX_FREE_TIME_MS: &str = "hangar.engineconn.max_free_time_ms";
const LOCK_CALL_TIMEOUT: Duration = Duration::from_secs(2);
const MIN_PASS_GAP: Duration = Duration::from_millis(50);

/// The pools' settings (`manager.pool_*`).
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Pool every label set (else only those configured with `hangar.pool.max`).
    pub enabled: bool,
    pub max_per_label_set: u32,
    /// Most idle or starting pooled engines in all (0: pools off).
    pub max_total: u32,
    pub min_idle: u32,
    pub half_life: Duration,
    /// A set without an ask this long is forgotten.
    pub memory: Duration,
    pub interval: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            max_per_label_set: 4,
            max_total: 16,
            min_idle: 0,
            half_life: Duration::from_secs(600),
            memory: Duration::from_secs(1800),
            interval: Duration::from_secs(1),
        }
    }
}

/// Counters and gauges of the pools (`/metrics`).
#[derive(Debug, Default, Clone, Copy)]
pub struct PoolSnapshot {
    /// Pooled engines free now, and their accounted memory and RSS.
    pub idle: u64,
    pub idle_memory: u64,
    pub idle_rss_kb: u64,
    /// Pooled creations under way.
    pub starting: u64,
    pub label_sets: u64,
    /// Asks served by a pooled engine on its first use (found free, or waited for).
    pub hits: u64,
    pub waits: u64,
    pub creations: u64,
    pub creation_failures: u64,
    pub releases: u64,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    waits: AtomicU64,
    creations: AtomicU64,
    creation_failures: AtomicU64,
    releases: AtomicU64,
}

struct Demand {
    shape: AskRequest,
    user_label: String,
    max: u32,
    min_idle: u32,
    peak: f64,
    peak_at: Instant,
    recall: u32,
    hot_until: Option<Instant>,
    last_ask: Instant,
    in_flight: u32,
    creating: u32,
    pending: u32,
    claims: u32,
    blocked_until: Option<Instant>,
    failures: u32,
    ready: Arc<Notify>,
}

pub(crate) struct Pools {
    cfg: PoolConfig,
    me: Weak<Manager>,
    sets: Mutex<HashMap<String, Demand>>,
    wake: Notify,
    active: AtomicBool,
    keeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
    counters: Counters,
}

impl Pools {
    pub(crate) fn new(cfg: PoolConfig, me: Weak<Manager>) -> Self {
        Self {
            cfg,
            me,
            sets: Mutex::default(),
            wake: Notify::new(),
            active: AtomicBool::new(false),
            keeper: Mutex::default(),
            tasks: Mutex::default(),
            counters: Counters::default(),
        }
    }
}

/// The reuse key of an ask or an engine.
pub(crate) fn key(labels: &LabelSet, files: &BTreeSet<String>) -> String {
    format!("{:?}|{files:?}", labels.core())
}

fn num(req: &AskRequest, k: &str) -> Option<u32> {
    req.properties.get(k).and_then(|v| v.trim().parse().ok())
}

/// An ask in flight for a pooled set: its demand ends when it is dropped.
pub(crate) struct InFlight<'a> {
    m: &'a Manager,
    key: String,
    creating: bool,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Some(d) = lock(&self.m.pool.sets).get_mut(&self.key) {
            d.in_flight = d.in_flight.saturating_sub(1);
            if self.creating {
                d.creating = d.creating.saturating_sub(1);
            }
        }
    }
}

impl Manager {
    /// Start the keeper (this instance is the active manager).
    pub fn start_pool_keeper(self: &Arc<Self>) {
        if self.pool.cfg.max_total == 0 {
            return;
        }
        let mut keeper = lock(&self.pool.keeper);
        if keeper.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        self.pool.active.store(true, Ordering::SeqCst);
        let m = self.clone();
        *keeper = Some(tokio::spawn(async move {
            loop {
                let woken = m.pool.wake.notified();
                tokio::select! {
                    _ = woken => tokio::time::sleep(MIN_PASS_GAP).await,
                    _ = tokio::time::sleep(m.pool.cfg.interval) => {}
                }
                m.pool_pass(None);
            }
        }));
        tracing::info!(max_total = self.pool.cfg.max_total, "warm pool keeper started");
    }

    /// Stop the keeper and its creations, and forget every set (stepping down, shutting down).
    pub(crate) fn stop_pool_keeper(&self) {
        self.pool.active.store(false, Ordering::SeqCst);
        if let Some(h) = lock(&self.pool.keeper).take() {
            h.abort();
        }
        lock(&self.pool.tasks).abort_all();
        lock(&self.pool.sets).clear();
    }

    /// Record an ask's demand; None when its set is not pooled.
    pub(crate) fn pool_note_ask(&self, req: &AskRequest, key: &str) -> Option<InFlight<'_>> {
        if !self.pool.active.load(Ordering::Relaxed)
            || req.labels.execute_once()
            || req.labels.contains(FIXED_ENGINE_CONN)
            || req.labels.contains(REUSE_EXCLUSION)
        {
            return None;
        }
        let cfg = &self.pool.cfg;
        let max = num(req, POOL_MAX_KEY).unwrap_or(if cfg.enabled { cfg.max_per_label_set } else { 0 });
        let min_idle = num(req, POOL_MIN_IDLE_KEY).unwrap_or(cfg.min_idle).min(max);
        if max == 0 && !lock(&self.pool.sets).contains_key(key) {
            return None;
        }
        let user_label = Self::user_label(&req.labels).ok()?;
        let in_use = self.in_use(key);
        let now = Instant::now();
        let mut sets = lock(&self.pool.sets);
        let d = sets.entry(key.to_string()).or_insert_with(|| Demand {
            shape: req.clone(),
            user_label: user_label.clone(),
            max,
            min_idle,
            peak: 0.0,
            peak_at: now,
            recall: 0,
            hot_until: None,
            last_ask: now,
            in_flight: 0,
            creating: 0,
            pending: 0,
            claims: 0,
            blocked_until: None,
            failures: 0,
            ready: Arc::new(Notify::new()),
        });
        if now.duration_since(d.last_ask) > cfg.memory {
            d.recall = 0;
        }
        (d.shape, d.user_label, d.max, d.min_idle, d.last_ask) = (req.clone(), user_label, max, min_idle, now);
        d.in_flight += 1;
        let sample = in_use + d.in_flight;
        d.peak = pool_model::decay(d.peak, now.duration_since(d.peak_at), cfg.half_life).max(f64::from(sample));
        d.peak_at = now;
        d.recall = d.recall.max(sample);
        drop(sets);
        self.pool.wake.notify_one();
        Some(InFlight { m: self, key: key.to_string(), creating: false })
    }

    /// Engines of the set held by jobs.
    fn in_use(&self, key_: &str) -> u32 {
        let engines = lock(&self.engines);
        let held = engines.values().filter(|n| n.status.is_locked() || n.status == NodeStatus::Running);
        held.filter(|n| key(&n.labels, &n.user_files) == key_).count() as u32
    }

    /// An ask found no free engine: the burst's peak is recalled and the
    /// pool's part of it started now; this ask creates its own engine.
    pub(crate) fn pool_miss(&self, flight: &mut InFlight<'_>) {
        if let Some(d) = lock(&self.pool.sets).get_mut(&flight.key) {
            d.hot_until = Some(Instant::now() + self.pool.cfg.interval * 2);
            d.creating += 1;
            flight.creating = true;
        }
        self.pool_pass(Some(&flight.key));
    }

    /// Wait for a pooled engine of the set that is being created and not
    /// promised to another ask; None when there is none (or it failed).
    pub(crate) async fn await_pooled(
        &self,
        key: &str,
        labels: &LabelSet,
        files: &BTreeSet<String>,
        deadline: Instant,
    ) -> Option<EngineGrant> {
        loop {
            let ready = lock(&self.pool.sets).get(key).map(|d| d.ready.clone())?;
            let notified = ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut sets = lock(&self.pool.sets);
                let d = sets.get_mut(key)?;
                if d.pending <= d.claims {
                    return None;
                }
                d.claims += 1;
            }
            let woke = tokio::time::timeout_at(deadline.into(), notified).await.is_ok();
            if let Some(d) = lock(&self.pool.sets).get_mut(key) {
                d.claims = d.claims.saturating_sub(1);
            }
            if !woke {
                return None;
            }
            if let Some(g) = self.try_reuse(labels, files).await {
                self.pool.counters.waits.fetch_add(1, Ordering::Relaxed);
                return Some(g);
            }
        }
    }

    /// An ask got engine `ticket`: true (a pool hit) when the pool made it
    /// and this is its first use.
    pub(crate) fn pool_first_use(&self, ticket: &str) -> bool {
        let hit = lock(&self.engines).get_mut(ticket).is_some_and(|n| {
            let first = n.pooled && !n.pool_served;
            n.pool_served = true;
            first
        });
        if hit {
            self.pool.counters.hits.fetch_add(1, Ordering::Relaxed);
        }
        hit
    }

    /// One pass of the keeper over every set (`only`: creations for that set alone).
    fn pool_pass(&self, only: Option<&str>) {
        if !self.pool.active.load(Ordering::SeqCst) {
            return;
        }
        let Some(me) = self.pool.me.upgrade() else { return };
        let cfg = &self.pool.cfg;
        let now = Instant::now();
        let mut sets = lock(&self.pool.sets);
        let mut tasks = lock(&self.pool.tasks);
        while tasks.try_join_next().is_some() {}
        // What each set has, and the pool's free engines (oldest first) it may give back.
        let mut supply: HashMap<String, Supply> = sets.keys().map(|k| (k.clone(), Supply::default())).collect();
        let mut free: HashMap<String, Vec<(i64, String)>> = HashMap::new();
        let mut held_total = 0u32;
        for n in lock(&self.engines).values() {
            let k = key(&n.labels, &n.user_files);
            let Some(s) = supply.get_mut(&k) else { continue };
            match n.status {
                NodeStatus::Unlock if !n.reserved && n.metrics.unhealthy.is_none() => {
                    s.idle += 1;
                    if n.pooled {
                        s.pooled_idle += 1;
                        held_total += 1;
                        free.entry(k).or_default().push((n.created_ms, n.ticket_id.clone()));
                    }
                }
                st if st.is_locked() || st == NodeStatus::Running => s.in_use += 1,
                _ => {}
            }
        }
        let mut plan: Vec<(String, i64, u32)> = Vec::new();
        for (k, d) in sets.iter_mut() {
            let Some(s) = supply.get_mut(k) else { continue };
            held_total += d.pending;
            let forgotten = now.duration_since(d.last_ask) > cfg.memory && d.in_flight == 0;
            (s.pending, s.in_flight, s.asks_creating) = (d.pending, d.in_flight, d.creating);
            s.user_room = self.rm.label(&d.user_label).map_or(self.cfg.user_max.instances, |l| l.left().instances);
            let sample = s.in_use + d.in_flight;
            d.peak = pool_model::decay(d.peak, now.duration_since(d.peak_at), cfg.half_life).max(f64::from(sample));
            d.peak_at = now;
            d.recall = d.recall.max(sample);
            let hot = d.hot_until.is_some_and(|t| t > now);
            let w = if forgotten {
                Want { peak: 0.0, recall: 0, min_idle: 0, max: 0 }
            } else {
                Want { peak: d.peak, recall: if hot { d.recall } else { 0 }, min_idle: d.min_idle, max: d.max }
            };
            let mut c = pool_model::change(&w, s);
            if c > 0 && (only.is_some_and(|o| o != k) || d.blocked_until.is_some_and(|t| t > now)) {
                c = 0;
            }
            plan.push((k.clone(), c, s.pooled_idle));
        }
        let asked: Vec<i64> = plan.iter().map(|p| p.1).collect();
        let pooled: Vec<u32> = plan.iter().map(|p| p.2).collect();
        let granted = pool_model::share(held_total, &asked, cfg.max_total);
        let trimmed = pool_model::trim(&pooled, held_total, cfg.max_total);
        let mut releases: Vec<String> = Vec::new();
        let mut creations: Vec<(String, AskRequest)> = Vec::new();
        for (i, (k, c, _)) in plan.iter().enumerate() {
            let back = (c.min(&0).unsigned_abs() as u32).max(trimmed[i]);
            if back > 0
                && let Some(list) = free.get_mut(k)
            {
                list.sort();
                releases.extend(list.iter().take(back as usize).map(|(_, t)| t.clone()));
            }
            if let Some(d) = sets.get_mut(k) {
                for _ in 0..granted[i] {
                    d.pending += 1;
                    creations.push((k.clone(), self.pooled_shape(&d.shape)));
                }
            }
        }
        // Sets forgotten with nothing of theirs left go.
        sets.retain(|k, d| {
            now.duration_since(d.last_ask) <= cfg.memory
                || d.in_flight > 0
                || d.pending > 0
                || supply.get(k).is_some_and(|s| s.pooled_idle > 0)
        });
        drop(sets);
        for ticket in releases {
            let free_now = lock(&self.engines).get_mut(&ticket).is_some_and(|n| {
                let ok = n.status == NodeStatus::Unlock && !n.reserved;
                n.reserved |= ok;
                ok
            });
            if free_now {
                tasks.spawn(me.clone().release_pooled(ticket));
            }
        }
        if !creations.is_empty() {
            tracing::info!(engines = creations.len(), "warm pool creating engines");
        }
        for (k, req) in creations {
            tasks.spawn(me.clone().create_pooled(k, req));
        }
    }

    /// The ask a pooled engine is created with: the set's last one, with
    /// an idle time of at least the pool's memory (the pool gives its engines
    /// back itself, when demand drops or the set is forgotten).
    fn pooled_shape(&self, last: &AskRequest) -> AskRequest {
        let mut req = AskRequest { timeout: self.cfg.engine_start_timeout, ..last.clone() };
        let floor = u64::try_from((self.pool.cfg.memory + self.pool.cfg.interval * 10).as_millis()).unwrap_or(u64::MAX);
        let asked = req.properties.get(ENGINE_MAX_FREE_TIME_MS).and_then(|v| v.trim().parse::<u64>().ok());
        if asked.is_none_or(|v| v < floor) {
            req.properties.insert(ENGINE_MAX_FREE_TIME_MS.into(), floor.to_string());
        }
        req
    }

    /// Create one pooled engine with the set's last ask.
    async fn create_pooled(self: Arc<Self>, key: String, req: AskRequest) {
        self.wait_for_rejoins().await;
        let deadline = Instant::now() + self.cfg.engine_start_timeout;
        self.stats.creations.fetch_add(1, Ordering::Relaxed);
        self.pool.counters.creations.fetch_add(1, Ordering::Relaxed);
        let result = match self.materials_for(&req).await {
            Ok(materials) => {
                let files = materials.iter().filter(|m| m.kind == MaterialKind::UserFile).map(|m| m.sha256.clone());
                let files = files.collect();
                self.start_engine(&req, materials, files, deadline, true).await.map(|_| ())
            }
            Err(e) => Err(e),
        };
        let mut sets = lock(&self.pool.sets);
        let Some(d) = sets.get_mut(&key) else { return };
        d.pending = d.pending.saturating_sub(1);
        match result {
            Ok(()) => {
                (d.failures, d.blocked_until) = (0, None);
                // One engine: one waiting ask (all of them would race for it).
                d.ready.notify_one();
                return;
            }
            Err(e) => {
                self.pool.counters.creation_failures.fetch_add(1, Ordering::Relaxed);
                d.failures += 1;
                let wait =
                    Duration::from_secs(2u64 << d.failures.min(5).saturating_sub(1)).min(Duration::from_secs(60));
                d.blocked_until = Some(Instant::now() + wait);
                let level_warn = !matches!(e.code, ErrorCode::NotEnoughResource | ErrorCode::NoEcm);
                if level_warn {
                    tracing::warn!(set = %key, error = %e, retry_in_ms = wait.as_millis() as u64, "pooled engine creation failed");
                } else {
                    tracing::info!(set = %key, error = %e, retry_in_ms = wait.as_millis() as u64, "pooled engine not created: no room");
                }
            }
        }
        d.ready.notify_waiters();
    }

    /// Give a pooled engine back: take its lock (an ask that has it keeps
    /// it), then end it the normal way.
    async fn release_pooled(self: Arc<Self>, ticket: String) {
        let target = lock(&self.engines).get(&ticket).and_then(|n| Some((n.instance.clone()?, n.key.clone())));
        let Some((instance, key)) = target else { return };
        let req = EngineRequest::Lock { timeout_ms: LOCK_CALL_TIMEOUT.as_millis() as u64 * 5 };
        match self.client.call_within(&instance, &key, &req, LOCK_CALL_TIMEOUT).await {
            Ok(EngineReply::Lock { lock: Some(_), .. }) => {
                self.pool.counters.releases.fetch_add(1, Ordering::Relaxed);
                let reason = "given back by the warm pool: demand for its label set dropped".to_string();
                self.finish(&ticket, NodeStatus::Success, reason, true);
            }
            other => {
                tracing::debug!(%ticket, ?other, "pooled engine kept: its lock was taken");
                if let Some(n) = lock(&self.engines).get_mut(&ticket) {
                    n.reserved = false;
                }
            }
        }
    }

    /// The pools' gauges and counters.
    pub fn pool_snapshot(&self) -> PoolSnapshot {
        let c = &self.pool.counters;
        let mut snap = PoolSnapshot {
            hits: c.hits.load(Ordering::Relaxed),
            waits: c.waits.load(Ordering::Relaxed),
            creations: c.creations.load(Ordering::Relaxed),
            creation_failures: c.creation_failures.load(Ordering::Relaxed),
            releases: c.releases.load(Ordering::Relaxed),
            ..Default::default()
        };
        {
            let sets = lock(&self.pool.sets);
            snap.label_sets = sets.len() as u64;
            snap.starting = sets.values().map(|d| u64::from(d.pending)).sum();
        }
        for n in lock(&self.engines).values().filter(|n| n.pooled && n.status == NodeStatus::Unlock && !n.reserved) {
            snap.idle += 1;
            snap.idle_memory += n.resource.memory;
            snap.idle_rss_kb += n.metrics.rss_kb;
        }
        snap
    }
}

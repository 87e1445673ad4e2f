//! The manager's settings (section `[manager]` of the server configuration).

use std::time::Duration;

use hangar_protocol::Resource;

#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Max resource per `userCreator,engineType` (Linkis: 20g, 10 cores, 10 engines).
    pub user_max: Resource,
    /// A Starting engine not ready by then is stopped and released.
    pub engine_start_timeout: Duration,
    /// Engines heartbeat this often; three missed mean lost.
    pub engine_heartbeat_interval: Duration,
    /// ECMs heartbeat this often; three missed mean the ECM is unreachable.
    pub ecm_heartbeat_interval: Duration,
    /// Reservations never confirmed are released after this.
    pub reservation_timeout: Duration,
    /// Timed lock the manager asks engines for.
    pub engine_lock_timeout: Duration,
    /// Concurrent creations allowed per CORE-label set.
    pub max_concurrent_creations: usize,
    /// Base URL of this manager, given to engines.
    pub manager_url: String,
    /// Options passed to every engine as `--conf`.
    pub engine_conf: Vec<(String, String)>,
    /// Users allowed to act for others.
    pub admins: Vec<String>,
    /// Warm engine pools (`manager.pool_*`).
    pub pool: crate::PoolConfig,
}

impl ManagerConfig {
    pub fn heartbeat_timeout(&self) -> Duration {
        self.engine_heartbeat_interval * 3
    }
}

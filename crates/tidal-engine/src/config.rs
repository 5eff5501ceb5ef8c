use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tidal_core::{Clock, SystemClock};

/// Take a checkpoint once the WAL has grown this much since the last one.
pub const CHECKPOINT_WAL_BYTES_MAX: u64 = 256 << 20;
/// Take a checkpoint at least this often while there are new writes.
pub const CHECKPOINT_INTERVAL_MS: u64 = 5 * 60 * 1_000;
/// Largest transaction the engine accepts, by approximate encoded size (the WAL's limit).
pub const TXN_BYTES_MAX: usize = tidal_wal::WAL_TXN_BYTES_MAX;

/// How to open an [`crate::Engine`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Data directory; created if missing. Holds `wal/`, `store/`, `checkpoints/`.
    pub dir: PathBuf,
    /// The source of "now": default timestamps, the future-skew check, WAL arrival times.
    pub clock: Arc<dyn Clock>,
    /// Background checkpoint triggers; `None` disables background checkpoints (they then
    /// happen only on [`crate::Engine::checkpoint`] and clean shutdown).
    pub checkpoint_wal_bytes: Option<u64>,
    pub checkpoint_interval: Duration,
    /// WAL segment size (tests use small segments to exercise rotation).
    pub wal_segment_bytes: u64,
    /// Extra derived state fed from the log after the built-in materializers (schema,
    /// entity store, signal ledger), checkpointed and restored with them. Names must be
    /// unique and must not be `schema` or `ledger`.
    pub materializers: Vec<Arc<dyn crate::Materializer>>,
}

impl EngineConfig {
    pub fn new(dir: impl Into<PathBuf>) -> EngineConfig {
        EngineConfig {
            dir: dir.into(),
            clock: Arc::new(SystemClock),
            checkpoint_wal_bytes: Some(CHECKPOINT_WAL_BYTES_MAX),
            checkpoint_interval: Duration::from_millis(CHECKPOINT_INTERVAL_MS),
            wal_segment_bytes: tidal_wal::WAL_SEGMENT_BYTES_MAX,
            materializers: Vec::new(),
        }
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> EngineConfig {
        self.clock = clock;
        self
    }

    /// Registers an extra materializer (see [`EngineConfig::materializers`]).
    pub fn with_materializer(mut self, m: Arc<dyn crate::Materializer>) -> EngineConfig {
        self.materializers.push(m);
        self
    }
}

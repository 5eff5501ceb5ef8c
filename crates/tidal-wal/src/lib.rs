//! tidalDB's write-ahead log — the source of truth from which all state is derived.
//!
//! CONTRACT (fixed by the engine; implementation lives in the private modules):
//!
//! * A *transaction* is one statement's list of [`Op`]s. [`Wal::commit`] submits it to a
//!   single writer thread that does group commit: it drains every request already queued
//!   (at most [`WAL_BATCH_RECORDS_MAX`] frames / [`WAL_BATCH_BYTES_MAX`] bytes per batch),
//!   and for each transaction in order:
//!     1. drops exact-duplicate signal events (same signal, entity, user, weight bits, ts)
//!        already accepted with an arrival time within [`DEDUP_WINDOW_MICROS`] — including
//!        duplicates inside the same transaction;
//!     2. calls [`Applier::prepare`] with the de-duplicated ops (a rejected transaction
//!        writes nothing and its submitter gets [`CommitError::Rejected`]);
//!     3. encodes it as one or more `Data` frames (each ≤ [`WAL_RECORD_BYTES_MAX`]) followed
//!        by a `Commit` frame carrying the arrival time.
//!
//!   then writes the whole batch at the log's end with one `write` and one `fdatasync`,
//!   then calls [`Applier::apply`] for each transaction in LSN order, then
//!   [`Applier::batch_done`], then acknowledges every submitter. A caller's `commit`
//!   returns only after its transaction is durable *and* applied, so it reads its own
//!   writes. [`Wal::commit_then`] is the same commit answered through a callback (run on
//!   the writer thread), for async callers that must not park a thread per commit.
//! * Zero-fill ahead: when a batch reaches the end of the active segment's file, the
//!   writer also writes zeros up to [`WAL_PREALLOC_BYTES`] further (within the segment
//!   size), so later batches overwrite blocks the file already has and their `fdatasync`
//!   need not persist a new file size. Rotation and close cut the zeros off (a sealed
//!   segment ends at its last transaction); after a crash, recovery reads zeros right
//!   after a whole transaction as the end of the log and cuts them quietly.
//! * Frames: `[len u32 LE][len ^ 0xFFFF_FFFF u32 LE][blake3(payload) 32 bytes][payload]`;
//!   payload = `[lsn u64][txn u64][kind u8][body]`. LSNs start at 1 and increase by one per
//!   frame; transaction ids start at 1 and increase by one per committed transaction. The
//!   inverted length copy makes a flipped length bit detectable, so it is never mistaken
//!   for a frame cut short by a crash.
//! * Bodies: a transaction's ops are encoded once as `[op count u32][op]*` (see
//!   [`Op::encode`]) and that byte stream is cut into the bodies of one or more `Data`
//!   frames (kind 1); a transaction without ops has no `Data` frame. It ends with a
//!   `Commit` frame (kind 2) whose body is `[arrival i64 LE]` (µs since the Unix epoch).
//!   All frames of a transaction share its id and lie in one batch, hence one segment.
//!   Format 2: the first frame of every write batch has the kind byte's high bit set.
//! * Segments: files `NNNNNNNNNNNNNNNNNNNN.wal` (first LSN, 20 digits) in the WAL directory,
//!   starting with a 44-byte header `b"TIDALWAL" [format version u32 = 2] [first lsn u64]
//!   [first txn u64] [previous arrival i64] [check u64]` (all little-endian; `check` is the
//!   first 8 bytes of BLAKE3 over the 36 bytes before it). `first txn` and `previous
//!   arrival` carry the counters across segments so they stay monotonic after old segments
//!   are retired. The writer rotates to a new segment between batches once a segment passes
//!   [`WalOptions::segment_bytes_max`] (default [`WAL_SEGMENT_BYTES_MAX`]), fsyncing the file
//!   and the directory after creating it. A `LOCK` file in the directory is held locked
//!   while a [`Wal`] is open.
//! * Recovery ([`Wal::open`]) reads every segment in order, verifying checksums and LSN
//!   continuity. A damaged frame in the last segment is a torn tail when it is followed
//!   only by zero bytes (or runs past the end), or when it looks torn (a sector of it
//!   reads as the zeros written ahead) and no frame after it starts a write batch (format
//!   2: only the last batch can be partly on disk, its pages in any order):
//!   the file is truncated back to the end of the last committed transaction (so an open
//!   transaction without its Commit frame is discarded) and fsynced. Damage anywhere else is
//!   [`WalError::Corrupt`] — recovery refuses to continue rather than skip data. (A
//!   damaged *last* frame followed by zeros is indistinguishable from a torn write, so the
//!   last transaction can be lost to a bit flip there; every other flipped bit is
//!   reported.) Format-1 segments are read with the zeros-only rule. The last segment is
//!   fsynced before recovery returns, so what was replayed from the page cache is durable. Each committed
//!   transaction is passed to [`Applier::apply`] in order (the applier skips what it already
//!   has), and the dedup set is rebuilt from recent arrivals, so dedup holds across restarts.
//!   (It is rebuilt as of `max(last arrival, clock.now())` at open, and no later batch
//!   arrives earlier than that, so events already out of the window cost nothing.)
//! * A failed write or fsync poisons the log: that batch's submitters and every later caller
//!   get [`WalError::Poisoned`] until the process restarts. The fsync is never retried. The
//!   outcome of the failed batch is unknown: after a restart it may or may not be in the
//!   log. An error from [`Applier::apply`] (or a panic on the writer thread) poisons too.
//! * [`Wal::retire_through`] deletes whole segments whose frames all have LSN ≤ the given
//!   checkpoint LSN and whose newest arrival is older than the dedup window; the active
//!   segment is never deleted.
//!
//! Limits: a transaction's encoded ops at most [`WAL_TXN_BYTES_MAX`] ([`WalError::TooLarge`]
//! otherwise); [`WAL_QUEUE_REQUESTS_MAX`] queued requests; the dedup set holds at most
//! [`DEDUP_ENTRIES_MAX`] events, each kept whole (so events are only ever merged when every
//! field is equal): a 48-byte ring entry plus two 8-byte index slots, about 67 bytes an
//! event at the default bound, ~270 MB when full. A large set is split into 16 shards by
//! hash, each bounded to a sixteenth, and under overload each shard forgets its oldest
//! events first. Recovery reads each segment whole into memory. Durability
//! assumes that `fdatasync` returning success means the data survives power loss and that a
//! crash can only damage the unsynced tail of the last segment.
//!
//! The committed fixtures `tests/fixtures/wal-v1/` and `wal-v2/` are logs written by
//! format versions 1 and 2; unit tests read them back, so a format change cannot go
//! unnoticed and old logs stay readable.
//!
//! ```
//! use std::sync::Arc;
//! use tidal_core::{EntityId, ManualClock, SignalEvent, SignalId, Timestamp};
//! use tidal_wal::{Applier, CommittedTxn, Op, Wal, WalOptions};
//!
//! /// Counts the signal events it is given.
//! #[derive(Debug, Default)]
//! struct Counter(usize);
//!
//! impl Applier for Counter {
//!     type Error = std::convert::Infallible;
//!     fn prepare(&mut self, _ops: &[Op]) -> Result<(), Self::Error> { Ok(()) }
//!     fn apply(&mut self, txn: &CommittedTxn) -> Result<(), Self::Error> {
//!         self.0 += txn.ops.iter().map(Op::event_count).sum::<usize>();
//!         Ok(())
//!     }
//!     fn batch_done(&mut self) {}
//! }
//!
//! let dir = tempfile::tempdir()?;
//! let clock = Arc::new(ManualClock::new(Timestamp(1_700_000_000_000_000)));
//! let wal = Wal::open(WalOptions::new(dir.path(), clock), Counter::default())?;
//! let like = SignalEvent {
//!     signal: SignalId(1),
//!     entity: EntityId(42),
//!     user: Some(EntityId(7)),
//!     weight: 1.0,
//!     ts: Timestamp(1_700_000_000_000_000),
//! };
//! let c = wal.commit(vec![Op::Signals(vec![like, like])])?;
//! assert_eq!((c.events_accepted, c.events_duplicate), (1, 1));
//! assert_eq!(wal.with_applier(|counter| counter.0)?, 1);
//! wal.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod dedup;
mod error;
mod frame;
mod op;
mod recovery;
mod segment;
#[cfg(test)]
mod testutil;
mod writer;

pub use error::{CommitError, WalError};
pub use op::{CommittedTxn, Op};
pub use recovery::RECOVERY_PROGRESS_BYTES_MIN;
pub use writer::{Committed, FaultFn, FaultPoint, Wal, WalOptions, WalStats};

/// Log sequence number of a frame (1-based, dense).
pub type Lsn = u64;

/// Most frames written by one group commit.
pub const WAL_BATCH_RECORDS_MAX: usize = 1_000;
/// Most bytes written by one group commit (a single transaction larger than this still
/// goes out, alone, in its own batch).
pub const WAL_BATCH_BYTES_MAX: usize = 16 << 20;
/// Largest payload of one frame; bigger transactions are split into several Data frames.
pub const WAL_RECORD_BYTES_MAX: usize = 4 << 20;
/// Largest encoded transaction (its ops stream); larger ones fail with
/// [`WalError::TooLarge`] and write nothing.
pub const WAL_TXN_BYTES_MAX: usize = 256 << 20;
/// A segment is closed at the first batch boundary past this size.
pub const WAL_SEGMENT_BYTES_MAX: u64 = 64 << 20;
/// Submissions queued for the writer before `commit` callers block (back-pressure).
pub const WAL_QUEUE_REQUESTS_MAX: usize = 4_096;
/// Zeros the writer keeps written ahead of the log's end in the active segment, so a
/// commit's `fdatasync` need not also make a new file size durable.
pub const WAL_PREALLOC_BYTES: u64 = 1 << 20;
/// Exact duplicate events arriving within this window are counted once.
pub const DEDUP_WINDOW_MICROS: i64 = 60_000_000;
/// Memory bound on the dedup set. Under heavier load than this many events per window the
/// oldest entries are forgotten early (the effective window shrinks); see docs.
pub const DEDUP_ENTRIES_MAX: usize = 4_000_000;

/// The engine's side of the log. Runs on the writer thread (and during recovery on the
/// caller of [`Wal::open`]); calls are strictly sequential and in LSN order.
pub trait Applier: Send + 'static {
    /// Why a transaction was rejected by `prepare` (for example a duplicate primary key).
    type Error: std::error::Error + Send + Sync + 'static;

    /// Checks a transaction against the current state *plus every transaction prepared
    /// since the last `batch_done`* (those are written but not yet applied). Returning an
    /// error rejects just this transaction; nothing of it is written.
    fn prepare(&mut self, ops: &[Op]) -> Result<(), Self::Error>;

    /// Applies a durable transaction. Called for new transactions after their batch is
    /// fsynced and, at open, for every committed transaction found in the log (the
    /// applier skips LSNs it already covers). An error here is fatal: the log is poisoned.
    fn apply(&mut self, txn: &CommittedTxn) -> Result<(), Self::Error>;

    /// The batch whose transactions were just applied is complete; clear any pending
    /// overlay kept for `prepare`.
    fn batch_done(&mut self);
}

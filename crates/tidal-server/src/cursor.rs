//! SQL cursors of one connection: `DECLARE name CURSOR FOR query`, then `FETCH n` /
//! `MOVE n` forward through its rows, `CLOSE`. What psycopg's named cursors, psql's
//! `FETCH_COUNT` and ORMs' streaming iterators use to read a large result in pieces.
//!
//! A cursor keeps the query's running DataFusion stream, so its rows are computed as
//! they are fetched and memory stays bounded by the batches in flight (and the
//! per-query memory pool, for sorts and aggregates). Cursors scan forward only.
//! Without `WITH HOLD` they close at the end of the transaction block, as in
//! PostgreSQL; `WITH HOLD` cursors live until `CLOSE` or the end of the session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use tidal::datafusion::arrow::array::RecordBatch;
use tidal::datafusion::arrow::datatypes::SchemaRef;
use tidal::datafusion::error::DataFusionError;
use tidal::datafusion::execution::SendableRecordBatchStream;
use tidal::datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

use crate::ServerError;

/// Open cursors per connection: each holds a running query.
pub const CURSORS_PER_CONNECTION_MAX: usize = 64;

struct Rows {
    stream: SendableRecordBatchStream,
    /// Rows of the last batch that the previous FETCH did not take.
    rest: Option<RecordBatch>,
}

struct Cursor {
    schema: SchemaRef,
    hold: bool,
    /// Declared inside the transaction block that is still open: it goes if the block
    /// rolls back, even `WITH HOLD` (PostgreSQL keeps a held cursor only when the
    /// transaction that created it commits).
    in_block: bool,
    /// Order of declaration, so `ROLLBACK TO SAVEPOINT` can close the later ones.
    seq: u64,
    rows: Arc<AsyncMutex<Rows>>,
}

#[derive(Default)]
struct Open {
    cursors: HashMap<String, Cursor>,
    /// Sequence number of the next declared cursor.
    next_seq: u64,
}

/// The cursors of one connection.
#[derive(Default)]
pub struct Cursors {
    open: Mutex<Open>,
}

impl std::fmt::Debug for Cursors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursors").finish_non_exhaustive()
    }
}

impl Cursors {
    fn lock(&self) -> std::sync::MutexGuard<'_, Open> {
        // Poisoned only by a panic elsewhere; the map itself is always consistent.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens `name` over a started query; `in_block` if a transaction block is open.
    pub fn declare(
        &self,
        name: String,
        hold: bool,
        in_block: bool,
        stream: SendableRecordBatchStream,
    ) -> Result<(), ServerError> {
        let mut open = self.lock();
        if open.cursors.contains_key(&name) {
            return Err(ServerError::DuplicateCursor(name));
        }
        if open.cursors.len() >= CURSORS_PER_CONNECTION_MAX {
            return Err(ServerError::TooManyCursors(CURSORS_PER_CONNECTION_MAX));
        }
        let schema = stream.schema();
        let rows = Arc::new(AsyncMutex::new(Rows { stream, rest: None }));
        let seq = open.next_seq;
        open.next_seq += 1;
        open.cursors.insert(
            name,
            Cursor {
                schema,
                hold,
                in_block,
                seq,
                rows,
            },
        );
        Ok(())
    }

    /// A point to close back to with [`Cursors::close_since`] (`SAVEPOINT`).
    pub fn position(&self) -> u64 {
        self.lock().next_seq
    }

    /// Closes the cursors declared since `position` (`ROLLBACK TO SAVEPOINT`).
    pub fn close_since(&self, position: u64) {
        self.lock().cursors.retain(|_, c| c.seq < position);
    }

    /// The columns a FETCH from `name` returns.
    pub fn schema(&self, name: &str) -> Result<SchemaRef, ServerError> {
        self.lock()
            .cursors
            .get(name)
            .map(|c| c.schema.clone())
            .ok_or_else(|| ServerError::UnknownCursor(name.to_string()))
    }

    /// The next `count` rows of `name` (all remaining rows for `None`), as a stream
    /// of batches that holds the cursor until it is dropped. A FETCH while another one
    /// is still being read (a portal suspended by Execute's row limit) is refused: on
    /// one connection, waiting for it would never end.
    pub fn fetch(
        &self,
        name: &str,
        count: Option<u64>,
    ) -> Result<SendableRecordBatchStream, ServerError> {
        let (schema, rows) = {
            let open = self.lock();
            let c = open
                .cursors
                .get(name)
                .ok_or_else(|| ServerError::UnknownCursor(name.to_string()))?;
            (c.schema.clone(), c.rows.clone())
        };
        let guard = rows
            .try_lock_owned()
            .map_err(|_| ServerError::CursorBusy(name.to_string()))?;
        let batches = take(guard, count.unwrap_or(u64::MAX));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }

    /// Closes `name` (every cursor for `None`).
    pub fn close(&self, name: Option<&str>) -> Result<(), ServerError> {
        let mut open = self.lock();
        match name {
            None => open.cursors.clear(),
            Some(n) => {
                open.cursors
                    .remove(n)
                    .ok_or_else(|| ServerError::UnknownCursor(n.to_string()))?;
            }
        }
        Ok(())
    }

    /// The transaction block ended: its cursors close. `WITH HOLD` cursors stay if it
    /// `committed` (those declared in it then outlive it); a rollback also closes the
    /// `WITH HOLD` cursors declared in it.
    pub fn end_of_block(&self, committed: bool) {
        self.lock().cursors.retain(|_, c| {
            let keep = c.hold && (committed || !c.in_block);
            c.in_block = false;
            keep
        });
    }
}

/// Up to `want` rows from the cursor, batch by batch; the rows of a batch beyond
/// `want` stay in the cursor for the next FETCH.
fn take(
    rows: OwnedMutexGuard<Rows>,
    want: u64,
) -> impl Stream<Item = Result<RecordBatch, DataFusionError>> + Send + 'static {
    futures::stream::unfold((rows, want), |(mut rows, want)| async move {
        if want == 0 {
            return None;
        }
        let batch = match rows.rest.take() {
            Some(b) => b,
            None => match rows.stream.next().await? {
                Ok(b) => b,
                Err(e) => return Some((Err(e), (rows, 0))),
            },
        };
        let n = batch.num_rows();
        let k = usize::try_from(want).unwrap_or(usize::MAX).min(n);
        if k < n {
            rows.rest = Some(batch.slice(k, n - k));
        }
        Some((Ok(batch.slice(0, k)), (rows, want - k as u64)))
    })
}

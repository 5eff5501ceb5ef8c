//! One connection: startup/auth, simple and extended query, cancel.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::{Sink, SinkExt, Stream, StreamExt};
use pgwire::api::PgWireConnectionState;
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::sasl::scram::ScramAuth;
use pgwire::api::auth::{
    AuthSource, DefaultServerParameterProvider, LoginInfo, Password, StartupHandler,
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
};
use pgwire::api::cancel::CancelHandler;
use pgwire::api::copy::CopyHandler;
use pgwire::api::copy::{send_copy_both_response, send_copy_in_response, send_copy_out_response};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::query::{send_execution_response, send_query_response, send_ready_for_query};
use pgwire::api::results::{CopyResponse, FieldFormat, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, DEFAULT_NAME, PgWireServerHandlers, PidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::data::{NoData, ParameterDescription, RowDescription};
use pgwire::messages::extendedquery::{
    Bind, BindComplete, Close, CloseComplete, Describe, Execute, Parse, ParseComplete,
    Sync as SyncMessage, TARGET_TYPE_BYTE_PORTAL, TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::response::{EmptyQueryResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::simplequery::Query;
use pgwire::messages::startup::SecretKey;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tidal::datafusion::arrow::array::{ArrayRef, RecordBatch, StringArray};
use tidal::datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use tidal::datafusion::execution::SendableRecordBatchStream;
use tidal_engine::{PendingTxn, TxnMark};
use tidal_sql::{SqlSession, TidalStatement};
use tokio::sync::{Notify, OwnedSemaphorePermit};

use crate::config::{QUERY_BYTES_MAX, ServerConfig};
use crate::copy::{self, CopyCommand, CopyIn};
use crate::cursor::Cursors;
use crate::fastpath::{AnnItem, Bound, Fast, FastAnn, FastInsert, FastSelect};
use crate::metrics::{METRICS, StatementTimer};
use crate::sqltext::{self, CursorCommand, SessionCommand};
use crate::{ServerError, encode};

/// The only role; with no password configured, only loopback clients may use it.
pub const USER: &str = "tidal";

/// State shared by every connection of one server.
pub(crate) struct Shared {
    pub session: SqlSession,
    pub config: ServerConfig,
    pub cancels: CancelRegistry,
    /// Statements executing right now (shutdown waits for them).
    pub running: AtomicUsize,
    pub running_done: Notify,
    pub shutting_down: AtomicBool,
    pub next_pid: AtomicI32,
    pub scram: Option<Arc<ScramSecret>>,
}

impl Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// The salted password for SCRAM-SHA-256, derived once at start.
#[derive(Debug)]
pub(crate) struct ScramSecret {
    pub salt: Vec<u8>,
    pub salted: Vec<u8>,
}

#[async_trait]
impl AuthSource for ScramSecret {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        if login.user() != Some(USER) {
            return Err(fatal("28P01", "password authentication failed"));
        }
        Ok(Password::new(Some(self.salt.clone()), self.salted.clone()))
    }
}

fn fatal(code: &'static str, message: impl Into<String>) -> PgWireError {
    METRICS.error(code);
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".into(),
        code.into(),
        message.into(),
    )))
}

/// Cancel targets by backend pid. Secrets are compared in constant time.
#[derive(Debug, Default)]
pub(crate) struct CancelRegistry {
    map: Mutex<HashMap<i32, (i32, Arc<CancelFlag>)>>,
}

impl CancelRegistry {
    fn register(&self, pid: i32, secret: i32, flag: Arc<CancelFlag>) {
        if let Ok(mut m) = self.map.lock() {
            m.insert(pid, (secret, flag));
        }
    }

    pub fn unregister(&self, pid: i32) {
        if let Ok(mut m) = self.map.lock() {
            m.remove(&pid);
        }
    }

    fn cancel(&self, pid: i32, secret: &SecretKey) {
        let given: [u8; 4] = match secret {
            SecretKey::I32(v) => v.to_be_bytes(),
            SecretKey::Bytes(b) if b.len() == 4 => [b[0], b[1], b[2], b[3]],
            SecretKey::Bytes(_) => return,
        };
        let target = self.map.lock().ok().and_then(|m| m.get(&pid).cloned());
        if let Some((secret, flag)) = target {
            let diff = secret
                .to_be_bytes()
                .iter()
                .zip(given.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                flag.cancel();
            }
        }
    }
}

/// Cancels the statement running on one connection.
#[derive(Debug, Default)]
pub(crate) struct CancelFlag {
    generation: AtomicU64,
    notify: Notify,
}

impl CancelFlag {
    fn cancel(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    fn current(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Resolves once a cancel arrives after generation `since`.
    async fn cancelled(&self, since: u64) {
        loop {
            let notified = self.notify.notified();
            if self.current() != since {
                return;
            }
            notified.await;
        }
    }
}

/// Per-connection session settings.
#[derive(Debug)]
struct ConnState {
    settings: BTreeMap<String, String>,
    statement_timeout: Option<Duration>,
    txn: Txn,
    /// The block's savepoints, oldest first (a name may repeat; the newest wins).
    savepoints: Vec<Savepoint>,
    /// Warnings for the client, sent as NoticeResponses after the statement.
    notices: Vec<ErrorInfo>,
}

fn warning(code: &str, message: &str) -> ErrorInfo {
    ErrorInfo::new("WARNING".into(), code.into(), message.into())
}

/// PostgreSQL's NOTICE when `IF [NOT] EXISTS` makes a statement skip its object.
fn skipping_notice(stmt: &TidalStatement, schema: &tidal_core::Schema) -> Option<ErrorInfo> {
    let notice =
        |code: &str, message: String| ErrorInfo::new("NOTICE".into(), code.into(), message);
    match stmt {
        TidalStatement::CreateTable {
            def,
            if_not_exists: true,
        } if schema.table(def.kind).is_ok() => Some(notice(
            "42P07",
            format!(
                "relation \"{}\" already exists, skipping",
                def.kind.table_name()
            ),
        )),
        TidalStatement::CreateSignal {
            def,
            if_not_exists: true,
        } if schema.signal(&def.name).is_ok() => Some(notice(
            "42710",
            format!("signal \"{}\" already exists, skipping", def.name),
        )),
        TidalStatement::DropTable {
            kind,
            if_exists: true,
        } if schema.table(*kind).is_err() => Some(notice(
            "00000",
            format!("table \"{}\" does not exist, skipping", kind.table_name()),
        )),
        TidalStatement::DropSignal {
            name,
            if_exists: true,
        } if schema.signal(name).is_err() => Some(notice(
            "00000",
            format!("signal \"{name}\" does not exist, skipping"),
        )),
        TidalStatement::DropProfile {
            name,
            if_exists: true,
        } if schema.profile(name).is_err() => Some(notice(
            "00000",
            format!("profile \"{name}\" does not exist, skipping"),
        )),
        TidalStatement::CreateIndex {
            def,
            if_not_exists: true,
            generated_name: false,
        } if schema.index(&def.name).is_ok() => Some(notice(
            "42P07",
            format!("relation \"{}\" already exists, skipping", def.name),
        )),
        TidalStatement::DropIndex {
            name,
            if_exists: true,
        } if schema.index(name).is_err() => Some(notice(
            "00000",
            format!("index \"{name}\" does not exist, skipping"),
        )),
        TidalStatement::CreateRelationship {
            def,
            if_not_exists: true,
        } if schema.relationship(&def.name).is_ok() => Some(notice(
            "42710",
            format!("relationship \"{}\" already exists, skipping", def.name),
        )),
        TidalStatement::DropRelationship {
            name,
            if_exists: true,
        } if schema.relationship(name).is_err() => Some(notice(
            "00000",
            format!("relationship \"{name}\" does not exist, skipping"),
        )),
        _ => None,
    }
}

/// `SAVEPOINT name`: where the block's writes and cursors stood.
#[derive(Debug)]
struct Savepoint {
    name: String,
    mark: TxnMark,
    /// `Cursors::position` then: ROLLBACK TO closes the cursors declared since.
    cursors: u64,
}

/// The client's transaction block.
#[derive(Debug, Default)]
enum Txn {
    #[default]
    None,
    /// Inside BEGIN: writes accumulate here (taken out while a statement runs).
    Open(Option<PendingTxn>),
    /// A statement failed inside the block: everything until ROLLBACK/COMMIT (or
    /// ROLLBACK TO SAVEPOINT) is refused. Holds the block's writes as they were before
    /// the failed statement (`None` if they were lost), for ROLLBACK TO SAVEPOINT.
    Failed(Option<PendingTxn>),
}

/// One client connection.
pub(crate) struct Conn {
    shared: Arc<Shared>,
    state: Mutex<ConnState>,
    cancel: Arc<CancelFlag>,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
    pid: AtomicI32,
    parser: Arc<Parser>,
    /// `DECLARE`d cursors (shared with the parser, which describes FETCH).
    cursors: Arc<Cursors>,
    /// Names of the named prepared statements, for `DEALLOCATE ALL` (the portal
    /// store cannot list them).
    statement_names: Mutex<BTreeSet<String>>,
    sasl: Option<SASLAuthStartupHandler<DefaultServerParameterProvider>>,
    /// A `COPY ... FROM STDIN` receiving data.
    copy: Mutex<Option<CopyIn>>,
    /// Set when a result stream fails after its statement returned (the error reaches
    /// the client while rows are sent); the next statement marks the block failed.
    stream_failed: Arc<AtomicBool>,
}

impl Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.permit.lock().is_ok_and(|p| p.is_some()) {
            METRICS.active(-1);
        }
        self.shared
            .cancels
            .unregister(self.pid.load(Ordering::SeqCst));
    }
}

fn server_parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = format!("15.0 (tidalDB {})", env!("CARGO_PKG_VERSION"));
    p.time_zone = "UTC".into();
    p
}

/// Issues pids and secrets and records them for cancel requests.
struct PidGen(Arc<Conn>);

impl PidSecretKeyGenerator for PidGen {
    fn generate(&self, _client: &dyn ClientInfo) -> (i32, SecretKey) {
        self.0.register_pid()
    }
}

impl Conn {
    pub fn new(shared: Arc<Shared>, permit: Option<OwnedSemaphorePermit>) -> Arc<Conn> {
        let timeout = shared.config.statement_timeout;
        if permit.is_some() {
            METRICS.active(1);
        }
        Arc::new_cyclic(|weak: &std::sync::Weak<Conn>| {
            let sasl = shared.scram.as_ref().map(|secret| {
                let mut scram = ScramAuth::new(secret.clone());
                scram.set_iterations(crate::config::SCRAM_ITERATIONS);
                SASLAuthStartupHandler::new(Arc::new(server_parameters()))
                    .with_scram(scram)
                    .with_pid_secret_key_generator(Arc::new(WeakPidGen(weak.clone())))
            });
            let cursors = Arc::new(Cursors::default());
            Conn {
                parser: Arc::new(Parser {
                    shared: shared.clone(),
                    cursors: cursors.clone(),
                }),
                cursors,
                statement_names: Mutex::new(BTreeSet::new()),
                shared,
                state: Mutex::new(ConnState {
                    settings: BTreeMap::new(),
                    statement_timeout: timeout,
                    txn: Txn::None,
                    savepoints: Vec::new(),
                    notices: Vec::new(),
                }),
                cancel: Arc::new(CancelFlag::default()),
                permit: Mutex::new(permit),
                pid: AtomicI32::new(0),
                sasl,
                copy: Mutex::new(None),
                stream_failed: Arc::new(AtomicBool::new(false)),
            }
        })
    }

    fn register_pid(&self) -> (i32, SecretKey) {
        let pid = self.shared.next_pid.fetch_add(1, Ordering::SeqCst);
        let secret: i32 = rand::random();
        self.pid.store(pid, Ordering::SeqCst);
        self.shared
            .cancels
            .register(pid, secret, self.cancel.clone());
        (pid, SecretKey::I32(secret))
    }

    /// The named prepared statements (see `statement_names`).
    fn prepared_names(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // A poisoned lock only means a panic elsewhere mid-insert of a name.
        self.statement_names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        // A poisoned lock only means a panic elsewhere mid-update of plain settings.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// This connection's `SET hnsw.ef_search` (validated when set).
    fn ef_search(&self) -> Option<usize> {
        self.lock()
            .settings
            .get("hnsw.ef_search")
            .and_then(|v| tidal_sql::parse_ef_search(v).ok())
    }

    /// Runs one statement (parameters already bound), with transaction-block rules: a
    /// failed statement inside BEGIN aborts the block.
    async fn execute(
        &self,
        sql: &str,
        formats: &Format,
        described: Option<&SchemaRef>,
    ) -> Result<Response, ServerError> {
        let in_block = {
            let mut st = self.lock();
            if self.stream_failed.swap(false, Ordering::SeqCst) {
                st.txn.fail();
            }
            !matches!(st.txn, Txn::None)
        };
        // Recorded when the statement ends: here, or after the last row of a query
        // (the timer then travels with the result stream).
        let mut timer = Some(StatementTimer::start(sql));
        let r = self
            .execute_inner(sql, formats, described, &mut timer)
            .await;
        if r.is_err() && in_block {
            self.lock().txn.fail();
        }
        r
    }

    async fn execute_inner(
        &self,
        sql: &str,
        formats: &Format,
        described: Option<&SchemaRef>,
        timer: &mut Option<StatementTimer>,
    ) -> Result<Response, ServerError> {
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            return Err(ServerError::ShuttingDown);
        }
        if sql.len() > QUERY_BYTES_MAX {
            return Err(ServerError::Unsupported(format!(
                "statement of {} bytes exceeds the {QUERY_BYTES_MAX}-byte limit",
                sql.len()
            )));
        }
        let sql = &*crate::catalog::rewrite(sql);
        sqltext::refuse_sql_prepare(sql)?;
        if let Some(cmd) = sqltext::session_command(sql)? {
            if cmd == SessionCommand::Commit {
                return self.commit().await;
            }
            // An aborted block accepts only its end (as PostgreSQL): then every
            // statement that succeeds leaves the block open or ended, which is what the
            // ReadyForQuery status is derived from (see `wire_status`).
            if matches!(self.lock().txn, Txn::Failed(_))
                && !matches!(
                    cmd,
                    SessionCommand::Rollback | SessionCommand::RollbackTo(_)
                )
            {
                return Err(ServerError::TransactionAborted);
            }
            return self.session_command(cmd, formats);
        }
        if matches!(self.lock().txn, Txn::Failed(_)) {
            return Err(ServerError::TransactionAborted);
        }
        if let Some(cmd) = sqltext::cursor_command(sql)? {
            return self.cursor_command(cmd, formats, described).await;
        }
        if let Some(cmd) = copy::parse(sql)? {
            return self.start_copy(cmd, timer).await;
        }
        let guard = Running::new(self.shared.clone());
        let stmt = tidal_sql::parse_tidal_statement(sql)?;
        let tag = match &stmt {
            Some(
                TidalStatement::InsertSignals { .. }
                | TidalStatement::InsertRows { .. }
                | TidalStatement::InsertEdges { .. },
            ) => Some(Tag::new("INSERT").with_oid(0)),
            Some(TidalStatement::DeleteEdges { .. }) => Some(Tag::new("DELETE")),
            Some(TidalStatement::CreateRelationship { .. }) => {
                Some(Tag::new("CREATE RELATIONSHIP"))
            }
            Some(TidalStatement::DropRelationship { .. }) => Some(Tag::new("DROP RELATIONSHIP")),
            Some(TidalStatement::ChangeRows(c)) => {
                Some(Tag::new(if c.delete { "DELETE" } else { "UPDATE" }))
            }
            Some(TidalStatement::CreateSignal { .. }) => Some(Tag::new("CREATE SIGNAL")),
            Some(TidalStatement::DropSignal { .. }) => Some(Tag::new("DROP SIGNAL")),
            Some(TidalStatement::AlterSignalCohorts { .. }) => Some(Tag::new("ALTER SIGNAL")),
            Some(TidalStatement::CreateTable { .. }) => Some(Tag::new("CREATE TABLE")),
            Some(TidalStatement::DropTable { .. }) => Some(Tag::new("DROP TABLE")),
            Some(TidalStatement::CreateProfile { .. }) => Some(Tag::new("CREATE PROFILE")),
            Some(TidalStatement::DropProfile { .. }) => Some(Tag::new("DROP PROFILE")),
            Some(TidalStatement::CreateIndex { .. }) => Some(Tag::new("CREATE INDEX")),
            Some(TidalStatement::DropIndex { .. }) => Some(Tag::new("DROP INDEX")),
            Some(
                TidalStatement::ShowSignals
                | TidalStatement::ShowProfiles
                | TidalStatement::ShowRelationships
                | TidalStatement::Retrieve(_)
                | TidalStatement::Search(_)
                | TidalStatement::Suggest(_),
            )
            | None => None,
        };
        if let Some(tag) = tag {
            if let Some(stmt) = &stmt
                && let Some(n) = skipping_notice(stmt, &self.shared.session.engine().schema())
            {
                self.lock().notices.push(n);
            }
            let pending = match &mut self.lock().txn {
                Txn::Open(p) => Some(p.take()),
                _ => None,
            };
            if let Some(pending) = pending {
                let pending = pending
                    .ok_or_else(|| ServerError::Internal("transaction already in use".into()))?;
                // Validated and added to the block's transaction; applied at COMMIT. A
                // failed statement gives the block back as it was before it.
                let (pending, result) =
                    match self.shared.session.sql_in_transaction(sql, pending).await {
                        Ok((pending, batches)) => (Some(pending), Ok(batches)),
                        Err(failed) => (failed.pending, Err(failed.error)),
                    };
                if let Txn::Open(slot) = &mut self.lock().txn {
                    *slot = pending;
                }
                let batches = result?;
                return Ok(Response::Execution(counted(tag, stmt.as_ref(), &batches)));
            }
            let batches = match stmt.clone() {
                // Event writes wait for the WAL's group commit without holding a
                // thread, so many clients' commits share one fsync. Once submitted, a
                // write commits even if this future is dropped (client gone): neither
                // timeout nor cancel can leave it half-applied.
                Some(insert @ TidalStatement::InsertSignals { .. }) => {
                    self.shared.session.sql_tidal(insert).await?
                }
                // Row writes read the store row by row (UPDATE, ON CONFLICT) and schema
                // changes commit under the engine's DDL lock: on the blocking pool, so a
                // big statement or an fsync never holds a runtime worker.
                Some(ddl) => {
                    let session = self.shared.session.clone();
                    let handle = tokio::runtime::Handle::current();
                    tokio::task::spawn_blocking(move || handle.block_on(session.sql_tidal(ddl)))
                        .await
                        .map_err(|e| ServerError::Internal(format!("write task failed: {e}")))??
                }
                None => Vec::new(),
            };
            drop(guard);
            return Ok(Response::Execution(counted(tag, stmt.as_ref(), &batches)));
        }
        let timeout = self.lock().statement_timeout;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let since = self.cancel.current();
        let plan = async {
            let stream =
                tidal_sql::with_ef_search(self.ef_search(), self.shared.session.sql_stream(sql))
                    .await?;
            Ok::<_, ServerError>(stream)
        };
        let stream = tokio::select! {
            r = plan => r?,
            _ = self.cancel.cancelled(since) => return Err(ServerError::Cancelled),
            _ = sleep_until(deadline) => return Err(ServerError::Timeout),
        };
        let target = described.cloned().unwrap_or_else(|| stream.schema());
        let fields = Arc::new(encode::fields(
            &target,
            &formats_of(formats, target.fields().len()),
        )?);
        let ctl = StreamCtl {
            cancel: self.cancel.clone(),
            since,
            deadline,
            failed: self.stream_failed.clone(),
        };
        let mut guard = guard;
        guard.timer = timer.take();
        let rows = row_stream(stream, target, fields.clone(), ctl, guard);
        Ok(Response::Query(QueryResponse::new(fields, rows)))
    }

    /// The status ReadyForQuery reports: the block's own state. (pgwire derives one from
    /// the responses it sends, which cannot leave "failed" except to idle: it would
    /// report a block re-opened by ROLLBACK TO SAVEPOINT as failed, and a COMMIT that
    /// failed, which ends the block, as failed too.)
    fn wire_status(&self) -> TransactionStatus {
        match self.lock().txn {
            Txn::None => TransactionStatus::Idle,
            Txn::Open(_) => TransactionStatus::Transaction,
            Txn::Failed(_) => TransactionStatus::Error,
        }
    }

    /// A protocol step failed outside `execute` (Parse, Bind, Describe, an unknown
    /// portal…): as for a failed statement, an open block is aborted.
    fn failing<T>(&self, r: PgWireResult<T>) -> PgWireResult<T> {
        if r.is_err() {
            self.lock().txn.fail();
        }
        r
    }

    /// DECLARE / FETCH / MOVE / CLOSE (see `cursor`).
    async fn cursor_command(
        &self,
        cmd: CursorCommand,
        formats: &Format,
        described: Option<&SchemaRef>,
    ) -> Result<Response, ServerError> {
        let timeout = self.lock().statement_timeout;
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let since = self.cancel.current();
        match cmd {
            CursorCommand::Declare { name, hold, query } => {
                if !hold && matches!(self.lock().txn, Txn::None) {
                    return Err(ServerError::CursorOutsideBlock);
                }
                cursor_query(&query)?;
                let _running = Running::new(self.shared.clone());
                let stream = tokio::select! {
                    r = tidal_sql::with_ef_search(self.ef_search(), self.shared.session.sql_stream(&query)) => r?,
                    _ = self.cancel.cancelled(since) => return Err(ServerError::Cancelled),
                    _ = sleep_until(deadline) => return Err(ServerError::Timeout),
                };
                let in_block = !matches!(self.lock().txn, Txn::None);
                self.cursors.declare(name, hold, in_block, stream)?;
                Ok(Response::Execution(Tag::new("DECLARE CURSOR")))
            }
            CursorCommand::Fetch { name, count, skip } => {
                let guard = Running::new(self.shared.clone());
                let mut stream = self.cursors.fetch(&name, count)?;
                if skip {
                    let mut n = 0;
                    loop {
                        let next = tokio::select! {
                            b = stream.next() => b,
                            _ = self.cancel.cancelled(since) => return Err(ServerError::Cancelled),
                            _ = sleep_until(deadline) => return Err(ServerError::Timeout),
                        };
                        match next {
                            Some(batch) => n += batch.map_err(ServerError::from_df)?.num_rows(),
                            None => break,
                        }
                    }
                    return Ok(Response::Execution(Tag::new("MOVE").with_rows(n)));
                }
                let target = described.cloned().unwrap_or_else(|| stream.schema());
                let fields = Arc::new(encode::fields(
                    &target,
                    &formats_of(formats, target.fields().len()),
                )?);
                let ctl = StreamCtl {
                    cancel: self.cancel.clone(),
                    since,
                    deadline,
                    failed: self.stream_failed.clone(),
                };
                let rows = row_stream(stream, target, fields.clone(), ctl, guard);
                let mut response = QueryResponse::new(fields, rows);
                response.set_command_tag("FETCH");
                Ok(Response::Query(response))
            }
            CursorCommand::Close { name } => {
                self.cursors.close(name.as_deref())?;
                Ok(Response::Execution(Tag::new("CLOSE CURSOR")))
            }
        }
    }

    /// After a successful `DISCARD ALL`, its prepared statements go too.
    fn discard_statements<S: PortalStore>(
        &self,
        sql: &str,
        result: &Result<Response, ServerError>,
        store: &S,
    ) {
        if result.is_ok() && sqltext::first_word(sql) == "discard" {
            let names = std::mem::take(&mut *self.prepared_names());
            for n in names {
                store.rm_statement(&n);
            }
        }
    }

    /// `DEALLOCATE name | ALL`: forgets named prepared statements (PostgreSQL's SQL and
    /// protocol prepared statements are one namespace; psycopg deallocates the ones it
    /// prepared this way).
    fn deallocate<S: PortalStore>(
        &self,
        store: &S,
        name: Option<String>,
    ) -> Result<Response, ServerError> {
        if matches!(self.lock().txn, Txn::Failed(_)) {
            return Err(ServerError::TransactionAborted);
        }
        let mut names = self.prepared_names();
        match name {
            None => {
                for n in std::mem::take(&mut *names) {
                    store.rm_statement(&n);
                }
                Ok(Response::Execution(Tag::new("DEALLOCATE ALL")))
            }
            Some(n) => {
                if !names.remove(&n) {
                    return Err(ServerError::UnknownStatement(n));
                }
                store.rm_statement(&n);
                Ok(Response::Execution(Tag::new("DEALLOCATE")))
            }
        }
    }

    /// Whether a fast path (see `fastpath`) may run a statement now: `None` inside a
    /// transaction block (the generic path adds to, or refuses in, the block), an error
    /// while shutting down.
    fn fast_path_gate(&self) -> Option<Result<(), ServerError>> {
        {
            let st = self.lock();
            if !matches!(st.txn, Txn::None) {
                return None;
            }
            // As in `execute`: outside a block a failed stream leaves nothing to abort.
            self.stream_failed.store(false, Ordering::SeqCst);
        }
        if self.shared.shutting_down.load(Ordering::SeqCst) {
            return Some(Err(ServerError::ShuttingDown));
        }
        Some(Ok(()))
    }

    /// Commits the events decoded by the prepared-INSERT fast path (see `fastpath`) as
    /// one transaction. `None` inside a transaction block: the generic path adds them
    /// to the block.
    async fn insert_fast(&self, events: Vec<Bound<'_>>) -> Option<Result<Response, ServerError>> {
        if let Err(e) = self.fast_path_gate()? {
            return Some(Err(e));
        }
        let _running = Running::new(self.shared.clone());
        let commit = {
            let mut txn = self.shared.session.engine().begin();
            for e in events {
                if let Err(e) = txn.signal(e.signal, e.entity, e.user, e.weight, e.ts) {
                    return Some(Err(ServerError::Sql(e.into())));
                }
            }
            txn.commit_async()
        };
        Some(match commit.await {
            Ok(out) => Ok(Response::Execution(
                Tag::new("INSERT")
                    .with_oid(0)
                    .with_rows(out.events_accepted),
            )),
            Err(e) => Err(ServerError::Sql(e.into())),
        })
    }

    /// Answers a point or range read planned by the fast path (see `fastpath`): the rows
    /// from a snapshot, encoded exactly as the planned query's result would be. `None`
    /// inside a transaction block or after a schema change: the generic path runs it.
    fn select_fast(
        &self,
        plan: &FastSelect,
        ids: Option<(i64, i64)>,
        stmt: &Prepared,
        formats: &Format,
    ) -> Option<Result<Response, ServerError>> {
        let target = stmt.schema.as_ref()?;
        if let Err(e) = self.fast_path_gate()? {
            return Some(Err(e));
        }
        let session = &self.shared.session;
        let rows = match ids {
            // The table is checked in the same snapshot the row is read from.
            Some(ids) => match session.read_rows(plan.kind, ids, &plan.projection, &plan.table) {
                Ok(Some(batch)) => Some(batch),
                Ok(None) => return None,
                Err(e) => return Some(Err(e.into())),
            },
            None if session.engine().schema().table(plan.kind).ok() != Some(&plan.table) => {
                return None;
            }
            None => None,
        };
        Some(fast_response(target, formats, rows.as_ref()))
    }

    /// Answers a nearest-neighbour query planned by the fast path (see `fastpath`) from
    /// the HNSW index, encoded exactly as the planned query's result would be. `None`
    /// inside a transaction block, after a schema change, or without a matching index:
    /// the generic path runs it.
    fn ann_fast(
        &self,
        plan: &FastAnn,
        query: &[f32],
        stmt: &Prepared,
        formats: &Format,
    ) -> Option<Result<Response, ServerError>> {
        use tidal::datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch};
        let target = stmt.schema.as_ref()?;
        if let Err(e) = self.fast_path_gate()? {
            return Some(Err(e));
        }
        let ef = self
            .ef_search()
            .unwrap_or(tidal_sql::HNSW_EF_SEARCH_DEFAULT);
        let (rows, distances) = match self.shared.session.nearest_rows(
            &plan.table,
            &plan.column,
            plan.metric,
            query,
            plan.k,
            ef,
            &plan.projection,
        ) {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(e) => return Some(Err(e.into())),
        };
        let respond = || {
            let distance: ArrayRef = Arc::new(Float64Array::from(distances));
            let columns: Vec<ArrayRef> = plan
                .items
                .iter()
                .map(|item| match item {
                    AnnItem::Column(i) => rows.column(*i).clone(),
                    AnnItem::Distance => distance.clone(),
                })
                .collect();
            // Nullable, so a described NOT NULL column cannot fail the batch; the encoder
            // takes the described fields.
            let loose = tidal::datafusion::arrow::datatypes::Schema::new(
                target
                    .fields()
                    .iter()
                    .map(|f| f.as_ref().clone().with_nullable(true))
                    .collect::<Vec<_>>(),
            );
            let batch = RecordBatch::try_new(Arc::new(loose), columns)
                .map_err(tidal::datafusion::error::DataFusionError::from)
                .map_err(tidal_sql::SqlError::from)?;
            fast_response(target, formats, Some(&batch))
        };
        Some(respond())
    }

    async fn send_notices<C>(&self, client: &mut C) -> PgWireResult<()>
    where
        C: Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let notices = std::mem::take(&mut self.lock().notices);
        for n in notices {
            client
                .send(PgWireBackendMessage::NoticeResponse(n.into()))
                .await?;
        }
        Ok(())
    }

    /// COMMIT: applies the block's writes as one durable transaction. COMMIT of a
    /// failed block rolls it back, as in PostgreSQL.
    async fn commit(&self) -> Result<Response, ServerError> {
        let txn = {
            let mut st = self.lock();
            st.savepoints.clear();
            std::mem::take(&mut st.txn)
        };
        match txn {
            Txn::Open(Some(pending)) if !pending.is_empty() => {
                let _running = Running::new(self.shared.clone());
                let committed = if pending.changes_schema() {
                    // Resuming takes the DDL lock and the commit holds it: keep both
                    // off the runtime workers.
                    let session = self.shared.session.clone();
                    tokio::task::spawn_blocking(move || session.commit(pending))
                        .await
                        .map_err(|e| ServerError::Internal(format!("commit task failed: {e}")))
                        .and_then(|r| r.map(|_| ()).map_err(ServerError::from))
                } else {
                    self.shared
                        .session
                        .commit_async(pending)
                        .await
                        .map(|_| ())
                        .map_err(ServerError::from)
                };
                // A failed COMMIT rolled the block back: its WITH HOLD cursors go too.
                self.cursors.end_of_block(committed.is_ok());
                committed?;
                Ok(Response::TransactionEnd(Tag::new("COMMIT")))
            }
            Txn::Failed(_) => {
                self.cursors.end_of_block(false);
                Ok(Response::TransactionEnd(Tag::new("ROLLBACK")))
            }
            Txn::None => {
                self.lock()
                    .notices
                    .push(warning("25P01", "there is no transaction in progress"));
                Ok(Response::TransactionEnd(Tag::new("COMMIT")))
            }
            Txn::Open(_) => {
                self.cursors.end_of_block(true);
                Ok(Response::TransactionEnd(Tag::new("COMMIT")))
            }
        }
    }

    async fn start_copy(
        &self,
        cmd: CopyCommand,
        timer: &mut Option<StatementTimer>,
    ) -> Result<Response, ServerError> {
        match cmd {
            CopyCommand::In {
                table,
                columns,
                format,
            } => {
                if !matches!(self.lock().txn, Txn::None) {
                    return Err(ServerError::Unsupported(
                        "COPY FROM inside BEGIN ... COMMIT is not supported yet (each COPY is \
                         atomic on its own)"
                            .into(),
                    ));
                }
                let schema = self.shared.session.engine().schema();
                let mut copy = CopyIn::new(&schema, &table, &columns, format)?;
                copy.timer = timer.take();
                let n = copy.columns();
                *self.copy.lock().unwrap_or_else(|p| p.into_inner()) = Some(copy);
                Ok(Response::CopyIn(CopyResponse::new(
                    0,
                    n,
                    futures::stream::empty(),
                )))
            }
            CopyCommand::Out { query, format } => {
                let stream = tidal_sql::with_ef_search(
                    self.ef_search(),
                    self.shared.session.sql_stream(&query),
                )
                .await?;
                let n = stream.schema().fields().len();
                let header = (format.csv && format.header).then(|| {
                    let names: Vec<String> = stream
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| copy::csv_field(f.name(), &format))
                        .collect();
                    let line = format!("{}\n", names.join(&format.delimiter.to_string()));
                    Ok(CopyData::new(bytes::Bytes::from(line)))
                });
                let rows = stream
                    .map(move |batch| {
                        let batch = batch.map_err(|e| ServerError::from(e).into_pg())?;
                        let mut out = Vec::with_capacity(batch.num_rows());
                        for row in 0..batch.num_rows() {
                            let mut line = String::new();
                            copy::format_row(&batch, row, &format, &mut line)
                                .map_err(ServerError::into_pg)?;
                            out.push(Ok(CopyData::new(bytes::Bytes::from(line))));
                        }
                        Ok::<_, PgWireError>(futures::stream::iter(out))
                    })
                    .flat_map(|r| match r {
                        Ok(s) => s.left_stream(),
                        Err(e) => futures::stream::iter(vec![Err(e)]).right_stream(),
                    });
                let rows = futures::stream::iter(header).chain(rows);
                Ok(Response::CopyOut(CopyResponse::new(0, n, rows)))
            }
        }
    }

    fn session_command(
        &self,
        cmd: SessionCommand,
        formats: &Format,
    ) -> Result<Response, ServerError> {
        let mut st = self.lock();
        Ok(match cmd {
            SessionCommand::Begin => {
                if matches!(st.txn, Txn::None) {
                    st.txn = Txn::Open(Some(self.shared.session.begin()));
                    st.savepoints.clear();
                } else {
                    st.notices.push(warning(
                        "25001",
                        "there is already a transaction in progress",
                    ));
                }
                Response::TransactionStart(Tag::new("BEGIN"))
            }
            // Handled (asynchronously) by `commit`.
            SessionCommand::Commit => Response::TransactionEnd(Tag::new("COMMIT")),
            SessionCommand::Rollback => {
                if matches!(st.txn, Txn::None) {
                    st.notices
                        .push(warning("25P01", "there is no transaction in progress"));
                }
                st.txn = Txn::None;
                st.savepoints.clear();
                self.cursors.end_of_block(false);
                Response::TransactionEnd(Tag::new("ROLLBACK"))
            }
            SessionCommand::Savepoint(name) => {
                let mark = match &st.txn {
                    Txn::None => return Err(ServerError::NotInBlock("SAVEPOINT")),
                    Txn::Failed(_) => return Err(ServerError::TransactionAborted),
                    Txn::Open(Some(p)) => p.mark(),
                    Txn::Open(None) => {
                        return Err(ServerError::Internal("transaction already in use".into()));
                    }
                };
                if st.savepoints.len() >= SAVEPOINTS_PER_BLOCK_MAX {
                    return Err(ServerError::TooManySavepoints(SAVEPOINTS_PER_BLOCK_MAX));
                }
                let cursors = self.cursors.position();
                st.savepoints.push(Savepoint {
                    name,
                    mark,
                    cursors,
                });
                Response::Execution(Tag::new("SAVEPOINT"))
            }
            SessionCommand::Release(name) => {
                match &st.txn {
                    Txn::None => return Err(ServerError::NotInBlock("RELEASE SAVEPOINT")),
                    Txn::Failed(_) => return Err(ServerError::TransactionAborted),
                    Txn::Open(_) => {}
                }
                let at = savepoint_index(&st.savepoints, &name)?;
                // Releasing a savepoint releases the ones made after it too.
                st.savepoints.truncate(at);
                Response::Execution(Tag::new("RELEASE"))
            }
            SessionCommand::RollbackTo(name) => {
                if matches!(st.txn, Txn::None) {
                    return Err(ServerError::NotInBlock("ROLLBACK TO SAVEPOINT"));
                }
                let at = savepoint_index(&st.savepoints, &name)?;
                let mut pending = match std::mem::take(&mut st.txn) {
                    Txn::Open(Some(p)) | Txn::Failed(Some(p)) => p,
                    _ => {
                        // The writes were lost with the failure: only ROLLBACK is left.
                        st.txn = Txn::Failed(None);
                        return Err(ServerError::TransactionAborted);
                    }
                };
                pending.rollback_to(&st.savepoints[at].mark);
                self.cursors.close_since(st.savepoints[at].cursors);
                // The savepoint itself stays; later ones go.
                st.savepoints.truncate(at + 1);
                st.txn = Txn::Open(Some(pending));
                Response::Execution(Tag::new("ROLLBACK"))
            }
            SessionCommand::Discard => {
                // What a connection pool runs between clients: nothing of the last
                // client may reach the next (its prepared statements go too, in
                // `discard_statements`).
                if !matches!(st.txn, Txn::None) {
                    return Err(ServerError::InBlock("DISCARD ALL"));
                }
                st.settings.clear();
                st.statement_timeout = self.shared.config.statement_timeout;
                self.cursors.close(None)?;
                Response::Execution(Tag::new("DISCARD ALL"))
            }
            SessionCommand::Set { name, value } => {
                if name == "hnsw.ef_search"
                    && let Some(v) = &value
                {
                    tidal_sql::parse_ef_search(v).map_err(|reason| {
                        ServerError::Sql(tidal_sql::SqlError::BadArgument {
                            function: "SET",
                            reason,
                        })
                    })?;
                }
                if name == "statement_timeout" {
                    st.statement_timeout = match &value {
                        None => self.shared.config.statement_timeout,
                        Some(v) => crate::config::parse_duration(v)?,
                    };
                }
                let tag = if value.is_some() { "SET" } else { "RESET" };
                match value {
                    Some(v) => st.settings.insert(name, v),
                    None => st.settings.remove(&name),
                };
                Response::Execution(Tag::new(tag))
            }
            SessionCommand::Show { name } => {
                let value = match name.as_str() {
                    "statement_timeout" => st
                        .statement_timeout
                        .map_or("0".to_string(), |d| format!("{}ms", d.as_millis())),
                    _ => st
                        .settings
                        .get(&name)
                        .cloned()
                        .or_else(|| default_setting(&name).map(String::from))
                        .ok_or_else(|| {
                            ServerError::Sql(tidal_sql::SqlError::Syntax {
                                message: format!("unrecognized configuration parameter \"{name}\""),
                            })
                        })?,
                };
                let schema = Arc::new(Schema::new(vec![Field::new(&name, DataType::Utf8, false)]));
                let col: ArrayRef = Arc::new(StringArray::from(vec![value]));
                let batch = RecordBatch::try_new(schema.clone(), vec![col])
                    .map_err(|e| ServerError::Internal(e.to_string()))?;
                let fields = Arc::new(encode::fields(&schema, &formats_of(formats, 1))?);
                let rows = encode::rows(&batch, &fields)?;
                Response::Query(QueryResponse::new(
                    fields,
                    futures::stream::iter(rows.into_iter().map(Ok)),
                ))
            }
        })
    }
}

/// Savepoints one transaction block may hold.
pub const SAVEPOINTS_PER_BLOCK_MAX: usize = 1024;

/// The newest savepoint called `name`.
fn savepoint_index(savepoints: &[Savepoint], name: &str) -> Result<usize, ServerError> {
    savepoints
        .iter()
        .rposition(|s| s.name == name)
        .ok_or_else(|| ServerError::NoSuchSavepoint(name.to_string()))
}

impl Txn {
    /// A statement failed: an open block becomes failed, keeping its writes as they
    /// are now (for ROLLBACK TO SAVEPOINT).
    fn fail(&mut self) {
        if let Txn::Open(p) = self {
            *self = Txn::Failed(p.take());
        }
    }
}

/// A cursor's query must return rows and change nothing: a SELECT (or WITH, VALUES,
/// TABLE), RETRIEVE or SHOW SIGNALS/PROFILES.
fn cursor_query(query: &str) -> Result<(), ServerError> {
    let first = sqltext::first_word(query);
    let reads = match tidal_sql::parse_tidal_statement(query)? {
        Some(s) => matches!(
            s,
            TidalStatement::ShowSignals
                | TidalStatement::ShowProfiles
                | TidalStatement::ShowRelationships
                | TidalStatement::Retrieve(_)
                | TidalStatement::Search(_)
                | TidalStatement::Suggest(_)
        ),
        None => {
            query.trim_start().starts_with('(')
                || matches!(first.as_str(), "select" | "with" | "values" | "table")
        }
    };
    if reads {
        Ok(())
    } else {
        Err(ServerError::Sql(tidal_sql::SqlError::Syntax {
            message: "DECLARE ... CURSOR FOR needs a query (SELECT, VALUES, RETRIEVE, SEARCH)"
                .into(),
        }))
    }
}

fn default_setting(name: &str) -> Option<&'static str> {
    Some(match name {
        "server_version" => "15.0",
        "server_version_num" => "150000",
        "server_encoding" | "client_encoding" => "UTF8",
        "datestyle" => "ISO, MDY",
        "timezone" => "UTC",
        "intervalstyle" => "postgres",
        "integer_datetimes" | "standard_conforming_strings" => "on",
        "search_path" => "public",
        "hnsw.ef_search" => tidal_sql::HNSW_EF_SEARCH_DEFAULT_TEXT,
        "transaction_isolation" | "default_transaction_isolation" => "read committed",
        "transaction_read_only" | "default_transaction_read_only" => "off",
        "application_name" => "",
        "extra_float_digits" => "1",
        "max_identifier_length" => "63",
        "lc_collate" | "lc_ctype" | "lc_messages" | "lc_monetary" | "lc_numeric" | "lc_time" => "C",
        _ => return None,
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn formats_of(format: &Format, n: usize) -> Vec<FieldFormat> {
    (0..n).map(|i| format.format_for(i)).collect()
}

/// The command tag, with the row count for INSERT/UPDATE/DELETE.
fn counted(tag: Tag, stmt: Option<&TidalStatement>, batches: &[RecordBatch]) -> Tag {
    match stmt {
        Some(
            TidalStatement::InsertSignals { .. }
            | TidalStatement::InsertRows { .. }
            | TidalStatement::ChangeRows(_)
            | TidalStatement::InsertEdges { .. }
            | TidalStatement::DeleteEdges { .. },
        ) => tag.with_rows(count_of(batches)),
        _ => tag,
    }
}

fn count_of(batches: &[RecordBatch]) -> usize {
    use tidal::datafusion::arrow::array::AsArray;
    use tidal::datafusion::arrow::datatypes::UInt64Type;
    batches
        .first()
        .filter(|b| b.num_columns() == 1 && b.column(0).data_type() == &DataType::UInt64)
        .map_or(0, |b| {
            b.column(0)
                .as_primitive::<UInt64Type>()
                .values()
                .iter()
                .sum::<u64>() as usize
        })
}

/// Counts a statement as running until dropped.
struct Running {
    shared: Arc<Shared>,
    /// The statement's timer, when its end is this guard's drop (a result stream).
    timer: Option<StatementTimer>,
}

impl Running {
    fn new(shared: Arc<Shared>) -> Running {
        shared.running.fetch_add(1, Ordering::SeqCst);
        Running {
            shared,
            timer: None,
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        drop(self.timer.take());
        if self.shared.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.running_done.notify_waiters();
        }
    }
}

/// DataRows from a DataFusion stream, batch by batch, stopping at cancel or timeout.
/// What stops a result stream early, and where it reports failure.
struct StreamCtl {
    cancel: Arc<CancelFlag>,
    since: u64,
    deadline: Option<tokio::time::Instant>,
    failed: Arc<AtomicBool>,
}

fn row_stream(
    stream: SendableRecordBatchStream,
    target: SchemaRef,
    fields: Arc<Vec<FieldInfo>>,
    ctl: StreamCtl,
    guard: Running,
) -> impl Stream<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send + 'static {
    struct St {
        stream: SendableRecordBatchStream,
        target: SchemaRef,
        fields: Arc<Vec<FieldInfo>>,
        cancel: Arc<CancelFlag>,
        since: u64,
        deadline: Option<tokio::time::Instant>,
        done: bool,
        failed: Arc<AtomicBool>,
        _guard: Running,
    }
    let st = St {
        stream,
        target,
        fields,
        cancel: ctl.cancel,
        since: ctl.since,
        deadline: ctl.deadline,
        done: false,
        failed: ctl.failed,
        _guard: guard,
    };
    futures::stream::unfold(st, |mut st| async move {
        if st.done {
            return None;
        }
        let next = tokio::select! {
            b = st.stream.next() => b,
            _ = st.cancel.cancelled(st.since) => Some(Err(ServerError::Cancelled.into_df())),
            _ = sleep_until(st.deadline) => Some(Err(ServerError::Timeout.into_df())),
        };
        let rows = match next {
            None => return None,
            Some(Err(e)) => {
                st.done = true;
                st.failed.store(true, Ordering::SeqCst);
                vec![Err(ServerError::from_df(e).into_pg())]
            }
            Some(Ok(batch)) => {
                match conform(&batch, &st.target).and_then(|b| encode::rows(&b, &st.fields)) {
                    Ok(rows) => rows.into_iter().map(Ok).collect(),
                    Err(e) => {
                        st.done = true;
                        vec![Err(e.into_pg())]
                    }
                }
            }
        };
        Some((futures::stream::iter(rows), st))
    })
    .flatten()
}

/// Casts a batch to the schema that was described to the client.
/// A fast path's rows (none: an empty result), encoded exactly as the planned query's
/// described columns would be.
fn fast_response(
    target: &SchemaRef,
    formats: &Format,
    rows: Option<&RecordBatch>,
) -> Result<Response, ServerError> {
    let fields = Arc::new(encode::fields(
        target,
        &formats_of(formats, target.fields().len()),
    )?);
    let rows = match rows {
        Some(batch) => encode::rows(&conform(batch, target)?, &fields)?,
        None => Vec::new(),
    };
    Ok(Response::Query(QueryResponse::new(
        fields,
        futures::stream::iter(rows.into_iter().map(Ok)),
    )))
}

fn conform(batch: &RecordBatch, target: &SchemaRef) -> Result<RecordBatch, ServerError> {
    if batch.schema().fields().len() != target.fields().len() {
        return Err(ServerError::Internal(
            "result has a different number of columns than described".into(),
        ));
    }
    let same = batch
        .schema()
        .fields()
        .iter()
        .zip(target.fields())
        .all(|(a, b)| a.data_type() == b.data_type());
    if same {
        return Ok(batch.clone());
    }
    let cols = batch
        .columns()
        .iter()
        .zip(target.fields())
        .map(|(c, f)| tidal::datafusion::arrow::compute::cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Internal(e.to_string()))?;
    let schema = Arc::new(Schema::new(
        target
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(schema, cols).map_err(|e| ServerError::Internal(e.to_string()))
}

impl ServerError {
    fn into_df(self) -> tidal::datafusion::error::DataFusionError {
        tidal::datafusion::error::DataFusionError::External(Box::new(self))
    }

    fn from_df(e: tidal::datafusion::error::DataFusionError) -> ServerError {
        match e {
            tidal::datafusion::error::DataFusionError::External(inner) => {
                match inner.downcast::<ServerError>() {
                    Ok(s) => *s,
                    Err(inner) => ServerError::from(
                        tidal::datafusion::error::DataFusionError::External(inner),
                    ),
                }
            }
            other => ServerError::from(other),
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for Conn {
    /// pgwire's default, except that ReadyForQuery reports the block's own status (see
    /// `Conn::wire_status`), and an error of the whole query string (one that is not
    /// any statement's) is answered like a statement's.
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        // What pgwire reports if sending the results fails half way.
        client.set_transaction_status(self.wire_status());
        client.set_state(PgWireConnectionState::QueryInProgress);
        if query.query.chars().all(|c| c == ';' || c.is_whitespace()) {
            client
                .feed(PgWireBackendMessage::EmptyQueryResponse(
                    EmptyQueryResponse::new(),
                ))
                .await?;
        } else {
            let responses = match SimpleQueryHandler::do_query(self, client, &query.query).await {
                Ok(r) => r,
                Err(PgWireError::UserError(info)) => {
                    self.lock().txn.fail();
                    vec![Response::Error(info)]
                }
                Err(e) => return Err(e),
            };
            for r in responses {
                match r {
                    Response::EmptyQuery => {
                        client
                            .feed(PgWireBackendMessage::EmptyQueryResponse(
                                EmptyQueryResponse::new(),
                            ))
                            .await?;
                    }
                    Response::Query(results) => send_query_response(client, results, true).await?,
                    Response::Execution(tag)
                    | Response::TransactionStart(tag)
                    | Response::TransactionEnd(tag) => send_execution_response(client, tag).await?,
                    Response::Error(e) => {
                        client
                            .feed(PgWireBackendMessage::ErrorResponse((*e).into()))
                            .await?;
                    }
                    Response::CopyIn(result) => {
                        send_copy_in_response(client, result).await?;
                        client.set_state(PgWireConnectionState::CopyInProgress(false));
                    }
                    Response::CopyOut(result) => send_copy_out_response(client, result).await?,
                    Response::CopyBoth(result) => {
                        send_copy_both_response(client, result).await?;
                        client.set_state(PgWireConnectionState::CopyInProgress(false));
                    }
                }
            }
        }
        // Portals end with their transaction (see `on_sync`).
        let status = self.wire_status();
        if status == TransactionStatus::Idle {
            client.portal_store().clear_portals();
        }
        // During COPY FROM STDIN the copy handler answers ReadyForQuery at CopyDone.
        if !matches!(client.state(), PgWireConnectionState::CopyInProgress(_)) {
            client.set_state(PgWireConnectionState::ReadyForQuery);
            client.set_transaction_status(status);
            send_ready_for_query(client, status).await?;
        }
        Ok(())
    }

    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = sqltext::split(query).map_err(ServerError::into_pg)?;
        let mut out = Vec::with_capacity(statements.len());
        let last = statements.len().saturating_sub(1);
        for (i, sql) in statements.iter().enumerate() {
            let result = match sqltext::deallocate(sql) {
                Ok(Some(name)) => {
                    let r = self.deallocate(client.portal_store(), name);
                    if r.is_err() {
                        self.lock().txn.fail();
                    }
                    r
                }
                Ok(None) => {
                    let r = self.execute(sql, &Format::UnifiedText, None).await;
                    self.discard_statements(sql, &r, client.portal_store());
                    r
                }
                Err(e) => Err(e),
            };
            self.send_notices(client).await?;
            match result {
                // Earlier statements' rows are materialised so that the next statement
                // runs after them, as in PostgreSQL.
                Ok(Response::Query(mut q)) if i < last => {
                    let mut rows = Vec::new();
                    let mut failed = None;
                    while let Some(r) = q.data_rows().next().await {
                        match r {
                            Ok(row) => rows.push(Ok(row)),
                            Err(e) => {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    let fields = q.row_schema();
                    out.push(Response::Query(QueryResponse::new(
                        fields,
                        futures::stream::iter(rows),
                    )));
                    if let Some(e) = failed {
                        out.push(Response::Error(Box::new(error_info(e))));
                        break;
                    }
                }
                Ok(r) => out.push(r),
                Err(e) => {
                    out.push(Response::Error(Box::new(e.to_error_info())));
                    break;
                }
            }
        }
        if out.is_empty() {
            out.push(Response::EmptyQuery);
        }
        Ok(out)
    }
}

fn error_info(e: PgWireError) -> ErrorInfo {
    match e {
        PgWireError::UserError(info) => *info,
        other => ErrorInfo::new("ERROR".into(), "XX000".into(), other.to_string()),
    }
}

/// A parsed extended-protocol statement.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    sql: String,
    params: Vec<Type>,
    /// Result columns, or `None` for statements without rows.
    schema: Option<SchemaRef>,
    /// Set for the statements with a fast path (see `fastpath`).
    fast: Option<Fast>,
}

/// Plans statements for Parse/Describe: parameter types and result columns.
#[derive(Debug)]
pub(crate) struct Parser {
    shared: Arc<Shared>,
    cursors: Arc<Cursors>,
}

impl Parser {
    async fn prepare(&self, sql: &str, given: &[Option<Type>]) -> Result<Prepared, ServerError> {
        let sql = &*crate::catalog::rewrite(sql);
        let n = sqltext::placeholder_count(sql)?.max(given.len());
        let mut params: Vec<Option<Type>> = (0..n)
            .map(|i| {
                given
                    .get(i)
                    .cloned()
                    .flatten()
                    .filter(|t| *t != Type::UNKNOWN)
            })
            .collect();
        let mut schema = None;
        let mut fast = None;
        sqltext::refuse_sql_prepare(sql)?;
        if sqltext::deallocate(sql)?.is_some() {
            // No parameters, no rows.
        } else if let Some(cmd) = sqltext::cursor_command(sql)? {
            match cmd {
                // DECLARE takes its query's parameters; FETCH returns the cursor's columns.
                CursorCommand::Declare { query, .. } => {
                    cursor_query(&query)?;
                    params = Box::pin(self.prepare(&query, given))
                        .await?
                        .params
                        .into_iter()
                        .map(Some)
                        .collect();
                }
                CursorCommand::Fetch {
                    name, skip: false, ..
                } => schema = Some(self.cursors.schema(&name)?),
                CursorCommand::Fetch { .. } | CursorCommand::Close { .. } => {}
            }
        } else if let Some(cmd) = sqltext::session_command(sql)? {
            if let SessionCommand::Show { name } = cmd {
                schema = Some(Arc::new(Schema::new(vec![Field::new(
                    name,
                    DataType::Utf8,
                    false,
                )])));
            }
        } else if tidal_sql::explains_tidal_statement(sql)? {
            schema = Some(tidal_sql::explain_schema());
        } else {
            // RETRIEVE / SEARCH parameters stand where the statement takes literals; the
            // statement is described with stand-ins and bound textually at Execute.
            let described = match sqltext::first_word(sql).as_str() {
                "retrieve" | "search" | "suggest" => sqltext::clause_parameters(sql, &mut params)?,
                _ => None,
            };
            match tidal_sql::parse_tidal_statement(described.as_deref().unwrap_or(sql))? {
                Some(
                    stmt @ (TidalStatement::ShowSignals
                    | TidalStatement::ShowProfiles
                    | TidalStatement::ShowRelationships
                    | TidalStatement::Retrieve(_)
                    | TidalStatement::Search(_)
                    | TidalStatement::Suggest(_)),
                ) => {
                    schema = Some(self.shared.session.describe_tidal(&stmt).await?);
                }
                Some(stmt) => {
                    crate::params::infer_write(&self.shared.session, sql, &stmt, &mut params)
                        .await?;
                    if matches!(stmt, TidalStatement::InsertSignals { .. }) {
                        fast = FastInsert::plan(sql).map(Fast::Insert);
                    }
                }
                None => {
                    let plan = self
                        .shared
                        .session
                        .context()
                        .state()
                        .create_logical_plan(sql)
                        .await?;
                    // Before DataFusion's types (INT8 for the catalog's OID columns);
                    // a type the client declared is kept.
                    crate::params::infer_oid_comparisons(sql, &mut params);
                    let types = plan.get_parameter_types()?;
                    for (i, p) in params.iter_mut().enumerate() {
                        if p.is_none()
                            && let Some(Some(dt)) = types.get(&format!("${}", i + 1))
                        {
                            *p = encode::pg_type(dt).ok();
                        }
                    }
                    crate::params::infer_from_syntax(sql, &mut params);
                    schema = Some(Arc::new(plan.schema().as_arrow().clone()));
                    // Only if the fast path's columns are exactly the described ones
                    // (a schema change may have come between the two plans).
                    fast = FastSelect::plan(sql, &self.shared.session.engine().schema())
                        .filter(|f| {
                            let described = plan.schema().as_arrow();
                            tidal_sql::table_schema(&f.table)
                                .project(&f.projection)
                                .is_ok_and(|s| {
                                    s.fields().len() == described.fields().len()
                                        && s.fields()
                                            .iter()
                                            .zip(described.fields())
                                            .all(|(a, b)| a.data_type() == b.data_type())
                                })
                        })
                        .map(Fast::Select);
                    if fast.is_none() {
                        // Only if its columns are exactly the described ones.
                        fast = FastAnn::plan(sql, &self.shared.session.engine().schema())
                            .filter(|f| {
                                let described = plan.schema().as_arrow();
                                let columns = tidal_sql::table_schema(&f.table);
                                f.items.len() == described.fields().len()
                                    && f.items.iter().zip(described.fields()).all(|(item, b)| {
                                        match item {
                                            AnnItem::Column(i) => {
                                                columns.field(f.projection[*i]).data_type()
                                                    == b.data_type()
                                            }
                                            AnnItem::Distance => {
                                                b.data_type()
                                                    == &tidal::datafusion::arrow::datatypes::DataType::Float64
                                            }
                                        }
                                    })
                            })
                            .map(Fast::Ann);
                    }
                }
            }
        }
        Ok(Prepared {
            sql: sql.to_string(),
            params: params
                .into_iter()
                .map(|p| p.unwrap_or(Type::TEXT))
                .collect(),
            schema,
            fast,
        })
    }
}

#[async_trait]
impl QueryParser for Parser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let statements = sqltext::split(sql).map_err(ServerError::into_pg)?;
        match statements.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(
                self.prepare(one, types)
                    .await
                    .map_err(ServerError::into_pg)?,
            )),
            _ => Err(ServerError::Sql(tidal_sql::SqlError::Syntax {
                message: "cannot insert multiple commands into a prepared statement".into(),
            })
            .into_pg()),
        }
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        Ok(stmt.params.clone())
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let Some(schema) = &stmt.schema else {
            return Ok(Vec::new());
        };
        let formats = formats_of(
            column_format.unwrap_or(&Format::UnifiedText),
            schema.fields().len(),
        );
        encode::fields(schema, &formats).map_err(ServerError::into_pg)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Conn {
    type Statement = Prepared;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Parser> {
        self.parser.clone()
    }

    /// pgwire's default, except that ParseComplete is buffered until Sync or Flush (as
    /// PostgreSQL does) instead of costing a socket write of its own.
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME).to_owned();
        // pgwire's `StoredStatement::parse`, except that types are looked up with ours:
        // a driver's pgvector adapter declares its parameters as `vector`.
        let types: Vec<Option<Type>> = message
            .type_oids
            .iter()
            .map(|oid| encode::type_from_oid(*oid))
            .collect();
        let parsed = if sqltext::is_empty_query(&message.query) {
            Ok(None)
        } else {
            self.query_parser()
                .parse_sql(client, &message.query, &types)
                .await
                .map(|statement| {
                    statement.map(|statement| StoredStatement::new(name.clone(), statement, types))
                })
        };
        match self.failing(parsed)? {
            Some(stmt) => client.portal_store().put_statement(Arc::new(stmt)),
            None => client.portal_store().put_empty_statement(&name),
        }
        if name != DEFAULT_NAME {
            self.prepared_names().insert(name);
        }
        client
            .feed(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
            .await?;
        Ok(())
    }

    /// pgwire's default; an error (an unknown portal…) aborts an open block.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let r = self._on_execute(client, message).await;
        self.failing(r)
    }

    /// pgwire's default, except that ReadyForQuery reports the block's own status (see
    /// `Conn::wire_status`), and that outside a transaction block every portal goes, as
    /// in PostgreSQL where portals end with their transaction (pgwire drops only the
    /// unnamed one): a portal suspended part-way through a FETCH must not keep reading a
    /// cursor its block's end closed.
    async fn on_sync<C>(&self, client: &mut C, _message: SyncMessage) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let status = self.wire_status();
        if status == TransactionStatus::Idle {
            client.portal_store().clear_portals();
        } else {
            client.portal_store().rm_portal(DEFAULT_NAME);
        }
        client.set_transaction_status(status);
        client
            .send(PgWireBackendMessage::ReadyForQuery(ReadyForQuery::new(
                status,
            )))
            .await?;
        client.flush().await?;
        Ok(())
    }

    /// pgwire's default, except that the statement name is also forgotten by
    /// `DEALLOCATE ALL` bookkeeping and CloseComplete is buffered until Sync or Flush.
    async fn on_close<C>(&self, client: &mut C, message: Close) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => {
                client.portal_store().rm_statement(name);
                self.prepared_names().remove(name);
            }
            TARGET_TYPE_BYTE_PORTAL => client.portal_store().rm_portal(name),
            _ => {}
        }
        client
            .feed(PgWireBackendMessage::CloseComplete(CloseComplete::new()))
            .await?;
        Ok(())
    }

    /// pgwire's default, except for what is sent: a statement or portal without result
    /// columns is answered with NoData, as PostgreSQL does (pgwire sends an empty
    /// RowDescription for a statement that has parameters, which pgjdbc reads as "returns
    /// rows" and then reports 0 for every INSERT of a batch); and the answer is buffered
    /// until Sync or Flush like ParseComplete. An error aborts an open block.
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let r: PgWireResult<()> = async {
            let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
            let (parameters, fields) = match message.target_type {
                TARGET_TYPE_BYTE_STATEMENT => match client.portal_store().get_statement(name) {
                    Some(Entry::Value(stmt)) => {
                        let r = self.do_describe_statement(client, &stmt).await?;
                        (Some(r.parameters), r.fields)
                    }
                    Some(Entry::Empty) => (Some(Vec::new()), Vec::new()),
                    None => return Err(PgWireError::StatementNotFound(name.to_owned())),
                },
                TARGET_TYPE_BYTE_PORTAL => match client.portal_store().get_portal(name) {
                    Some(Entry::Value(portal)) => {
                        (None, self.do_describe_portal(client, &portal).await?.fields)
                    }
                    Some(Entry::Empty) => (None, Vec::new()),
                    // A DECLAREd cursor is a portal too (psycopg describes its named
                    // cursors this way); its rows come by FETCH, in text.
                    None => match self.cursors.schema(name) {
                        Ok(schema) => {
                            let formats = formats_of(&Format::UnifiedText, schema.fields().len());
                            (
                                None,
                                encode::fields(&schema, &formats).map_err(ServerError::into_pg)?,
                            )
                        }
                        Err(_) => return Err(PgWireError::PortalNotFound(name.to_owned())),
                    },
                },
                other => return Err(PgWireError::InvalidTargetType(other)),
            };
            if let Some(types) = parameters {
                let oids = types.iter().map(|t| t.oid()).collect();
                client
                    .feed(PgWireBackendMessage::ParameterDescription(
                        ParameterDescription::new(oids),
                    ))
                    .await?;
            }
            let reply = if fields.is_empty() {
                PgWireBackendMessage::NoData(NoData::new())
            } else {
                PgWireBackendMessage::RowDescription(RowDescription::new(
                    fields.iter().map(Into::into).collect(),
                ))
            };
            client.feed(reply).await?;
            Ok(())
        }
        .await;
        self.failing(r)
    }

    /// pgwire's default, except that BindComplete is buffered until Sync or Flush: a
    /// prepared statement's round trip then costs one socket write, not two. An error
    /// aborts an open block (see `Conn::failing`).
    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let r: PgWireResult<()> = async {
            let statement_name = message.statement_name.as_deref().unwrap_or(DEFAULT_NAME);
            let portal_name = message.portal_name.as_deref().unwrap_or(DEFAULT_NAME);
            match client.portal_store().get_statement(statement_name) {
                Some(Entry::Value(statement)) => {
                    let portal = Portal::try_new(&message, statement)?;
                    client.portal_store().put_portal(Arc::new(portal));
                }
                Some(Entry::Empty) => {
                    if !message.parameters.is_empty() {
                        return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                            "ERROR".to_owned(),
                            "08P01".to_owned(),
                            format!(
                                "bind message supplies {} parameters, but prepared statement \"{statement_name}\" requires 0",
                                message.parameters.len(),
                            ),
                        ))));
                    }
                    client.portal_store().put_empty_portal(portal_name);
                }
                None => return Err(PgWireError::StatementNotFound(statement_name.to_owned())),
            }
            client
                .feed(PgWireBackendMessage::BindComplete(BindComplete::new()))
                .await?;
            Ok(())
        }
        .await;
        self.failing(r)
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stmt = &portal.statement.statement;
        let format = |i| portal.parameter_format.format_for(i);
        let timer = stmt.fast.as_ref().map(|_| StatementTimer::start(&stmt.sql));
        let fast = match &stmt.fast {
            Some(Fast::Insert(plan)) => match plan.bind(&stmt.params, &portal.parameters, format) {
                Some(events) => self.insert_fast(events).await,
                None => None,
            },
            Some(Fast::Select(plan)) => match plan.bind(&stmt.params, &portal.parameters, format) {
                Some(ids) => self.select_fast(plan, ids, stmt, &portal.result_column_format),
                None => None,
            },
            Some(Fast::Ann(plan)) => match plan.bind(&portal.parameters, format) {
                Some(query) => self.ann_fast(plan, &query, stmt, &portal.result_column_format),
                None => None,
            },
            None => None,
        };
        if let Some(result) = fast {
            drop(timer);
            self.send_notices(client).await?;
            return result.map_err(ServerError::into_pg);
        }
        if let Some(name) = sqltext::deallocate(&stmt.sql).map_err(ServerError::into_pg)? {
            return self
                .deallocate(client.portal_store(), name)
                .map_err(ServerError::into_pg);
        }
        let mut literals = Vec::with_capacity(portal.parameters.len());
        for (i, value) in portal.parameters.iter().enumerate() {
            let ty = stmt.params.get(i).cloned().unwrap_or(Type::TEXT);
            let binary = portal.parameter_format.format_for(i) == FieldFormat::Binary;
            literals.push(
                sqltext::literal(i + 1, &ty, value.as_ref(), binary)
                    .map_err(ServerError::into_pg)?,
            );
        }
        let sql = if literals.is_empty() {
            stmt.sql.clone()
        } else {
            sqltext::bind(&stmt.sql, &literals).map_err(ServerError::into_pg)?
        };
        let result = self
            .execute(&sql, &portal.result_column_format, stmt.schema.as_ref())
            .await;
        self.discard_statements(&sql, &result, client.portal_store());
        self.send_notices(client).await?;
        result.map_err(ServerError::into_pg)
    }
}

#[async_trait]
impl StartupHandler for Conn {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let PgWireFrontendMessage::Startup(startup) = &message {
            let held = self.permit.lock().map(|p| p.is_some()).unwrap_or(false);
            if !held {
                return Err(fatal("53300", "sorry, too many clients already"));
            }
            if self.shared.shutting_down.load(Ordering::SeqCst) {
                return Err(fatal("57P03", "the database system is shutting down"));
            }
            let user = startup.parameters.get("user").map(String::as_str);
            if user != Some(USER) {
                return Err(fatal(
                    "28000",
                    format!(
                        "role \"{}\" does not exist; connect as user \"{USER}\"",
                        user.unwrap_or("")
                    ),
                ));
            }
            if self.sasl.is_none() {
                if !client.socket_addr().ip().is_loopback() {
                    return Err(fatal(
                        "28000",
                        "no password is configured, so only loopback connections are accepted \
                         (start the server with --password-file or TIDAL_PASSWORD)",
                    ));
                }
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let (pid, secret) = self.register_pid();
                client.set_pid_and_secret_key(pid, secret);
                return finish_authentication(client, &server_parameters()).await;
            }
        }
        match &self.sasl {
            Some(sasl) => sasl.on_startup(client, message).await,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl CancelHandler for Conn {
    async fn on_cancel_request(&self, request: CancelRequest) {
        self.shared.cancels.cancel(request.pid, &request.secret_key);
    }
}

/// Pid generator holding the connection weakly (the connection owns the SASL handler
/// that owns the generator).
struct WeakPidGen(std::sync::Weak<Conn>);

impl PidSecretKeyGenerator for WeakPidGen {
    fn generate(&self, client: &dyn ClientInfo) -> (i32, SecretKey) {
        match self.0.upgrade() {
            Some(conn) => PidGen(conn).generate(client),
            None => (0, SecretKey::I32(0)),
        }
    }
}

/// The handler set pgwire asks for, all served by one connection object.
pub(crate) struct Handlers(pub Arc<Conn>);

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.0.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.0.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.0.clone()
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        self.0.clone()
    }

    fn copy_handler(&self) -> Arc<impl CopyHandler> {
        self.0.clone()
    }
}

#[async_trait]
impl CopyHandler for Conn {
    async fn on_copy_data<C>(&self, _client: &mut C, data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(copy) = self.copy.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            copy.feed(&data.data);
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let copy = self.copy.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(copy) = copy else {
            return Err(
                ServerError::Internal("CopyDone without a COPY in progress".into()).into_pg(),
            );
        };
        let engine = self.shared.session.engine().clone();
        let _running = Running::new(self.shared.clone());
        // One transaction for the whole COPY, committed on the blocking pool.
        let rows = tokio::task::spawn_blocking(move || copy.finish(&engine))
            .await
            .map_err(|e| ServerError::Internal(format!("COPY task failed: {e}")).into_pg())?
            .map_err(ServerError::into_pg)?;
        client
            .send(PgWireBackendMessage::CommandComplete(
                Tag::new("COPY").with_rows(rows).into(),
            ))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.copy.lock().unwrap_or_else(|p| p.into_inner()).take();
        PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            "57014".into(),
            format!(
                "COPY from stdin failed: {}; nothing was applied",
                fail.message
            ),
        )))
    }
}

//! One DataFusion `SessionContext` per database, with the `tidal` catalog.

use std::sync::Arc;

use datafusion::arrow::array::StringArray;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::context::{SQLOptions, SessionContext};
use datafusion::execution::memory_pool::{FairSpillPool, MemoryPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::prelude::DataFrame;
use datafusion::prelude::SessionConfig;
use tidal_core::{EntityId, EntityKind, TableDef};
use tidal_engine::{Engine, PendingTxn, WriteOutcome};

use crate::SqlError;
use crate::provider::TidalSchema;
use crate::types::{BatchBuilder, table_schema};
use crate::udf::SignalUdf;

/// Memory all queries of one database may hold at once (DataFusion's default pool is
/// unbounded; a query over it fails with "resources exhausted" instead of the process
/// being killed).
pub const QUERY_MEMORY_BYTES_MAX: usize = 4 << 30;
/// The catalog and schema unqualified names resolve in.
pub const CATALOG_NAME: &str = "tidal";
pub const SCHEMA_NAME: &str = "public";

/// SQL over one engine.
#[derive(Clone)]
pub struct SqlSession {
    ctx: SessionContext,
    engine: Arc<Engine>,
    stats: Arc<crate::stats::Stats>,
}

/// A statement inside a client transaction failed ([`SqlSession::sql_in_transaction`]).
#[derive(Debug)]
pub struct StatementFailed {
    pub error: SqlError,
    /// The transaction as it was before the statement, so that the block can go on
    /// after `ROLLBACK TO SAVEPOINT`; `None` when it is lost (the schema changed under
    /// it).
    pub pending: Option<PendingTxn>,
}

impl std::fmt::Display for StatementFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::fmt::Debug for SqlSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlSession").finish_non_exhaustive()
    }
}

impl SqlSession {
    /// Builds the session: `tidal.public` with the entity tables, the signal functions,
    /// `information_schema`, and a bounded memory pool.
    pub fn new(engine: Arc<Engine>) -> Result<SqlSession, SqlError> {
        SqlSession::with_memory_limit(engine, QUERY_MEMORY_BYTES_MAX)
    }

    /// Like [`SqlSession::new`] with a different bound on the memory all queries may
    /// hold at once (a query over it fails with SQLSTATE 53200).
    pub fn with_memory_limit(
        engine: Arc<Engine>,
        memory_bytes: usize,
    ) -> Result<SqlSession, SqlError> {
        let config = SessionConfig::new()
            .with_information_schema(true)
            // PostgreSQL's grammar (clients speak it; pgvector's `<->` needs it).
            .set_str("datafusion.sql_parser.dialect", "PostgreSQL")
            // `SET hnsw.ef_search = n` (pgvector's setting).
            .with_option_extension(crate::ann::HnswOptions::default())
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG_NAME, SCHEMA_NAME);
        let pool: Arc<dyn MemoryPool> = Arc::new(FairSpillPool::new(memory_bytes));
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(pool.clone())
            .build_arc()?;
        let stats = Arc::new(crate::stats::Stats {
            engine: engine.clone(),
            cache: Default::default(),
            pool,
            pool_limit_bytes: memory_bytes,
            sources: Default::default(),
        });
        let planner = crate::rank::TidalQueryPlanner::new(vec![
            Arc::new(crate::retrieve::FetchPlanner),
            Arc::new(crate::explore::ExplorePlanner),
            Arc::new(crate::mask::MaskPlanner),
        ]);
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(runtime)
            .with_default_features()
            .with_query_planner(Arc::new(planner))
            .with_type_planner(Arc::new(crate::vector::VectorTypes))
            .build();
        let ctx = SessionContext::new_with_state(state);
        // Long joins must yield so timeouts, cancels and dropped streams take effect.
        crate::coop::install(&ctx);
        // pgvector's operators, casts and functions (vector.rs). After `install`, which
        // rebuilds the state from its function list: DataFusion's own `inner_product`
        // (an array function, also registered as `dot_product`) must not come back
        // over ours.
        ctx.add_analyzer_rule(Arc::new(crate::vector::VectorCasts::default()));
        // LIKE with an escape other than the backslash (SQLAlchemy's reflection uses '/').
        ctx.add_analyzer_rule(Arc::new(crate::like::LikeEscapes::default()));
        // '{a,b}'::TEXT[] parses the array literal (psycopg/SQLAlchemy send arrays so).
        ctx.add_analyzer_rule(Arc::new(crate::like::TextArrayCasts));
        ctx.register_udf(ScalarUDF::new_from_impl(
            crate::like::LikeEscapeUdf::default(),
        ));
        ctx.register_udf(ScalarUDF::new_from_impl(
            crate::json::JsonBuildObjectUdf::default(),
        ));
        // Last, after DataFusion's rules have merged LIMIT into the sort.
        ctx.add_optimizer_rule(Arc::new(crate::ann::AnnRule));
        datafusion::execution::FunctionRegistry::register_expr_planner(
            &mut *ctx.state_ref().write(),
            Arc::new(crate::vector::VectorOperators),
        )?;
        for udf in crate::vector::vector_udfs() {
            ctx.register_udf(udf);
        }
        ctx.register_udf(ScalarUDF::new_from_impl(
            crate::PreferenceSimilarityUdf::default(),
        ));
        ctx.register_udf(ScalarUDF::new_from_impl(crate::PreferenceUdf::new(
            engine.clone(),
        )));
        ctx.register_udf(ScalarUDF::new_from_impl(crate::AffinityUdf::new(
            engine.clone(),
        )));
        ctx.register_udf(ScalarUDF::new_from_impl(crate::InDegreeUdf::new(
            engine.clone(),
        )));
        ctx.register_udf(ScalarUDF::new_from_impl(crate::UserAffinityUdf::default()));
        let catalog = MemoryCatalogProvider::new();
        catalog.register_schema(
            SCHEMA_NAME,
            Arc::new(TidalSchema::new(engine.clone(), stats.clone())),
        )?;
        ctx.register_catalog(CATALOG_NAME, Arc::new(catalog));
        for udf in SignalUdf::all(&engine)
            .into_iter()
            .chain(crate::ScoreUdf::all())
        {
            ctx.register_udf(udf);
        }
        ctx.register_udf(ScalarUDF::new_from_impl(crate::SnippetUdf::new(
            engine.clone(),
        )));
        ctx.register_udtf(
            "search",
            Arc::new(crate::SearchFunction::new(engine.clone())),
        );
        ctx.register_udf(ScalarUDF::new_from_impl(crate::RankProfileUdf::new(
            engine.clone(),
            ctx.state_weak_ref(),
            false,
        )));
        Ok(SqlSession { ctx, engine, stats })
    }

    /// The DataFusion context, for callers that embed DataFusion directly.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The engine underneath.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Every monitoring figure: the engine's, this layer's (scan cache, query memory)
    /// and those of the sources added with [`SqlSession::add_metrics_source`]. What the
    /// `tidal_stats` table shows.
    pub fn metrics(&self) -> Vec<tidal_core::metrics::Metric> {
        self.stats.collect()
    }

    /// Adds a producer of metrics (the server adds statements, errors, connections),
    /// shown in `tidal_stats` and [`SqlSession::metrics`]. At most
    /// [`crate::METRICS_SOURCES_MAX`]; the source must not hold the session (it is
    /// called from inside it).
    pub fn add_metrics_source(&self, source: crate::MetricsSource) -> Result<(), SqlError> {
        let mut sources = self.stats.sources.write();
        if sources.len() >= crate::METRICS_SOURCES_MAX {
            return Err(SqlError::BadArgument {
                function: "add_metrics_source",
                reason: format!("at most {} metrics sources", crate::METRICS_SOURCES_MAX),
            });
        }
        sources.push(source);
        Ok(())
    }

    /// Plans one query through DataFusion with DDL and DML refused, so nothing can land
    /// in DataFusion's in-memory tables; writes go through the engine instead.
    async fn read_only_frame(&self, sql: &str) -> Result<DataFrame, SqlError> {
        let opts = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false);
        Ok(self.ctx.sql_with_options(sql, opts).await?)
    }

    async fn read_only(&self, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
        Ok(self.read_only_frame(sql).await?.collect().await?)
    }

    /// Runs one statement and collects its result. tidalDB's own statements
    /// (`CREATE/DROP SIGNAL`, `SHOW SIGNALS`, `CREATE/DROP TABLE … WITH (kind = …)`,
    /// `INSERT`, `UPDATE`, `DELETE`) compile to engine commands — each one atomic and
    /// durable — and everything else is a read-only query planned by DataFusion.
    pub async fn sql(&self, sql: &str) -> Result<Vec<RecordBatch>, SqlError> {
        match self.run(sql).await? {
            Output::Done(batches) => Ok(batches),
            Output::Query(frame) => Ok(frame.collect().await?),
        }
    }

    /// Like [`SqlSession::sql`], but a query's rows are streamed in batches as
    /// DataFusion produces them (bounded memory for large results; dropping the stream
    /// stops the query). Writes run to completion before the stream is returned.
    pub async fn sql_stream(&self, sql: &str) -> Result<SendableRecordBatchStream, SqlError> {
        match self.run(sql).await? {
            Output::Done(batches) => {
                let schema = match batches.first() {
                    Some(b) => b.schema(),
                    None => Arc::new(datafusion::arrow::datatypes::Schema::empty()),
                };
                Ok(Box::pin(MemoryStream::try_new(batches, schema, None)?))
            }
            Output::Query(frame) => Ok(frame.execute_stream().await?),
        }
    }

    /// Runs one statement inside a client transaction: a write is validated and added
    /// to `pending` (nothing is applied until [`SqlSession::commit`]) and returns its row
    /// count; a query runs against committed state and returns its rows. A statement
    /// that fails adds nothing: the error carries the transaction as it was before the
    /// statement (see [`StatementFailed`]).
    pub async fn sql_in_transaction(
        &self,
        sql: &str,
        pending: PendingTxn,
    ) -> Result<(PendingTxn, Vec<RecordBatch>), StatementFailed> {
        use crate::TidalStatement as T;
        let failed =
            |error: SqlError, pending: Option<PendingTxn>| StatementFailed { error, pending };
        let stmt = match crate::statement::parse(sql) {
            Ok(
                None
                | Some(
                    T::ShowSignals
                    | T::ShowProfiles
                    | T::ShowRelationships
                    | T::Retrieve(_)
                    | T::Search(_)
                    | T::Suggest(_),
                ),
            ) => {
                return match self.sql(sql).await {
                    Ok(rows) => Ok((pending, rows)),
                    Err(e) => Err(failed(e, Some(pending))),
                };
            }
            Ok(Some(T::CreateProfile { mut def, replace })) => {
                if let Err(e) = self.prepare_profile(&mut def).await {
                    return Err(failed(e, Some(pending)));
                }
                T::CreateProfile { def, replace }
            }
            Ok(Some(stmt)) => stmt,
            Err(e) => return Err(failed(e, Some(pending))),
        };
        // Source rows first (async), then the synchronous add under the engine.
        let rows = match &stmt {
            T::InsertSignals {
                values: Some(b), ..
            } => Ok(vec![b.clone()]),
            T::InsertSignals { source, .. } | T::InsertRows { source, .. } => {
                self.read_only(source).await
            }
            T::ChangeRows(c) => self.read_only(&c.query).await,
            T::InsertEdges { source, .. } => self.read_only(source).await,
            T::DeleteEdges { query, .. } => self.read_only(query).await,
            _ => Ok(Vec::new()),
        };
        let rows = match rows {
            Ok(rows) => rows,
            Err(e) => return Err(failed(e, Some(pending))),
        };
        let mark = pending.mark();
        // A conflict (the schema changed since the block's first write) loses the
        // block's writes: they were validated against a schema that is gone.
        let mut txn = self
            .engine
            .resume(pending)
            .map_err(|e| failed(e.into(), None))?;
        let added = match &stmt {
            T::InsertSignals { columns, .. } => {
                crate::insert::add_signals(&mut txn, columns, &rows).map(Some)
            }
            T::InsertRows {
                kind,
                columns,
                on_conflict,
                ..
            } => {
                crate::insert::add_rows(&mut txn, &self.engine, *kind, columns, &rows, on_conflict)
                    .map(Some)
            }
            T::ChangeRows(c) => {
                crate::insert::add_changes(&mut txn, &self.engine, c, &rows).map(Some)
            }
            T::InsertEdges { name, columns, .. } => {
                crate::insert::add_edges(&mut txn, name, columns, &rows).map(Some)
            }
            T::DeleteEdges { name, .. } => {
                crate::insert::add_edge_deletes(&mut txn, name, &rows).map(Some)
            }
            _ => crate::statement::add_statement(&mut txn, stmt).map(|()| None),
        };
        let out = added.and_then(|n| match n {
            Some(n) => Ok(vec![crate::insert::count_batch(n)?]),
            None => Ok(Vec::new()),
        });
        let mut pending = txn.suspend();
        match out {
            Ok(batches) => Ok((pending, batches)),
            Err(e) => {
                // Whatever the statement added before it failed is taken back.
                pending.rollback_to(&mark);
                Err(failed(e, Some(pending)))
            }
        }
    }

    /// Rows `lo ≤ id ≤ hi` of the entity table of `kind`, columns `projection` (indexes
    /// into its columns), in id order: what `SELECT <those columns> FROM <table> WHERE id
    /// BETWEEN <lo> AND <hi>` returns, read from one snapshot without planning a query
    /// (the server's prepared point and range reads). Negative ids match no row, as in
    /// SQL. `None` when the table in that snapshot is no longer `table` (the projection
    /// was planned on it). The caller bounds the range: every row is in one batch.
    pub fn read_rows(
        &self,
        kind: EntityKind,
        (lo, hi): (i64, i64),
        projection: &[usize],
        table: &TableDef,
    ) -> Result<Option<RecordBatch>, SqlError> {
        let view = self.engine.read();
        let Ok(def) = view.schema().table(kind) else {
            return Ok(None);
        };
        if def != table {
            return Ok(None);
        }
        let schema = Arc::new(
            table_schema(def)
                .project(projection)
                .map_err(|e| SqlError::from(datafusion::error::DataFusionError::from(e)))?,
        );
        let lo = EntityId::from_i64(lo.max(0));
        let hi = EntityId::from_i64(hi);
        let mut rows = BatchBuilder::new(def, projection, schema, 1);
        if let (Some(lo), Some(hi)) = (lo, hi)
            && lo <= hi
        {
            for row in view.store().range(kind, lo, hi) {
                rows.push(&row?.1)?;
            }
        }
        Ok(Some(rows.finish()?))
    }

    /// The `k` rows nearest to `query` by the HNSW index of `column` with `metric`, for
    /// the server's prepared fast path of `SELECT … ORDER BY column <op> $1 LIMIT k`:
    /// the same search the planned statement makes (`max(k, ef_search)` candidates from
    /// the index, exact distances, nearest first; ties by smaller id), without planning.
    /// Returns the `projection` of the rows and their distances, or `None` when the
    /// planned statement must decide (the table changed, no such index, a query vector
    /// of another dimension or one the index cannot search).
    #[allow(clippy::too_many_arguments)]
    pub fn nearest_rows(
        &self,
        table: &TableDef,
        column: &str,
        metric: tidal_core::VectorMetric,
        query: &[f32],
        k: usize,
        ef_search: usize,
        projection: &[usize],
    ) -> Result<Option<(RecordBatch, Vec<f64>)>, SqlError> {
        let view = self.engine.read();
        let kind = table.kind;
        match view.schema().table(kind) {
            Ok(def) if def == table => {}
            _ => return Ok(None),
        }
        let Some(index) = view
            .vector_indexes(kind)
            .into_iter()
            .find(|t| t.def.column == column && t.def.metric == metric)
        else {
            return Ok(None);
        };
        if query.len() != index.index.spec().dimensions
            || query.iter().any(|x| !x.is_finite())
            || (metric == tidal_core::VectorMetric::Cosine && query.iter().all(|x| *x == 0.0))
        {
            return Ok(None);
        }
        let Some(col) = table.column_index(column) else {
            return Ok(None);
        };
        let beam = k.max(ef_search.clamp(1, crate::HNSW_EF_SEARCH_MAX));
        let ids = index
            .index
            .search(query, beam)
            .map_err(|e| SqlError::Engine(tidal_engine::EngineError::from(e)))?;
        let distance = match metric {
            tidal_core::VectorMetric::L2 => crate::vector::Metric::L2,
            tidal_core::VectorMetric::Cosine => crate::vector::Metric::Cosine,
            tidal_core::VectorMetric::InnerProduct => crate::vector::Metric::NegativeInnerProduct,
        };
        // The index orders its beam by the same metric: its first k rows are read and
        // re-ranked exactly, as the planned `HnswIndexScan` does.
        let mut found = Vec::with_capacity(k);
        for id in ids.into_iter().take(k) {
            let Some(row) = view.get(kind, EntityId(id))? else {
                continue;
            };
            let d = match row.get(col) {
                Some(tidal_core::Value::Vector(v)) if v.len() == query.len() => {
                    distance.eval(v, query)
                }
                _ => continue,
            };
            if !d.is_nan() {
                found.push((d, id, row));
            }
        }
        found.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        found.truncate(k);
        let schema = Arc::new(
            table_schema(table)
                .project(projection)
                .map_err(|e| SqlError::from(datafusion::error::DataFusionError::from(e)))?,
        );
        let mut rows = BatchBuilder::new(table, projection, schema, found.len().max(1));
        for (_, _, row) in &found {
            rows.push(row)?;
        }
        Ok(Some((rows.finish()?, found.iter().map(|f| f.0).collect())))
    }

    /// Starts an empty client transaction.
    pub fn begin(&self) -> PendingTxn {
        self.engine.begin().suspend()
    }

    /// Commits a client transaction: all of it, durably, or nothing. Blocks the
    /// calling thread for the group commit; see [`SqlSession::commit_async`].
    pub fn commit(&self, pending: PendingTxn) -> Result<WriteOutcome, SqlError> {
        Ok(self.engine.resume(pending)?.commit()?)
    }

    /// [`SqlSession::commit`] without parking the thread while the commit is made
    /// durable (a transaction that changes the schema still commits inline: it holds
    /// the DDL lock until applied).
    pub async fn commit_async(&self, pending: PendingTxn) -> Result<WriteOutcome, SqlError> {
        let commit = self.engine.resume(pending)?.commit_async();
        Ok(commit.await?)
    }

    /// The result columns of a tidalDB statement that returns rows (`SHOW SIGNALS`,
    /// `SHOW PROFILES`, `RETRIEVE`), without running it (for a wire Describe).
    pub async fn describe_tidal(
        &self,
        stmt: &crate::TidalStatement,
    ) -> Result<datafusion::arrow::datatypes::SchemaRef, SqlError> {
        use crate::TidalStatement as T;
        match stmt {
            T::Retrieve(r) => Ok(Arc::new(
                crate::retrieve::plan_retrieve(self, r)
                    .await?
                    .schema()
                    .as_arrow()
                    .clone(),
            )),
            T::Search(s) => crate::search::search_schema(self, s),
            T::Suggest(s) => crate::suggest::suggest_schema(self, s),
            T::ShowSignals | T::ShowProfiles | T::ShowRelationships => {
                let batches = crate::statement::execute(&self.engine, stmt.clone())?;
                batches
                    .first()
                    .map(|b| b.schema())
                    .ok_or_else(|| SqlError::Syntax {
                        message: "SHOW returned no schema".into(),
                    })
            }
            _ => Ok(Arc::new(Schema::empty())),
        }
    }

    /// Type-checks a new profile and fills in the signals it reads.
    async fn prepare_profile(&self, def: &mut tidal_core::ProfileDef) -> Result<(), SqlError> {
        crate::profile::complete_profile(def, &self.engine.schema())?;
        crate::retrieve::check_profile(self, def).await
    }

    async fn run(&self, sql: &str) -> Result<Output, SqlError> {
        let reset = crate::ann::check_setting(sql)?;
        let sql = reset.as_deref().unwrap_or(sql);
        if let Some((analyze, rest)) = explain_prefix(sql)
            && let Some(stmt) = crate::statement::parse(rest)?
        {
            if let crate::TidalStatement::Retrieve(r) = &stmt {
                // EXPLAIN RETRIEVE is DataFusion's EXPLAIN of the plan it compiles to.
                let frame = crate::retrieve::plan_retrieve(self, r).await?;
                return Ok(Output::Query(frame.explain(false, analyze)?));
            }
            if let crate::TidalStatement::Search(s) = &stmt {
                if let Some(b) = crate::search::explain_search_direct(self, s, analyze).await? {
                    return Ok(Output::Done(vec![b]));
                }
                let frame = crate::search::plan_search(self, s).await?;
                return Ok(Output::Query(frame.explain(false, analyze)?));
            }
            if let crate::TidalStatement::Suggest(s) = &stmt {
                return Ok(Output::Done(
                    crate::suggest::explain_suggest(self, s, analyze).await?,
                ));
            }
            return Ok(Output::Done(vec![
                self.explain_tidal(&stmt, analyze).await?,
            ]));
        }
        match crate::statement::parse(sql)? {
            Some(stmt) => self.run_tidal(stmt).await,
            None => Ok(Output::Query(self.read_only_frame(sql).await?)),
        }
    }

    /// Runs one already parsed tidalDB statement (as [`SqlSession::sql`] would), so a
    /// caller that had to parse it anyway does not pay for parsing twice.
    pub async fn sql_tidal(
        &self,
        stmt: crate::TidalStatement,
    ) -> Result<Vec<RecordBatch>, SqlError> {
        match self.run_tidal(stmt).await? {
            Output::Done(batches) => Ok(batches),
            Output::Query(frame) => Ok(frame.collect().await?),
        }
    }

    async fn run_tidal(&self, stmt: crate::TidalStatement) -> Result<Output, SqlError> {
        let done = |b: RecordBatch| Ok(Output::Done(vec![b]));
        match stmt {
            crate::TidalStatement::InsertSignals {
                columns,
                source,
                values,
            } => {
                // The source runs as an ordinary read-only query (a literal VALUES list
                // needs no planning); its rows are then validated and committed as one
                // transaction.
                let rows = match values {
                    Some(b) => vec![b],
                    None => self.read_only(&source).await?,
                };
                done(crate::insert::insert_signals(&self.engine, &columns, &rows).await?)
            }
            crate::TidalStatement::InsertRows {
                kind,
                columns,
                source,
                on_conflict,
            } => {
                let rows = self.read_only(&source).await?;
                done(
                    crate::insert::insert_rows(&self.engine, kind, &columns, &rows, &on_conflict)
                        .await?,
                )
            }
            crate::TidalStatement::ChangeRows(change) => {
                // The WHERE clause and the new values are evaluated by DataFusion over
                // the statement's snapshot; the changes commit as one transaction.
                let rows = self.read_only(&change.query).await?;
                done(crate::insert::change_rows(&self.engine, &change, &rows).await?)
            }
            crate::TidalStatement::InsertEdges {
                name,
                columns,
                source,
            } => {
                crate::insert::relation_exists(&self.engine.schema(), &name)?;
                let rows = self.read_only(&source).await?;
                done(crate::insert::insert_edges(&self.engine, &name, &columns, &rows).await?)
            }
            crate::TidalStatement::DeleteEdges { name, query } => {
                crate::insert::relation_exists(&self.engine.schema(), &name)?;
                let rows = self.read_only(&query).await?;
                done(crate::insert::delete_edges(&self.engine, &name, &rows).await?)
            }
            crate::TidalStatement::Retrieve(r) => Ok(Output::Query(
                crate::retrieve::plan_retrieve(self, &r).await?,
            )),
            crate::TidalStatement::Search(s) => {
                if let Some(b) = crate::search::run_search_direct(self, &s).await? {
                    return Ok(Output::Done(vec![b]));
                }
                Ok(Output::Query(crate::search::plan_search(self, &s).await?))
            }
            crate::TidalStatement::Suggest(s) => {
                match crate::suggest::run_suggest(self, &s).await? {
                    crate::suggest::SuggestOutput::Rows(b) => Ok(Output::Done(vec![b])),
                    crate::suggest::SuggestOutput::Frame(f) => Ok(Output::Query(f)),
                }
            }
            crate::TidalStatement::CreateProfile { mut def, replace } => {
                self.prepare_profile(&mut def).await?;
                Ok(Output::Done(crate::statement::execute(
                    &self.engine,
                    crate::TidalStatement::CreateProfile { def, replace },
                )?))
            }
            stmt => Ok(Output::Done(crate::statement::execute(&self.engine, stmt)?)),
        }
    }
}

impl SqlSession {
    /// `EXPLAIN` of a tidalDB statement: what the engine will do, then DataFusion's plan
    /// of the query that produces its rows (if any). Same columns as DataFusion's EXPLAIN.
    async fn explain_tidal(
        &self,
        stmt: &crate::TidalStatement,
        analyze: bool,
    ) -> Result<RecordBatch, SqlError> {
        use crate::TidalStatement as T;
        let atomic = "validated, then committed as one WAL transaction (durable on return)";
        let (what, source): (String, Option<&str>) = match stmt {
            T::CreateSignal { def, .. } => (
                format!(
                    "CreateSignal: {} ON {} windows=[{}]; schema change, {atomic}",
                    def.name,
                    def.kind.table_name(),
                    def.windows_text()
                ),
                None,
            ),
            T::DropSignal { name, if_exists } => (
                format!("DropSignal: {name} if_exists={if_exists}; schema change, {atomic}"),
                None,
            ),
            T::AlterSignalCohorts { name, add } => (
                format!(
                    "AlterSignalCohorts: {name} ADD COHORTS ({}); schema change, then the new \
                     cohorts are built from the event history, {atomic}",
                    add.iter().map(|d| d.sql()).collect::<Vec<_>>().join(", ")
                ),
                None,
            ),
            T::ShowSignals => ("ShowSignals: reads the schema".to_string(), None),
            T::ShowProfiles => ("ShowProfiles: reads the schema".to_string(), None),
            T::CreateProfile { def, replace } => (
                format!(
                    "CreateProfile: {} ON {} replace={replace}; schema change, {atomic}",
                    def.name,
                    def.kind.table_name()
                ),
                None,
            ),
            T::DropProfile { name, if_exists } => (
                format!("DropProfile: {name} if_exists={if_exists}; schema change, {atomic}"),
                None,
            ),
            T::CreateIndex { def, .. } => (
                format!(
                    "CreateIndex: {} ON {} USING hnsw ({} {}) m={} ef_construction={}; built from the table's rows, then {atomic}",
                    def.name,
                    def.kind.table_name(),
                    def.column,
                    def.metric.opclass(),
                    def.m,
                    def.ef_construction
                ),
                None,
            ),
            T::DropIndex { name, if_exists } => (
                format!("DropIndex: {name} if_exists={if_exists}; schema change, {atomic}"),
                None,
            ),
            T::Retrieve(_) => ("Retrieve".to_string(), None),
            T::Search(_) => ("Search".to_string(), None),
            T::Suggest(_) => ("Suggest".to_string(), None),
            T::CreateTable { def, .. } => (
                format!(
                    "CreateTable: {} ({} columns); schema change, {atomic}",
                    def.kind.table_name(),
                    def.columns.len()
                ),
                None,
            ),
            T::DropTable { kind, if_exists } => (
                format!(
                    "DropTable: {} if_exists={if_exists}; deletes every row, {atomic}",
                    kind.table_name()
                ),
                None,
            ),
            T::InsertSignals {
                columns, source, ..
            } => (
                format!(
                    "InsertSignals: columns=[{}]; rows of the query below are {atomic}",
                    columns.join(", ")
                ),
                Some(source.as_str()),
            ),
            T::InsertRows {
                kind,
                columns,
                source,
                on_conflict,
            } => (
                format!(
                    "InsertRows: {} columns=[{}] on_conflict={on_conflict:?}; rows of the query \
                     below are {atomic}",
                    kind.table_name(),
                    columns.join(", ")
                ),
                Some(source.as_str()),
            ),
            T::ChangeRows(c) => (
                format!(
                    "{}: {} columns=[{}]; rows found (and new values computed) by the query \
                     below are {atomic}",
                    if c.delete { "Delete" } else { "Update" },
                    c.kind.table_name(),
                    c.columns.join(", ")
                ),
                Some(c.query.as_str()),
            ),
            T::CreateRelationship { def, .. } => (
                format!(
                    "CreateRelationship: {} FROM {} TO {}; schema change, {atomic}",
                    def.name,
                    def.from.table_name(),
                    def.to.table_name()
                ),
                None,
            ),
            T::DropRelationship { name, if_exists } => (
                format!(
                    "DropRelationship: {name} if_exists={if_exists}; deletes every edge, {atomic}"
                ),
                None,
            ),
            T::ShowRelationships => ("ShowRelationships: reads the schema".to_string(), None),
            T::InsertEdges {
                name,
                columns,
                source,
            } => (
                format!(
                    "InsertEdges: {name} columns=[{}]; rows of the query below are {atomic}",
                    columns.join(", ")
                ),
                Some(source.as_str()),
            ),
            T::DeleteEdges { name, query } => (
                format!("DeleteEdges: {name}; edges found by the query below are {atomic}"),
                Some(query.as_str()),
            ),
        };
        let is_write = !matches!(
            stmt,
            T::ShowSignals
                | T::ShowProfiles
                | T::ShowRelationships
                | T::Retrieve(_)
                | T::Search(_)
                | T::Suggest(_)
        );
        if analyze && is_write {
            return Err(SqlError::Syntax {
                message: "EXPLAIN ANALYZE would apply this write; use EXPLAIN without ANALYZE"
                    .into(),
            });
        }
        let mut kinds = vec!["tidal_statement".to_string()];
        let mut plans = vec![what];
        if let Some(source) = source {
            for b in self.read_only(&format!("EXPLAIN {source}")).await? {
                let col = |i: usize| {
                    b.column(i)
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .map(|a| a.iter().map(|v| v.unwrap_or("").to_string()).collect())
                        .unwrap_or_else(Vec::new)
                };
                let (k, p): (Vec<String>, Vec<String>) = (col(0), col(1));
                kinds.extend(k.into_iter().map(|k| format!("source {k}")));
                plans.extend(p);
            }
        }
        let schema = Arc::new(Schema::new(vec![
            Field::new("plan_type", DataType::Utf8, false),
            Field::new("plan", DataType::Utf8, false),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(kinds)),
                Arc::new(StringArray::from(plans)),
            ],
        )
        .map_err(|e| SqlError::DataFusion(e.into()))
    }
}

/// Whether `sql` is `EXPLAIN` of a tidalDB statement (RETRIEVE, SEARCH, CREATE SIGNAL…),
/// which DataFusion's parser cannot describe: its result has [`explain_schema`].
pub fn explains_tidal_statement(sql: &str) -> Result<bool, SqlError> {
    match explain_prefix(sql) {
        Some((_, rest)) => Ok(crate::statement::parse(rest)?.is_some()),
        None => Ok(false),
    }
}

/// The columns of every EXPLAIN: DataFusion's `(plan_type, plan)`.
pub fn explain_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("plan_type", DataType::Utf8, false),
        Field::new("plan", DataType::Utf8, false),
    ]))
}

/// `EXPLAIN [ANALYZE] [VERBOSE] <rest>` → (analyze, rest).
fn explain_prefix(sql: &str) -> Option<(bool, &str)> {
    fn word<'a>(s: &'a str, w: &str) -> Option<&'a str> {
        s.get(..w.len())
            .filter(|p| p.eq_ignore_ascii_case(w))
            .filter(|_| s[w.len()..].starts_with(char::is_whitespace))
            .map(|_| s[w.len()..].trim_start())
    }
    let mut rest = word(sql.trim_start(), "EXPLAIN")?;
    let mut analyze = false;
    if let Some(r) = word(rest, "ANALYZE") {
        analyze = true;
        rest = r;
    }
    if let Some(r) = word(rest, "VERBOSE") {
        rest = r;
    }
    Some((analyze, rest))
}

/// A statement's result: computed already (writes, tidal statements) or a planned query.
enum Output {
    Done(Vec<RecordBatch>),
    Query(DataFrame),
}

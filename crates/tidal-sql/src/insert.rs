//! `INSERT INTO signals`: rows of a VALUES list or query become one atomic event batch.

use datafusion::arrow::array::{
    Array, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt64Array,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::error::DataFusionError;
use std::sync::Arc;
use tidal_core::{ColumnType, CoreError, EntityId, EntityKind, Timestamp, Value};
use tidal_engine::{Engine, EngineError, WriteTxn};

use crate::SqlError;
use crate::statement::{OnConflict, RowChange};

/// Arrow's cast turns unparsable values into NULL by default; a bad value must be an
/// error instead.
fn strict_cast(
    a: &Arc<dyn Array>,
    ty: &DataType,
) -> Result<Arc<dyn Array>, datafusion::arrow::error::ArrowError> {
    cast_with_options(
        a,
        ty,
        &CastOptions {
            safe: false,
            ..CastOptions::default()
        },
    )
}

/// The columns of `signals`, in table order (SQL.md §3).
pub const SIGNAL_COLUMNS: [&str; 5] = ["signal", "entity_id", "user_id", "weight", "ts"];

fn col_err(column: &str, reason: impl Into<String>) -> SqlError {
    SqlError::from(CoreError::BadValue {
        column: column.to_string(),
        reason: reason.into(),
    })
}

/// Positions of each signals column in the source rows (`None` = use the default).
fn layout(columns: &[String], width: usize) -> Result<[Option<usize>; 5], SqlError> {
    let names: Vec<&str> = if columns.is_empty() {
        SIGNAL_COLUMNS.iter().take(width).copied().collect()
    } else {
        columns.iter().map(String::as_str).collect()
    };
    if names.len() != width {
        return Err(SqlError::Syntax {
            message: format!(
                "INSERT has {} target columns but {width} values per row",
                names.len()
            ),
        });
    }
    let mut pos = [None; 5];
    for (i, n) in names.iter().enumerate() {
        let slot = SIGNAL_COLUMNS.iter().position(|c| c == n).ok_or_else(|| {
            SqlError::from(CoreError::UnknownColumn {
                table: "signals".into(),
                column: n.to_string(),
            })
        })?;
        if pos[slot].replace(i).is_some() {
            return Err(col_err(n, "named twice"));
        }
    }
    for required in [0, 1] {
        if pos[required].is_none() {
            return Err(col_err(SIGNAL_COLUMNS[required], "is required"));
        }
    }
    Ok(pos)
}

fn as_type(
    batch: &RecordBatch,
    i: usize,
    ty: &DataType,
    name: &str,
) -> Result<Arc<dyn Array>, SqlError> {
    strict_cast(batch.column(i), ty)
        .map_err(|e| col_err(name, format!("cannot be read as {ty}: {e}")))
}

/// Adds every row of `batches` to one transaction and commits it; returns the count
/// of events accepted (exact duplicates within the dedup window are not counted).
pub async fn insert_signals(
    engine: &Engine,
    columns: &[String],
    batches: &[RecordBatch],
) -> Result<RecordBatch, SqlError> {
    // The transaction (which may hold a lock guard) must not live across the await.
    let (rows, commit) = {
        let mut txn = engine.begin();
        (add_signals(&mut txn, columns, batches)?, txn.commit_async())
    };
    let outcome = commit.await?;
    debug_assert_eq!(
        rows as usize,
        outcome.events_accepted + outcome.events_duplicate
    );
    count_batch(outcome.events_accepted as u64)
}

/// Adds every row of `batches` as an event to `txn` (not committed); returns the rows.
pub fn add_signals(
    txn: &mut WriteTxn<'_>,
    columns: &[String],
    batches: &[RecordBatch],
) -> Result<u64, SqlError> {
    let mut rows = 0u64;
    for batch in batches {
        let pos = layout(columns, batch.num_columns())?;
        let n = batch.num_rows();
        let sig = as_type(batch, pos[0].unwrap_or(0), &DataType::Utf8, "signal")?;
        let sig = sig
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| col_err("signal", "must be text"))?;
        let ent = as_type(batch, pos[1].unwrap_or(0), &DataType::Int64, "entity_id")?;
        let ent = ent
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| col_err("entity_id", "must be a BIGINT"))?;
        let user = pos[2]
            .map(|i| as_type(batch, i, &DataType::Int64, "user_id"))
            .transpose()?;
        let user = user
            .as_ref()
            .and_then(|a| a.as_any().downcast_ref::<Int64Array>());
        let weight = pos[3]
            .map(|i| as_type(batch, i, &DataType::Float64, "weight"))
            .transpose()?;
        let weight = weight
            .as_ref()
            .and_then(|a| a.as_any().downcast_ref::<Float64Array>());
        let ts = pos[4]
            .map(|i| timestamps(batch.column(i), "ts"))
            .transpose()?;
        for r in 0..n {
            if sig.is_null(r) {
                return Err(SqlError::Engine(EngineError::NullColumn {
                    column: "signal".into(),
                }));
            }
            if ent.is_null(r) {
                return Err(SqlError::Engine(EngineError::NullColumn {
                    column: "entity_id".into(),
                }));
            }
            let entity = EntityId::from_i64(ent.value(r)).ok_or_else(|| {
                col_err(
                    "entity_id",
                    format!("ids are non-negative, got {}", ent.value(r)),
                )
            })?;
            let user = match user {
                Some(u) if u.is_valid(r) => {
                    Some(EntityId::from_i64(u.value(r)).ok_or_else(|| {
                        col_err(
                            "user_id",
                            format!("ids are non-negative, got {}", u.value(r)),
                        )
                    })?)
                }
                _ => None,
            };
            let weight = match weight {
                Some(w) if w.is_valid(r) => w.value(r),
                Some(_) => {
                    return Err(SqlError::Engine(EngineError::NullColumn {
                        column: "weight".into(),
                    }));
                }
                None => 1.0,
            };
            let ts = match &ts {
                Some(t) if t.is_valid(r) => Some(Timestamp(t.value(r))),
                _ => None,
            };
            txn.signal(sig.value(r), entity, user, weight, ts)?;
            rows += 1;
        }
    }
    Ok(rows)
}

/// A timestamp column (`ts` of signals, or an entity column named `name`) as
/// microseconds: text goes through tidalDB's timestamp parser (UTC when no zone is
/// given), timestamps and dates through Arrow's cast. Anything else is an error: Arrow
/// would read a number as microseconds since the epoch, where PostgreSQL refuses it.
fn timestamps(col: &Arc<dyn Array>, name: &str) -> Result<TimestampMicrosecondArray, SqlError> {
    let cast = |ty: &DataType| {
        strict_cast(col, ty).map_err(|e| col_err(name, format!("cannot be read as {ty}: {e}")))
    };
    match col.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let text = cast(&DataType::Utf8)?;
            let text = text
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| col_err(name, "must be a timestamp"))?;
            let mut out = Vec::with_capacity(text.len());
            for v in text.iter() {
                out.push(v.map(Timestamp::parse).transpose()?.map(|t| t.0));
            }
            Ok(out.into_iter().collect())
        }
        DataType::Null | DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {
            let a = cast(&DataType::Timestamp(TimeUnit::Microsecond, None))?;
            a.as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .cloned()
                .ok_or_else(|| col_err(name, "must be a timestamp"))
        }
        other => Err(col_err(
            name,
            format!(
                "a value of type {other} cannot be read as a timestamp \
                 (give a TIMESTAMP or text such as '2026-11-25 10:00:00')"
            ),
        )),
    }
}

pub(crate) fn count_batch(n: u64) -> Result<RecordBatch, SqlError> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]));
    RecordBatch::try_new(schema, vec![Arc::new(UInt64Array::from(vec![n]))])
        .map_err(|e| SqlError::DataFusion(DataFusionError::from(e)))
}

/// Converts one source column into values of a declared column type.
fn column_values(
    array: &Arc<dyn Array>,
    col: &tidal_core::ColumnDef,
) -> Result<Vec<Value>, SqlError> {
    use datafusion::arrow::array::{BooleanArray, Float32Array, ListArray};
    let name = col.name.as_str();
    let n = array.len();
    let text_source = matches!(
        array.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    );
    let casted = |ty: &DataType| -> Result<Arc<dyn Array>, SqlError> {
        strict_cast(array, ty).map_err(|e| col_err(name, format!("cannot be read as {ty}: {e}")))
    };
    let mut out = Vec::with_capacity(n);
    match col.ty {
        ColumnType::BigInt | ColumnType::Int => {
            let a = casted(&DataType::Int64)?;
            let a = a
                .as_any()
                .downcast_ref::<Int64Array>()
                .ok_or_else(|| col_err(name, "not an integer"))?;
            out.extend(a.iter().map(|v| v.map_or(Value::Null, Value::Int)));
        }
        ColumnType::Double => {
            let a = casted(&DataType::Float64)?;
            let a = a
                .as_any()
                .downcast_ref::<Float64Array>()
                .ok_or_else(|| col_err(name, "not a number"))?;
            out.extend(a.iter().map(|v| v.map_or(Value::Null, Value::Double)));
        }
        ColumnType::Real => {
            let a = casted(&DataType::Float32)?;
            let a = a
                .as_any()
                .downcast_ref::<Float32Array>()
                .ok_or_else(|| col_err(name, "not a number"))?;
            out.extend(a.iter().map(|v| v.map_or(Value::Null, Value::Real)));
        }
        ColumnType::Boolean => {
            let a = casted(&DataType::Boolean)?;
            let a = a
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| col_err(name, "not a boolean"))?;
            out.extend(a.iter().map(|v| v.map_or(Value::Null, Value::Bool)));
        }
        ColumnType::Text => {
            let a = casted(&DataType::Utf8)?;
            let a = a
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| col_err(name, "not text"))?;
            out.extend(
                a.iter()
                    .map(|v| v.map_or(Value::Null, |s| Value::Text(s.to_string()))),
            );
        }
        ColumnType::Timestamp => {
            let a = timestamps(array, name)?;
            out.extend(
                a.iter()
                    .map(|v| v.map_or(Value::Null, |t| Value::Timestamp(Timestamp(t)))),
            );
        }
        ColumnType::TextArray | ColumnType::Vector(_) if text_source => {
            let a = casted(&DataType::Utf8)?;
            let a = a
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| col_err(name, "not text"))?;
            for v in a.iter() {
                out.push(match v {
                    None => Value::Null,
                    Some(s) if col.ty == ColumnType::TextArray => {
                        Value::TextArray(parse_text_array(name, s)?)
                    }
                    Some(s) => Value::Vector(parse_vector(name, s)?),
                });
            }
        }
        ColumnType::TextArray | ColumnType::Vector(_) => {
            let elem = if col.ty == ColumnType::TextArray {
                DataType::Utf8
            } else {
                DataType::Float32
            };
            let a = casted(&DataType::List(Arc::new(Field::new_list_field(elem, true))))?;
            let a = a
                .as_any()
                .downcast_ref::<ListArray>()
                .ok_or_else(|| col_err(name, "not a list"))?;
            for i in 0..n {
                if a.is_null(i) {
                    out.push(Value::Null);
                    continue;
                }
                let item = a.value(i);
                if col.ty == ColumnType::TextArray {
                    let s = item
                        .as_any()
                        .downcast_ref::<StringArray>()
                        .ok_or_else(|| col_err(name, "not text"))?;
                    out.push(Value::TextArray(
                        s.iter()
                            .map(|v| v.unwrap_or_default().to_string())
                            .collect(),
                    ));
                } else {
                    let f = item
                        .as_any()
                        .downcast_ref::<Float32Array>()
                        .ok_or_else(|| col_err(name, "not floats"))?;
                    if f.null_count() > 0 {
                        return Err(col_err(name, "vector elements cannot be NULL"));
                    }
                    out.push(Value::Vector(f.values().to_vec()));
                }
            }
        }
    }
    Ok(out)
}

/// PostgreSQL's text form of a text array: `{a,b,"c d"}` (quotes and backslashes honoured).
pub(crate) fn parse_text_array(column: &str, s: &str) -> Result<Vec<String>, SqlError> {
    let inner = s
        .trim()
        .strip_prefix('{')
        .and_then(|r| r.strip_suffix('}'))
        .ok_or_else(|| {
            col_err(
                column,
                format!("malformed array literal {s:?} (expected {{a,b}})"),
            )
        })?;
    let mut out = Vec::new();
    if inner.trim().is_empty() {
        return Ok(out);
    }
    let mut cur = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in inner.chars() {
        match c {
            _ if escaped => {
                cur.push(c);
                escaped = false;
            }
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur).trim().to_string()),
            _ => cur.push(c),
        }
    }
    if quoted {
        return Err(col_err(
            column,
            format!("unterminated quote in array literal {s:?}"),
        ));
    }
    out.push(cur.trim().to_string());
    Ok(out)
}

/// pgvector's text form: `[0.1, 0.2, 0.3]`.
fn parse_vector(column: &str, s: &str) -> Result<Vec<f32>, SqlError> {
    let inner = s
        .trim()
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(|| {
            col_err(
                column,
                format!("malformed vector literal {s:?} (expected [x,y,...])"),
            )
        })?;
    inner
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<f32>()
                .map_err(|_| col_err(column, format!("{x:?} is not a number")))
        })
        .collect()
}

/// `INSERT INTO items|users|creators`: every row of `batches` becomes one atomic write.
pub async fn insert_rows(
    engine: &Engine,
    kind: EntityKind,
    columns: &[String],
    batches: &[RecordBatch],
    on_conflict: &OnConflict,
) -> Result<RecordBatch, SqlError> {
    let (written, commit) = {
        let mut txn = engine.begin();
        let written = add_rows(&mut txn, engine, kind, columns, batches, on_conflict)?;
        (written, txn.commit_async())
    };
    commit.await?;
    count_batch(written)
}

/// Adds the rows of an entity INSERT to `txn` (not committed); returns the rows written.
/// ON CONFLICT looks at committed rows.
pub fn add_rows(
    txn: &mut WriteTxn<'_>,
    engine: &Engine,
    kind: EntityKind,
    columns: &[String],
    batches: &[RecordBatch],
    on_conflict: &OnConflict,
) -> Result<u64, SqlError> {
    let def = txn.schema().table(kind).map_err(SqlError::from)?.clone();
    let targets: Vec<usize> = if columns.is_empty() {
        (0..def.columns.len()).collect()
    } else {
        let mut seen = std::collections::BTreeSet::new();
        columns
            .iter()
            .map(|c| {
                let i = def.column_index(c).ok_or_else(|| {
                    SqlError::from(CoreError::UnknownColumn {
                        table: kind.table_name().to_string(),
                        column: c.clone(),
                    })
                })?;
                if !seen.insert(i) {
                    return Err(col_err(c, "named twice"));
                }
                Ok(i)
            })
            .collect::<Result<_, _>>()?
    };
    let updates: Vec<usize> = match on_conflict {
        OnConflict::Update(cols) => cols
            .iter()
            .map(|c| {
                def.column_index(c)
                    .ok_or_else(|| col_err(c, "no such column"))
            })
            .collect::<Result<_, _>>()?,
        _ => Vec::new(),
    };
    let view = engine.read();
    let mut written = 0u64;
    let mut seen_ids = std::collections::HashSet::new();
    for batch in batches {
        if batch.num_columns() != targets.len() {
            return Err(SqlError::Syntax {
                message: format!(
                    "INSERT has {} target columns but {} values per row",
                    targets.len(),
                    batch.num_columns()
                ),
            });
        }
        // Column-wise conversion, then rows are assembled by draining each column.
        let mut cols = Vec::with_capacity(targets.len());
        for (j, &i) in targets.iter().enumerate() {
            cols.push(column_values(batch.column(j), &def.columns[i])?.into_iter());
        }
        for _ in 0..batch.num_rows() {
            let mut row = vec![Value::Null; def.columns.len()];
            for (col, &i) in cols.iter_mut().zip(&targets) {
                row[i] = col.next().unwrap_or(Value::Null);
            }
            let id = match &row[0] {
                Value::Int(v) => EntityId::from_i64(*v)
                    .ok_or_else(|| col_err("id", format!("ids are non-negative, got {v}")))?,
                _ => return Err(SqlError::Engine(EngineError::NullId { kind })),
            };
            // Within one statement a second row for an id conflicts with the first, as
            // in PostgreSQL (which refuses to affect a row twice).
            if !seen_ids.insert(id) && *on_conflict != OnConflict::Error {
                return Err(col_err(
                    "id",
                    format!("ON CONFLICT cannot affect id {id} twice in one statement"),
                ));
            }
            match on_conflict {
                OnConflict::Error => {
                    // Fail fast (the commit re-checks under the writer): inside a
                    // client transaction this reports the duplicate at its statement.
                    if view.get(kind, id)?.is_some() {
                        return Err(SqlError::Engine(EngineError::DuplicateKey { kind, id }));
                    }
                    txn.insert(kind, row)?
                }
                OnConflict::Nothing => {
                    if view.get(kind, id)?.is_some() {
                        continue;
                    }
                    txn.insert(kind, row)?;
                }
                OnConflict::Update(_) => match view.get(kind, id)? {
                    None => txn.insert(kind, row)?,
                    Some(mut old) => {
                        old.resize(def.columns.len(), Value::Null);
                        for &i in &updates {
                            old[i] = row[i].clone();
                        }
                        txn.upsert(kind, old)?;
                    }
                },
            }
            written += 1;
        }
    }
    Ok(written)
}

/// Applies an UPDATE or DELETE: `rows` holds the matching ids (and, for UPDATE, the new
/// values of the assigned columns, in order). All changes commit as one transaction.
pub async fn change_rows(
    engine: &Engine,
    change: &RowChange,
    rows: &[RecordBatch],
) -> Result<RecordBatch, SqlError> {
    let (n, commit) = {
        let mut txn = engine.begin();
        (
            add_changes(&mut txn, engine, change, rows)?,
            txn.commit_async(),
        )
    };
    commit.await?;
    count_batch(n)
}

/// Adds an UPDATE's or DELETE's changes to `txn` (not committed); returns the rows.
pub fn add_changes(
    txn: &mut WriteTxn<'_>,
    engine: &Engine,
    change: &RowChange,
    rows: &[RecordBatch],
) -> Result<u64, SqlError> {
    let def = txn
        .schema()
        .table(change.kind)
        .map_err(SqlError::from)?
        .clone();
    let assigned: Vec<usize> = change
        .columns
        .iter()
        .map(|c| {
            def.column_index(c).ok_or_else(|| {
                SqlError::from(CoreError::UnknownColumn {
                    table: change.kind.table_name().to_string(),
                    column: c.clone(),
                })
            })
        })
        .collect::<Result<_, _>>()?;
    let view = engine.read();
    let mut n = 0u64;
    for batch in rows {
        let ids = strict_cast(batch.column(0), &DataType::Int64)
            .map_err(|e| SqlError::DataFusion(DataFusionError::from(e)))?;
        let ids = ids
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| col_err("id", "not a BIGINT"))?;
        let mut values = Vec::with_capacity(assigned.len());
        for (j, &i) in assigned.iter().enumerate() {
            values.push(column_values(batch.column(j + 1), &def.columns[i])?.into_iter());
        }
        for id in ids.iter() {
            let id = id
                .and_then(EntityId::from_i64)
                .ok_or_else(|| col_err("id", "stored id is invalid"))?;
            if change.delete {
                txn.delete(change.kind, id)?;
            } else {
                let Some(mut row) = view.get(change.kind, id)? else {
                    continue;
                };
                row.resize(def.columns.len(), Value::Null);
                for (col, &i) in values.iter_mut().zip(&assigned) {
                    row[i] = col.next().unwrap_or(Value::Null);
                }
                txn.upsert(change.kind, row)?;
            }
            n += 1;
        }
    }
    Ok(n)
}

/// The columns of a relationship's edge table, in table order (SQL.md §8).
pub const EDGE_COLUMNS: [&str; 3] = ["src", "dst", "created_at"];

/// One id of an edge: non-NULL and non-negative.
fn edge_id(a: &Int64Array, r: usize, column: &str) -> Result<EntityId, SqlError> {
    if a.is_null(r) {
        return Err(SqlError::Engine(EngineError::NullColumn {
            column: column.into(),
        }));
    }
    EntityId::from_i64(a.value(r))
        .ok_or_else(|| col_err(column, format!("ids are non-negative, got {}", a.value(r))))
}

/// Adds every row of `batches` as an edge of relationship `name` to `txn` (not
/// committed); returns the rows. `created_at` defaults to the transaction's time.
pub fn add_edges(
    txn: &mut WriteTxn<'_>,
    name: &str,
    columns: &[String],
    batches: &[RecordBatch],
) -> Result<u64, SqlError> {
    relation_exists(txn.schema(), name)?;
    let mut rows = 0u64;
    for batch in batches {
        let width = batch.num_columns();
        let names: Vec<&str> = if columns.is_empty() {
            EDGE_COLUMNS.iter().take(width).copied().collect()
        } else {
            columns.iter().map(String::as_str).collect()
        };
        if names.len() != width {
            return Err(SqlError::Syntax {
                message: format!(
                    "INSERT has {} target columns but {width} values per row",
                    names.len()
                ),
            });
        }
        let mut pos = [None; 3];
        for (i, n) in names.iter().enumerate() {
            let slot = EDGE_COLUMNS.iter().position(|c| c == n).ok_or_else(|| {
                SqlError::from(CoreError::UnknownColumn {
                    table: name.to_string(),
                    column: n.to_string(),
                })
            })?;
            if pos[slot].replace(i).is_some() {
                return Err(col_err(n, "named twice"));
            }
        }
        let (Some(src), Some(dst)) = (pos[0], pos[1]) else {
            return Err(col_err(
                if pos[0].is_none() { "src" } else { "dst" },
                "is required",
            ));
        };
        let src = as_type(batch, src, &DataType::Int64, "src")?;
        let src = src
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| col_err("src", "must be a BIGINT"))?;
        let dst = as_type(batch, dst, &DataType::Int64, "dst")?;
        let dst = dst
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| col_err("dst", "must be a BIGINT"))?;
        let created = pos[2]
            .map(|i| timestamps(batch.column(i), "created_at"))
            .transpose()?;
        for r in 0..batch.num_rows() {
            let (s, d) = (edge_id(src, r, "src")?, edge_id(dst, r, "dst")?);
            let at = match &created {
                Some(t) if t.is_valid(r) => Some(Timestamp(t.value(r))),
                _ => None,
            };
            txn.edge_insert(name, s, d, at)?;
            rows += 1;
        }
    }
    Ok(rows)
}

/// Adds the removal of every `(src, dst)` row of `rows` to `txn`; returns the count.
pub fn add_edge_deletes(
    txn: &mut WriteTxn<'_>,
    name: &str,
    rows: &[RecordBatch],
) -> Result<u64, SqlError> {
    relation_exists(txn.schema(), name)?;
    let mut n = 0u64;
    for batch in rows {
        let src = as_type(batch, 0, &DataType::Int64, "src")?;
        let dst = as_type(batch, 1, &DataType::Int64, "dst")?;
        let (Some(src), Some(dst)) = (
            src.as_any().downcast_ref::<Int64Array>(),
            dst.as_any().downcast_ref::<Int64Array>(),
        ) else {
            return Err(col_err("src", "must be a BIGINT"));
        };
        for r in 0..batch.num_rows() {
            txn.edge_delete(name, edge_id(src, r, "src")?, edge_id(dst, r, "dst")?)?;
            n += 1;
        }
    }
    Ok(n)
}

/// `name` is a relationship (an unknown name is PostgreSQL's undefined table).
pub(crate) fn relation_exists(schema: &tidal_core::Schema, name: &str) -> Result<(), SqlError> {
    match schema.relationship(name) {
        Ok(_) => Ok(()),
        Err(_) => Err(CoreError::UnknownRelation {
            name: name.to_string(),
        }
        .into()),
    }
}

/// `INSERT INTO <relationship>`: every row of `batches` one edge, in one transaction.
pub async fn insert_edges(
    engine: &Engine,
    name: &str,
    columns: &[String],
    batches: &[RecordBatch],
) -> Result<RecordBatch, SqlError> {
    let (n, commit) = {
        let mut txn = engine.begin();
        (
            add_edges(&mut txn, name, columns, batches)?,
            txn.commit_async(),
        )
    };
    commit.await?;
    count_batch(n)
}

/// `DELETE FROM <relationship>`: `rows` are the `(src, dst)` pairs found.
pub async fn delete_edges(
    engine: &Engine,
    name: &str,
    rows: &[RecordBatch],
) -> Result<RecordBatch, SqlError> {
    let (n, commit) = {
        let mut txn = engine.begin();
        (add_edge_deletes(&mut txn, name, rows)?, txn.commit_async())
    };
    commit.await?;
    count_batch(n)
}

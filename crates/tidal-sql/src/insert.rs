//! `INSERT INTO signals`: rows of a VALUES list or query become one atomic event batch.

use datafusion::arrow::array::{
    Array, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::error::DataFusionError;
use std::sync::Arc;
use tidal_core::{CoreError, EntityId, Timestamp};
use tidal_engine::{Engine, EngineError};

use crate::SqlError;

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
            col_err(
                n,
                "signals has no such column (signal, entity_id, user_id, weight, ts)",
            )
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
    cast(batch.column(i), ty).map_err(|e| col_err(name, format!("cannot be read as {ty}: {e}")))
}

/// Adds every row of `batches` to one transaction and commits it; returns the count
/// of events accepted (exact duplicates within the dedup window are not counted).
pub fn insert_signals(
    engine: &Engine,
    columns: &[String],
    batches: &[RecordBatch],
) -> Result<RecordBatch, SqlError> {
    let mut txn = engine.begin();
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
        let ts = pos[4].map(|i| timestamps(batch, i)).transpose()?;
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
    let outcome = txn.commit()?;
    debug_assert_eq!(
        rows as usize,
        outcome.events_accepted + outcome.events_duplicate
    );
    let schema = Arc::new(Schema::new(vec![Field::new(
        "count",
        DataType::UInt64,
        false,
    )]));
    let count = UInt64Array::from(vec![outcome.events_accepted as u64]);
    RecordBatch::try_new(schema, vec![Arc::new(count)])
        .map_err(|e| SqlError::DataFusion(DataFusionError::from(e)))
}

/// The `ts` column as microseconds: text goes through tidalDB's timestamp parser (UTC
/// when no zone is given), anything else through Arrow's cast.
fn timestamps(batch: &RecordBatch, i: usize) -> Result<TimestampMicrosecondArray, SqlError> {
    let col = batch.column(i);
    if matches!(
        col.data_type(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
    ) {
        let text = as_type(batch, i, &DataType::Utf8, "ts")?;
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| col_err("ts", "must be a timestamp"))?;
        let mut out = Vec::with_capacity(text.len());
        for v in text.iter() {
            out.push(v.map(Timestamp::parse).transpose()?.map(|t| t.0));
        }
        return Ok(out.into_iter().collect());
    }
    let a = as_type(
        batch,
        i,
        &DataType::Timestamp(TimeUnit::Microsecond, None),
        "ts",
    )?;
    a.as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .cloned()
        .ok_or_else(|| col_err("ts", "must be a timestamp"))
}

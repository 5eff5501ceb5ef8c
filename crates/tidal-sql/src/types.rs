//! Entity rows ↔ Arrow: column types, schemas and record-batch building.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, FixedSizeListBuilder, Float32Builder, Float64Builder,
    Int32Builder, Int64Builder, ListBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use tidal_core::{ColumnType, Row, TableDef, Value};

/// The Arrow type of a declared column.
pub fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::BigInt => DataType::Int64,
        ColumnType::Int => DataType::Int32,
        ColumnType::Double => DataType::Float64,
        ColumnType::Real => DataType::Float32,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Text => DataType::Utf8,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        ColumnType::TextArray => {
            DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
        }
        ColumnType::Vector(n) => DataType::FixedSizeList(
            Arc::new(Field::new_list_field(DataType::Float32, true)),
            n as i32,
        ),
    }
}

/// The Arrow schema of an entity table: `id` is NOT NULL, everything else nullable.
pub fn table_schema(def: &TableDef) -> SchemaRef {
    let fields: Vec<Field> = def
        .columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(c.name.to_ascii_lowercase(), arrow_type(c.ty), i != 0))
        .collect();
    Arc::new(Schema::new(fields))
}

/// A column builder for one declared type.
enum ColBuilder {
    Int64(Int64Builder),
    Int32(Int32Builder),
    F64(Float64Builder),
    F32(Float32Builder),
    Bool(BooleanBuilder),
    Text(StringBuilder),
    Ts(TimestampMicrosecondBuilder),
    TextArray(ListBuilder<StringBuilder>),
    Vector(FixedSizeListBuilder<Float32Builder>, usize),
}

impl ColBuilder {
    fn new(ty: ColumnType, cap: usize) -> ColBuilder {
        match ty {
            ColumnType::BigInt => ColBuilder::Int64(Int64Builder::with_capacity(cap)),
            ColumnType::Int => ColBuilder::Int32(Int32Builder::with_capacity(cap)),
            ColumnType::Double => ColBuilder::F64(Float64Builder::with_capacity(cap)),
            ColumnType::Real => ColBuilder::F32(Float32Builder::with_capacity(cap)),
            ColumnType::Boolean => ColBuilder::Bool(BooleanBuilder::with_capacity(cap)),
            ColumnType::Text => ColBuilder::Text(StringBuilder::with_capacity(cap, cap * 16)),
            ColumnType::Timestamp => {
                ColBuilder::Ts(TimestampMicrosecondBuilder::with_capacity(cap))
            }
            ColumnType::TextArray => ColBuilder::TextArray(ListBuilder::new(StringBuilder::new())),
            ColumnType::Vector(n) => {
                let n = n as usize;
                ColBuilder::Vector(
                    FixedSizeListBuilder::with_capacity(
                        Float32Builder::with_capacity(cap * n),
                        n as i32,
                        cap,
                    ),
                    n,
                )
            }
        }
    }

    fn push(&mut self, v: &Value) -> Result<()> {
        match (self, v) {
            (ColBuilder::Int64(b), Value::Int(x)) => b.append_value(*x),
            (ColBuilder::Int64(b), Value::Null) => b.append_null(),
            (ColBuilder::Int32(b), Value::Int(x)) => {
                b.append_value(i32::try_from(*x).map_err(|_| {
                    DataFusionError::Internal(format!("{x} out of range for integer"))
                })?)
            }
            (ColBuilder::Int32(b), Value::Null) => b.append_null(),
            (ColBuilder::F64(b), Value::Double(x)) => b.append_value(*x),
            (ColBuilder::F64(b), Value::Null) => b.append_null(),
            (ColBuilder::F32(b), Value::Real(x)) => b.append_value(*x),
            (ColBuilder::F32(b), Value::Null) => b.append_null(),
            (ColBuilder::Bool(b), Value::Bool(x)) => b.append_value(*x),
            (ColBuilder::Bool(b), Value::Null) => b.append_null(),
            (ColBuilder::Text(b), Value::Text(x)) => b.append_value(x),
            (ColBuilder::Text(b), Value::Null) => b.append_null(),
            (ColBuilder::Ts(b), Value::Timestamp(t)) => b.append_value(t.0),
            (ColBuilder::Ts(b), Value::Null) => b.append_null(),
            (ColBuilder::TextArray(b), Value::TextArray(a)) => {
                for s in a {
                    b.values().append_value(s);
                }
                b.append(true);
            }
            (ColBuilder::TextArray(b), Value::Null) => b.append(false),
            (ColBuilder::Vector(b, n), Value::Vector(v)) if v.len() == *n => {
                b.values().append_slice(v);
                b.append(true);
            }
            (ColBuilder::Vector(b, n), Value::Null) => {
                for _ in 0..*n {
                    b.values().append_null();
                }
                b.append(false);
            }
            (_, v) => {
                return Err(DataFusionError::Internal(format!(
                    "stored value of type {} does not match the column type",
                    v.type_name()
                )));
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColBuilder::Int64(b) => Arc::new(b.finish()),
            ColBuilder::Int32(b) => Arc::new(b.finish()),
            ColBuilder::F64(b) => Arc::new(b.finish()),
            ColBuilder::F32(b) => Arc::new(b.finish()),
            ColBuilder::Bool(b) => Arc::new(b.finish()),
            ColBuilder::Text(b) => Arc::new(b.finish()),
            ColBuilder::Ts(b) => Arc::new(b.finish()),
            ColBuilder::TextArray(b) => Arc::new(b.finish()),
            ColBuilder::Vector(b, _) => Arc::new(b.finish()),
        }
    }

    fn len(&self) -> usize {
        match self {
            ColBuilder::Int64(b) => b.len(),
            ColBuilder::Int32(b) => b.len(),
            ColBuilder::F64(b) => b.len(),
            ColBuilder::F32(b) => b.len(),
            ColBuilder::Bool(b) => b.len(),
            ColBuilder::Text(b) => b.len(),
            ColBuilder::Ts(b) => b.len(),
            ColBuilder::TextArray(b) => b.len(),
            ColBuilder::Vector(b, _) => b.len(),
        }
    }
}

/// Accumulates rows (projected to some columns) into record batches.
pub struct BatchBuilder {
    schema: SchemaRef,
    /// Indexes into the row for each output column.
    columns: Vec<usize>,
    builders: Vec<ColBuilder>,
    rows: usize,
}

impl BatchBuilder {
    /// `projection` selects and orders columns of `def`; `schema` is the projected schema.
    pub fn new(
        def: &TableDef,
        projection: &[usize],
        schema: SchemaRef,
        cap: usize,
    ) -> BatchBuilder {
        let builders = projection
            .iter()
            .map(|&i| ColBuilder::new(def.columns[i].ty, cap))
            .collect();
        BatchBuilder {
            schema,
            columns: projection.to_vec(),
            builders,
            rows: 0,
        }
    }

    pub fn push(&mut self, row: &Row) -> Result<()> {
        for (b, &i) in self.builders.iter_mut().zip(&self.columns) {
            // Rows written before a column was added have fewer values: read as NULL.
            b.push(row.get(i).unwrap_or(&Value::Null))?;
        }
        self.rows += 1;
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn finish(&mut self) -> Result<RecordBatch> {
        let arrays: Vec<ArrayRef> = self.builders.iter_mut().map(ColBuilder::finish).collect();
        debug_assert!(self.builders.iter().all(|b| b.len() == 0));
        let rows = std::mem::take(&mut self.rows);
        let opts =
            datafusion::arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(
            self.schema.clone(),
            arrays,
            &opts,
        )?)
    }
}

//! Arrow → PostgreSQL: type OIDs for RowDescription and the text/binary encodings of
//! every value we can produce, written straight into `DataRow` buffers.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgwire::api::Type;
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::messages::data::DataRow;
use tidal::datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, GenericListArray, OffsetSizeTrait, RecordBatch,
};
use tidal::datafusion::arrow::datatypes::{
    DataType, Date32Type, Date64Type, Decimal128Type, Float16Type, Float32Type, Float64Type,
    Int8Type, Int16Type, Int32Type, Int64Type, IntervalMonthDayNanoType, Schema, TimeUnit,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};

use crate::ServerError;

use crate::sqltext::{PG_EPOCH_DAYS, PG_EPOCH_MICROS};

/// The PostgreSQL type a column of this Arrow type is sent as.
pub fn pg_type(dt: &DataType) -> Result<Type, ServerError> {
    Ok(match dt {
        DataType::Null | DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Type::TEXT,
        DataType::Boolean => Type::BOOL,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => Type::INT2,
        DataType::Int32 | DataType::UInt16 => Type::INT4,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => Type::INT8,
        DataType::Float16 | DataType::Float32 => Type::FLOAT4,
        DataType::Float64 => Type::FLOAT8,
        DataType::Decimal128(..) => Type::NUMERIC,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Type::BYTEA,
        DataType::Date32 | DataType::Date64 => Type::DATE,
        DataType::Timestamp(_, None) => Type::TIMESTAMP,
        DataType::Timestamp(_, Some(_)) => Type::TIMESTAMPTZ,
        DataType::Interval(_) => Type::INTERVAL,
        // VECTOR(n) and unsized vectors: pgvector's `vector` type, whose OID our pg_type
        // gives (so pgvector's client adapters find it), in pgvector's text and binary
        // forms.
        dt if tidal_sql::is_vector_value_type(dt) => vector_pg_type(),
        DataType::List(f) | DataType::LargeList(f) => match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Type::TEXT_ARRAY,
            DataType::Boolean => Type::BOOL_ARRAY,
            DataType::Int16 => Type::INT2_ARRAY,
            DataType::Int32 => Type::INT4_ARRAY,
            DataType::Int64 => Type::INT8_ARRAY,
            DataType::Float32 => Type::FLOAT4_ARRAY,
            DataType::Float64 => Type::FLOAT8_ARRAY,
            other => return Err(unsupported(other)),
        },
        DataType::Dictionary(_, v) => pg_type(v)?,
        other => return Err(unsupported(other)),
    })
}

/// pgvector's type OID in our `pg_type` (as if the extension were installed in
/// `public`), and its array type's.
pub const VECTOR_OID: u32 = 16_000;
pub const VECTOR_ARRAY_OID: u32 = 16_001;

/// pgvector's `vector` type.
pub fn vector_pg_type() -> Type {
    Type::new(
        "vector".into(),
        VECTOR_OID,
        postgres_types::Kind::Simple,
        "public".into(),
    )
}

/// The type a client names by OID in Parse: the built-in ones, and `vector`.
pub fn type_from_oid(oid: u32) -> Option<Type> {
    match oid {
        VECTOR_OID => Some(vector_pg_type()),
        _ => Type::from_oid(oid),
    }
}

/// Whether `ty` is pgvector's `vector`.
pub fn is_vector(ty: &Type) -> bool {
    ty.oid() == VECTOR_OID
}

fn unsupported(dt: &DataType) -> ServerError {
    ServerError::Unsupported(format!("result columns of type {dt} cannot be sent yet"))
}

/// RowDescription fields for a schema, every column in `formats` (one per column, or
/// one for all, or none = text).
pub fn fields(schema: &Schema, formats: &[FieldFormat]) -> Result<Vec<FieldInfo>, ServerError> {
    schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let format = match formats {
                [] => FieldFormat::Text,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(FieldFormat::Text),
            };
            let ty = match f.metadata().get(PG_TYPE_METADATA).map(String::as_str) {
                Some("char") if f.data_type() == &DataType::Utf8 => Type::CHAR,
                Some("oid") if f.data_type() == &DataType::Int64 => Type::OID,
                _ => pg_type(f.data_type())?,
            };
            let size = match ty {
                Type::BOOL | Type::CHAR => 1,
                Type::INT2 => 2,
                Type::INT4 | Type::OID | Type::FLOAT4 | Type::DATE => 4,
                Type::INT8 | Type::FLOAT8 | Type::TIMESTAMP | Type::TIMESTAMPTZ => 8,
                Type::INTERVAL => 16,
                _ => -1,
            };
            Ok(FieldInfo::new(f.name().clone(), None, None, ty, format).with_type_size(size))
        })
        .collect()
}

/// Field metadata naming the PostgreSQL type a column is sent as, where the Arrow type
/// alone does not say it (`"char"`).
pub const PG_TYPE_METADATA: &str = "tidal.pg_type";

/// Encodes every row of `batch` into DataRow messages.
pub fn rows(batch: &RecordBatch, fields: &[FieldInfo]) -> Result<Vec<DataRow>, ServerError> {
    let mut out = Vec::with_capacity(batch.num_rows());
    let mut buf = BytesMut::with_capacity(64 * batch.num_columns());
    for row in 0..batch.num_rows() {
        for (col, field) in batch.columns().iter().zip(fields) {
            let binary = field.format() == FieldFormat::Binary;
            // A NullArray has no validity buffer: `is_null` says false for it.
            if col.data_type() == &DataType::Null || col.is_null(row) {
                buf.put_i32(-1);
                continue;
            }
            let len_at = buf.len();
            buf.put_i32(0);
            if field.datatype() == &Type::CHAR {
                // "char": one byte, the same in text and binary.
                let s = col.as_string::<i32>().value(row);
                buf.put_slice(&s.as_bytes()[..s.len().min(1)]);
            } else if binary && field.datatype() == &Type::OID {
                let v = col.as_primitive::<Int64Type>().value(row);
                buf.put_u32(u32::try_from(v).unwrap_or_default());
            } else if binary {
                binary_value(col, row, &mut buf)?;
            } else {
                let mut s = String::new();
                text_value(col, row, &mut s)?;
                buf.put_slice(s.as_bytes());
            }
            let len = (buf.len() - len_at - 4) as i32;
            buf[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
        }
        out.push(DataRow::new(buf.split(), batch.num_columns() as i16));
    }
    Ok(out)
}

fn micros(col: &ArrayRef, row: usize) -> Option<i64> {
    Some(match col.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => col
            .as_primitive::<TimestampSecondType>()
            .value(row)
            .saturating_mul(1_000_000),
        DataType::Timestamp(TimeUnit::Millisecond, _) => col
            .as_primitive::<TimestampMillisecondType>()
            .value(row)
            .saturating_mul(1_000),
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            col.as_primitive::<TimestampMicrosecondType>().value(row)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, _) => col
            .as_primitive::<TimestampNanosecondType>()
            .value(row)
            .div_euclid(1_000),
        _ => return None,
    })
}

fn days(col: &ArrayRef, row: usize) -> Option<i64> {
    match col.data_type() {
        DataType::Date32 => Some(col.as_primitive::<Date32Type>().value(row) as i64),
        DataType::Date64 => Some(
            col.as_primitive::<Date64Type>()
                .value(row)
                .div_euclid(86_400_000),
        ),
        _ => None,
    }
}

/// PostgreSQL's text form of one non-null value.
pub fn text_value(col: &ArrayRef, row: usize, out: &mut String) -> Result<(), ServerError> {
    use std::fmt::Write;
    let w = |r: std::fmt::Result| r.map_err(|e| ServerError::Internal(e.to_string()));
    match col.data_type() {
        DataType::Null => {}
        DataType::Boolean => out.push(if col.as_boolean().value(row) {
            't'
        } else {
            'f'
        }),
        DataType::Int8 => int_text::<Int8Type>(col, row, out),
        DataType::Int16 => int_text::<Int16Type>(col, row, out),
        DataType::Int32 => int_text::<Int32Type>(col, row, out),
        DataType::Int64 => int_text::<Int64Type>(col, row, out),
        DataType::UInt8 => int_text::<UInt8Type>(col, row, out),
        DataType::UInt16 => int_text::<UInt16Type>(col, row, out),
        DataType::UInt32 => int_text::<UInt32Type>(col, row, out),
        DataType::UInt64 => w(write!(out, "{}", uint64(col, row)?))?,
        DataType::Float16 => float32(out, col.as_primitive::<Float16Type>().value(row).to_f32()),
        DataType::Float32 => float32(out, col.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => float(out, col.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(_, scale) => {
            let v = col.as_primitive::<Decimal128Type>().value(row);
            out.push_str(&decimal_text(v, *scale));
        }
        DataType::Utf8 => out.push_str(col.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => out.push_str(col.as_string::<i64>().value(row)),
        DataType::Utf8View => out.push_str(col.as_string_view().value(row)),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            out.push_str("\\x");
            for b in binary_bytes(col, row) {
                w(write!(out, "{b:02x}"))?;
            }
        }
        DataType::Date32 | DataType::Date64 => {
            let d = days(col, row).unwrap_or_default();
            let (y, m, dd) = tidal_core::time::civil_from_days(d);
            w(write!(out, "{y:04}-{m:02}-{dd:02}"))?;
        }
        DataType::Timestamp(_, tz) => {
            let us = micros(col, row).unwrap_or_default();
            out.push_str(&tidal::Timestamp(us).to_string());
            if tz.is_some() {
                out.push_str("+00");
            }
        }
        DataType::Interval(_) => {
            let v = tidal::datafusion::arrow::compute::cast(
                &col.slice(row, 1),
                &DataType::Interval(
                    tidal::datafusion::arrow::datatypes::IntervalUnit::MonthDayNano,
                ),
            )
            .map_err(|e| ServerError::Internal(e.to_string()))?;
            let v = v.as_primitive::<IntervalMonthDayNanoType>().value(0);
            interval_text(out, v.months, v.days, v.nanoseconds / 1_000);
        }
        DataType::FixedSizeList(..) => vector_text(&col.as_fixed_size_list().value(row), out)?,
        dt if tidal_sql::is_vector_value_type(dt) => {
            vector_text(&col.as_list::<i32>().value(row), out)?
        }
        DataType::List(_) => array_text(col.as_list::<i32>(), row, out)?,
        DataType::LargeList(_) => array_text(col.as_list::<i64>(), row, out)?,
        DataType::Dictionary(..) => {
            let flat = tidal::datafusion::arrow::compute::cast(
                &col.slice(row, 1),
                &dictionary_value_type(col.data_type()),
            )
            .map_err(|e| ServerError::Internal(e.to_string()))?;
            text_value(&flat, 0, out)?;
        }
        other => return Err(unsupported(other)),
    }
    Ok(())
}

fn int_text<T>(col: &ArrayRef, row: usize, out: &mut String)
where
    T: tidal::datafusion::arrow::datatypes::ArrowPrimitiveType,
    T::Native: std::fmt::Display,
{
    out.push_str(&col.as_primitive::<T>().value(row).to_string());
}

fn dictionary_value_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Dictionary(_, v) => v.as_ref().clone(),
        other => other.clone(),
    }
}

fn uint64(col: &ArrayRef, row: usize) -> Result<i64, ServerError> {
    let v = col.as_primitive::<UInt64Type>().value(row);
    i64::try_from(v).map_err(|_| ServerError::Unsupported(format!("{v} does not fit in a bigint")))
}

fn binary_bytes(col: &ArrayRef, row: usize) -> &[u8] {
    match col.data_type() {
        DataType::Binary => col.as_binary::<i32>().value(row),
        DataType::LargeBinary => col.as_binary::<i64>().value(row),
        _ => col.as_binary_view().value(row),
    }
}

/// A REAL with the shortest digits that round-trip as f32 (`0.1`, not the f64 widening
/// `0.10000000149011612`).
fn float32(out: &mut String, v: f32) {
    if v.is_finite() {
        out.push_str(&format!("{v}"));
    } else {
        float(out, v as f64);
    }
}

/// Floats as PostgreSQL prints them (shortest round-trip digits; `NaN`, `Infinity`).
fn float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
    } else {
        out.push_str(&format!("{v}"));
    }
}

fn decimal_text(v: i128, scale: i8) -> String {
    if scale <= 0 {
        let mut s = v.to_string();
        s.extend(std::iter::repeat_n('0', (-scale) as usize));
        return s;
    }
    let neg = v < 0;
    let digits = v.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{}{int}.{frac}", if neg { "-" } else { "" })
}

fn interval_text(out: &mut String, months: i32, days: i32, micros: i64) {
    let mut parts = Vec::new();
    let (y, m) = (months / 12, months % 12);
    if y != 0 {
        parts.push(format!("{y} year{}", if y.abs() == 1 { "" } else { "s" }));
    }
    if m != 0 {
        parts.push(format!("{m} mon{}", if m.abs() == 1 { "" } else { "s" }));
    }
    if days != 0 {
        parts.push(format!(
            "{days} day{}",
            if days.abs() == 1 { "" } else { "s" }
        ));
    }
    if micros != 0 || parts.is_empty() {
        let sign = if micros < 0 { "-" } else { "" };
        let us = micros.unsigned_abs();
        let (h, rem) = (us / 3_600_000_000, us % 3_600_000_000);
        let (mi, rem) = (rem / 60_000_000, rem % 60_000_000);
        let (s, frac) = (rem / 1_000_000, rem % 1_000_000);
        let mut t = format!("{sign}{h:02}:{mi:02}:{s:02}");
        if frac != 0 {
            t.push_str(format!(".{frac:06}").trim_end_matches('0'));
        }
        parts.push(t);
    }
    out.push_str(&parts.join(" "));
}

/// pgvector's text form, `[1,2.5,3]`, of one vector's components.
fn vector_text(values: &ArrayRef, out: &mut String) -> Result<(), ServerError> {
    let values = vector_components(values)?;
    out.push('[');
    for i in 0..values.len() {
        if i > 0 {
            out.push(',');
        }
        float32(out, values.value(i));
    }
    out.push(']');
    Ok(())
}

fn vector_components(
    values: &ArrayRef,
) -> Result<&tidal::datafusion::arrow::array::Float32Array, ServerError> {
    if values.null_count() > 0 {
        return Err(ServerError::Internal(
            "a vector with a NULL component cannot be sent".into(),
        ));
    }
    Ok(values.as_primitive::<Float32Type>())
}

/// pgvector's binary form: int16 dimensions, int16 unused (0), then the float4s, all
/// big-endian.
fn vector_binary(values: &ArrayRef, out: &mut BytesMut) -> Result<(), ServerError> {
    let values = vector_components(values)?;
    let dims = i16::try_from(values.len())
        .map_err(|_| ServerError::Internal(format!("a vector of {} dimensions", values.len())))?;
    out.put_i16(dims);
    out.put_i16(0);
    for v in values.values() {
        out.put_f32(*v);
    }
    Ok(())
}

/// `{a,b,"c d",NULL}` with PostgreSQL's quoting rules.
fn array_text<O: OffsetSizeTrait>(
    list: &GenericListArray<O>,
    row: usize,
    out: &mut String,
) -> Result<(), ServerError> {
    let values = list.value(row);
    out.push('{');
    for i in 0..values.len() {
        if i > 0 {
            out.push(',');
        }
        if values.is_null(i) {
            out.push_str("NULL");
            continue;
        }
        let mut item = String::new();
        text_value(&values, i, &mut item)?;
        let quote = item.is_empty()
            || item.eq_ignore_ascii_case("NULL")
            || item
                .chars()
                .any(|c| matches!(c, '{' | '}' | ',' | '"' | '\\') || c.is_whitespace());
        if quote {
            out.push('"');
            for c in item.chars() {
                if c == '"' || c == '\\' {
                    out.push('\\');
                }
                out.push(c);
            }
            out.push('"');
        } else {
            out.push_str(&item);
        }
    }
    out.push('}');
    Ok(())
}

/// PostgreSQL's binary form of one non-null value.
fn binary_value(col: &ArrayRef, row: usize, out: &mut BytesMut) -> Result<(), ServerError> {
    match col.data_type() {
        DataType::Boolean => {
            let b: &BooleanArray = col.as_boolean();
            out.put_u8(b.value(row) as u8);
        }
        DataType::Int8 => out.put_i16(col.as_primitive::<Int8Type>().value(row) as i16),
        DataType::Int16 => out.put_i16(col.as_primitive::<Int16Type>().value(row)),
        DataType::UInt8 => out.put_i16(col.as_primitive::<UInt8Type>().value(row) as i16),
        DataType::Int32 => out.put_i32(col.as_primitive::<Int32Type>().value(row)),
        DataType::UInt16 => out.put_i32(col.as_primitive::<UInt16Type>().value(row) as i32),
        DataType::Int64 => out.put_i64(col.as_primitive::<Int64Type>().value(row)),
        DataType::UInt32 => out.put_i64(col.as_primitive::<UInt32Type>().value(row) as i64),
        DataType::UInt64 => out.put_i64(uint64(col, row)?),
        DataType::Float16 => out.put_f32(col.as_primitive::<Float16Type>().value(row).to_f32()),
        DataType::Float32 => out.put_f32(col.as_primitive::<Float32Type>().value(row)),
        DataType::Float64 => out.put_f64(col.as_primitive::<Float64Type>().value(row)),
        DataType::Decimal128(_, scale) => {
            numeric_binary(col.as_primitive::<Decimal128Type>().value(row), *scale, out)
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            out.put_slice(binary_bytes(col, row))
        }
        DataType::Date32 | DataType::Date64 => {
            let d = days(col, row).unwrap_or_default() - PG_EPOCH_DAYS;
            out.put_i32(d.clamp(i32::MIN as i64, i32::MAX as i64) as i32);
        }
        DataType::Timestamp(..) => {
            out.put_i64(micros(col, row).unwrap_or_default() - PG_EPOCH_MICROS)
        }
        DataType::Interval(_) => {
            let v = tidal::datafusion::arrow::compute::cast(
                &col.slice(row, 1),
                &DataType::Interval(
                    tidal::datafusion::arrow::datatypes::IntervalUnit::MonthDayNano,
                ),
            )
            .map_err(|e| ServerError::Internal(e.to_string()))?;
            let v = v.as_primitive::<IntervalMonthDayNanoType>().value(0);
            out.put_i64(v.nanoseconds / 1_000);
            out.put_i32(v.days);
            out.put_i32(v.months);
        }
        DataType::FixedSizeList(..) => vector_binary(&col.as_fixed_size_list().value(row), out)?,
        dt if tidal_sql::is_vector_value_type(dt) => {
            vector_binary(&col.as_list::<i32>().value(row), out)?
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Dictionary(..) => {
            let mut s = String::new();
            text_value(col, row, &mut s)?;
            out.put_slice(s.as_bytes());
        }
        DataType::List(_) => array_binary(col.as_list::<i32>(), row, out)?,
        DataType::LargeList(_) => array_binary(col.as_list::<i64>(), row, out)?,
        other => return Err(unsupported(other)),
    }
    Ok(())
}

fn array_binary<O: OffsetSizeTrait>(
    list: &GenericListArray<O>,
    row: usize,
    out: &mut BytesMut,
) -> Result<(), ServerError> {
    let values = list.value(row);
    let elem = pg_type(&DataType::List(Arc::new(
        tidal::datafusion::arrow::datatypes::Field::new("item", values.data_type().clone(), true),
    )))?;
    let elem_oid = match elem {
        Type::TEXT_ARRAY => Type::TEXT.oid(),
        Type::BOOL_ARRAY => Type::BOOL.oid(),
        Type::INT2_ARRAY => Type::INT2.oid(),
        Type::INT4_ARRAY => Type::INT4.oid(),
        Type::INT8_ARRAY => Type::INT8.oid(),
        Type::FLOAT4_ARRAY => Type::FLOAT4.oid(),
        _ => Type::FLOAT8.oid(),
    };
    out.put_i32(1); // dimensions
    out.put_i32(values.null_count().min(1) as i32);
    out.put_u32(elem_oid);
    out.put_i32(values.len() as i32);
    out.put_i32(1); // lower bound
    for i in 0..values.len() {
        if values.is_null(i) {
            out.put_i32(-1);
            continue;
        }
        let len_at = out.len();
        out.put_i32(0);
        binary_value(&values, i, out)?;
        let len = (out.len() - len_at - 4) as i32;
        out[len_at..len_at + 4].copy_from_slice(&len.to_be_bytes());
    }
    Ok(())
}

/// PostgreSQL NUMERIC binary: base-10000 digits with a weight, sign and display scale.
fn numeric_binary(v: i128, scale: i8, out: &mut BytesMut) {
    let text = decimal_text(v, scale);
    let neg = text.starts_with('-');
    let text = text.trim_start_matches('-');
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    let int = int.trim_start_matches('0');
    // Pad the integer part on the left and the fraction on the right to 4-digit groups.
    let int_pad = (4 - int.len() % 4) % 4;
    let frac_pad = (4 - frac.len() % 4) % 4;
    let digits_str = format!("{}{int}{frac}{}", "0".repeat(int_pad), "0".repeat(frac_pad));
    let mut groups: Vec<i16> = digits_str
        .as_bytes()
        .chunks(4)
        .map(|c| {
            c.iter()
                .fold(0i16, |acc, d| acc * 10 + (d.saturating_sub(b'0')) as i16)
        })
        .collect();
    let mut weight = ((int.len() + int_pad) / 4) as i16 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    out.put_i16(groups.len() as i16);
    out.put_i16(weight);
    out.put_u16(if neg && !groups.is_empty() { 0x4000 } else { 0 });
    out.put_i16(scale.max(0) as i16);
    for g in groups {
        out.put_i16(g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_and_intervals_print_like_postgres() {
        assert_eq!(decimal_text(12345, 2), "123.45");
        assert_eq!(decimal_text(-5, 3), "-0.005");
        assert_eq!(decimal_text(7, -2), "700");
        let mut s = String::new();
        interval_text(&mut s, 14, 3, 3_723_500_000);
        assert_eq!(s, "1 year 2 mons 3 days 01:02:03.5");
        let mut s = String::new();
        interval_text(&mut s, 0, 0, 0);
        assert_eq!(s, "00:00:00");
    }

    #[test]
    fn reals_and_vectors_print_shortest_f32_digits() {
        use tidal::datafusion::arrow::array::Float32Array;
        let col: ArrayRef = Arc::new(Float32Array::from(vec![0.1f32, 1.0, f32::NAN]));
        let mut s = String::new();
        text_value(&col, 0, &mut s).unwrap();
        assert_eq!(s, "0.1");
        s.clear();
        text_value(&col, 1, &mut s).unwrap();
        assert_eq!(s, "1");
        s.clear();
        text_value(&col, 2, &mut s).unwrap();
        assert_eq!(s, "NaN");
    }

    #[test]
    fn numeric_binary_layout() {
        let mut b = BytesMut::new();
        // 12345.67 → groups [1, 2345, 6700], weight 1, scale 2
        numeric_binary(1_234_567, 2, &mut b);
        let words: Vec<i16> = b
            .chunks(2)
            .map(|c| i16::from_be_bytes([c[0], c[1]]))
            .collect();
        assert_eq!(words, vec![3, 1, 0, 2, 1, 2345, 6700]);
    }
}

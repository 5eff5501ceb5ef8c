use std::fmt;

use crate::codec::{Decoder, Encoder};
use crate::schema::{ColumnDef, ColumnType};
use crate::{CoreError, Timestamp};

/// One cell of an entity row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// BIGINT and INT (range-checked against the column).
    Int(i64),
    /// DOUBLE.
    Double(f64),
    /// REAL.
    Real(f32),
    Bool(bool),
    Text(String),
    Timestamp(Timestamp),
    TextArray(Vec<String>),
    /// `VECTOR(n)`: exactly n floats.
    Vector(Vec<f32>),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// Checks that this value may be stored in `col`; NULL is accepted (the caller
    /// enforces NOT NULL on `id`).
    pub fn check(&self, col: &ColumnDef) -> Result<(), CoreError> {
        let bad = |reason: String| CoreError::BadValue {
            column: col.name.clone(),
            reason,
        };
        match (&col.ty, self) {
            (_, Value::Null) => Ok(()),
            (ColumnType::BigInt, Value::Int(_)) => Ok(()),
            (ColumnType::Int, Value::Int(v)) => {
                if i32::try_from(*v).is_ok() {
                    Ok(())
                } else {
                    Err(bad(format!("{v} is out of range for type integer")))
                }
            }
            (ColumnType::Double, Value::Double(_)) | (ColumnType::Real, Value::Real(_)) => Ok(()),
            (ColumnType::Boolean, Value::Bool(_)) | (ColumnType::Text, Value::Text(_)) => Ok(()),
            (ColumnType::Timestamp, Value::Timestamp(_)) => Ok(()),
            (ColumnType::TextArray, Value::TextArray(_)) => Ok(()),
            (ColumnType::Vector(n), Value::Vector(v)) => {
                if v.len() != *n as usize {
                    Err(bad(format!("expected {n} dimensions, not {}", v.len())))
                } else if v.iter().any(|x| !x.is_finite()) {
                    Err(bad("vector contains NaN or infinity".to_string()))
                } else {
                    Ok(())
                }
            }
            (ty, v) => Err(bad(format!("a {} cannot hold {}", ty, v.type_name()))),
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Int(_) => "integer",
            Value::Double(_) => "double",
            Value::Real(_) => "real",
            Value::Bool(_) => "boolean",
            Value::Text(_) => "text",
            Value::Timestamp(_) => "timestamp",
            Value::TextArray(_) => "text[]",
            Value::Vector(_) => "vector",
        }
    }

    pub fn encode(&self, e: &mut Encoder) {
        match self {
            Value::Null => e.u8(0),
            Value::Int(v) => {
                e.u8(1);
                e.i64(*v);
            }
            Value::Double(v) => {
                e.u8(2);
                e.f64(*v);
            }
            Value::Real(v) => {
                e.u8(3);
                e.f32(*v);
            }
            Value::Bool(v) => {
                e.u8(4);
                e.u8(u8::from(*v));
            }
            Value::Text(s) => {
                e.u8(5);
                e.str(s);
            }
            Value::Timestamp(t) => {
                e.u8(6);
                e.i64(t.0);
            }
            Value::TextArray(a) => {
                e.u8(7);
                e.u32(a.len() as u32);
                for s in a {
                    e.str(s);
                }
            }
            Value::Vector(v) => {
                e.u8(8);
                e.u32(v.len() as u32);
                for x in v {
                    e.f32(*x);
                }
            }
        }
    }

    pub fn decode(d: &mut Decoder<'_>) -> Result<Value, CoreError> {
        Ok(match d.u8()? {
            0 => Value::Null,
            1 => Value::Int(d.i64()?),
            2 => Value::Double(d.f64()?),
            3 => Value::Real(d.f32()?),
            4 => Value::Bool(d.u8()? != 0),
            5 => Value::Text(d.str()?.to_string()),
            6 => Value::Timestamp(Timestamp(d.i64()?)),
            7 => {
                let n = d.u32()? as usize;
                if n > d.remaining() / 4 {
                    return Err(CoreError::Decode("text[] length exceeds data"));
                }
                let mut a = Vec::with_capacity(n);
                for _ in 0..n {
                    a.push(d.str()?.to_string());
                }
                Value::TextArray(a)
            }
            8 => {
                let n = d.u32()? as usize;
                if n > d.remaining() / 4 {
                    return Err(CoreError::Decode("vector length exceeds data"));
                }
                let mut v = Vec::with_capacity(n);
                for _ in 0..n {
                    v.push(d.f32()?);
                }
                Value::Vector(v)
            }
            _ => return Err(CoreError::Decode("unknown value tag")),
        })
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Double(v) => write!(f, "{v}"),
            Value::Real(v) => write!(f, "{v}"),
            Value::Bool(v) => f.write_str(if *v { "t" } else { "f" }),
            Value::Text(s) => f.write_str(s),
            Value::Timestamp(t) => write!(f, "{t}"),
            Value::TextArray(a) => write!(f, "{{{}}}", a.join(",")),
            Value::Vector(v) => {
                f.write_str("[")?;
                for (i, x) in v.iter().enumerate() {
                    if i > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{x}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// An entity row: one value per declared column, in declaration order.
pub type Row = Vec<Value>;

/// Encodes a row as `[count u32][value]*`. The count lets later schema versions add
/// columns without rewriting stored rows.
pub fn encode_row(row: &[Value], e: &mut Encoder) {
    e.u32(row.len() as u32);
    for v in row {
        v.encode(e);
    }
}

pub fn decode_row(d: &mut Decoder<'_>) -> Result<Row, CoreError> {
    let n = d.u32()? as usize;
    if n > d.remaining() {
        return Err(CoreError::Decode("row length exceeds data"));
    }
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        row.push(Value::decode(d)?);
    }
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_round_trip() {
        let row = vec![
            Value::Int(42),
            Value::Null,
            Value::Double(1.25),
            Value::Real(0.5),
            Value::Bool(true),
            Value::Text("x".into()),
            Value::Timestamp(Timestamp(17)),
            Value::TextArray(vec!["a".into(), "b".into()]),
            Value::Vector(vec![0.1, 0.2]),
        ];
        let mut e = Encoder::new();
        encode_row(&row, &mut e);
        let buf = e.into_inner();
        let mut d = Decoder::new(&buf);
        assert_eq!(decode_row(&mut d).unwrap(), row);
        d.finish().unwrap();
        for cut in 0..buf.len() {
            assert!(decode_row(&mut Decoder::new(&buf[..cut])).is_err());
        }
    }

    #[test]
    fn value_checks() {
        let v3 = ColumnDef {
            name: "e".into(),
            ty: ColumnType::Vector(3),
        };
        assert!(Value::Vector(vec![1.0, 2.0, 3.0]).check(&v3).is_ok());
        assert!(Value::Vector(vec![1.0, 2.0]).check(&v3).is_err());
        assert!(Value::Vector(vec![1.0, f32::NAN, 3.0]).check(&v3).is_err());
        let int = ColumnDef {
            name: "n".into(),
            ty: ColumnType::Int,
        };
        assert!(Value::Int(1 << 40).check(&int).is_err());
        assert!(Value::Text("a".into()).check(&int).is_err());
        assert!(Value::Null.check(&int).is_ok());
    }
}

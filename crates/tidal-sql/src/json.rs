//! `json_build_object(key, value, ...)`, PostgreSQL's, returning the object as JSON
//! text. Catalog queries use it (SQLAlchemy's column reflection builds identity and
//! collation details with it); so do reports.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringBuilder};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::common::exec_err;
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};

/// Most key/value pairs one call takes (PostgreSQL: 100 arguments).
pub const JSON_BUILD_OBJECT_ARGS_MAX: usize = 100;

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct JsonBuildObjectUdf {
    signature: Signature,
}

impl Default for JsonBuildObjectUdf {
    fn default() -> Self {
        JsonBuildObjectUdf {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

/// Appends `s` as a JSON string literal.
fn quote(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Whether values of `t` are written bare (numbers, booleans) rather than quoted.
fn bare(t: &DataType) -> bool {
    t.is_numeric() || matches!(t, DataType::Boolean)
}

impl ScalarUDFImpl for JsonBuildObjectUdf {
    fn name(&self) -> &str {
        "json_build_object"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        if !args.len().is_multiple_of(2) {
            return exec_err!("json_build_object: argument list must have even number of elements");
        }
        if args.len() > JSON_BUILD_OBJECT_ARGS_MAX {
            return exec_err!(
                "json_build_object: at most {JSON_BUILD_OBJECT_ARGS_MAX} arguments, got {}",
                args.len()
            );
        }
        Ok(DataType::Utf8)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<Result<_>>()?;
        let opts = FormatOptions::default();
        let formatters = arrays
            .iter()
            .map(|a| ArrayFormatter::try_new(a.as_ref(), &opts))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut out = StringBuilder::with_capacity(n, n * 16);
        let mut text = String::new();
        for row in 0..n {
            text.clear();
            text.push('{');
            for pair in 0..arrays.len() / 2 {
                let (ka, va) = (&arrays[2 * pair], &arrays[2 * pair + 1]);
                let (kf, vf) = (&formatters[2 * pair], &formatters[2 * pair + 1]);
                if ka.is_null(row) {
                    return exec_err!("json_build_object: null value not allowed for object key");
                }
                if pair > 0 {
                    text.push_str(", ");
                }
                quote(&mut text, &kf.value(row).to_string());
                text.push_str(" : ");
                if va.is_null(row) {
                    text.push_str("null");
                } else if bare(va.data_type()) {
                    text.push_str(&vf.value(row).to_string());
                } else {
                    quote(&mut text, &vf.value(row).to_string());
                }
            }
            text.push('}');
            out.append_value(&text);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn strings_are_json_escaped() {
        let mut s = String::new();
        quote(&mut s, "a\"b\\c\n\u{1}ü");
        assert_eq!(s, "\"a\\\"b\\\\c\\n\\u0001ü\"");
    }
}

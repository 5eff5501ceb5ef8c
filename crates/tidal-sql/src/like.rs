//! `LIKE … ESCAPE 'c'` for any escape character, and PostgreSQL's `like_escape(pattern,
//! escape)`.
//!
//! DataFusion's LIKE kernel knows one escape, the backslash, and refuses any other at
//! planning. SQLAlchemy (its reflection queries use `ESCAPE '/'`), ORMs and
//! hand-written SQL use others, so [`LikeEscapes`] rewrites `x LIKE p ESCAPE 'c'` into
//! `x LIKE like_escape(p, 'c')`: the pattern translated to backslash escapes, which is
//! what PostgreSQL's own `like_escape` does.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, LargeStringArray, StringArray, StringViewArray,
};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{
    ColumnarValue, Expr, Like, LogicalPlan, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature, TypeSignature, Volatility, lit,
};
use datafusion::optimizer::AnalyzerRule;

/// `like_escape(pattern, escape)`: `pattern` with escape character `escape` (one
/// character, or empty for none) rewritten to use the backslash, LIKE's default.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct LikeEscapeUdf {
    signature: Signature,
}

impl Default for LikeEscapeUdf {
    fn default() -> Self {
        let strings = [DataType::Utf8, DataType::LargeUtf8, DataType::Utf8View];
        let mut sigs = Vec::new();
        for p in &strings {
            for e in &strings {
                sigs.push(TypeSignature::Exact(vec![p.clone(), e.clone()]));
            }
        }
        LikeEscapeUdf {
            signature: Signature::one_of(sigs, Volatility::Immutable),
        }
    }
}

/// Translates one pattern. `escape`: the escape character, `None` for none at all
/// (then a backslash in the pattern is an ordinary character).
fn translate(pattern: &str, escape: Option<char>) -> Result<String> {
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut chars = pattern.chars();
    while let Some(ch) = chars.next() {
        if Some(ch) == escape {
            match chars.next() {
                // The escaped character, literally: LIKE's own metacharacters and the
                // backslash need the backslash in front; anything else stands for itself.
                Some(n @ ('%' | '_' | '\\')) => {
                    out.push('\\');
                    out.push(n);
                }
                Some(n) => out.push(n),
                None => {
                    return exec_err!(
                        "LIKE pattern must not end with escape character (pattern {pattern:?})"
                    );
                }
            }
        } else if ch == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(ch);
        }
    }
    Ok(out)
}

fn escape_char(escape: &str) -> Result<Option<char>> {
    let mut it = escape.chars();
    match (it.next(), it.next()) {
        (None, _) => Ok(None),
        (Some(c), None) => Ok(Some(c)),
        _ => exec_err!("invalid escape string {escape:?}: it must be empty or one character"),
    }
}

fn strings(a: &ArrayRef) -> Result<Vec<Option<&str>>> {
    Ok(match a.data_type() {
        DataType::Utf8 => a.as_string::<i32>().iter().collect(),
        DataType::LargeUtf8 => a.as_string::<i64>().iter().collect(),
        DataType::Utf8View => a.as_string_view().iter().collect(),
        t => return exec_err!("like_escape: expected text, got {t}"),
    })
}

impl ScalarUDFImpl for LikeEscapeUdf {
    fn name(&self) -> &str {
        "like_escape"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, args: &[DataType]) -> Result<DataType> {
        // The pattern's own string type, so that the rewritten LIKE compares the same
        // types it compared before.
        Ok(args.first().cloned().unwrap_or(DataType::Utf8))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let out_type = args.return_field.data_type().clone();
        let rows = args.number_rows;
        let [pattern, escape] = args.args.as_slice() else {
            return exec_err!("like_escape takes two arguments");
        };
        // The usual shape: both constants (a literal or a bound parameter).
        if let (ColumnarValue::Scalar(p), ColumnarValue::Scalar(e)) = (pattern, escape) {
            let (Some(p), Some(e)) = (scalar_str(p)?, scalar_str(e)?) else {
                return Ok(ColumnarValue::Scalar(ScalarValue::try_from(&out_type)?));
            };
            let t = translate(p, escape_char(e)?)?;
            return Ok(ColumnarValue::Scalar(typed_scalar(&out_type, Some(t))));
        }
        let p = pattern.to_array(rows)?;
        let e = escape.to_array(rows)?;
        let (ps, es) = (strings(&p)?, strings(&e)?);
        let mut out = Vec::with_capacity(rows);
        for (p, e) in ps.into_iter().zip(es) {
            out.push(match (p, e) {
                (Some(p), Some(e)) => Some(translate(p, escape_char(e)?)?),
                _ => None,
            });
        }
        let array: ArrayRef = match out_type {
            DataType::LargeUtf8 => Arc::new(LargeStringArray::from(out)),
            DataType::Utf8View => Arc::new(StringViewArray::from(out)),
            _ => Arc::new(StringArray::from(out)),
        };
        Ok(ColumnarValue::Array(array))
    }
}

fn scalar_str(v: &ScalarValue) -> Result<Option<&str>> {
    match v {
        ScalarValue::Utf8(s) | ScalarValue::LargeUtf8(s) | ScalarValue::Utf8View(s) => {
            Ok(s.as_deref())
        }
        ScalarValue::Null => Ok(None),
        v => exec_err!("like_escape: expected text, got {}", v.data_type()),
    }
}

fn typed_scalar(t: &DataType, s: Option<String>) -> ScalarValue {
    match t {
        DataType::LargeUtf8 => ScalarValue::LargeUtf8(s),
        DataType::Utf8View => ScalarValue::Utf8View(s),
        _ => ScalarValue::Utf8(s),
    }
}

/// Rewrites `LIKE` / `ILIKE` with an escape other than the backslash into a
/// backslash-escaped pattern (`like_escape`). Runs after type coercion; names are
/// preserved, so the plan's schema does not change.
#[derive(Debug)]
pub struct LikeEscapes {
    udf: Arc<ScalarUDF>,
}

impl Default for LikeEscapes {
    fn default() -> Self {
        LikeEscapes {
            udf: Arc::new(ScalarUDF::new_from_impl(LikeEscapeUdf::default())),
        }
    }
}

impl LikeEscapes {
    fn rewrite(&self, e: Expr) -> Result<Transformed<Expr>> {
        match e {
            Expr::Like(like) if like.escape_char.is_some_and(|c| c != '\\') => {
                let Like {
                    negated,
                    expr,
                    pattern,
                    escape_char,
                    case_insensitive,
                } = like;
                let escape = escape_char.map(String::from).unwrap_or_default();
                let pattern = Expr::ScalarFunction(ScalarFunction::new_udf(
                    self.udf.clone(),
                    vec![*pattern, lit(escape)],
                ));
                Ok(Transformed::yes(Expr::Like(Like::new(
                    negated,
                    expr,
                    Box::new(pattern),
                    None,
                    case_insensitive,
                ))))
            }
            e => Ok(Transformed::no(e)),
        }
    }
}

impl AnalyzerRule for LikeEscapes {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        crate::vector::rewrite_plan_expressions(plan, |e| self.rewrite(e))
    }

    fn name(&self) -> &str {
        "tidal_like_escapes"
    }
}

#[cfg(test)]
mod tests {
    use super::translate;

    #[test]
    fn patterns_translate_to_backslash_escapes() {
        let t = |p: &str, e: Option<char>| translate(p, e).unwrap();
        assert_eq!(t("pg/_%", Some('/')), "pg\\_%");
        assert_eq!(t("a//b", Some('/')), "a/b");
        assert_eq!(t("100/%", Some('/')), "100\\%");
        assert_eq!(t("a\\b%", Some('/')), "a\\\\b%");
        assert_eq!(t("/x", Some('/')), "x");
        assert_eq!(t("a\\_b", None), "a\\\\_b");
        assert_eq!(t("$$", Some('$')), "$");
        assert_eq!(t("ü#_", Some('#')), "ü\\_");
        assert!(translate("abc/", Some('/')).is_err());
    }
}

/// `CAST(x AS TEXT[])` of a text value parses PostgreSQL's array literal (`'{a,"b c"}'`),
/// as PostgreSQL does; Arrow's cast would make a one-element list of the literal. Any
/// other input is cast as before.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TextArrayCastUdf {
    signature: Signature,
    /// The cast's target list type (its element is some string type).
    target: DataType,
}

impl TextArrayCastUdf {
    fn new(target: DataType) -> Self {
        TextArrayCastUdf {
            signature: Signature::any(1, Volatility::Immutable),
            target,
        }
    }
}

fn text_list_type() -> DataType {
    DataType::List(Arc::new(
        datafusion::arrow::datatypes::Field::new_list_field(DataType::Utf8, true),
    ))
}

impl ScalarUDFImpl for TextArrayCastUdf {
    fn name(&self) -> &str {
        "text_array_cast"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(self.target.clone())
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [arg] = args.args.as_slice() else {
            return exec_err!("text_array_cast takes one argument");
        };
        let a = arg.to_array(args.number_rows)?;
        if !matches!(
            a.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Ok(ColumnarValue::Array(datafusion::arrow::compute::cast(
                &a,
                &self.target,
            )?));
        }
        let mut b = datafusion::arrow::array::ListBuilder::new(
            datafusion::arrow::array::StringBuilder::new(),
        );
        for v in strings(&a)? {
            match v {
                None => b.append_null(),
                Some(s) => {
                    let items = crate::insert::parse_text_array("array", s).map_err(|e| {
                        datafusion::error::DataFusionError::Execution(e.to_string())
                    })?;
                    for it in items {
                        b.values().append_value(it);
                    }
                    b.append(true);
                }
            }
        }
        let list: ArrayRef = Arc::new(b.finish());
        debug_assert_eq!(list.data_type(), &text_list_type());
        Ok(ColumnarValue::Array(datafusion::arrow::compute::cast(
            &list,
            &self.target,
        )?))
    }
}

/// Rewrites casts to `TEXT[]` into [`TextArrayCastUdf`] calls.
#[derive(Debug, Default)]
pub struct TextArrayCasts;

impl AnalyzerRule for TextArrayCasts {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        use datafusion::logical_expr::{Cast, TryCast};
        crate::vector::rewrite_plan_expressions(plan, |e| match e {
            Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field }) if matches!(field.data_type(), DataType::List(f) if matches!(f.data_type(), DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)) =>
            {
                let udf =
                    ScalarUDF::new_from_impl(TextArrayCastUdf::new(field.data_type().clone()));
                Ok(Transformed::yes(Expr::ScalarFunction(
                    ScalarFunction::new_udf(Arc::new(udf), vec![*expr]),
                )))
            }
            e => Ok(Transformed::no(e)),
        })
    }

    fn name(&self) -> &str {
        "tidal_text_array_casts"
    }
}

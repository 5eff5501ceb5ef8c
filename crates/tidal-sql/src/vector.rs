//! pgvector's SQL surface (SQL.md §7): the `vector` type in casts, the distance
//! functions and the operators `<->` (L2), `<=>` (cosine) and `<#>` (negative inner
//! product). (pgvector's `<+>` cannot be written: sqlparser splits `<+`; use
//! `l1_distance`.)
//!
//! Vectors are `FixedSizeList<Float32>` arrays (a `VECTOR(n)` column) or, for an
//! unsized `vector` cast of a non-constant text, `List<Float32>`. The distance
//! functions read the list's contiguous `f32` values directly, one pass per batch, so
//! `ORDER BY embedding <=> '[…]' LIMIT k` is a vectorized scan under DataFusion's TopK.
//! Arithmetic follows pgvector: sums in `f32`, the result as DOUBLE.
//!
//! `'[1,2,3]'::vector` and `CAST(x AS vector(3))` plan as casts to the Arrow list type
//! (the [`VectorTypes`] type planner); Arrow cannot cast text to a list, so the
//! [`VectorCasts`] analyzer rule turns those casts into calls of `vector(x [, n])`,
//! which parses pgvector's text form.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Float64Array, Int32Array, ListArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float32Type};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::expr::{Cast, ScalarFunction, TryCast};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr, TypePlanner};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility, lit,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::sql::sqlparser::ast::{self, BinaryOperator};
use tidal_core::VECTOR_DIMENSIONS_MAX;

/// The Arrow type of `vector(n)` (the type of a `VECTOR(n)` column).
pub fn vector_type(dimensions: i32) -> DataType {
    DataType::FixedSizeList(
        Arc::new(Field::new_list_field(DataType::Float32, true)),
        dimensions,
    )
}

/// The element field name of an unsized `vector`: it tells a vector of unknown
/// dimension from a `real[]` (both are lists of Float32), so the wire sends it as a
/// vector.
pub const UNSIZED_VECTOR_ITEM: &str = "vector";

/// The Arrow type of an unsized `vector` whose dimension is only known per row.
pub(crate) fn unsized_vector_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        UNSIZED_VECTOR_ITEM,
        DataType::Float32,
        true,
    )))
}

/// Whether `t` is the Arrow type of a `vector` value: `vector(n)` (a fixed-size list
/// of Float32) or an unsized vector.
pub fn is_vector_value_type(t: &DataType) -> bool {
    match t {
        DataType::FixedSizeList(f, _) => f.data_type() == &DataType::Float32,
        DataType::List(f) => f.data_type() == &DataType::Float32 && f.name() == UNSIZED_VECTOR_ITEM,
        _ => false,
    }
}

fn is_vector_type(t: &DataType) -> bool {
    matches!(t, DataType::FixedSizeList(f, _) | DataType::List(f) | DataType::LargeList(f)
        if f.data_type() == &DataType::Float32)
}

fn data_err(message: String) -> DataFusionError {
    DataFusionError::Execution(message)
}

/// pgvector's text form, `[1,2,3]`. A malformed literal is 22P02 (an Arrow parse
/// error at the wire edge), a bad value 22000, with pgvector's wording.
pub fn parse_vector(s: &str) -> Result<Vec<f32>> {
    let malformed = || {
        DataFusionError::from(datafusion::arrow::error::ArrowError::ParseError(format!(
            "invalid input syntax for type vector: \"{s}\""
        )))
    };
    let inner = s
        .trim()
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .ok_or_else(malformed)?;
    if inner.trim().is_empty() {
        return Err(data_err("vector must have at least 1 dimension".into()));
    }
    let mut out = Vec::new();
    for part in inner.split(',') {
        let v: f32 = part.trim().parse().map_err(|_| malformed())?;
        if v.is_nan() {
            return Err(data_err("NaN not allowed in vector".into()));
        }
        if v.is_infinite() {
            return Err(data_err("infinite value not allowed in vector".into()));
        }
        out.push(v);
        if out.len() > VECTOR_DIMENSIONS_MAX as usize {
            return Err(data_err(format!(
                "vector cannot have more than {VECTOR_DIMENSIONS_MAX} dimensions"
            )));
        }
    }
    Ok(out)
}

/// The vectors of one argument, row by row, without copying a list array's values.
pub(crate) enum Vectors {
    Fixed(FixedSizeListArray),
    List(ListArray),
    Parsed(Vec<Option<Vec<f32>>>),
    One(Option<Vec<f32>>),
}

impl Vectors {
    pub(crate) fn of(v: &ColumnarValue, function: &str) -> Result<Vectors> {
        let bad = |t: &DataType| {
            DataFusionError::Plan(format!(
                "function {function} does not accept a {t} (expected a vector)"
            ))
        };
        match v {
            ColumnarValue::Scalar(s) => match s {
                ScalarValue::Null => Ok(Vectors::One(None)),
                s if s.try_as_str().is_some() => Ok(Vectors::One(
                    s.try_as_str().flatten().map(parse_vector).transpose()?,
                )),
                other => {
                    let array = other.to_array()?;
                    let rows = Vectors::of(&ColumnarValue::Array(array), function)?;
                    Ok(Vectors::One(rows.get(0).map(<[f32]>::to_vec)))
                }
            },
            ColumnarValue::Array(a) => match a.data_type() {
                DataType::FixedSizeList(f, _) if f.data_type() == &DataType::Float32 => {
                    let list = a.as_fixed_size_list().clone();
                    Ok(Vectors::Fixed(list))
                }
                DataType::List(f) if f.data_type() == &DataType::Float32 => {
                    let list = a.as_list::<i32>().clone();
                    Ok(Vectors::List(list))
                }
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                    let text = datafusion::arrow::compute::cast(a, &DataType::Utf8)?;
                    let rows = text
                        .as_string::<i32>()
                        .iter()
                        .map(|t| t.map(parse_vector).transpose())
                        .collect::<Result<_>>()?;
                    Ok(Vectors::Parsed(rows))
                }
                DataType::Null => Ok(Vectors::One(None)),
                t => Err(bad(t)),
            },
        }
    }

    pub(crate) fn get(&self, i: usize) -> Option<&[f32]> {
        match self {
            Vectors::Fixed(list) => {
                if list.is_null(i) {
                    return None;
                }
                let d = list.value_length() as usize;
                let start = list.value_offset(i) as usize;
                let values = list.values().as_primitive::<Float32Type>().values();
                values.get(start..start + d)
            }
            Vectors::List(list) => {
                if list.is_null(i) {
                    return None;
                }
                let offsets = list.value_offsets();
                let (start, end) = (offsets[i] as usize, offsets[i + 1] as usize);
                let values = list.values().as_primitive::<Float32Type>().values();
                values.get(start..end)
            }
            Vectors::Parsed(rows) => rows.get(i).and_then(|r| r.as_deref()),
            Vectors::One(v) => v.as_deref(),
        }
    }
}

/// Accepted argument types: vectors, their text form, NULL.
fn check_vector_arg(function: &str, t: &DataType) -> Result<DataType> {
    match t {
        t if is_vector_type(t) => Ok(t.clone()),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => Ok(t.clone()),
        t => Err(DataFusionError::Plan(format!(
            "function {function} does not accept a {t} (expected a vector)"
        ))),
    }
}

/// A distance or similarity between two vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// `l2_distance`, `<->`.
    L2,
    /// `cosine_distance`, `<=>`.
    Cosine,
    /// `inner_product`.
    InnerProduct,
    /// `vector_negative_inner_product`, `<#>`.
    NegativeInnerProduct,
    /// `l1_distance` (pgvector's `<+>`).
    L1,
}

impl Metric {
    fn name(self) -> &'static str {
        match self {
            Metric::L2 => "l2_distance",
            Metric::Cosine => "cosine_distance",
            Metric::InnerProduct => "inner_product",
            Metric::NegativeInnerProduct => "vector_negative_inner_product",
            Metric::L1 => "l1_distance",
        }
    }

    /// pgvector's arithmetic: `f32` sums, the result widened to DOUBLE.
    pub fn eval(self, a: &[f32], b: &[f32]) -> f64 {
        match self {
            Metric::L2 => {
                let s: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
                f64::from(s).sqrt()
            }
            Metric::InnerProduct => f64::from(dot(a, b)),
            Metric::NegativeInnerProduct => -f64::from(dot(a, b)),
            Metric::Cosine => {
                let (d, na, nb) = a
                    .iter()
                    .zip(b)
                    .fold((0f32, 0f32, 0f32), |(d, na, nb), (x, y)| {
                        (d + x * y, na + x * x, nb + y * y)
                    });
                let similarity = f64::from(d) / (f64::from(na) * f64::from(nb)).sqrt();
                // A zero vector has no direction: NaN, as in pgvector.
                if similarity.is_nan() {
                    return f64::NAN;
                }
                1.0 - similarity.clamp(-1.0, 1.0)
            }
            Metric::L1 => f64::from(a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>()),
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `l2_distance(a, b)` and the other [`Metric`]s.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DistanceUdf {
    metric: Metric,
    signature: Signature,
}

impl DistanceUdf {
    pub fn new(metric: Metric) -> DistanceUdf {
        DistanceUdf {
            metric,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for DistanceUdf {
    fn name(&self) -> &str {
        self.metric.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        if args.len() != 2 {
            return Err(DataFusionError::Plan(format!(
                "function {} takes 2 vectors",
                self.name()
            )));
        }
        args.iter()
            .map(|t| check_vector_arg(self.name(), t))
            .collect()
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let a = Vectors::of(&args.args[0], self.name())?;
        let b = Vectors::of(&args.args[1], self.name())?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            out.push(match (a.get(i), b.get(i)) {
                (Some(x), Some(y)) => {
                    if x.len() != y.len() {
                        return Err(data_err(format!(
                            "different vector dimensions {} and {}",
                            x.len(),
                            y.len()
                        )));
                    }
                    Some(self.metric.eval(x, y))
                }
                _ => None,
            });
        }
        let all_scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        if all_scalar {
            return Ok(ColumnarValue::Scalar(ScalarValue::Float64(
                out.first().copied().flatten(),
            )));
        }
        Ok(ColumnarValue::Array(Arc::new(Float64Array::from(out))))
    }
}

/// `vector_dims(v)` (INTEGER) and `vector_norm(v)` (DOUBLE, the Euclidean norm).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VectorMeasureUdf {
    norm: bool,
    signature: Signature,
}

impl VectorMeasureUdf {
    pub fn dims() -> VectorMeasureUdf {
        VectorMeasureUdf {
            norm: false,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
    pub fn norm() -> VectorMeasureUdf {
        VectorMeasureUdf {
            norm: true,
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for VectorMeasureUdf {
    fn name(&self) -> &str {
        if self.norm {
            "vector_norm"
        } else {
            "vector_dims"
        }
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        if args.len() != 1 {
            return Err(DataFusionError::Plan(format!(
                "function {} takes 1 vector",
                self.name()
            )));
        }
        args.iter()
            .map(|t| check_vector_arg(self.name(), t))
            .collect()
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(if self.norm {
            DataType::Float64
        } else {
            DataType::Int32
        })
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let v = Vectors::of(&args.args[0], self.name())?;
        let array: ArrayRef = if self.norm {
            Arc::new(Float64Array::from_iter((0..n).map(|i| {
                v.get(i).map(|x| {
                    x.iter()
                        .map(|e| f64::from(*e) * f64::from(*e))
                        .sum::<f64>()
                        .sqrt()
                })
            })))
        } else {
            Arc::new(Int32Array::from_iter(
                (0..n).map(|i| v.get(i).map(|x| x.len() as i32)),
            ))
        };
        if matches!(args.args[0], ColumnarValue::Scalar(_)) {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &array, 0,
            )?));
        }
        Ok(ColumnarValue::Array(array))
    }
}

/// `vector(x [, n])`: `x` (pgvector text, a vector or a float list) as a vector of `n`
/// dimensions (`FixedSizeList`), or without `n` as an unsized vector (`List`); what
/// `x::vector(n)` and `x::vector` plan to.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct VectorCastUdf {
    signature: Signature,
}

impl Default for VectorCastUdf {
    fn default() -> Self {
        VectorCastUdf {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

fn dims_arg(v: Option<&ScalarValue>) -> Result<Option<i32>> {
    match v {
        None => Ok(None),
        Some(s) => match s.cast_to(&DataType::Int64)? {
            ScalarValue::Int64(Some(n)) if (1..=i64::from(VECTOR_DIMENSIONS_MAX)).contains(&n) => {
                Ok(Some(n as i32))
            }
            _ => Err(DataFusionError::Plan(format!(
                "dimensions for type vector must be between 1 and {VECTOR_DIMENSIONS_MAX}"
            ))),
        },
    }
}

impl ScalarUDFImpl for VectorCastUdf {
    fn name(&self) -> &str {
        "vector"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        match args {
            [x] => Ok(vec![check_vector_arg("vector", x)?]),
            [x, n] if n.is_integer() => Ok(vec![check_vector_arg("vector", x)?, DataType::Int64]),
            _ => Err(DataFusionError::Plan(
                "function vector takes a vector or its text form, and optionally its dimensions"
                    .into(),
            )),
        }
    }
    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Err(DataFusionError::Internal(
            "vector: return_field_from_args is used".into(),
        ))
    }
    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        let given = match args.scalar_arguments.get(1) {
            Some(v) => {
                let v = v.ok_or_else(|| {
                    DataFusionError::Plan("vector: the dimensions must be a constant".into())
                })?;
                dims_arg(Some(v))?
            }
            None => None,
        };
        // The type must be the one the cast was planned with: vector(n) is fixed-size,
        // an unsized vector is a list (its dimension is a property of each value).
        let t = match given {
            Some(n) => vector_type(n),
            None => unsized_vector_type(),
        };
        Ok(Arc::new(Field::new(self.name(), t, true)))
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let v = Vectors::of(&args.args[0], "vector")?;
        let mut values: Vec<f32> = Vec::new();
        let mut valid = Vec::with_capacity(n);
        let array: ArrayRef = match args.return_field.data_type() {
            DataType::FixedSizeList(_, d) => {
                let d = *d as usize;
                for i in 0..n {
                    match v.get(i) {
                        Some(x) if x.len() == d => {
                            values.extend_from_slice(x);
                            valid.push(true);
                        }
                        Some(x) => {
                            return Err(data_err(format!(
                                "expected {d} dimensions, not {}",
                                x.len()
                            )));
                        }
                        None => {
                            values.extend(std::iter::repeat_n(0.0, d));
                            valid.push(false);
                        }
                    }
                }
                Arc::new(FixedSizeListArray::try_new(
                    Arc::new(Field::new_list_field(DataType::Float32, true)),
                    d as i32,
                    Arc::new(Float32Array::from(values)),
                    Some(valid.into()),
                )?)
            }
            _ => {
                let mut lengths = Vec::with_capacity(n);
                for i in 0..n {
                    let x = v.get(i);
                    lengths.push(x.map_or(0, <[f32]>::len));
                    valid.push(x.is_some());
                    values.extend_from_slice(x.unwrap_or(&[]));
                }
                Arc::new(ListArray::try_new(
                    Arc::new(Field::new(UNSIZED_VECTOR_ITEM, DataType::Float32, true)),
                    OffsetBuffer::from_lengths(lengths),
                    Arc::new(Float32Array::from(values)),
                    Some(valid.into()),
                )?)
            }
        };
        if matches!(args.args[0], ColumnarValue::Scalar(_)) {
            return Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &array, 0,
            )?));
        }
        Ok(ColumnarValue::Array(array))
    }
}

/// The scalar functions of this module.
pub fn vector_udfs() -> Vec<ScalarUDF> {
    let mut out: Vec<ScalarUDF> = [
        Metric::L2,
        Metric::Cosine,
        Metric::InnerProduct,
        Metric::NegativeInnerProduct,
        Metric::L1,
    ]
    .into_iter()
    .map(|m| ScalarUDF::new_from_impl(DistanceUdf::new(m)))
    .collect();
    out.push(ScalarUDF::new_from_impl(VectorMeasureUdf::dims()));
    out.push(ScalarUDF::new_from_impl(VectorMeasureUdf::norm()));
    out.push(ScalarUDF::new_from_impl(VectorCastUdf::default()));
    out
}

/// `<->`, `<=>`, `<#>` as pgvector defines them. (sqlparser reads `<=>` as
/// MySQL's null-safe equality; PostgreSQL has no such operator, pgvector makes it the
/// cosine distance.)
#[derive(Debug, Default)]
pub struct VectorOperators;

impl ExprPlanner for VectorOperators {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        _schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        let metric = match &expr.op {
            BinaryOperator::LtDashGt => Metric::L2,
            BinaryOperator::Spaceship => Metric::Cosine,
            BinaryOperator::Custom(op) if op == "<#>" => Metric::NegativeInnerProduct,
            _ => return Ok(PlannerResult::Original(expr)),
        };
        Ok(PlannerResult::Planned(Expr::ScalarFunction(
            ScalarFunction::new_udf(
                Arc::new(ScalarUDF::new_from_impl(DistanceUdf::new(metric))),
                vec![expr.left, expr.right],
            ),
        )))
    }
}

/// `vector` and `vector(n)` in casts.
#[derive(Debug, Default)]
pub struct VectorTypes;

impl TypePlanner for VectorTypes {
    fn plan_type_field(&self, sql_type: &ast::DataType) -> Result<Option<FieldRef>> {
        let printed = sql_type.to_string().to_ascii_lowercase();
        let t = if printed == "vector" {
            unsized_vector_type()
        } else if let Some(n) = printed
            .strip_prefix("vector(")
            .and_then(|r| r.strip_suffix(')'))
        {
            let n: i64 = n.trim().parse().map_err(|_| {
                DataFusionError::Plan(format!("invalid type modifier for vector: {n}"))
            })?;
            match dims_arg(Some(&ScalarValue::Int64(Some(n))))? {
                Some(n) => vector_type(n),
                None => return Ok(None),
            }
        } else {
            return Ok(None);
        };
        Ok(Some(Arc::new(Field::new("", t, true))))
    }
}

/// Rewrites casts to vector types into `vector(x [, n])` calls (Arrow has no cast from
/// text to a list). Runs after type coercion; names are preserved, so the plan's
/// schema does not change.
#[derive(Debug)]
pub struct VectorCasts {
    cast: Arc<ScalarUDF>,
}

impl Default for VectorCasts {
    fn default() -> Self {
        VectorCasts {
            cast: Arc::new(ScalarUDF::new_from_impl(VectorCastUdf::default())),
        }
    }
}

impl VectorCasts {
    fn rewrite(&self, e: Expr) -> Result<Transformed<Expr>> {
        let (expr, t) = match e {
            Expr::Cast(Cast { expr, field }) | Expr::TryCast(TryCast { expr, field })
                if is_vector_type(field.data_type()) =>
            {
                (expr, field.data_type().clone())
            }
            e => return Ok(Transformed::no(e)),
        };
        let mut args = vec![*expr];
        if let DataType::FixedSizeList(_, n) = t {
            args.push(lit(i64::from(n)));
        }
        Ok(Transformed::yes(Expr::ScalarFunction(
            ScalarFunction::new_udf(self.cast.clone(), args),
        )))
    }
}

/// Applies `f` bottom-up to every expression of `plan` and its subqueries, keeping
/// each expression's output name (so the plan's schema names do not change) and
/// recomputing schemas where something changed. The body of our analyzer rules.
pub(crate) fn rewrite_plan_expressions(
    plan: LogicalPlan,
    f: impl Fn(Expr) -> Result<Transformed<Expr>>,
) -> Result<LogicalPlan> {
    plan.transform_up_with_subqueries(|plan| {
        let names = NamePreserver::new(&plan);
        let t = plan.map_expressions(|e| {
            let saved = names.save(&e);
            let t = e.transform_up(&f)?;
            Ok(t.update_data(|e| saved.restore(e)))
        })?;
        if t.transformed {
            t.map_data(|p| p.recompute_schema())
        } else {
            Ok(t)
        }
    })
    .data()
}

impl AnalyzerRule for VectorCasts {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        rewrite_plan_expressions(plan, |e| self.rewrite(e))
    }

    fn name(&self) -> &str {
        "tidal_vector_casts"
    }
}

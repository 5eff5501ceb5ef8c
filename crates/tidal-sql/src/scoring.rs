//! The pure scoring functions of SQL.md §5: `hot`, `wilson`, `controversy`, `hn`,
//! `freshness`. Functions of "now" (`hn`, `freshness`) read the statement's start time,
//! appended as a hidden last argument by `simplify`, like the signal functions.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, Float64Array, IntervalMonthDayNanoArray, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, IntervalUnit, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, lit,
};
use tidal_core::Timestamp;
use tidal_core::time::{MICROS_PER_DAY, parse_interval_micros};

use crate::error::{bad_arg, engine_err};

/// Reddit's epoch offset in the `hot` formula (seconds since 1970).
const HOT_EPOCH_SECONDS: f64 = 1_134_028_003.0;
const HOT_SCALE_SECONDS: f64 = 45_000.0;
const WILSON_Z_DEFAULT: f64 = 1.281551565545;
const HN_GRAVITY_DEFAULT: f64 = 1.8;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScoreFn {
    Hot,
    Wilson,
    Controversy,
    Hn,
    Freshness,
}

impl ScoreFn {
    pub const ALL: [ScoreFn; 5] = [
        ScoreFn::Hot,
        ScoreFn::Wilson,
        ScoreFn::Controversy,
        ScoreFn::Hn,
        ScoreFn::Freshness,
    ];

    fn name(self) -> &'static str {
        match self {
            ScoreFn::Hot => "hot",
            ScoreFn::Wilson => "wilson",
            ScoreFn::Controversy => "controversy",
            ScoreFn::Hn => "hn",
            ScoreFn::Freshness => "freshness",
        }
    }

    fn usage(self) -> &'static str {
        match self {
            ScoreFn::Hot => "hot(ups, downs, created_at)",
            ScoreFn::Wilson => "wilson(ups, n [, z])",
            ScoreFn::Controversy => "controversy(ups, downs)",
            ScoreFn::Hn => "hn(points, created_at [, gravity])",
            ScoreFn::Freshness => "freshness(ts, half_life)",
        }
    }

    /// Argument types as the user writes them (min, max), without the hidden `now`.
    fn user_arity(self) -> (usize, usize) {
        match self {
            ScoreFn::Hot => (3, 3),
            ScoreFn::Wilson => (2, 3),
            ScoreFn::Controversy => (2, 2),
            ScoreFn::Hn => (2, 3),
            ScoreFn::Freshness => (2, 2),
        }
    }

    fn uses_now(self) -> bool {
        matches!(self, ScoreFn::Hn | ScoreFn::Freshness)
    }
}

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, None)
}

#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ScoreUdf {
    f: ScoreFn,
    signature: Signature,
}

impl ScoreUdf {
    pub fn new(f: ScoreFn) -> ScoreUdf {
        ScoreUdf {
            f,
            signature: Signature::user_defined(Volatility::Stable),
        }
    }

    pub fn all() -> Vec<ScalarUDF> {
        ScoreFn::ALL
            .iter()
            .map(|f| ScalarUDF::new_from_impl(ScoreUdf::new(*f)))
            .collect()
    }
}

fn f64s(v: &ColumnarValue, n: usize, f: ScoreFn) -> Result<Float64Array> {
    let a = cast(&v.to_array(n)?, &DataType::Float64)?;
    a.as_any()
        .downcast_ref::<Float64Array>()
        .cloned()
        .ok_or_else(|| bad_arg(f.name(), "expected a number"))
}

fn micros(v: &ColumnarValue, n: usize, f: ScoreFn) -> Result<TimestampMicrosecondArray> {
    let a = cast(&v.to_array(n)?, &ts_type())?;
    a.as_any()
        .downcast_ref::<TimestampMicrosecondArray>()
        .cloned()
        .ok_or_else(|| bad_arg(f.name(), "expected a timestamp"))
}

/// A half-life as microseconds: an INTERVAL (months count 30 days) or interval text.
fn interval_micros(v: &ColumnarValue, n: usize) -> Result<Vec<Option<i64>>> {
    let a = v.to_array(n)?;
    match a.data_type() {
        DataType::Interval(IntervalUnit::MonthDayNano) => {
            let a = a
                .as_any()
                .downcast_ref::<IntervalMonthDayNanoArray>()
                .ok_or_else(|| bad_arg("freshness", "expected an interval"))?;
            Ok(a.iter()
                .map(|v| {
                    v.map(|i| {
                        i64::from(i.months) * 30 * MICROS_PER_DAY
                            + i64::from(i.days) * MICROS_PER_DAY
                            + i.nanoseconds / 1_000
                    })
                })
                .collect())
        }
        _ => {
            let s = cast(&a, &DataType::Utf8)?;
            let s = s
                .as_any()
                .downcast_ref::<StringArray>()
                .ok_or_else(|| bad_arg("freshness", "expected an interval"))?;
            s.iter()
                .map(|v| v.map(parse_interval_micros).transpose().map_err(engine_err))
                .collect()
        }
    }
}

fn hidden_now(args: &[ColumnarValue]) -> Timestamp {
    match args.last() {
        Some(ColumnarValue::Scalar(ScalarValue::TimestampMicrosecond(Some(t), _))) => Timestamp(*t),
        _ => Timestamp::now_system(),
    }
}

impl ScalarUDFImpl for ScoreUdf {
    fn name(&self) -> &str {
        self.f.name()
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let (min, max) = self.f.user_arity();
        let hidden = usize::from(self.f.uses_now());
        if arg_types.len() < min || arg_types.len() > max + hidden {
            return Err(bad_arg(self.f.name(), format!("usage: {}", self.f.usage())));
        }
        Ok(arg_types
            .iter()
            .enumerate()
            .map(|(i, t)| match (self.f, i) {
                (ScoreFn::Hot, 2) | (ScoreFn::Hn, 1) | (ScoreFn::Freshness, 0) => ts_type(),
                (ScoreFn::Freshness, 1) => match t {
                    DataType::Interval(_) => DataType::Interval(IntervalUnit::MonthDayNano),
                    _ => DataType::Utf8,
                },
                (f, i) if f.uses_now() && i == arg_types.len() - 1 && i >= f.user_arity().1 => {
                    ts_type()
                }
                _ => DataType::Float64,
            })
            .collect())
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn simplify(&self, mut args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        let (_, max) = self.f.user_arity();
        if !self.f.uses_now() || args.len() > max {
            return Ok(ExprSimplifyResult::Original(args));
        }
        let Some(start) = info.query_execution_start_time() else {
            return Ok(ExprSimplifyResult::Original(args));
        };
        if self.f == ScoreFn::Hn && args.len() == 2 {
            args.push(lit(HN_GRAVITY_DEFAULT));
        }
        args.push(lit(ScalarValue::TimestampMicrosecond(
            Some(start.timestamp_micros()),
            None,
        )));
        Ok(ExprSimplifyResult::Simplified(Expr::ScalarFunction(
            datafusion::logical_expr::expr::ScalarFunction::new_udf(
                Arc::new(ScalarUDF::new_from_impl(ScoreUdf::new(self.f))),
                args,
            ),
        )))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let n = args.number_rows;
        let a = &args.args;
        let f = self.f;
        let out: Float64Array = match f {
            ScoreFn::Hot => {
                let (ups, downs, at) =
                    (f64s(&a[0], n, f)?, f64s(&a[1], n, f)?, micros(&a[2], n, f)?);
                (0..n)
                    .map(|i| {
                        if ups.is_null(i) || downs.is_null(i) || at.is_null(i) {
                            return None;
                        }
                        let s = ups.value(i) - downs.value(i);
                        let order = s.abs().max(1.0).log10();
                        let secs = at.value(i) as f64 / 1e6;
                        Some(
                            s.signum() * order * f64::from(u8::from(s != 0.0))
                                + (secs - HOT_EPOCH_SECONDS) / HOT_SCALE_SECONDS,
                        )
                    })
                    .collect()
            }
            ScoreFn::Wilson => {
                let (ups, total) = (f64s(&a[0], n, f)?, f64s(&a[1], n, f)?);
                let z = a.get(2).map(|z| f64s(z, n, f)).transpose()?;
                (0..n)
                    .map(|i| {
                        if ups.is_null(i) || total.is_null(i) {
                            return None;
                        }
                        let (u, t) = (ups.value(i), total.value(i));
                        let z = z.as_ref().map_or(WILSON_Z_DEFAULT, |z| z.value(i));
                        if t <= 0.0 {
                            return Some(0.0);
                        }
                        let p = u / t;
                        let z2 = z * z;
                        Some(
                            (p + z2 / (2.0 * t)
                                - z * ((p * (1.0 - p) + z2 / (4.0 * t)) / t).sqrt())
                                / (1.0 + z2 / t),
                        )
                    })
                    .collect()
            }
            ScoreFn::Controversy => {
                let (ups, downs) = (f64s(&a[0], n, f)?, f64s(&a[1], n, f)?);
                (0..n)
                    .map(|i| {
                        if ups.is_null(i) || downs.is_null(i) {
                            return None;
                        }
                        let (u, d) = (ups.value(i), downs.value(i));
                        if u <= 0.0 || d <= 0.0 {
                            return Some(0.0);
                        }
                        Some((u + d).powf(u.min(d) / u.max(d)))
                    })
                    .collect()
            }
            ScoreFn::Hn => {
                let now = hidden_now(a);
                let (points, at) = (f64s(&a[0], n, f)?, micros(&a[1], n, f)?);
                let gravity = if a.len() >= 3 {
                    Some(f64s(&a[2], n, f)?)
                } else {
                    None
                };
                (0..n)
                    .map(|i| {
                        if points.is_null(i) || at.is_null(i) {
                            return None;
                        }
                        let g = gravity.as_ref().map_or(HN_GRAVITY_DEFAULT, |g| g.value(i));
                        let age_hours = ((now.0 - at.value(i)) as f64 / 3.6e9).max(0.0);
                        Some((points.value(i) - 1.0) / (age_hours + 2.0).powf(g))
                    })
                    .collect()
            }
            ScoreFn::Freshness => {
                let now = hidden_now(a);
                let at = micros(&a[0], n, f)?;
                let hl = interval_micros(&a[1], n)?;
                let mut out = Vec::with_capacity(n);
                for (i, h) in hl.iter().enumerate() {
                    match h {
                        _ if at.is_null(i) => out.push(None),
                        None => out.push(None),
                        Some(h) if *h <= 0 => {
                            return Err(bad_arg(f.name(), "the half-life must be positive"));
                        }
                        Some(h) => {
                            let age = (now.0 - at.value(i)) as f64;
                            out.push(Some((-age / *h as f64).exp2()));
                        }
                    }
                }
                out.into_iter().collect()
            }
        };
        Ok(ColumnarValue::Array(Arc::new(out) as ArrayRef))
    }
}

//! Monitoring figures: a lock-free [`Histogram`] and the [`Metric`] records every layer
//! reports, which the server exposes at `/metrics` (Prometheus) and as the `tidal_stats`
//! table.
//!
//! Values are recorded in integer units (microseconds, counts) and converted to base
//! units (seconds) when read, so recording is three relaxed atomic adds.
//!
//! ```
//! use tidal_core::metrics::{Histogram, LATENCY_BOUNDS_MICROS};
//!
//! let h = Histogram::new(LATENCY_BOUNDS_MICROS);
//! for micros in [120, 180, 900, 40_000] {
//!     h.observe(micros);
//! }
//! let s = h.snapshot(1e6); // microseconds → seconds
//! assert_eq!(s.count, 4);
//! assert!((s.sum - 0.0412).abs() < 1e-9);
//! let p50 = s.quantile(0.5).unwrap();
//! assert!(p50 > 0.0001 && p50 <= 0.00025);
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket upper bounds for latencies, in microseconds: 10 µs to 10 s, about 2.5× apart.
pub const LATENCY_BOUNDS_MICROS: &[u64] = &[
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// Bucket upper bounds for sizes and counts: powers of two, 1 to 4096.
pub const SIZE_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 2_048, 4_096];

/// A histogram with fixed bucket bounds, safe to record into from many threads.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One per bound, then the overflow bucket.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
    count: AtomicU64,
    max: AtomicU64,
}

impl Histogram {
    /// A histogram over `bounds` (ascending upper bounds; values above the last go to
    /// an overflow bucket).
    pub fn new(bounds: &'static [u64]) -> Histogram {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            count: AtomicU64::new(0),
            max: AtomicU64::new(0),
        }
    }

    /// Records one value.
    pub fn observe(&self, value: u64) {
        let i = self.bounds.partition_point(|&b| b < value);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    /// Records a duration in microseconds (for [`LATENCY_BOUNDS_MICROS`] histograms).
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// The current figures in base units, values being recorded in `1 / per_base` of
    /// one (`1e6` turns microseconds into seconds; dividing keeps bounds such as 1e-5
    /// exact in the exposition). Concurrent recording can make `count` differ from the
    /// bucket total by the values in flight; both only grow.
    pub fn snapshot(&self, per_base: f64) -> HistogramSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HistogramSnapshot {
            bounds: self.bounds.iter().map(|&b| b as f64 / per_base).collect(),
            counts: self.buckets.iter().map(get).collect(),
            sum: get(&self.sum) as f64 / per_base,
            count: get(&self.count),
            max: get(&self.max) as f64 / per_base,
        }
    }
}

/// A point-in-time copy of a [`Histogram`], in base units.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Upper bounds of the finite buckets.
    pub bounds: Vec<f64>,
    /// Values per bucket (not cumulative): one per bound, then the overflow bucket.
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
    /// The largest value recorded (0 when none).
    pub max: f64,
}

impl HistogramSnapshot {
    /// The `q`-quantile (0 ≤ q ≤ 1), interpolated linearly inside its bucket and capped
    /// at the largest value recorded; `None` when nothing was recorded.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = (q * total as f64).max(1.0);
        let mut below = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (below + n) as f64 >= rank {
                let lo = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let hi = self
                    .bounds
                    .get(i)
                    .copied()
                    .unwrap_or(self.max)
                    .min(self.max);
                let within = (rank - below as f64) / n as f64;
                return Some((lo + (hi - lo).max(0.0) * within).min(self.max));
            }
            below += n;
        }
        Some(self.max)
    }

    /// Cumulative `(upper bound, values at or below it)` pairs ending with `+Inf`, the
    /// form Prometheus exposes.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        self.counts
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                total += n;
                (self.bounds.get(i).copied().unwrap_or(f64::INFINITY), total)
            })
            .collect()
    }
}

/// What a [`Metric`] measures.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    /// A total that only grows while the process runs.
    Counter(u64),
    /// A level that goes up and down.
    Gauge(f64),
    Histogram(HistogramSnapshot),
}

/// One figure, as reported by a layer's `metrics()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    /// Prometheus family name, without the `_total` counters get when exposed.
    pub name: &'static str,
    pub help: &'static str,
    /// Label pairs; a family's metrics all have the same keys.
    pub labels: Vec<(&'static str, String)>,
    pub value: MetricValue,
}

impl Metric {
    pub fn counter(name: &'static str, help: &'static str, value: u64) -> Metric {
        Metric {
            name,
            help,
            labels: Vec::new(),
            value: MetricValue::Counter(value),
        }
    }

    pub fn gauge(name: &'static str, help: &'static str, value: f64) -> Metric {
        Metric {
            name,
            help,
            labels: Vec::new(),
            value: MetricValue::Gauge(value),
        }
    }

    pub fn histogram(name: &'static str, help: &'static str, value: HistogramSnapshot) -> Metric {
        Metric {
            name,
            help,
            labels: Vec::new(),
            value: MetricValue::Histogram(value),
        }
    }

    /// The same metric with one more label.
    pub fn label(mut self, key: &'static str, value: impl Into<String>) -> Metric {
        self.labels.push((key, value.into()));
        self
    }

    /// `counter`, `gauge` or `histogram`.
    pub fn kind(&self) -> &'static str {
        match self.value {
            MetricValue::Counter(_) => "counter",
            MetricValue::Gauge(_) => "gauge",
            MetricValue::Histogram(_) => "histogram",
        }
    }

    /// The name a Prometheus scrape shows (counters end in `_total`).
    pub fn exposed_name(&self) -> String {
        match self.value {
            MetricValue::Counter(_) => format!("{}_total", self.name),
            _ => self.name.to_string(),
        }
    }

    /// Labels as `key="value"` pairs joined by commas (empty when there are none).
    pub fn labels_text(&self) -> String {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn buckets_are_upper_bound_inclusive() {
        let h = Histogram::new(&[10, 100]);
        for v in [0, 10, 11, 100, 101, 5_000] {
            h.observe(v);
        }
        let s = h.snapshot(1.0);
        assert_eq!(s.counts, vec![2, 2, 2]);
        assert_eq!(s.count, 6);
        assert_eq!(s.max, 5_000.0);
        assert_eq!(
            s.cumulative(),
            vec![(10.0, 2), (100.0, 4), (f64::INFINITY, 6)]
        );
    }

    #[test]
    fn empty_has_no_quantile() {
        let s = Histogram::new(SIZE_BOUNDS).snapshot(1.0);
        assert_eq!(s.quantile(0.5), None);
        assert_eq!(s.count, 0);
    }

    #[test]
    fn overflow_quantile_is_the_max() {
        let h = Histogram::new(&[10]);
        h.observe(1_000);
        assert_eq!(h.snapshot(1.0).quantile(0.99), Some(1_000.0));
    }

    #[test]
    fn labels_text_quotes_values() {
        let m = Metric::counter("x", "", 1)
            .label("kind", "select")
            .label("q", "a\"b");
        assert_eq!(m.labels_text(), r#"kind="select",q="a\"b""#);
        assert_eq!(m.exposed_name(), "x_total");
    }

    proptest! {
        /// The estimate lies in the bucket that holds the true quantile: between the
        /// bounds around it, and never above the largest value.
        #[test]
        fn quantile_is_within_the_true_bucket(
            mut values in proptest::collection::vec(0u64..20_000_000, 1..300),
            q in 0.01f64..=1.0,
        ) {
            let h = Histogram::new(LATENCY_BOUNDS_MICROS);
            values.iter().for_each(|&v| h.observe(v));
            values.sort_unstable();
            let rank = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len());
            let truth = values[rank - 1];
            let est = h.snapshot(1.0).quantile(q).unwrap();
            let i = LATENCY_BOUNDS_MICROS.partition_point(|&b| b < truth);
            let lo = if i == 0 { 0.0 } else { LATENCY_BOUNDS_MICROS[i - 1] as f64 };
            let max = *values.last().unwrap() as f64;
            let hi = LATENCY_BOUNDS_MICROS.get(i).map_or(max, |&b| b as f64).min(max);
            prop_assert!(est >= lo && est <= hi, "q={q} truth={truth} est={est} [{lo}, {hi}]");
        }
    }
}

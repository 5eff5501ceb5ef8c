use crate::CoreError;
use crate::time::{MICROS_PER_DAY, MICROS_PER_SECOND, parse_interval_micros};

/// Shortest allowed half-life: 1 second.
pub const HALF_LIFE_MICROS_MIN: i64 = MICROS_PER_SECOND;
/// Longest allowed half-life: 10 years of 365.25 days.
pub const HALF_LIFE_MICROS_MAX: i64 = 36_525 * MICROS_PER_DAY / 10;

/// How a signal's score fades with time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DecaySpec {
    /// `score(at) = Σ wᵢ · 2^(−(at − tsᵢ)/half_life)`; `lambda_per_us = ln 2 / half_life`
    /// is precomputed so that the hot path is one `exp`.
    Exponential {
        half_life_us: i64,
        lambda_per_us: f64,
    },
    /// No decay: the score is the plain sum of weights.
    None,
}

impl DecaySpec {
    /// An exponential decay with the given half-life, validated to 1 s – 10 years.
    pub fn exponential_micros(half_life_us: i64) -> Result<DecaySpec, CoreError> {
        if !(HALF_LIFE_MICROS_MIN..=HALF_LIFE_MICROS_MAX).contains(&half_life_us) {
            return Err(CoreError::HalfLifeOutOfRange {
                text: format!("{half_life_us} µs"),
            });
        }
        Ok(DecaySpec::Exponential {
            half_life_us,
            lambda_per_us: std::f64::consts::LN_2 / half_life_us as f64,
        })
    }

    /// Parses a PostgreSQL interval literal such as `'7 days'` as a half-life.
    pub fn exponential(half_life: &str) -> Result<DecaySpec, CoreError> {
        let us = parse_interval_micros(half_life)?;
        DecaySpec::exponential_micros(us).map_err(|_| CoreError::HalfLifeOutOfRange {
            text: half_life.to_string(),
        })
    }

    pub fn half_life_us(&self) -> Option<i64> {
        match self {
            DecaySpec::Exponential { half_life_us, .. } => Some(*half_life_us),
            DecaySpec::None => None,
        }
    }

    /// The factor by which a score shrinks over `dt_us` microseconds (`dt_us` ≥ 0 shrinks,
    /// negative grows). 1.0 for no decay.
    #[inline]
    pub fn factor(&self, dt_us: i64) -> f64 {
        match self {
            DecaySpec::Exponential { lambda_per_us, .. } => (-(dt_us as f64) * lambda_per_us).exp(),
            DecaySpec::None => 1.0,
        }
    }

    /// `"exponential"` or `"none"`, as SHOW SIGNALS prints it.
    pub fn kind_name(&self) -> &'static str {
        match self {
            DecaySpec::Exponential { .. } => "exponential",
            DecaySpec::None => "none",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_life_halves() {
        let d = DecaySpec::exponential("7 days").unwrap();
        let hl = d.half_life_us().unwrap();
        assert!((d.factor(hl) - 0.5).abs() < 1e-15);
        assert!((d.factor(2 * hl) - 0.25).abs() < 1e-15);
        assert_eq!(DecaySpec::None.factor(hl), 1.0);
    }

    #[test]
    fn half_life_range() {
        assert!(DecaySpec::exponential("1 second").is_ok());
        assert!(DecaySpec::exponential("10 years").is_ok());
        assert!(matches!(
            DecaySpec::exponential("0 seconds"),
            Err(CoreError::HalfLifeOutOfRange { .. })
        ));
        assert!(matches!(
            DecaySpec::exponential("-1 day"),
            Err(CoreError::HalfLifeOutOfRange { .. })
        ));
        assert!(DecaySpec::exponential("11 years").is_err());
        assert!(DecaySpec::exponential("500 ms").is_err());
    }
}

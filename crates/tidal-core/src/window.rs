use std::fmt;
use std::str::FromStr;

use crate::CoreError;
use crate::time::{MICROS_PER_DAY, MICROS_PER_HOUR, MICROS_PER_MINUTE};

/// Shortest window a signal may declare.
pub const WINDOW_MINUTES_MIN: u32 = 1;
/// Longest finite window a signal may declare: 90 days.
pub const WINDOW_MINUTES_MAX: u32 = 90 * 24 * 60;

/// A trailing window over which events are counted: `(at − W, at]`, or all time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Window {
    /// A finite window of a whole number of minutes (1 minute to 90 days).
    Minutes(u32),
    /// Every event ever.
    All,
}

impl Window {
    /// Length in microseconds, `None` for `'all'`.
    pub fn micros(self) -> Option<i64> {
        match self {
            Window::Minutes(m) => Some(i64::from(m) * MICROS_PER_MINUTE),
            Window::All => None,
        }
    }

    /// Length in hours (for velocity), `None` for `'all'`.
    pub fn hours(self) -> Option<f64> {
        self.micros().map(|us| us as f64 / MICROS_PER_HOUR as f64)
    }

    /// Stable encoding: minutes, with 0 meaning `'all'`.
    pub fn to_code(self) -> u32 {
        match self {
            Window::Minutes(m) => m,
            Window::All => 0,
        }
    }

    pub fn from_code(code: u32) -> Option<Window> {
        match code {
            0 => Some(Window::All),
            m if (WINDOW_MINUTES_MIN..=WINDOW_MINUTES_MAX).contains(&m) => Some(Window::Minutes(m)),
            _ => None,
        }
    }

    /// Parses `'15m'`, `'6h'`, `'30d'` or `'all'` (case-insensitive).
    pub fn parse(text: &str) -> Result<Window, CoreError> {
        let bad = |reason| CoreError::BadWindow {
            text: text.to_string(),
            reason,
        };
        let s = text.trim().to_ascii_lowercase();
        if s == "all" {
            return Ok(Window::All);
        }
        let unit = s.chars().last().ok_or_else(|| bad("empty window"))?;
        let digits = &s[..s.len() - unit.len_utf8()];
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || digits.len() > 9 {
            return Err(bad(
                "expected a whole number followed by m, h or d, or 'all'",
            ));
        }
        let n: u64 = digits.parse().map_err(|_| bad("bad number"))?;
        let minutes = match unit {
            'm' => n,
            'h' => n * 60,
            'd' => n * 24 * 60,
            _ => return Err(bad("unit must be m (minutes), h (hours) or d (days)")),
        };
        if minutes < u64::from(WINDOW_MINUTES_MIN) {
            return Err(bad("a window must be at least 1 minute"));
        }
        if minutes > u64::from(WINDOW_MINUTES_MAX) {
            return Err(bad("a window must be at most 90 days"));
        }
        Ok(Window::Minutes(minutes as u32))
    }
}

impl FromStr for Window {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Window::parse(s)
    }
}

impl fmt::Display for Window {
    /// The canonical text form: the largest unit that divides evenly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Window::All => f.write_str("all"),
            Window::Minutes(m) => {
                let us = i64::from(m) * MICROS_PER_MINUTE;
                if us % MICROS_PER_DAY == 0 {
                    write!(f, "{}d", us / MICROS_PER_DAY)
                } else if us % MICROS_PER_HOUR == 0 {
                    write!(f, "{}h", us / MICROS_PER_HOUR)
                } else {
                    write!(f, "{m}m")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_windows() {
        assert_eq!(Window::parse("15m").unwrap(), Window::Minutes(15));
        assert_eq!(Window::parse("6H").unwrap(), Window::Minutes(360));
        assert_eq!(Window::parse("30d").unwrap(), Window::Minutes(30 * 1440));
        assert_eq!(
            Window::parse("90d").unwrap(),
            Window::Minutes(WINDOW_MINUTES_MAX)
        );
        assert_eq!(Window::parse("all").unwrap(), Window::All);
        for bad in ["0m", "91d", "1w", "", "m", "-1h", "1.5h", "2160h1"] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Window::parse("24h").unwrap().to_string(), "1d");
        assert_eq!(Window::parse("90m").unwrap().to_string(), "90m");
        assert_eq!(Window::parse("120m").unwrap().to_string(), "2h");
        for w in ["1m", "7d", "all"] {
            let w = Window::parse(w).unwrap();
            assert_eq!(Window::from_code(w.to_code()), Some(w));
        }
    }
}

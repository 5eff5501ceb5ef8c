//! Time: microsecond UTC timestamps, interval literals and the clock abstraction.
//!
//! Nothing below the statement boundary reads the system clock directly: the engine is
//! handed a [`Clock`], so tests control time and a statement can fix one instant.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::CoreError;

pub const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
pub const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// An instant in UTC, in microseconds since the Unix epoch (as PostgreSQL's `timestamp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Timestamp {
    pub const MIN: Timestamp = Timestamp(i64::MIN);
    pub const MAX: Timestamp = Timestamp(i64::MAX);

    pub fn from_micros(us: i64) -> Timestamp {
        Timestamp(us)
    }

    pub fn as_micros(self) -> i64 {
        self.0
    }

    /// Reads the system clock. Only the [`SystemClock`] and binaries should call this.
    pub fn now_system() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
    }

    pub fn saturating_add(self, us: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(us))
    }

    pub fn saturating_sub(self, us: i64) -> Timestamp {
        Timestamp(self.0.saturating_sub(us))
    }

    /// Parses `YYYY-MM-DD`, `YYYY-MM-DD HH:MM[:SS[.ffffff]]` (a `T` may replace the
    /// space) with an optional zone suffix `Z`, `+HH[:MM]` or `-HH[:MM]`. Without a zone
    /// the time is UTC, as SQL.md specifies.
    pub fn parse(text: &str) -> Result<Timestamp, CoreError> {
        parse_timestamp(text.trim()).map_err(|reason| CoreError::BadTimestamp {
            text: text.to_string(),
            reason,
        })
    }

    /// Splits into civil date and time-of-day parts (UTC).
    pub fn to_civil(self) -> (i64, u32, u32, u32, u32, u32, u32) {
        let days = self.0.div_euclid(MICROS_PER_DAY);
        let rem = self.0.rem_euclid(MICROS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        let secs = rem / MICROS_PER_SECOND;
        let micros = (rem % MICROS_PER_SECOND) as u32;
        (
            y,
            m,
            d,
            (secs / 3600) as u32,
            ((secs / 60) % 60) as u32,
            (secs % 60) as u32,
            micros,
        )
    }
}

impl fmt::Display for Timestamp {
    /// PostgreSQL's text form: `2026-11-25 10:00:00` with `.ffffff` only when non-zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (y, mo, d, h, mi, s, us) = self.to_civil();
        write!(f, "{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")?;
        if us != 0 {
            let frac = format!("{us:06}");
            write!(f, ".{}", frac.trim_end_matches('0'))?;
        }
        Ok(())
    }
}

impl FromStr for Timestamp {
    type Err = CoreError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Timestamp::parse(s)
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Inverse of [`days_from_civil`].
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ => {
            if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 {
                29
            } else {
                28
            }
        }
    }
}

fn num(s: &str, what: &'static str) -> Result<u32, &'static str> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 9 {
        return Err(what);
    }
    s.parse().map_err(|_| what)
}

fn parse_timestamp(s: &str) -> Result<Timestamp, &'static str> {
    // Client text: byte 10 may fall inside a multi-byte character.
    let Some((date, rest)) = s.split_at_checked(10) else {
        return Err("expected YYYY-MM-DD[ HH:MM:SS[.ffffff]]");
    };
    let mut dp = date.split('-');
    let (y, m, d) = match (dp.next(), dp.next(), dp.next(), dp.next()) {
        (Some(y), Some(m), Some(d), None) if y.len() == 4 && m.len() == 2 && d.len() == 2 => (
            num(y, "bad year")?,
            num(m, "bad month")?,
            num(d, "bad day")?,
        ),
        _ => return Err("expected YYYY-MM-DD"),
    };
    let y = i64::from(y);
    if !(1..=12).contains(&m) {
        return Err("month out of range");
    }
    if d == 0 || d > days_in_month(y, m) {
        return Err("day out of range");
    }
    let mut us = days_from_civil(y, m, d) * MICROS_PER_DAY;
    let rest = rest.trim_start_matches([' ', 'T', 't']);
    if rest.is_empty() {
        return Ok(Timestamp(us));
    }
    // Split off an optional zone suffix.
    let (clock, zone) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => (rest[..i].trim_end(), Some(&rest[i..])),
        None => (rest.trim_end(), None),
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (clock, None),
    };
    let mut parts = hms.split(':');
    let h = num(parts.next().unwrap_or(""), "bad hour")?;
    let mi = num(parts.next().ok_or("expected HH:MM")?, "bad minute")?;
    let sec = match parts.next() {
        Some(p) => num(p, "bad second")?,
        None => 0,
    };
    if parts.next().is_some() {
        return Err("too many time fields");
    }
    if h > 23 || mi > 59 || sec > 59 {
        return Err("time of day out of range");
    }
    us += i64::from(h) * MICROS_PER_HOUR
        + i64::from(mi) * MICROS_PER_MINUTE
        + i64::from(sec) * MICROS_PER_SECOND;
    if let Some(f) = frac {
        if f.is_empty() || f.len() > 6 || !f.bytes().all(|b| b.is_ascii_digit()) {
            return Err("fractional seconds must have 1 to 6 digits");
        }
        let scale = 10i64.pow(6 - f.len() as u32);
        us += i64::from(num(f, "bad fraction")?) * scale;
    }
    if let Some(z) = zone {
        us -= parse_zone(z)?;
    }
    Ok(Timestamp(us))
}

/// Offset of a zone suffix in microseconds (east of UTC positive).
fn parse_zone(z: &str) -> Result<i64, &'static str> {
    let z = z.trim();
    if z.eq_ignore_ascii_case("z") || z.eq_ignore_ascii_case("utc") {
        return Ok(0);
    }
    let (sign, body) = match z.as_bytes().first() {
        Some(b'+') => (1, &z[1..]),
        Some(b'-') => (-1, &z[1..]),
        _ => return Err("bad zone"),
    };
    let (h, m) = match body.split_once(':') {
        Some((h, m)) => (num(h, "bad zone")?, num(m, "bad zone")?),
        None if body.len() == 4 => match (body.get(..2), body.get(2..)) {
            (Some(h), Some(m)) => (num(h, "bad zone")?, num(m, "bad zone")?),
            _ => return Err("bad zone"),
        },
        None => (num(body, "bad zone")?, 0),
    };
    if h > 15 || m > 59 {
        return Err("zone offset out of range");
    }
    Ok(sign * (i64::from(h) * MICROS_PER_HOUR + i64::from(m) * MICROS_PER_MINUTE))
}

/// Parses a PostgreSQL interval literal into microseconds: one or more
/// `<number> <unit>` pairs (`'7 days'`, `'1 day 12 hours'`, `'90 min'`, `'1.5h'`) or a
/// clock form `'HH:MM[:SS]'`. Months count as 30 days and years as 365.25 days, as
/// PostgreSQL's `extract(epoch from interval)` does.
pub fn parse_interval_micros(text: &str) -> Result<i64, CoreError> {
    let bad = |reason| CoreError::BadInterval {
        text: text.to_string(),
        reason,
    };
    let s = text.trim().to_ascii_lowercase();
    if s.is_empty() {
        return Err(bad("empty interval"));
    }
    if s.contains(':') {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() < 2 || parts.len() > 3 {
            return Err(bad("expected HH:MM[:SS]"));
        }
        let mut total = 0i64;
        for (p, unit) in parts
            .iter()
            .zip([MICROS_PER_HOUR, MICROS_PER_MINUTE, MICROS_PER_SECOND])
        {
            let v: u32 = p.trim().parse().map_err(|_| bad("expected HH:MM[:SS]"))?;
            total += i64::from(v) * unit;
        }
        return Ok(total);
    }
    let mut total: f64 = 0.0;
    let mut rest = s.as_str();
    let mut pairs = 0;
    while !rest.trim_start().is_empty() {
        rest = rest.trim_start();
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
            .unwrap_or(rest.len());
        let (n, tail) = rest.split_at(num_end);
        let n: f64 = n.parse().map_err(|_| bad("expected a number"))?;
        let tail = tail.trim_start();
        let unit_end = tail
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "us" | "usec" | "usecs" | "microsecond" | "microseconds" => 1,
            "ms" | "msec" | "msecs" | "millisecond" | "milliseconds" => 1_000,
            "s" | "sec" | "secs" | "second" | "seconds" => MICROS_PER_SECOND,
            "m" | "min" | "mins" | "minute" | "minutes" => MICROS_PER_MINUTE,
            "h" | "hr" | "hrs" | "hour" | "hours" => MICROS_PER_HOUR,
            "d" | "day" | "days" => MICROS_PER_DAY,
            "w" | "week" | "weeks" => 7 * MICROS_PER_DAY,
            "mon" | "mons" | "month" | "months" => 30 * MICROS_PER_DAY,
            "y" | "year" | "years" => 365 * MICROS_PER_DAY + MICROS_PER_DAY / 4,
            "" => return Err(bad("missing unit")),
            _ => return Err(bad("unknown unit")),
        };
        total += n * scale as f64;
        pairs += 1;
        rest = tail;
    }
    if pairs == 0 || !total.is_finite() || total.abs() > i64::MAX as f64 / 2.0 {
        return Err(bad("out of range"));
    }
    Ok(total.round() as i64)
}

/// A source of "now". The engine takes one so tests (and statements) control time.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now_system()
    }
}

/// A clock that only moves when told to; shared by clones.
#[derive(Debug, Clone, Default)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(at: Timestamp) -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(at.0)))
    }
    pub fn set(&self, at: Timestamp) {
        self.0.store(at.0, Ordering::SeqCst);
    }
    pub fn advance_micros(&self, us: i64) {
        self.0.fetch_add(us, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_and_print() {
        let t = Timestamp::parse("2026-11-25 10:00:00").unwrap();
        assert_eq!(t.to_string(), "2026-11-25 10:00:00");
        assert_eq!(Timestamp::parse("2026-11-25T10:00:00Z").unwrap(), t);
        assert_eq!(Timestamp::parse("2026-11-25 11:00:00+01:00").unwrap(), t);
        assert_eq!(Timestamp::parse("1970-01-01").unwrap(), Timestamp(0));
        let f = Timestamp::parse("2026-11-25 10:00:00.25").unwrap();
        assert_eq!(f.0 - t.0, 250_000);
        assert_eq!(f.to_string(), "2026-11-25 10:00:00.25");
        for bad in [
            "2026-13-01",
            "2026-02-30",
            "2026-11-25 24:00",
            "nope",
            "2026-11-25 10:00:00.1234567",
            // Multi-byte characters where the parser cuts the text.
            "2026-11-2é",
            "2026-11-25 10:00:00+1é",
            "2026-11-25 10:00:00+é1",
            "ééééé",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// Any text is parsed or refused, never a panic.
        #[test]
        fn parse_never_panics(s in "\\PC{0,40}", prefix in "[0-9: T+-]{0,24}") {
            let _ = Timestamp::parse(&s);
            let _ = Timestamp::parse(&format!("{prefix}{s}"));
        }
    }

    #[test]
    fn intervals() {
        assert_eq!(parse_interval_micros("7 days").unwrap(), 7 * MICROS_PER_DAY);
        assert_eq!(
            parse_interval_micros("1 day 12 hours").unwrap(),
            36 * MICROS_PER_HOUR
        );
        assert_eq!(
            parse_interval_micros("90min").unwrap(),
            90 * MICROS_PER_MINUTE
        );
        assert_eq!(
            parse_interval_micros("1.5 h").unwrap(),
            90 * MICROS_PER_MINUTE
        );
        assert_eq!(
            parse_interval_micros("01:30").unwrap(),
            90 * MICROS_PER_MINUTE
        );
        assert_eq!(
            parse_interval_micros("1 year").unwrap(),
            36525 * MICROS_PER_DAY / 100
        );
        for bad in ["", "days", "7 fortnights", "7"] {
            assert!(parse_interval_micros(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn civil_round_trip(us in -62_000_000_000_000_000i64..250_000_000_000_000_000i64) {
            let t = Timestamp(us);
            let back = Timestamp::parse(&t.to_string()).unwrap();
            prop_assert_eq!(back, t);
        }
    }
}

//! Parsed newtypes: a value of one of these types has passed validation.
//!
//! Parsing happens once, at the edge (HTTP handlers, log decoding); the state machine and the
//! stores only ever see valid values.

use std::fmt;

use chrono::{NaiveDate, NaiveDateTime, NaiveTime};
use serde::{Deserialize, Serialize};

use crate::area::truncate;
use crate::error::ValidationError;

/// Longest username accepted, in characters. Longer input is a clean 400, never a 5xx.
pub const MAX_USERNAME_CHARS: usize = 128;

/// A username: 1..=128 characters, no control characters. Case-sensitive.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Username(String);

impl Username {
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        Self::check(text)?;
        Ok(Username(text.to_owned()))
    }

    fn check(text: &str) -> Result<(), ValidationError> {
        if text.is_empty() {
            return Err(ValidationError::BadUsername("must not be empty"));
        }
        // A text of at most 128 bytes has at most 128 characters: count only longer ones.
        if text.len() > MAX_USERNAME_CHARS && text.chars().count() > MAX_USERNAME_CHARS {
            return Err(ValidationError::BadUsername("longer than 128 characters"));
        }
        if text.chars().any(char::is_control) {
            return Err(ValidationError::BadUsername("contains control characters"));
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Keeps the string it is given (no copy).
impl TryFrom<String> for Username {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::check(&value)?;
        Ok(Username(value))
    }
}

impl Serialize for Username {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl From<Username> for String {
    fn from(u: Username) -> String {
        u.0
    }
}

/// Shown as the quoted name, so messages read `user "bob" already exists`.
impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The client's SHA-1 hex digest of the password: exactly 40 hex digits, either case.
///
/// It is never stored or logged as received: `Debug` hides it, and the users service hashes it
/// again (argon2) before it reaches any database.
#[derive(Clone, PartialEq, Eq)]
pub struct PasswordDigest(String);

impl PasswordDigest {
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        if text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(PasswordDigest(text.to_ascii_lowercase()))
        } else {
            Err(ValidationError::BadPassword)
        }
    }

    /// The digest, lower-cased; only for the password hasher.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PasswordDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordDigest(<redacted>)")
    }
}

/// Wire format of ride timestamps: day-month-year : seconds-minutes-hours.
pub const TIMESTAMP_FORMAT: &str = "%d-%m-%Y:%S-%M-%H";

/// A ride time, `DD-MM-YYYY:SS-MM-HH`, in the service's configured zone (it carries none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Timestamp(NaiveDateTime);

impl Timestamp {
    /// Strict parse: exactly two digits for day, month, seconds, minutes and hours, four for the
    /// year, the separators in place, and a real date and time (no 31 April, no hour 24).
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        let bad = || ValidationError::BadTimestamp(truncate(text));
        let b = text.as_bytes();
        if b.len() != 19 {
            return Err(bad());
        }
        let digits_at = |range: std::ops::Range<usize>| -> Result<u32, ValidationError> {
            let part = &b[range];
            if part.iter().all(u8::is_ascii_digit) {
                Ok(part.iter().fold(0, |acc, d| acc * 10 + u32::from(d - b'0')))
            } else {
                Err(bad())
            }
        };
        if b[2] != b'-' || b[5] != b'-' || b[10] != b':' || b[13] != b'-' || b[16] != b'-' {
            return Err(bad());
        }
        let day = digits_at(0..2)?;
        let month = digits_at(3..5)?;
        let year = digits_at(6..10)?;
        let sec = digits_at(11..13)?;
        let min = digits_at(14..16)?;
        let hour = digits_at(17..19)?;
        let year = i32::try_from(year).map_err(|_| bad())?;
        let date = NaiveDate::from_ymd_opt(year, month, day).ok_or_else(bad)?;
        let time = NaiveTime::from_hms_opt(hour, min, sec).ok_or_else(bad)?;
        Ok(Timestamp(NaiveDateTime::new(date, time)))
    }

    pub fn from_naive(at: NaiveDateTime) -> Self {
        // Sub-second precision is not part of the format; drop it so parse(format(t)) == t.
        Timestamp(at.with_nanosecond_zeroed())
    }

    pub fn naive(self) -> NaiveDateTime {
        self.0
    }

    /// Seconds since 0001-01-01 read as if UTC: a total order for storage and comparison.
    pub fn to_seconds(self) -> i64 {
        self.0.and_utc().timestamp()
    }

    pub fn from_seconds(seconds: i64) -> Option<Self> {
        chrono::DateTime::from_timestamp(seconds, 0).map(|t| Timestamp(t.naive_utc()))
    }
}

trait ZeroNanos {
    fn with_nanosecond_zeroed(self) -> Self;
}

impl ZeroNanos for NaiveDateTime {
    fn with_nanosecond_zeroed(self) -> Self {
        use chrono::Timelike;
        self.with_nanosecond(0).unwrap_or(self)
    }
}

impl Timestamp {
    /// [`TIMESTAMP_FORMAT`] written digit by digit into a fixed buffer, for years 0..=9999 (the
    /// only ones a client can send): no `core::fmt` machinery and no allocation, since every
    /// listed ride's time is written this way (chrono's `format` parses the format string again
    /// on every call, which was a sixth of the CPU of listing 10,000 rides; `core::fmt` with
    /// width specifiers was still 7 %). `None` for other years.
    fn fixed_text(self) -> Option<[u8; 19]> {
        use chrono::{Datelike, Timelike};
        let (date, time) = (self.0.date(), self.0.time());
        let year = u32::try_from(date.year()).ok().filter(|y| *y <= 9999)?;
        let mut out = *b"00-00-0000:00-00-00";
        let two = |out: &mut [u8; 19], at: usize, n: u32| {
            out[at] = b'0' + (n / 10 % 10) as u8;
            out[at + 1] = b'0' + (n % 10) as u8;
        };
        two(&mut out, 0, date.day());
        two(&mut out, 3, date.month());
        two(&mut out, 6, year / 100);
        two(&mut out, 8, year % 100);
        two(&mut out, 11, time.second());
        two(&mut out, 14, time.minute());
        two(&mut out, 17, time.hour());
        Some(out)
    }
}

impl fmt::Display for Timestamp {
    /// [`TIMESTAMP_FORMAT`]. Years outside 0..=9999 (never parsed, only stored) keep chrono's
    /// signed form.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.fixed_text() {
            // The buffer holds ASCII digits and separators only.
            Some(text) => f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?),
            None => write!(f, "{}", self.0.format(TIMESTAMP_FORMAT)),
        }
    }
}

impl Serialize for Timestamp {
    /// The same text as `Display`, without building a `String` first.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.fixed_text() {
            Some(text) => serializer
                .serialize_str(std::str::from_utf8(&text).map_err(serde::ser::Error::custom)?),
            None => serializer.serialize_str(&self.to_string()),
        }
    }
}

impl TryFrom<String> for Timestamp {
    type Error = ValidationError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Timestamp::parse(&value)
    }
}

impl From<Timestamp> for String {
    fn from(t: Timestamp) -> String {
        t.to_string()
    }
}

/// A ride's id: unique, never reused after a delete or a clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RideId(pub u64);

impl RideId {
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValidationError::BadRideId(truncate(text)));
        }
        text.parse()
            .map(RideId)
            .map_err(|_| ValidationError::BadRideId(truncate(text)))
    }
}

impl fmt::Display for RideId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn timestamp_reads_day_month_year_seconds_minutes_hours() {
        let t = Timestamp::parse("01-09-2030:05-10-17").unwrap();
        assert_eq!(
            t.naive(),
            NaiveDate::from_ymd_opt(2030, 9, 1)
                .unwrap()
                .and_hms_opt(17, 10, 5)
                .unwrap()
        );
        assert_eq!(t.to_string(), "01-09-2030:05-10-17");
    }

    #[test]
    fn timestamp_rejects_unreal_or_sloppy_input() {
        for bad in [
            "31-04-2030:00-00-00",
            "29-02-2031:00-00-00",
            "00-01-2030:00-00-00",
            "01-13-2030:00-00-00",
            "01-01-2030:60-00-00",
            "01-01-2030:00-60-00",
            "01-01-2030:00-00-24",
            "1-01-2030:00-00-00",
            "01-01-2030 00-00-00",
            "01-01-2030:00:00:00",
            "01-01-2030:00-00-0",
            "+1-01-2030:00-00-00",
            "01-01-2030:00-00-00 ",
            "",
            "٠١-٠١-٢٠٣٠:٠٠-٠٠-٠٠",
        ] {
            assert!(Timestamp::parse(bad).is_err(), "{bad} was accepted");
        }
        assert!(Timestamp::parse("29-02-2032:00-00-00").is_ok());
    }

    #[test]
    fn password_digest_is_exactly_40_hex_digits() {
        let ok = "a".repeat(20) + &"F".repeat(20);
        assert!(PasswordDigest::parse(&ok).is_ok());
        for bad in [
            "a".repeat(39),
            "a".repeat(41),
            format!("0x{}", "a".repeat(38)),
            format!("+{}", "a".repeat(39)),
            format!(" {}", "a".repeat(39)),
            "g".repeat(40),
        ] {
            assert!(PasswordDigest::parse(&bad).is_err(), "{bad} was accepted");
        }
        assert!(!format!("{:?}", PasswordDigest::parse(&ok).unwrap()).contains("aaaa"));
    }

    #[test]
    fn username_is_bounded_and_printable() {
        assert!(Username::parse("alice").is_ok());
        assert!(Username::parse("Alice Smith ü").is_ok());
        assert!(Username::parse("").is_err());
        assert!(Username::parse("a\nb").is_err());
        assert!(Username::parse(&"x".repeat(129)).is_err());
        assert!(Username::parse(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn ride_id_is_an_unsigned_integer() {
        assert_eq!(RideId::parse("12").unwrap(), RideId(12));
        for bad in ["", "-1", "1.0", "abc", "99999999999999999999999", "+3"] {
            assert!(RideId::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    proptest! {
        #[test]
        fn timestamp_format_then_parse_round_trips(
            year in 1000i32..=9999, ordinal in 1u32..=366, secs in 0u32..86_400
        ) {
            let date = NaiveDate::from_yo_opt(year, ordinal)
                .unwrap_or_else(|| NaiveDate::from_yo_opt(year, 365).unwrap());
            let time = NaiveTime::from_num_seconds_from_midnight_opt(secs, 0).unwrap();
            let t = Timestamp::from_naive(NaiveDateTime::new(date, time));
            let text = t.to_string();
            prop_assert_eq!(Timestamp::parse(&text).unwrap(), t);
            prop_assert_eq!(Timestamp::from_seconds(t.to_seconds()).unwrap(), t);
        }

        #[test]
        fn timestamp_is_written_as_chrono_writes_its_format(
            seconds in -80_000_000_000i64..300_000_000_000
        ) {
            let t = Timestamp::from_seconds(seconds).unwrap();
            let chrono = t.naive().format(TIMESTAMP_FORMAT).to_string();
            prop_assert_eq!(t.to_string(), chrono.clone());
            prop_assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{chrono}\""));
        }

        #[test]
        fn timestamp_parse_never_panics(text in ".{0,40}") {
            let _ = Timestamp::parse(&text);
        }
    }
}

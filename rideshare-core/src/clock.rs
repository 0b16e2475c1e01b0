//! Where "now" comes from. Ride timestamps carry no zone: they are read in the service's
//! configured zone, so the clock answers in that zone too.

use parking_lot::Mutex;
use std::str::FromStr;

use chrono::{FixedOffset, Local, Utc};

use crate::domain::Timestamp;

pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time in the service's zone.
    fn now(&self) -> Timestamp;
}

/// The zone timestamps are read in: the host's, or a fixed offset from UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Zone {
    #[default]
    Local,
    Fixed(FixedOffset),
}

impl FromStr for Zone {
    type Err = String;

    /// `local`, `UTC`, or an offset such as `+05:30` / `-03:00`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("bad time zone {text:?}: expected local, UTC or an offset like +05:30");
        match text {
            "local" | "Local" | "LOCAL" => return Ok(Zone::Local),
            "utc" | "UTC" | "Z" => {
                return Ok(Zone::Fixed(FixedOffset::east_opt(0).ok_or_else(bad)?))
            }
            _ => {}
        }
        let b = text.as_bytes();
        if b.len() != 6 || b[3] != b':' || !(b[0] == b'+' || b[0] == b'-') {
            return Err(bad());
        }
        let hours: i32 = text[1..3].parse().map_err(|_| bad())?;
        let minutes: i32 = text[4..6].parse().map_err(|_| bad())?;
        if hours > 23 || minutes > 59 {
            return Err(bad());
        }
        let seconds = (hours * 3600 + minutes * 60) * if b[0] == b'-' { -1 } else { 1 };
        FixedOffset::east_opt(seconds)
            .map(Zone::Fixed)
            .ok_or_else(bad)
    }
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock {
    pub zone: Zone,
}

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        match self.zone {
            Zone::Local => Timestamp::from_naive(Local::now().naive_local()),
            Zone::Fixed(offset) => {
                Timestamp::from_naive(Utc::now().with_timezone(&offset).naive_local())
            }
        }
    }
}

/// A clock that says what it is told: for tests.
#[derive(Debug)]
pub struct FixedClock(Mutex<Timestamp>);

impl FixedClock {
    pub fn new(at: Timestamp) -> Self {
        FixedClock(Mutex::new(at))
    }

    pub fn set(&self, at: Timestamp) {
        *self.0.lock() = at;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        *self.0.lock()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_parses_local_utc_and_offsets() {
        assert_eq!("local".parse::<Zone>().unwrap(), Zone::Local);
        assert!(
            matches!("UTC".parse::<Zone>().unwrap(), Zone::Fixed(o) if o.local_minus_utc() == 0)
        );
        assert!(
            matches!("+05:30".parse::<Zone>().unwrap(), Zone::Fixed(o) if o.local_minus_utc() == 19_800)
        );
        for bad in ["", "+5:30", "05:30", "+24:00", "Asia/Kolkata", "+05:60"] {
            assert!(bad.parse::<Zone>().is_err(), "{bad} accepted");
        }
    }
}

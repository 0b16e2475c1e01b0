//! The Bangalore areas rides go between.
//!
//! The list is `data/AreaNameEnum.csv` (198 rows, numbered 1..=198), embedded at compile time so
//! the binary never reads it from a path at run time. An area arrives in a request as a JSON
//! integer or as a decimal string; everything else is rejected here, at the edge.

use std::fmt;
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

const AREAS_CSV: &str = include_str!("../data/AreaNameEnum.csv");

/// Parsed once: `(number, name)` in file order.
fn table() -> &'static [(u16, String)] {
    static TABLE: OnceLock<Vec<(u16, String)>> = OnceLock::new();
    TABLE.get_or_init(|| {
        AREAS_CSV
            .lines()
            .skip(1)
            .map(|line| line.trim_end_matches('\r'))
            .filter(|line| !line.is_empty())
            .filter_map(|line| {
                let (num, name) = line.split_once(',')?;
                Some((num.trim().parse().ok()?, name.trim().to_owned()))
            })
            .collect()
    })
}

/// An area number that exists in the embedded list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u16", into = "u16")]
pub struct Area(u16);

impl Area {
    /// Accepts an area number present in the list.
    pub fn new(number: u16) -> Result<Self, ValidationError> {
        if table().iter().any(|(n, _)| *n == number) {
            Ok(Area(number))
        } else {
            Err(ValidationError::UnknownArea(number.to_string()))
        }
    }

    /// Parses the request form: a JSON integer or a decimal string (`1` or `"1"`).
    pub fn from_json(value: &serde_json::Value) -> Result<Self, ValidationError> {
        match value {
            serde_json::Value::Number(n) => n
                .as_u64()
                .and_then(|n| u16::try_from(n).ok())
                .ok_or_else(|| ValidationError::UnknownArea(truncate(&n.to_string())))
                .and_then(Area::new),
            serde_json::Value::String(s) => Area::parse(s),
            other => Err(ValidationError::UnknownArea(truncate(&other.to_string()))),
        }
    }

    /// Parses a decimal string: ASCII digits only, no sign, no spaces.
    pub fn parse(text: &str) -> Result<Self, ValidationError> {
        if text.is_empty() || text.len() > 5 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ValidationError::UnknownArea(truncate(text)));
        }
        let number: u16 = text
            .parse()
            .map_err(|_| ValidationError::UnknownArea(truncate(text)))?;
        Area::new(number)
    }

    pub fn number(self) -> u16 {
        self.0
    }

    pub fn name(self) -> &'static str {
        table()
            .iter()
            .find(|(n, _)| *n == self.0)
            .map(|(_, name)| name.as_str())
            .unwrap_or("")
    }

    /// Every area in file order.
    pub fn all() -> impl Iterator<Item = Area> {
        table().iter().map(|(n, _)| Area(*n))
    }
}

impl TryFrom<u16> for Area {
    type Error = ValidationError;
    fn try_from(value: u16) -> Result<Self, Self::Error> {
        Area::new(value)
    }
}

impl From<Area> for u16 {
    fn from(area: Area) -> u16 {
        area.0
    }
}

impl fmt::Display for Area {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Error messages quote the input, but never all of a megabyte of it.
pub(crate) fn truncate(text: &str) -> String {
    const MAX_CHARS: usize = 40;
    if text.chars().count() <= MAX_CHARS {
        text.to_owned()
    } else {
        let mut short: String = text.chars().take(MAX_CHARS).collect();
        short.push('…');
        short
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn embedded_list_has_198_areas_numbered_1_to_198() {
        let numbers: Vec<u16> = Area::all().map(Area::number).collect();
        assert_eq!(numbers, (1..=198).collect::<Vec<_>>());
        assert_eq!(Area::new(1).unwrap().name(), "Kempegowda Ward");
        assert!(!Area::new(198).unwrap().name().ends_with('\r'));
    }

    #[test]
    fn area_accepts_integers_and_decimal_strings() {
        assert_eq!(Area::from_json(&json!(1)).unwrap().number(), 1);
        assert_eq!(Area::from_json(&json!("198")).unwrap().number(), 198);
    }

    #[test]
    fn area_rejects_everything_else() {
        for bad in [
            json!(0),
            json!(199),
            json!(-1),
            json!(1.5),
            json!("0"),
            json!("+1"),
            json!(" 1"),
            json!("1.0"),
            json!("abc"),
            json!(""),
            json!(null),
            json!(true),
            json!([1]),
            json!({"a": 1}),
            json!("99999999999999999999999999"),
            json!(1e300),
        ] {
            assert!(Area::from_json(&bad).is_err(), "{bad} was accepted");
        }
    }
}

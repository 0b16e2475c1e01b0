//! What `rideshare bench` sends: the operations it knows and the `--mix` that weighs them.
//!
//! A mix is one operation (`list`) or a comma list of weighted operations
//! (`list=8,create-ride=2`); each client picks its next operation at random with those weights.

use std::fmt;
use std::str::FromStr;

/// One kind of request the load generator sends through the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `GET /api/v1/rides?source=a&destination=b` on the seeded pair.
    List,
    /// `GET /api/v1/rides/{id}` of a seeded ride.
    Details,
    /// `POST /api/v1/rides` by the seeded owner.
    CreateRide,
    /// `POST /api/v1/rides/{id}`: a seeded joiner joins a seeded ride it has not joined yet.
    Join,
    /// `PUT /api/v1/users` with a fresh username.
    AddUser,
    /// `GET /health` through the gateway: the HTTP path alone, no database. Not an API
    /// operation: a reference for the machine's state, run beside the others (this machine's
    /// speed drifts up to 2× within an hour, docs/benchmarks.md).
    Health,
}

impl Op {
    /// Every operation, in the order reports list them.
    pub const ALL: [Op; 6] = [
        Op::List,
        Op::Details,
        Op::CreateRide,
        Op::Join,
        Op::AddUser,
        Op::Health,
    ];

    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Op::List => "list",
            Op::Details => "details",
            Op::CreateRide => "create-ride",
            Op::Join => "join",
            Op::AddUser => "add-user",
            Op::Health => "health",
        }
    }

    /// Position in [`Op::ALL`], for per-operation arrays.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Op {
    type Err = MixError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Op::ALL
            .into_iter()
            .find(|op| op.name() == text)
            .ok_or_else(|| MixError::UnknownOp(text.to_owned()))
    }
}

/// Largest weight one operation may have.
pub const MAX_WEIGHT: u32 = 1_000_000;

/// Weighted operations; every weight is at least 1 and no operation appears twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix {
    entries: Vec<(Op, u32)>,
    total: u64,
}

/// Why a `--mix` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MixError {
    #[error(
        "the mix is empty; give an operation ({}) or weights like list=8,create-ride=2",
        known()
    )]
    Empty,
    #[error("unknown operation {name:?}; known: {known}", name = .0, known = known())]
    UnknownOp(String),
    #[error("weight {weight:?} of {op} is not a whole number from 1 to {MAX_WEIGHT}")]
    BadWeight { op: Op, weight: String },
    #[error("{0} appears more than once in the mix")]
    Duplicate(Op),
}

fn known() -> String {
    Op::ALL.map(Op::name).join(", ")
}

impl Mix {
    /// The operations with their weights, in the order given.
    pub fn entries(&self) -> &[(Op, u32)] {
        &self.entries
    }

    /// Whether `op` has a weight in this mix.
    pub fn contains(&self, op: Op) -> bool {
        self.entries.iter().any(|&(o, _)| o == op)
    }

    /// The operation a roll in `0..total_weight()` lands on.
    pub fn pick(&self, roll: u64) -> Op {
        let mut rest = roll % self.total;
        for &(op, weight) in &self.entries {
            if rest < u64::from(weight) {
                return op;
            }
            rest -= u64::from(weight);
        }
        self.entries[self.entries.len() - 1].0
    }

    /// Sum of the weights.
    pub fn total_weight(&self) -> u64 {
        self.total
    }

    /// The share of requests `op` gets, 0 to 1.
    pub fn share(&self, op: Op) -> f64 {
        let weight: u64 = self
            .entries
            .iter()
            .filter(|&&(o, _)| o == op)
            .map(|&(_, w)| u64::from(w))
            .sum();
        weight as f64 / self.total as f64
    }
}

impl FromStr for Mix {
    type Err = MixError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut entries: Vec<(Op, u32)> = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = match part.split_once('=') {
                Some((name, weight)) => (name.trim(), Some(weight.trim())),
                None => (part, None),
            };
            let op: Op = name.parse()?;
            let weight = match weight {
                None => 1,
                Some(w) => w
                    .parse::<u32>()
                    .ok()
                    .filter(|w| (1..=MAX_WEIGHT).contains(w))
                    .ok_or_else(|| MixError::BadWeight {
                        op,
                        weight: w.to_owned(),
                    })?,
            };
            if entries.iter().any(|&(o, _)| o == op) {
                return Err(MixError::Duplicate(op));
            }
            entries.push((op, weight));
        }
        if entries.is_empty() {
            return Err(MixError::Empty);
        }
        let total = entries.iter().map(|&(_, w)| u64::from(w)).sum();
        Ok(Mix { entries, total })
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .entries
            .iter()
            .map(|(op, w)| format!("{op}={w}"))
            .collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_operation_has_weight_one() {
        let mix: Mix = "details".parse().unwrap();
        assert_eq!(mix.entries(), &[(Op::Details, 1)]);
        assert_eq!(mix.to_string(), "details=1");
    }

    #[test]
    fn weights_pick_in_proportion() {
        let mix: Mix = " list=8, create-ride=2 ".parse().unwrap();
        assert_eq!(mix.entries(), &[(Op::List, 8), (Op::CreateRide, 2)]);
        assert_eq!(mix.total_weight(), 10);
        let picks: Vec<Op> = (0..10).map(|roll| mix.pick(roll)).collect();
        assert_eq!(picks.iter().filter(|&&op| op == Op::List).count(), 8);
        assert_eq!(mix.pick(9), Op::CreateRide);
        assert!((mix.share(Op::List) - 0.8).abs() < 1e-9);
        assert_eq!(mix.share(Op::Join), 0.0);
    }

    #[test]
    fn bad_mixes_say_what_is_wrong() {
        let err = |text: &str| text.parse::<Mix>().unwrap_err();
        assert_eq!(err("lists"), MixError::UnknownOp("lists".into()));
        assert!(err("lists").to_string().contains("known: list, details"));
        assert_eq!(
            err("list=0"),
            MixError::BadWeight {
                op: Op::List,
                weight: "0".into()
            }
        );
        assert!(matches!(err("list=-1"), MixError::BadWeight { .. }));
        assert!(matches!(err("list=x"), MixError::BadWeight { .. }));
        assert!(matches!(err("list="), MixError::BadWeight { .. }));
        assert!(matches!(err("join=1000001"), MixError::BadWeight { .. }));
        assert_eq!(err("list,list=2"), MixError::Duplicate(Op::List));
        assert_eq!(err(""), MixError::Empty);
        assert_eq!(err(" , "), MixError::Empty);
        assert_eq!(
            err("list=1,=2"),
            MixError::UnknownOp(String::new()),
            "an empty name is unknown"
        );
        assert!(err("list=1.5").to_string().contains("whole number"));
    }
}

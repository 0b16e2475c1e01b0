//! The typed database operations and their results.
//!
//! This is the whole vocabulary between the services and any database: no SQL crosses a process
//! boundary. The JSON encoding is stable (`{"op": "add_user", ...}`) because it is written to
//! the replicated log and read back by every replica, possibly by a newer binary.
//! Domain outcomes ("user exists", "no such ride") are result values, never transport errors, so
//! every replica that applies the same log reaches the same state and the same answers.

use serde::{Deserialize, Serialize};

use crate::area::Area;
use crate::domain::{RideId, Timestamp, Username};

/// An operation that changes state. Applied by the master, replicated through the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum WriteOp {
    /// Adds a user. `password_hash` is already a PHC string (argon2), never the client's digest.
    AddUser {
        username: Username,
        password_hash: String,
    },
    /// Deletes a user, the rides the user created, and the user's place in rides joined.
    DeleteUser {
        username: Username,
    },
    CreateRide {
        created_by: Username,
        timestamp: Timestamp,
        source: Area,
        destination: Area,
    },
    JoinRide {
        ride_id: RideId,
        username: Username,
    },
    DeleteRide {
        ride_id: RideId,
    },
    /// The users service's `db/clear`: every user and therefore every ride.
    ClearUsers,
    /// The rides service's `db/clear`: every ride; users stay.
    ClearRides,
    /// The orchestrator's `db/clear`: everything. Ride ids are still never reused.
    ClearAll,
}

/// The result of a write, identical on every replica that applies it at the same log index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum WriteOutcome {
    Done,
    RideCreated { ride_id: RideId },
    UserExists,
    NoSuchUser,
    NoSuchRide,
    CreatorCannotJoin,
    AlreadyJoined,
}

/// A query. Time enters as data (`after`), so a read is a pure function of the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ReadOp {
    /// All usernames, in creation order.
    ListUsers,
    /// Whether one user exists (the users service's check before it hashes a password).
    UserExists {
        username: Username,
    },
    /// Rides from `source` to `destination` strictly later than `after`, by time then id.
    UpcomingRides {
        source: Area,
        destination: Area,
        after: Timestamp,
    },
    GetRide {
        ride_id: RideId,
    },
    CountRides,
    /// A digest of the whole state, to compare replicas.
    Checksum,
}

/// One line of an upcoming-rides listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RideSummary {
    #[serde(rename = "rideId")]
    pub ride_id: RideId,
    pub username: Username,
    pub timestamp: Timestamp,
}

/// A whole ride as `GET /api/v1/rides/{rideId}` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RideDetail {
    #[serde(rename = "rideId")]
    pub ride_id: RideId,
    pub created_by: Username,
    /// Joined users in join order, without the creator.
    pub users: Vec<Username>,
    pub timestamp: Timestamp,
    pub source: Area,
    pub destination: Area,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ReadOutcome {
    Users { users: Vec<Username> },
    Exists { exists: bool },
    Rides { rides: Vec<RideSummary> },
    Ride { ride: Option<RideDetail> },
    Count { count: u64 },
    Checksum { checksum: u64, applied_index: u64 },
}

/// Identifies one client request, so a write redelivered after a crash is applied once.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub String);

impl RequestId {
    /// A fresh random id (128 bits, hex).
    pub fn random() -> Self {
        RequestId(format!("{:032x}", rand::random::<u128>()))
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_ops_have_a_stable_json_encoding() {
        let op = WriteOp::JoinRide {
            ride_id: RideId(7),
            username: Username::parse("bob").unwrap(),
        };
        let text = serde_json::to_string(&op).unwrap();
        assert_eq!(text, r#"{"op":"join_ride","ride_id":7,"username":"bob"}"#);
        assert_eq!(serde_json::from_str::<WriteOp>(&text).unwrap(), op);
        let create = r#"{"op":"create_ride","created_by":"a","timestamp":"01-09-2030:05-10-17","source":1,"destination":198}"#;
        let parsed: WriteOp = serde_json::from_str(create).unwrap();
        assert_eq!(serde_json::to_string(&parsed).unwrap(), create);
    }

    #[test]
    fn decoding_validates_the_newtypes() {
        let bad_area = r#"{"op":"create_ride","created_by":"a","timestamp":"01-09-2030:05-10-17","source":0,"destination":1}"#;
        assert!(serde_json::from_str::<WriteOp>(bad_area).is_err());
        let bad_name = r#"{"op":"delete_user","username":""}"#;
        assert!(serde_json::from_str::<WriteOp>(bad_name).is_err());
    }
}

//! The typed database operations and their results.
//!
//! This is the whole vocabulary between the services and any database: no SQL crosses a process
//! boundary. The JSON encoding is stable (`{"op": "add_user", ...}`) because it is written to
//! the replicated log and read back by every replica, possibly by a newer binary.
//! Domain outcomes ("user exists", "no such ride") are result values, never transport errors, so
//! every replica that applies the same log reaches the same state and the same answers.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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

/// An upcoming-rides listing, held as the JSON array the API answers with (`[RideSummary]`, by
/// time then id). It is encoded once, where the store is read; every hop after that (the
/// worker's reply, the orchestrator, the rides service's answer) passes the text on untouched,
/// so a long listing is not decoded and encoded again at each of them.
///
/// Decoding checks that the text is one JSON array (serde_json's `RawValue` checks it is
/// well-formed), not the shape of each element: a listing only ever comes from a replica of the
/// same protocol version, which built it with [`RideList::new`].
#[derive(Clone)]
pub struct RideList(Box<RawValue>);

impl RideList {
    /// Encodes the rides as `[RideSummary]` is encoded. Written by hand rather than through
    /// serde's derived map serializer, which escapes every key and dispatches per field: this
    /// runs on a replica's store thread once per listed ride, and was a tenth of its time on a
    /// long listing. A test holds the text equal to serde's.
    pub fn new(rides: &[RideSummary]) -> Result<Self, serde_json::Error> {
        let mut out = Vec::with_capacity(2 + rides.len() * 72);
        out.push(b'[');
        for (i, ride) in rides.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"rideId\":");
            out.extend_from_slice(ride.ride_id.0.to_string().as_bytes());
            out.extend_from_slice(b",\"username\":");
            serde_json::to_writer(&mut out, ride.username.as_str())?;
            out.extend_from_slice(b",\"timestamp\":");
            serde_json::to_writer(&mut out, &ride.timestamp)?;
            out.push(b'}');
        }
        out.push(b']');
        // Only serde_json output and ASCII went in.
        let text = String::from_utf8(out).map_err(serde::ser::Error::custom)?;
        RawValue::from_string(text).map(RideList)
    }

    pub fn is_empty(&self) -> bool {
        let text = self.0.get().trim_start();
        text.strip_prefix('[')
            .is_some_and(|rest| rest.trim_start().starts_with(']'))
    }

    /// The listing's JSON text, as the API answers with it.
    pub fn json(&self) -> &str {
        self.0.get()
    }

    pub fn into_json(self) -> Box<str> {
        self.0.into()
    }

    /// The rides, decoded (for callers that look at them one by one).
    pub fn rides(&self) -> Result<Vec<RideSummary>, serde_json::Error> {
        serde_json::from_str(self.0.get())
    }
}

impl PartialEq for RideList {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}
impl Eq for RideList {}

impl std::fmt::Debug for RideList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RideList").field(&self.0.get()).finish()
    }
}

impl Serialize for RideList {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RideList {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        if raw.get().trim_start().starts_with('[') {
            Ok(RideList(raw))
        } else {
            Err(serde::de::Error::custom(
                "a ride listing must be a JSON array",
            ))
        }
    }
}

/// What a read found. Encoded with its kind in `result` (`{"result": "rides", "rides": [...]}`).
/// Decoded through [`ReadOutcomeWire`], a plain struct, rather than serde's internally tagged
/// enum, which buffers the whole value before choosing the variant: that buffering was about
/// 8 % of the CPU of a long listing, and a [`RideList`] cannot be read from the buffer at all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(
    tag = "result",
    rename_all = "snake_case",
    try_from = "ReadOutcomeWire"
)]
pub enum ReadOutcome {
    Users {
        users: Vec<Username>,
    },
    Exists {
        exists: bool,
    },
    Rides {
        #[schema(value_type = Vec<RideSummary>)]
        rides: RideList,
    },
    Ride {
        ride: Option<RideDetail>,
    },
    Count {
        count: u64,
    },
    Checksum {
        checksum: u64,
        applied_index: u64,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReadKind {
    Users,
    Exists,
    Rides,
    Ride,
    Count,
    Checksum,
}

/// Every field any [`ReadOutcome`] carries, read in one pass whatever their order.
#[derive(Deserialize)]
struct ReadOutcomeWire {
    result: ReadKind,
    users: Option<Vec<Username>>,
    exists: Option<bool>,
    rides: Option<RideList>,
    /// `null` (no such ride) is not the same as absent.
    #[serde(default, deserialize_with = "present")]
    ride: Option<Option<RideDetail>>,
    count: Option<u64>,
    checksum: Option<u64>,
    applied_index: Option<u64>,
}

/// A field that is there, `null` included.
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    deserializer: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(deserializer).map(Some)
}

/// A field the kind of a tagged message must have, once the message was read into a struct of
/// optional fields (`ReadOutcome` here, the DBaaS's `Reply`): the error serde gives for it.
pub fn required<T>(field: Option<T>, name: &str) -> Result<T, String> {
    field.ok_or_else(|| format!("missing field `{name}`"))
}

impl TryFrom<ReadOutcomeWire> for ReadOutcome {
    type Error = String;
    fn try_from(w: ReadOutcomeWire) -> Result<Self, String> {
        Ok(match w.result {
            ReadKind::Users => ReadOutcome::Users {
                users: required(w.users, "users")?,
            },
            ReadKind::Exists => ReadOutcome::Exists {
                exists: required(w.exists, "exists")?,
            },
            ReadKind::Rides => ReadOutcome::Rides {
                rides: required(w.rides, "rides")?,
            },
            ReadKind::Ride => ReadOutcome::Ride {
                ride: required(w.ride, "ride")?,
            },
            ReadKind::Count => ReadOutcome::Count {
                count: required(w.count, "count")?,
            },
            ReadKind::Checksum => ReadOutcome::Checksum {
                checksum: required(w.checksum, "checksum")?,
                applied_index: required(w.applied_index, "applied_index")?,
            },
        })
    }
}

/// Identifies one client request, so a write redelivered after a crash is applied once.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub String);

impl RequestId {
    /// A fresh id: a UUIDv7 as 32 hex digits, so ids made later sort later (48 bits of
    /// milliseconds, then a counter and random bits). Every replica keeps the ids it applied in
    /// an index (`requests`, for deduplication); a random id landed on a random page of it, so
    /// every write of a commit group dirtied a page of its own there, and ids in time order all
    /// go to its last page. Clients may still send ids of their own making.
    pub fn random() -> Self {
        RequestId(uuid::Uuid::now_v7().simple().to_string())
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

    fn summary(id: u64, name: &str) -> RideSummary {
        RideSummary {
            ride_id: RideId(id),
            username: Username::parse(name).unwrap(),
            timestamp: Timestamp::parse("01-09-2030:05-10-17").unwrap(),
        }
    }

    #[test]
    fn fresh_request_ids_are_distinct_hex_in_the_order_they_were_made() {
        let ids: Vec<RequestId> = (0..1000).map(|_| RequestId::random()).collect();
        assert!(ids.iter().all(|id| id.0.len() == 32
            && id
                .0
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))));
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids made later sort later"
        );
    }

    #[test]
    fn a_ride_list_holds_the_text_the_api_answers_with() {
        let rides = vec![summary(1, "asha"), summary(2, "ravi")];
        let list = RideList::new(&rides).unwrap();
        assert_eq!(
            list.json(),
            r#"[{"rideId":1,"username":"asha","timestamp":"01-09-2030:05-10-17"},{"rideId":2,"username":"ravi","timestamp":"01-09-2030:05-10-17"}]"#
        );
        assert_eq!(list.rides().unwrap(), rides);
        assert_eq!(list.json(), serde_json::to_string(&rides).unwrap());
        let odd = [summary(u64::MAX, "a\"b\\c")];
        assert_eq!(
            RideList::new(&odd).unwrap().json(),
            serde_json::to_string(&odd).unwrap()
        );
        assert!(!list.is_empty());
        assert!(RideList::new(&[]).unwrap().is_empty());
        assert!(serde_json::from_str::<RideList>(" [\n ] ")
            .unwrap()
            .is_empty());
        for not_a_list in [r#"{"rideId":1}"#, "3", "null", r#""[]""#, "[1,"] {
            assert!(
                serde_json::from_str::<RideList>(not_a_list).is_err(),
                "{not_a_list}"
            );
        }
    }

    #[test]
    fn read_outcomes_round_trip_whatever_the_order_of_their_fields() {
        let detail = RideDetail {
            ride_id: RideId(4),
            created_by: Username::parse("asha").unwrap(),
            users: vec![Username::parse("ravi").unwrap()],
            timestamp: Timestamp::parse("01-09-2030:05-10-17").unwrap(),
            source: Area::new(1).unwrap(),
            destination: Area::new(2).unwrap(),
        };
        let outcomes = [
            ReadOutcome::Users {
                users: vec![Username::parse("asha").unwrap()],
            },
            ReadOutcome::Exists { exists: true },
            ReadOutcome::Rides {
                rides: RideList::new(&[summary(1, "asha")]).unwrap(),
            },
            ReadOutcome::Rides {
                rides: RideList::new(&[]).unwrap(),
            },
            ReadOutcome::Ride { ride: None },
            ReadOutcome::Ride { ride: Some(detail) },
            ReadOutcome::Count { count: 3 },
            ReadOutcome::Checksum {
                checksum: 9,
                applied_index: 12,
            },
        ];
        for outcome in outcomes {
            let text = serde_json::to_string(&outcome).unwrap();
            assert!(text.starts_with(r#"{"result":"#), "{text}");
            assert_eq!(serde_json::from_str::<ReadOutcome>(&text).unwrap(), outcome);
        }
        let kind_last = r#"{"rides":[{"rideId":1,"username":"asha","timestamp":"01-09-2030:05-10-17"}],"result":"rides"}"#;
        assert_eq!(
            serde_json::from_str::<ReadOutcome>(kind_last).unwrap(),
            ReadOutcome::Rides {
                rides: RideList::new(&[summary(1, "asha")]).unwrap()
            }
        );
        // `null` is "no such ride"; an absent field is an error, as is a field of another kind.
        let missing = serde_json::from_str::<ReadOutcome>(r#"{"result":"ride"}"#).unwrap_err();
        assert!(
            missing.to_string().contains("missing field `ride`"),
            "{missing}"
        );
        assert!(
            serde_json::from_str::<ReadOutcome>(r#"{"result":"count","exists":true}"#).is_err()
        );
        assert!(serde_json::from_str::<ReadOutcome>(r#"{"result":"rows","count":1}"#).is_err());
        assert!(serde_json::from_str::<ReadOutcome>(r#"{"result":"rides","rides":{}}"#).is_err());
    }

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

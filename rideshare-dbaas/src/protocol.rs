//! What travels on the queues and in the log. Every message is versioned JSON (`"v": 1`).
//!
//! - `rideshare.write`: [`WriteRequest`]s, consumed by the master only.
//! - `rideshare.read`: [`ReadRequest`]s, consumed round robin by the slaves.
//! - the orchestrator's reply queue (`reply_to`): [`Reply`]s, matched by correlation id.
//! - the log: [`LogEntry`]s: epoch markers and writes, each stamped with the master's epoch.
//!
//! The log replaces a sync queue: slaves apply it in order, new workers replay it.
//!
//! A queue message holds one request, or a batch: a JSON array of requests, answered by one
//! reply message holding the array of their replies in the same order ([`join_batch`],
//! [`split_batch`]; the orchestrator batches calls that queue up, see [`crate::batch`]).

use bytes::Bytes;
use rideshare_core::ops::{required, ReadOp, ReadOutcome, RequestId, WriteOp, WriteOutcome};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::{Error, Result};

/// The protocol version every message carries; a reader refuses others.
pub const VERSION: u8 = 1;
pub const WRITE_QUEUE: &str = "rideshare.write";
pub const READ_QUEUE: &str = "rideshare.read";

/// Whether a request on `queue` goes out transient (lost if the broker restarts before it is
/// delivered, and not waited for: see `Message::transient`): reads, whose callers retry on a
/// timeout and which change nothing. Writes are persistent.
pub fn transient_requests(queue: &str) -> bool {
    queue == READ_QUEUE
}

/// Coordinator paths.
pub const ROOT: &str = "/rideshare";
pub const WORKERS: &str = "/rideshare/workers";
pub const MASTER: &str = "/rideshare/master";
pub const EPOCHS: &str = "/rideshare/epochs";
pub const SCALE: &str = "/rideshare/scale";

/// One write, sent by the orchestrator to the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRequest {
    pub v: u8,
    /// Chosen by the client; a retry reuses it, so the write is applied once.
    pub request_id: RequestId,
    pub op: WriteOp,
    /// The HTTP request id (`x-request-id`) this write serves, for the worker's log lines.
    /// Absent in older messages, which still parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// One read, sent by the orchestrator to any slave.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadRequest {
    pub v: u8,
    pub op: ReadOp,
    /// The slave answers only once it has applied this log index (0: any state will do).
    pub min_index: u64,
    /// The HTTP request id (`x-request-id`) this read serves, for the worker's log lines.
    /// Absent in older messages, which still parse.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
}

/// Why a worker did not do what was asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// The worker is not the master of the current epoch; the write was not acknowledged.
    NotMaster,
    /// The slave did not reach `min_index` in time.
    Behind,
    /// The log or the store failed.
    Unavailable,
    /// The message could not be decoded.
    BadRequest,
}

/// A worker's answer. Encoded with its kind in `reply`; decoded through [`ReplyWire`], a plain
/// struct, because serde's internally tagged enums buffer the whole message before choosing the
/// variant (a long listing's every ride, twice with the outcome's own tag) and a
/// [`rideshare_core::ops::RideList`] cannot be read from that buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "reply",
    rename_all = "snake_case",
    try_from = "ReplyWire<Box<RawValue>>"
)]
pub enum Reply {
    Written {
        v: u8,
        /// The log index of the write (a redelivered write gets its first index's outcome).
        index: u64,
        /// The epoch of the master that acknowledged it, and its id.
        epoch: u64,
        worker: String,
        outcome: WriteOutcome,
    },
    Read {
        v: u8,
        applied_index: u64,
        worker: String,
        outcome: ReadOutcome,
    },
    Refused {
        v: u8,
        refusal: Refusal,
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ReplyKind {
    Written,
    Read,
    Refused,
}

/// Every field any [`Reply`] carries, read in one pass whatever their order. The outcome is read
/// as `O`: as text (`Box<RawValue>`) when any kind of reply may come, to be read again once the
/// kind says which outcome it is; as the outcome itself when the caller knows which kind it
/// waits for ([`decode_read_reply`], [`decode_write_reply`]), which spares a long listing a
/// second pass and a copy.
#[derive(Deserialize)]
struct ReplyWire<O> {
    reply: ReplyKind,
    v: Option<u8>,
    index: Option<u64>,
    epoch: Option<u64>,
    worker: Option<String>,
    outcome: Option<O>,
    applied_index: Option<u64>,
    refusal: Option<Refusal>,
    message: Option<String>,
}

/// What a [`ReplyWire`] holds as its outcome, made into a write's or a read's.
trait WireOutcome: Sized {
    fn written(self) -> std::result::Result<WriteOutcome, String>;
    fn read(self) -> std::result::Result<ReadOutcome, String>;
}

impl WireOutcome for Box<RawValue> {
    fn written(self) -> std::result::Result<WriteOutcome, String> {
        serde_json::from_str(self.get()).map_err(|e| format!("outcome: {e}"))
    }
    fn read(self) -> std::result::Result<ReadOutcome, String> {
        serde_json::from_str(self.get()).map_err(|e| format!("outcome: {e}"))
    }
}

impl WireOutcome for WriteOutcome {
    fn written(self) -> std::result::Result<WriteOutcome, String> {
        Ok(self)
    }
    fn read(self) -> std::result::Result<ReadOutcome, String> {
        Err("a read reply to a write".into())
    }
}

impl WireOutcome for ReadOutcome {
    fn written(self) -> std::result::Result<WriteOutcome, String> {
        Err("a written reply to a read".into())
    }
    fn read(self) -> std::result::Result<ReadOutcome, String> {
        Ok(self)
    }
}

impl<O: WireOutcome> TryFrom<ReplyWire<O>> for Reply {
    type Error = String;
    fn try_from(w: ReplyWire<O>) -> std::result::Result<Self, String> {
        let v = required(w.v, "v")?;
        Ok(match w.reply {
            ReplyKind::Written => Reply::Written {
                v,
                index: required(w.index, "index")?,
                epoch: required(w.epoch, "epoch")?,
                worker: required(w.worker, "worker")?,
                outcome: required(w.outcome, "outcome")?.written()?,
            },
            ReplyKind::Read => Reply::Read {
                v,
                applied_index: required(w.applied_index, "applied_index")?,
                worker: required(w.worker, "worker")?,
                outcome: required(w.outcome, "outcome")?.read()?,
            },
            ReplyKind::Refused => Reply::Refused {
                v,
                refusal: required(w.refusal, "refusal")?,
                message: required(w.message, "message")?,
            },
        })
    }
}

/// A worker's answer to a read (read, or refused), in one pass; refuses other versions.
pub fn decode_read_reply(bytes: &[u8]) -> Result<Reply> {
    decode_reply_of::<ReadOutcome>(bytes)
}

/// A worker's answer to a write (written, or refused), in one pass; refuses other versions.
pub fn decode_write_reply(bytes: &[u8]) -> Result<Reply> {
    decode_reply_of::<WriteOutcome>(bytes)
}

fn decode_reply_of<O>(bytes: &[u8]) -> Result<Reply>
where
    O: WireOutcome + DeserializeOwned,
{
    let wire: ReplyWire<O> = decode(bytes)?;
    let reply = Reply::try_from(wire).map_err(Error::Protocol)?;
    check_version(reply)
}

impl Reply {
    pub fn refused(refusal: Refusal, message: impl Into<String>) -> Self {
        Reply::Refused {
            v: VERSION,
            refusal,
            message: message.into(),
        }
    }
}

/// One entry of the write log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub v: u8,
    /// The epoch of the master that appended it.
    pub epoch: u64,
    #[serde(flatten)]
    pub body: EntryBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryBody {
    /// A new master's first append: from here on, entries of older epochs are ignored.
    EpochMarker {
        master: String,
    },
    Write {
        request_id: RequestId,
        op: WriteOp,
    },
    /// Several writes in one record (group commit): applied in order, each by the rule of a
    /// lone `Write`, all at the record's index and in one transaction.
    Writes {
        writes: Vec<GroupedWrite>,
    },
}

/// One write of a [`EntryBody::Writes`] record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupedWrite {
    pub request_id: RequestId,
    pub op: WriteOp,
}

impl EntryBody {
    /// The record's body for `writes`: a lone `Write` for one (as every record was before group
    /// commit), `Writes` for more.
    pub fn writes(mut writes: Vec<GroupedWrite>) -> Self {
        if writes.len() == 1 {
            let GroupedWrite { request_id, op } = writes.remove(0);
            EntryBody::Write { request_id, op }
        } else {
            EntryBody::Writes { writes }
        }
    }
}

/// A worker's membership record (the data of its ephemeral node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: String,
    pub pid: u32,
    pub role: Role,
    /// How the worker caught up with the log at its start; absent until it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catch_up: Option<CatchUp>,
    /// The replica's state, published once the log has been quiet for a moment: what lets
    /// anyone compare every replica, the master included, without asking the replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<StateDigest>,
    /// How far the replica has applied the log, refreshed about every second while it moves
    /// (catch-up included): what the orchestrator shows as its applied index and lag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Where the worker serves `/health`, `/ready` and `/metrics` (`host:port`), when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// The catch-up under way at start: from the index the store started at (a snapshot's, or
    /// 0) to the log's end then. Kept once caught up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub catching_up: Option<CatchUpPlan>,
    /// Snapshots: the one this worker was installed from, and the newest it wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<SnapshotState>,
}

/// A catch-up's span: the replica starts at `from` and serves once it has applied `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUpPlan {
    pub from: u64,
    pub to: u64,
}

/// A worker's snapshots: the index of the one it was installed from, and of the newest it wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub installed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub taken: Option<u64>,
}

/// A replica's applied index and the newest epoch marker it has applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub applied_index: u64,
    pub epoch: u64,
    /// The state checksum at `applied_index` (the value of `ReadOp::Checksum` there): every
    /// replica the coordinator ever showed, the master and the dead included, can be held
    /// against a replay of the log at that index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<u64>,
}

/// A worker's catch-up at start: log entries applied before it served, and how long it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUp {
    pub entries: u64,
    pub ms: u64,
}

/// A replica's state in brief: its applied log index and the checksum of its data there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateDigest {
    pub applied_index: u64,
    pub checksum: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Slave,
    Master,
}

/// The master's record (the data of the ephemeral `/rideshare/master` node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterRecord {
    pub id: String,
    pub pid: u32,
    /// 0 until the new master has taken its epoch.
    pub epoch: u64,
    /// True once the master consumes the write queue (the orchestrator resends writes stuck
    /// with an older master at this change).
    #[serde(default)]
    pub ready: bool,
}

/// The scaling target (data of the persistent `/rideshare/scale` node).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleRecord {
    pub slaves: u64,
}

/// One message of several encoded requests: a JSON array of them, as they are.
pub fn join_batch(requests: &[&Bytes]) -> Bytes {
    let mut body = Vec::with_capacity(requests.iter().map(|r| r.len() + 1).sum::<usize>() + 1);
    body.push(b'[');
    for (i, request) in requests.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(request);
    }
    body.push(b']');
    Bytes::from(body)
}

/// Whether a queue message is a batch (a JSON array) rather than one request.
pub fn is_batch(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// The replies of a batch, each as its own slice of `body` (no copy), checked to be `expected`
/// many. A lone reply that is not an array (a worker refusing the whole message) is every
/// call's reply.
pub fn split_batch(body: &Bytes, expected: usize) -> Result<Vec<Bytes>> {
    if !is_batch(body) {
        return Ok(vec![body.clone(); expected]);
    }
    let parts: Vec<&serde_json::value::RawValue> = serde_json::from_slice(body)?;
    if parts.len() != expected {
        return Err(Error::Protocol(format!(
            "{} replies to a batch of {expected}",
            parts.len()
        )));
    }
    Ok(parts
        .into_iter()
        .map(|part| body.slice_ref(part.get().as_bytes()))
        .collect())
}

pub fn encode<T: Serialize>(message: &T) -> Bytes {
    // Serializing these types cannot fail: no maps with non-string keys, no foreign types.
    Bytes::from(serde_json::to_vec(message).unwrap_or_default())
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Decodes and refuses other protocol versions.
pub fn decode_versioned<T: DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T> {
    check_version(decode(bytes)?)
}

fn check_version<T: Versioned>(message: T) -> Result<T> {
    if message.version() == VERSION {
        Ok(message)
    } else {
        Err(Error::Protocol(format!(
            "protocol version {} (this build speaks {VERSION})",
            message.version()
        )))
    }
}

pub trait Versioned {
    fn version(&self) -> u8;
}

impl Versioned for WriteRequest {
    fn version(&self) -> u8 {
        self.v
    }
}
impl Versioned for ReadRequest {
    fn version(&self) -> u8 {
        self.v
    }
}
impl Versioned for LogEntry {
    fn version(&self) -> u8 {
        self.v
    }
}
impl Versioned for Reply {
    fn version(&self) -> u8 {
        match self {
            Reply::Written { v, .. } | Reply::Read { v, .. } | Reply::Refused { v, .. } => *v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rideshare_core::Username;

    #[test]
    fn log_entries_have_a_stable_encoding() {
        let entry = LogEntry {
            v: VERSION,
            epoch: 3,
            body: EntryBody::Write {
                request_id: RequestId("r1".into()),
                op: WriteOp::DeleteUser {
                    username: Username::parse("a").unwrap(),
                },
            },
        };
        let text = String::from_utf8(encode(&entry).to_vec()).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"epoch":3,"kind":"write","request_id":"r1","op":{"op":"delete_user","username":"a"}}"#
        );
        assert_eq!(
            decode_versioned::<LogEntry>(text.as_bytes()).unwrap(),
            entry
        );
    }

    #[test]
    fn requests_without_a_trace_still_parse() {
        let write = r#"{"v":1,"request_id":"r1","op":{"op":"delete_user","username":"a"}}"#;
        let write = decode_versioned::<WriteRequest>(write.as_bytes()).unwrap();
        assert_eq!(write.trace, None);
        let read = r#"{"v":1,"op":{"op":"list_users"},"min_index":3}"#;
        let read = decode_versioned::<ReadRequest>(read.as_bytes()).unwrap();
        assert_eq!((read.trace, read.min_index), (None, 3));
        let member = r#"{"id":"w","pid":7,"role":"slave"}"#;
        assert_eq!(
            decode::<MemberRecord>(member.as_bytes()).unwrap().progress,
            None
        );
    }

    #[test]
    fn a_batch_splits_back_into_its_parts_without_copies() {
        let (a, b) = (
            Bytes::from_static(br#"{"x":[1,2]}"#),
            Bytes::from_static(b"{}"),
        );
        let batch = join_batch(&[&a, &b]);
        assert!(is_batch(&batch) && !is_batch(&a));
        assert_eq!(split_batch(&batch, 2).unwrap(), vec![a.clone(), b]);
        assert!(split_batch(&batch, 3).is_err());
        // A lone reply answers every call of the batch.
        assert_eq!(split_batch(&a, 2).unwrap(), vec![a.clone(), a]);
    }

    #[test]
    fn replies_round_trip_whatever_the_order_of_their_fields() {
        use rideshare_core::domain::{RideId, Timestamp, Username};
        use rideshare_core::ops::{RideList, RideSummary};
        let ride = RideSummary {
            ride_id: RideId(1),
            username: Username::parse("asha").unwrap(),
            timestamp: Timestamp::parse("01-09-2030:05-10-17").unwrap(),
        };
        let replies = [
            Reply::Written {
                v: VERSION,
                index: 7,
                epoch: 2,
                worker: "w1".into(),
                outcome: WriteOutcome::RideCreated { ride_id: RideId(1) },
            },
            Reply::Read {
                v: VERSION,
                applied_index: 7,
                worker: "w2".into(),
                outcome: ReadOutcome::Rides {
                    rides: RideList::new(&[ride]).unwrap(),
                },
            },
            Reply::refused(Refusal::Behind, "at 3"),
        ];
        for reply in replies {
            let bytes = encode(&reply);
            assert_eq!(decode_versioned::<Reply>(&bytes).unwrap(), reply);
            // The one-pass decoders read the kind of reply they wait for, and a refusal.
            let (fits, other) = match reply {
                Reply::Written { .. } => (decode_write_reply(&bytes), decode_read_reply(&bytes)),
                Reply::Read { .. } => (decode_read_reply(&bytes), decode_write_reply(&bytes)),
                Reply::Refused { .. } => (decode_read_reply(&bytes), decode_write_reply(&bytes)),
            };
            assert_eq!(fits.unwrap(), reply);
            match reply {
                Reply::Refused { .. } => assert_eq!(other.unwrap(), reply),
                _ => assert!(other.is_err(), "{reply:?} read as the other kind"),
            }
        }
        let kind_last = r#"{"v":1,"applied_index":3,"worker":"w","outcome":{"count":2,"result":"count"},"reply":"read"}"#;
        assert_eq!(
            decode_versioned::<Reply>(kind_last.as_bytes()).unwrap(),
            Reply::Read {
                v: 1,
                applied_index: 3,
                worker: "w".into(),
                outcome: ReadOutcome::Count { count: 2 },
            }
        );
        for bad in [
            r#"{"v":1,"reply":"read","applied_index":3,"worker":"w"}"#,
            r#"{"v":1,"reply":"read","applied_index":3,"worker":"w","outcome":{"result":"x"}}"#,
            r#"{"v":1,"reply":"written","index":1,"epoch":1,"worker":"w","outcome":{"count":2,"result":"count"}}"#,
            r#"{"v":1,"reply":"refused","refusal":"behind"}"#,
            r#"{"reply":"refused","refusal":"behind","message":"m"}"#,
        ] {
            assert!(decode_versioned::<Reply>(bad.as_bytes()).is_err(), "{bad}");
            assert!(decode_read_reply(bad.as_bytes()).is_err(), "{bad}");
            assert!(decode_write_reply(bad.as_bytes()).is_err(), "{bad}");
        }
        assert_eq!(
            decode_read_reply(kind_last.as_bytes()).unwrap(),
            decode_versioned::<Reply>(kind_last.as_bytes()).unwrap()
        );
        let other_version = r#"{"v":2,"reply":"refused","refusal":"behind","message":"m"}"#;
        assert!(decode_read_reply(other_version.as_bytes()).is_err());
        assert!(decode_write_reply(other_version.as_bytes()).is_err());
    }

    #[test]
    fn other_versions_are_refused() {
        let text = r#"{"v":2,"epoch":1,"kind":"epoch_marker","master":"w"}"#;
        assert!(decode_versioned::<LogEntry>(text.as_bytes()).is_err());
    }
}

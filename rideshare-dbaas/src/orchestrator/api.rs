//! The orchestrator's HTTP wire types, written once: the server answers with them and
//! `client.rs`, `rideshare status` and the tools parse them back. Each derives `Serialize`
//! and `Deserialize`, so what one side writes the other reads (the round trip is tested below).
//! Their JSON shapes are the API: a field added must be optional (`#[serde(default)]`), so
//! older readers and writers still agree.

use rideshare_core::ops::{ReadOp, ReadOutcome, WriteOp, WriteOutcome};
use serde::{Deserialize, Serialize};

use crate::protocol::MasterRecord;
pub use crate::registry::MemberInfo;

/// `POST /api/v1/db/write`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WriteRequest {
    pub op: WriteOp,
    /// The client's id for this write, kept across its retries (1..=128 bytes); one is made
    /// when absent.
    #[schema(min_length = 1, max_length = 128)]
    #[serde(default)]
    pub request_id: Option<String>,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Sees every write acknowledged before the read started (the default).
    Strong,
    /// Any caught-up replica's state.
    Stale,
}

/// `POST /api/v1/db/read`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadRequest {
    pub op: ReadOp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// A session token: the highest log index this client has seen (a write's `index`, a
    /// read's `applied_index`), from this or any other orchestrator. The read is answered by a
    /// replica that has applied it, so a client that moves between orchestrators still reads
    /// its writes and never goes back in time. A replica that does not reach it within the
    /// read wait answers 503.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_index: Option<u64>,
}

/// An acknowledged write: the answer to `POST /api/v1/db/write`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WriteAck {
    pub index: u64,
    pub epoch: u64,
    pub worker: String,
    pub outcome: WriteOutcome,
}

/// A read's answer: the answer to `POST /api/v1/db/read`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReadAnswer {
    pub applied_index: u64,
    pub worker: String,
    pub outcome: ReadOutcome,
}

/// One master change seen by this orchestrator.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Failover {
    pub old_id: String,
    pub old_pid: u32,
    pub new_id: String,
    pub new_pid: u32,
    pub epoch: u64,
    /// When the old master was seen gone (milliseconds since the Unix epoch).
    pub at_unix_ms: u64,
    /// From the old master seen gone to the new one ready to take writes; unknown when the
    /// change happened between two looks at the master node.
    pub duration_ms: Option<u64>,
}

/// One end of a scaling window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Decision {
    pub at_unix_ms: u64,
    pub reads: u64,
    pub from_slaves: u64,
    pub to_slaves: u64,
}

/// Whether a worker serves yet.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    /// Running, not registered yet (or lost its node).
    Starting,
    /// Registered, replaying the log.
    CatchingUp,
    /// Caught up: reads (or writes, as master) are served.
    Serving,
}

/// A worker's role as shown: a starting worker has none yet.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ShownRole {
    Master,
    Slave,
    None,
}

/// One worker as `GET /api/v1/status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    pub id: String,
    pub pid: u32,
    pub role: ShownRole,
    pub state: WorkerState,
    /// The newest epoch marker the worker has applied (the master's own epoch for the master).
    pub epoch: Option<u64>,
    /// The highest applied log index known: from its member node or its last answer.
    pub applied_index: Option<u64>,
    /// Acknowledged index minus applied index (entries this worker has still to apply).
    pub lag: Option<u64>,
    /// Since this orchestrator first saw it running.
    pub uptime_s: f64,
    /// Entries replayed at start and how long it took, once caught up.
    pub catch_up_entries: Option<u64>,
    pub catch_up_ms: Option<u64>,
    /// Where the worker serves `/health`, `/ready` and `/metrics`, when it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// The newest snapshot the worker was installed from or wrote.
    #[serde(default)]
    pub snapshot_index: Option<u64>,
    /// How far its catch-up at start has come (kept once it serves).
    #[serde(default)]
    pub catch_up: Option<CatchUpProgress>,
}

/// A catch-up's progress: from the index the store started at (a snapshot's, or 0) to the
/// log's end when it started.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct CatchUpProgress {
    pub from: u64,
    pub to: u64,
    /// Entries applied of `to - from`, in percent (100 once there).
    pub percent: f64,
}

/// The scaler's window.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ScalingStatus {
    pub window_s: f64,
    /// Reads counted so far in this window.
    pub reads: u64,
    pub target_slaves: u64,
    pub reads_per_slave: u64,
    pub max_slaves: u64,
    /// Seconds until the window closes; none before the first read.
    pub next_decision_s: Option<f64>,
    /// The last windows' decisions, newest last.
    pub decisions: Vec<Decision>,
}

/// Reads and writes answered since this orchestrator started.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Totals {
    pub writes_acked: u64,
    pub writes_failed: u64,
    pub reads_answered: u64,
    pub reads_failed: u64,
}

/// `GET /api/v1/status`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ClusterStatus {
    pub orchestrator: String,
    pub uptime_s: f64,
    /// The highest log index acknowledged to a client.
    pub acked_index: u64,
    pub master: Option<MasterRecord>,
    pub workers: Vec<WorkerStatus>,
    pub scaling: ScalingStatus,
    /// The last failovers, newest last.
    pub failovers: Vec<Failover>,
    pub totals: Totals,
    /// Calls waiting for a worker's answer now.
    pub calls_waiting: usize,
}

/// `GET /api/v1/workers`: one object per worker.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkerBrief {
    pub pid: u32,
    pub role: ShownRole,
    pub applied_index: Option<u64>,
    pub lag: Option<u64>,
    pub state: WorkerState,
    /// The newest snapshot it was installed from or wrote.
    pub snapshot_index: Option<u64>,
    /// Its catch-up at start, while it runs and after.
    pub catch_up: Option<CatchUpProgress>,
}

impl From<WorkerStatus> for WorkerBrief {
    fn from(w: WorkerStatus) -> Self {
        WorkerBrief {
            pid: w.pid,
            role: w.role,
            applied_index: w.applied_index,
            lag: w.lag,
            state: w.state,
            snapshot_index: w.snapshot_index,
            catch_up: w.catch_up,
        }
    }
}

/// What a switchover did.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SwitchoverReport {
    pub old_pid: u32,
    pub new_pid: u32,
    pub epoch: u64,
    /// The last acknowledged index when writes were held: the successor had applied it.
    pub handed_over_at_index: u64,
    /// How long new writes were held at the gate.
    pub paused_ms: u64,
    /// From the request to the new master ready.
    pub duration_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rideshare_core::Username;
    use serde::de::DeserializeOwned;

    fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
        let text = serde_json::to_string(value).unwrap();
        let back: T = serde_json::from_str(&text).unwrap();
        assert_eq!(&back, value, "{text}");
    }

    fn username(name: &str) -> Username {
        Username::parse(name).unwrap()
    }

    #[test]
    fn db_bodies_and_answers_read_back_as_written() {
        round_trip(&WriteRequest {
            op: WriteOp::DeleteUser {
                username: username("asha"),
            },
            request_id: Some("r1".into()),
        });
        round_trip(&ReadRequest {
            op: ReadOp::ListUsers,
            consistency: Some(Consistency::Stale),
            min_index: None,
        });
        round_trip(&ReadRequest {
            op: ReadOp::CountRides,
            consistency: None,
            min_index: Some(42),
        });
        round_trip(&WriteAck {
            index: 18,
            epoch: 3,
            worker: "worker-1002".into(),
            outcome: WriteOutcome::Done,
        });
        round_trip(&ReadAnswer {
            applied_index: 18,
            worker: "worker-1003".into(),
            outcome: ReadOutcome::Users {
                users: vec![username("asha")],
            },
        });
    }

    #[test]
    fn the_documented_shapes_parse() {
        let ack: WriteAck = serde_json::from_str(
            r#"{"index":18,"epoch":3,"worker":"worker-1002","outcome":{"outcome":"done"}}"#,
        )
        .unwrap();
        assert_eq!((ack.index, ack.outcome), (18, WriteOutcome::Done));
        let read: ReadRequest = serde_json::from_str(r#"{"op":{"op":"list_users"}}"#).unwrap();
        assert_eq!(read.consistency, None);
        let write: WriteRequest =
            serde_json::from_str(r#"{"op":{"op":"delete_user","username":"a"}}"#).unwrap();
        assert_eq!(write.request_id, None);
    }

    fn worker() -> WorkerStatus {
        WorkerStatus {
            id: "worker-1001".into(),
            pid: 1001,
            role: ShownRole::Master,
            state: WorkerState::Serving,
            epoch: Some(2),
            applied_index: Some(9),
            lag: Some(0),
            uptime_s: 1.5,
            catch_up_entries: Some(4),
            catch_up_ms: Some(3),
            http: Some("127.0.0.1:9000".into()),
            snapshot_index: Some(5),
            catch_up: Some(CatchUpProgress {
                from: 5,
                to: 9,
                percent: 100.0,
            }),
        }
    }

    fn status() -> ClusterStatus {
        ClusterStatus {
            orchestrator: "o".into(),
            uptime_s: 2.0,
            acked_index: 9,
            master: Some(MasterRecord {
                id: "worker-1001".into(),
                pid: 1001,
                epoch: 2,
                ready: true,
            }),
            workers: vec![worker()],
            scaling: ScalingStatus {
                window_s: 120.0,
                reads: 3,
                target_slaves: 1,
                reads_per_slave: 20,
                max_slaves: 16,
                next_decision_s: Some(30.0),
                decisions: vec![Decision {
                    at_unix_ms: 1,
                    reads: 41,
                    from_slaves: 1,
                    to_slaves: 3,
                }],
            },
            failovers: vec![Failover {
                old_id: "worker-1000".into(),
                old_pid: 1000,
                new_id: "worker-1001".into(),
                new_pid: 1001,
                epoch: 2,
                at_unix_ms: 5,
                duration_ms: None,
            }],
            totals: Totals {
                writes_acked: 1,
                writes_failed: 0,
                reads_answered: 2,
                reads_failed: 0,
            },
            calls_waiting: 0,
        }
    }

    #[test]
    fn status_views_read_back_as_written() {
        round_trip(&status());
        round_trip(&WorkerBrief::from(worker()));
        round_trip(&SwitchoverReport {
            old_pid: 1000,
            new_pid: 1001,
            epoch: 3,
            handed_over_at_index: 9,
            paused_ms: 12,
            duration_ms: 40,
        });
    }
}

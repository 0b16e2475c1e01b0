//! The running state checksum (moved by each commit's mutations) always equals the checksum
//! recomputed from every row, on both stores, through commit groups, dropped groups and
//! reopened stores.

use proptest::prelude::*;
use rideshare_core::error::StoreError;
use rideshare_core::machine::{Applied, StateMachine, Store};
use rideshare_core::ops::{ReadOp, ReadOutcome, RequestId, WriteOp, WriteOutcome};
use rideshare_core::store::{MemStore, SqliteStore};
use rideshare_core::{Area, RideId, Timestamp, Username};

fn user() -> impl Strategy<Value = Username> {
    prop::sample::select(vec!["ann", "bob", "cy", "dee"]).prop_map(|u| Username::parse(u).unwrap())
}

fn area() -> impl Strategy<Value = Area> {
    (1u16..=3).prop_map(|n| Area::new(n).unwrap())
}

fn write_op() -> impl Strategy<Value = WriteOp> {
    let time = (0i64..86_400).prop_map(|s| Timestamp::from_seconds(1_893_456_000 + s).unwrap());
    prop_oneof![
        4 => (user(), prop::sample::select(vec!["h1", "h2"])).prop_map(|(username, h)| {
            WriteOp::AddUser { username, password_hash: h.into() }
        }),
        3 => user().prop_map(|username| WriteOp::DeleteUser { username }),
        4 => (user(), time, area(), area()).prop_map(|(created_by, timestamp, source, destination)| {
            WriteOp::CreateRide { created_by, timestamp, source, destination }
        }),
        // Ride ids here count back from the newest ride (`apply_all`), so they mostly exist.
        6 => ((0u64..4).prop_map(RideId), user())
            .prop_map(|(ride_id, username)| WriteOp::JoinRide { ride_id, username }),
        1 => (0u64..4).prop_map(|back| WriteOp::DeleteRide { ride_id: RideId(back) }),
        1 => Just(WriteOp::ClearRides),
        1 => Just(WriteOp::ClearUsers),
        1 => Just(WriteOp::ClearAll),
    ]
}

/// A batch of writes, applied in one commit group (or one commit each), and kept or dropped.
#[derive(Debug, Clone)]
struct Batch {
    ops: Vec<WriteOp>,
    grouped: bool,
    dropped: bool,
}

fn batch() -> impl Strategy<Value = Batch> {
    (
        prop::collection::vec(write_op(), 1..6),
        any::<bool>(),
        prop::bool::weighted(0.15),
    )
        .prop_map(|(ops, grouped, dropped)| Batch {
            ops,
            grouped,
            dropped: grouped && dropped,
        })
}

/// Applies `ops` from `index + 1` on. A ride id in a join or a delete counts back from the
/// newest ride created (`newest - id`), which the run follows in `newest`.
fn apply_back<S: Store>(
    machine: &mut StateMachine<S>,
    ops: &[WriteOp],
    index: &mut u64,
    newest: &mut u64,
) -> Result<(), StoreError> {
    for op in ops {
        let back = |id: RideId| RideId(newest.saturating_sub(id.0));
        let op = match op.clone() {
            WriteOp::JoinRide { ride_id, username } => WriteOp::JoinRide {
                ride_id: back(ride_id),
                username,
            },
            WriteOp::DeleteRide { ride_id } => WriteOp::DeleteRide {
                ride_id: back(ride_id),
            },
            op => op,
        };
        *index += 1;
        let applied = machine.apply(*index, &RequestId(format!("r{index}")), &op)?;
        if let Applied::Fresh(WriteOutcome::RideCreated { ride_id }) = applied {
            *newest = ride_id.0;
        }
    }
    Ok(())
}

/// Applies `ops` as they are.
fn apply_all<S: Store>(
    machine: &mut StateMachine<S>,
    ops: &[WriteOp],
    index: &mut u64,
) -> Result<(), StoreError> {
    for op in ops {
        *index += 1;
        machine.apply(*index, &RequestId(format!("r{index}")), op)?;
    }
    Ok(())
}

/// Runs the batches, checking running == full after each; returns the final checksum.
fn run<S: Store>(store: S, batches: &[Batch]) -> Result<u64, TestCaseError> {
    let mut machine = StateMachine::new(store);
    let mut index = machine.applied_index().unwrap();
    let mut newest = 0;
    for batch in batches {
        if !batch.grouped {
            apply_back(&mut machine, &batch.ops, &mut index, &mut newest).unwrap();
        } else if batch.dropped {
            let failed = machine.grouped(|m| {
                apply_back(m, &batch.ops, &mut index, &mut newest)?;
                Err::<(), _>(StoreError::Corrupt("injected".into()))
            });
            prop_assert!(failed.is_err());
            // A dropped group's indexes come again (a store that kept them skips them).
            index = machine.applied_index().unwrap();
        } else {
            machine
                .grouped(|m| apply_back(m, &batch.ops, &mut index, &mut newest))
                .unwrap();
        }
        let running = machine.checksum().unwrap();
        prop_assert_eq!(
            running,
            machine.full_checksum().unwrap(),
            "after {:?}",
            batch
        );
        let ReadOutcome::Checksum { checksum, .. } = machine.read(&ReadOp::Checksum).unwrap()
        else {
            return Err(TestCaseError::fail(
                "a checksum read answered something else",
            ));
        };
        prop_assert_eq!(checksum, running);
    }
    Ok(machine.checksum().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_running_checksum_equals_a_full_recomputation(
        batches in prop::collection::vec(batch(), 1..24),
    ) {
        let mem = run(MemStore::new(), &batches)?;
        let sqlite = run(SqliteStore::in_memory().unwrap(), &batches)?;
        // Without dropped groups both stores hold the same state (a memory store keeps a
        // dropped group, SQLite does not), so they give the same checksum.
        if batches.iter().all(|b| !b.dropped) {
            prop_assert_eq!(mem, sqlite);
        }
    }
}

fn name(n: &str) -> Username {
    Username::parse(n).unwrap()
}

fn add(n: &str, hash: &str) -> WriteOp {
    WriteOp::AddUser {
        username: name(n),
        password_hash: hash.into(),
    }
}

fn ride(by: &str) -> WriteOp {
    WriteOp::CreateRide {
        created_by: name(by),
        timestamp: Timestamp::from_seconds(1_893_456_000).unwrap(),
        source: Area::new(1).unwrap(),
        destination: Area::new(2).unwrap(),
    }
}

fn join(id: u64, n: &str) -> WriteOp {
    WriteOp::JoinRide {
        ride_id: RideId(id),
        username: name(n),
    }
}

fn checksum_after(ops: &[WriteOp]) -> u64 {
    let mut machine = StateMachine::new(MemStore::new());
    let mut index = 0;
    apply_all(&mut machine, ops, &mut index).unwrap();
    let running = machine.checksum().unwrap();
    assert_eq!(running, machine.full_checksum().unwrap());
    running
}

#[test]
fn the_checksum_tells_apart_what_replicas_must_agree_on() {
    let base = [
        add("ann", "h"),
        add("bob", "h"),
        add("cy", "h"),
        ride("ann"),
    ];
    let with = |more: &[WriteOp]| {
        let mut ops = base.to_vec();
        ops.extend_from_slice(more);
        checksum_after(&ops)
    };
    // Riders' join order is state.
    assert_ne!(
        with(&[join(1, "bob"), join(1, "cy")]),
        with(&[join(1, "cy"), join(1, "bob")])
    );
    // A password hash is state.
    assert_ne!(
        checksum_after(&[add("ann", "h1")]),
        checksum_after(&[add("ann", "h2")])
    );
    // The next ride id is state, even with no ride left.
    assert_ne!(
        with(&[WriteOp::ClearRides]),
        checksum_after(
            &base[..3]
                .iter()
                .cloned()
                .chain([WriteOp::ClearRides])
                .collect::<Vec<_>>()
        )
    );
    // Equal state, reached differently, is equal: a deleted user leaves nothing behind.
    assert_eq!(
        with(&[
            join(1, "bob"),
            WriteOp::DeleteUser {
                username: name("bob")
            }
        ]),
        with(&[WriteOp::DeleteUser {
            username: name("bob")
        }])
    );
}

#[test]
fn a_reopened_store_continues_from_a_full_recomputation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    let ops = [
        add("ann", "h"),
        add("bob", "h"),
        ride("ann"),
        join(1, "bob"),
    ];
    let mut index = 0;
    let before = {
        let mut machine = StateMachine::new(SqliteStore::open(&path).unwrap());
        apply_all(&mut machine, &ops, &mut index).unwrap();
        machine.checksum().unwrap()
    };
    let mut machine = StateMachine::new(SqliteStore::open(&path).unwrap());
    assert_eq!(machine.checksum().unwrap(), before);
    apply_all(
        &mut machine,
        &[WriteOp::DeleteUser {
            username: name("bob"),
        }],
        &mut index,
    )
    .unwrap();
    assert_eq!(
        machine.checksum().unwrap(),
        machine.full_checksum().unwrap()
    );
    assert_eq!(
        machine.checksum().unwrap(),
        checksum_after(&[add("ann", "h"), ride("ann")])
    );
}

//! Random operation sequences give identical results on the in-memory and the SQLite store:
//! the in-memory store is the reference the SQLite one is held to.

use proptest::prelude::*;
use rideshare_core::machine::{Applied, StateMachine, Store};
use rideshare_core::ops::{ReadOp, RequestId, WriteOp};
use rideshare_core::store::{MemStore, SqliteStore};
use rideshare_core::{Area, RideId, Timestamp, Username};

fn user() -> impl Strategy<Value = Username> {
    prop::sample::select(vec!["ann", "bob", "Bob", "cy", "dee"])
        .prop_map(|u| Username::parse(u).unwrap())
}

fn area() -> impl Strategy<Value = Area> {
    (1u16..=4).prop_map(|n| Area::new(n).unwrap())
}

fn time() -> impl Strategy<Value = Timestamp> {
    // A few days around 2030-01-01, so some rides are upcoming and some are not.
    (0i64..5 * 86_400).prop_map(|s| Timestamp::from_seconds(1_893_456_000 + s).unwrap())
}

fn ride_id() -> impl Strategy<Value = RideId> {
    (0u64..12).prop_map(RideId)
}

fn write_op() -> impl Strategy<Value = WriteOp> {
    prop_oneof![
        4 => user().prop_map(|username| WriteOp::AddUser { username, password_hash: "h".into() }),
        1 => user().prop_map(|username| WriteOp::DeleteUser { username }),
        4 => (user(), time(), area(), area()).prop_map(|(created_by, timestamp, source, destination)| {
            WriteOp::CreateRide { created_by, timestamp, source, destination }
        }),
        3 => (ride_id(), user()).prop_map(|(ride_id, username)| WriteOp::JoinRide { ride_id, username }),
        1 => ride_id().prop_map(|ride_id| WriteOp::DeleteRide { ride_id }),
        1 => Just(WriteOp::ClearRides),
        1 => Just(WriteOp::ClearUsers),
        1 => Just(WriteOp::ClearAll),
    ]
}

fn read_op() -> impl Strategy<Value = ReadOp> {
    prop_oneof![
        Just(ReadOp::ListUsers),
        (area(), area(), time()).prop_map(|(source, destination, after)| ReadOp::UpcomingRides {
            source,
            destination,
            after
        }),
        ride_id().prop_map(|ride_id| ReadOp::GetRide { ride_id }),
        Just(ReadOp::CountRides),
        Just(ReadOp::Checksum),
    ]
}

#[derive(Debug, Clone)]
enum Step {
    Write(WriteOp),
    /// Re-applies the write of an earlier step under the same request id (a redelivery).
    Redeliver(usize),
    Read(ReadOp),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => write_op().prop_map(Step::Write),
        1 => (0usize..64).prop_map(Step::Redeliver),
        3 => read_op().prop_map(Step::Read),
    ]
}

/// Runs `steps` with every `group` consecutive steps in one commit group (1: no groups).
fn run<S: Store>(store: S, steps: &[Step], group: usize) -> (Vec<String>, u64) {
    let mut machine = StateMachine::new(store);
    let mut answers = Vec::new();
    let mut writes: Vec<(RequestId, WriteOp)> = Vec::new();
    let mut index = 0;
    for chunk in steps.chunks(group) {
        if group == 1 {
            run_steps(&mut machine, chunk, &mut answers, &mut writes, &mut index);
        } else {
            machine
                .grouped(|m| {
                    run_steps(m, chunk, &mut answers, &mut writes, &mut index);
                    Ok::<_, rideshare_core::error::StoreError>(())
                })
                .unwrap();
        }
    }
    // Re-applying an old index is a no-op on both.
    if index > 0 {
        assert_eq!(
            machine
                .apply(index, &RequestId("late".into()), &WriteOp::ClearAll)
                .unwrap(),
            Applied::AlreadyApplied
        );
    }
    let checksum = machine.store().dump().unwrap().checksum();
    (answers, checksum)
}

fn run_steps<S: Store>(
    machine: &mut StateMachine<S>,
    steps: &[Step],
    answers: &mut Vec<String>,
    writes: &mut Vec<(RequestId, WriteOp)>,
    index: &mut u64,
) {
    for step in steps {
        match step {
            Step::Write(op) => {
                *index += 1;
                let id = RequestId(format!("r{index}"));
                let applied = machine.apply(*index, &id, op).unwrap();
                assert!(matches!(applied, Applied::Fresh(_)));
                answers.push(format!("{applied:?}"));
                writes.push((id, op.clone()));
            }
            Step::Redeliver(k) if !writes.is_empty() => {
                let (id, op) = writes[k % writes.len()].clone();
                *index += 1;
                let applied = machine.apply(*index, &id, &op).unwrap();
                assert!(
                    matches!(applied, Applied::Duplicate(_)),
                    "redelivery applied twice"
                );
                answers.push(format!("{applied:?}"));
            }
            Step::Redeliver(_) => {}
            Step::Read(op) => answers.push(format!("{:?}", machine.read(op).unwrap())),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn memory_and_sqlite_stores_give_identical_results(steps in prop::collection::vec(step(), 1..60)) {
        let (mem_answers, mem_sum) = run(MemStore::new(), &steps, 1);
        let (sql_answers, sql_sum) = run(SqliteStore::in_memory().unwrap(), &steps, 1);
        prop_assert_eq!(&mem_answers, &sql_answers);
        prop_assert_eq!(mem_sum, sql_sum);
        // Commit groups change when data becomes durable, never what it is.
        for group in [2, 7, 64] {
            let (grouped_answers, grouped_sum) =
                run(SqliteStore::in_memory().unwrap(), &steps, group);
            prop_assert_eq!(&mem_answers, &grouped_answers, "groups of {}", group);
            prop_assert_eq!(mem_sum, grouped_sum, "groups of {}", group);
        }
    }
}

/// Applies `ops` (each with its request id) in records of `sizes` writes (cycled), each record
/// in its own commit group; returns every write's outcome, in order, and the state's checksum.
fn run_records<S: Store>(
    store: S,
    ops: &[(RequestId, WriteOp)],
    sizes: &[usize],
) -> (Vec<Applied>, u64) {
    let mut machine = StateMachine::new(store);
    let mut outcomes = Vec::new();
    let mut rest = ops;
    let mut index = 0;
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (record, after) = rest.split_at((*size).min(rest.len()));
        rest = after;
        index += 1;
        let applied = machine
            .grouped(|m| m.apply_record(index, record.iter().map(|(id, op)| (id, op))))
            .unwrap();
        assert_eq!(applied.len(), record.len());
        outcomes.extend(applied);
        // A record applied again (a replica replaying what it has) changes nothing.
        let again = machine
            .apply_record(index, record.iter().map(|(id, op)| (id, op)))
            .unwrap();
        assert!(again.iter().all(|a| *a == Applied::AlreadyApplied));
    }
    assert_eq!(machine.applied_index().unwrap(), index);
    let checksum = machine.store().dump().unwrap().checksum();
    (outcomes, checksum)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Group commit changes how writes are packed into records, never what they do: writes in
    /// records of any size give each write the outcome and the state the same writes give one
    /// per record, repeated request ids included (in one record or across records).
    #[test]
    fn writes_grouped_in_records_act_as_one_per_record(
        ops in prop::collection::vec((0usize..40, write_op()), 1..80),
        sizes in prop::collection::vec(1usize..12, 1..6),
    ) {
        let ops: Vec<_> = ops
            .into_iter()
            .map(|(id, op)| (RequestId(format!("r{id}")), op))
            .collect();
        let (one_each, one_sum) = run_records(MemStore::new(), &ops, &[1]);
        for store in 0..2 {
            let (grouped, grouped_sum) = if store == 0 {
                run_records(MemStore::new(), &ops, &sizes)
            } else {
                run_records(SqliteStore::in_memory().unwrap(), &ops, &sizes)
            };
            prop_assert_eq!(&one_each, &grouped, "records of {:?}", sizes);
            prop_assert_eq!(one_sum, grouped_sum, "records of {:?}", sizes);
        }
    }
}

#[test]
fn a_failed_group_is_dropped_whole_and_a_kept_one_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    let add = |name: &str| WriteOp::AddUser {
        username: Username::parse(name).unwrap(),
        password_hash: "h".into(),
    };
    {
        let mut m = StateMachine::new(SqliteStore::open(&path).unwrap());
        m.grouped(|m| {
            m.apply(1, &RequestId("1".into()), &add("kept1"))?;
            m.apply(2, &RequestId("2".into()), &add("kept2"))
        })
        .unwrap();
        let failed = m.grouped(|m| {
            m.apply(3, &RequestId("3".into()), &add("dropped"))?;
            Err::<(), _>(rideshare_core::error::StoreError::Corrupt(
                "injected".into(),
            ))
        });
        assert!(failed.is_err());
        // The store is usable after the drop, and the dropped index can be applied again.
        assert_eq!(m.applied_index().unwrap(), 2);
        m.apply(3, &RequestId("3b".into()), &add("after")).unwrap();
        // Groups do not nest.
        let nested = m.grouped(|m| m.grouped(|_| Ok::<_, rideshare_core::error::StoreError>(())));
        assert!(nested.is_err());
    }
    let mut m = StateMachine::new(SqliteStore::open(&path).unwrap());
    assert_eq!(m.applied_index().unwrap(), 3);
    let users = m.store().list_users().unwrap();
    let names: Vec<&str> = users.iter().map(Username::as_str).collect();
    assert_eq!(names, ["kept1", "kept2", "after"]);
}

#[test]
fn sqlite_store_keeps_its_data_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("replica.db");
    let alice = Username::parse("alice").unwrap();
    {
        let mut m = StateMachine::new(SqliteStore::open(&path).unwrap());
        m.apply(
            1,
            &RequestId("a".into()),
            &WriteOp::AddUser {
                username: alice.clone(),
                password_hash: "h".into(),
            },
        )
        .unwrap();
    }
    let mut m = StateMachine::new(SqliteStore::open(&path).unwrap());
    assert_eq!(m.applied_index().unwrap(), 1);
    assert!(m.store().user_exists(&alice).unwrap());
    // The request id is remembered across the reopen too.
    let again = m
        .apply(
            2,
            &RequestId("a".into()),
            &WriteOp::AddUser {
                username: alice,
                password_hash: "h".into(),
            },
        )
        .unwrap();
    assert!(matches!(again, Applied::Duplicate(_)));
}

#[test]
fn ride_ids_are_never_reused_after_delete_or_clear() {
    fn ids<S: Store>(store: S) -> Vec<u64> {
        let mut m = StateMachine::new(store);
        let u = Username::parse("u").unwrap();
        let t = Timestamp::parse("01-01-2030:00-00-00").unwrap();
        let a = Area::new(1).unwrap();
        let mut out = vec![];
        let mut i = 0;
        let mut step = |m: &mut StateMachine<S>, op: WriteOp| {
            i += 1;
            m.apply(i, &RequestId(format!("{i}")), &op).unwrap()
        };
        let create = WriteOp::CreateRide {
            created_by: u.clone(),
            timestamp: t,
            source: a,
            destination: a,
        };
        step(
            &mut m,
            WriteOp::AddUser {
                username: u.clone(),
                password_hash: "h".into(),
            },
        );
        for clear in [
            WriteOp::DeleteRide { ride_id: RideId(1) },
            WriteOp::ClearRides,
            WriteOp::ClearAll,
        ] {
            if let Applied::Fresh(rideshare_core::ops::WriteOutcome::RideCreated { ride_id }) =
                step(&mut m, create.clone())
            {
                out.push(ride_id.0);
            }
            step(&mut m, clear);
            step(
                &mut m,
                WriteOp::AddUser {
                    username: u.clone(),
                    password_hash: "h".into(),
                },
            );
        }
        out
    }
    assert_eq!(ids(MemStore::new()), vec![1, 2, 3]);
    assert_eq!(ids(SqliteStore::in_memory().unwrap()), vec![1, 2, 3]);
}

/// A SQLite store on a file in a fresh directory (kept alive by the first value) and a reader
/// of it.
fn store_on_a_file_with_a_reader() -> (
    tempfile::TempDir,
    SqliteStore,
    Box<dyn rideshare_core::machine::SnapshotReader>,
) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("replica.db")).unwrap();
    let reader = store
        .reader()
        .unwrap()
        .expect("a store on a file has readers");
    (dir, store, reader)
}

#[test]
fn a_reader_answers_from_committed_state_only() {
    use rideshare_core::error::StoreError;
    use rideshare_core::ops::ReadOutcome;
    let users = |read: &rideshare_core::machine::SnapshotReads| match &read.outcomes[0] {
        Ok(ReadOutcome::Users { users }) => users
            .iter()
            .map(|u| u.as_str().to_owned())
            .collect::<Vec<_>>(),
        other => panic!("{other:?}"),
    };
    let add = |name: &str| WriteOp::AddUser {
        username: Username::parse(name).unwrap(),
        password_hash: "h".into(),
    };
    assert!(SqliteStore::in_memory()
        .unwrap()
        .reader()
        .unwrap()
        .is_none());
    assert!(MemStore::new().reader().unwrap().is_none());

    let (_dir, store, mut reader) = store_on_a_file_with_a_reader();
    let mut machine = StateMachine::new(store);
    let empty = reader.read_snapshot(&[ReadOp::ListUsers]).unwrap();
    assert_eq!((empty.applied_index, users(&empty).len()), (0, 0));

    machine
        .apply(1, &RequestId("a".into()), &add("ann"))
        .unwrap();
    let one = reader
        .read_snapshot(&[ReadOp::ListUsers, ReadOp::CountRides])
        .unwrap();
    assert_eq!(
        (one.applied_index, users(&one)),
        (1, vec!["ann".to_owned()])
    );
    assert_eq!(one.outcomes.len(), 2);

    // While a commit group is open, the reader sees the state before it, index included.
    machine
        .grouped(|m| {
            m.apply(2, &RequestId("b".into()), &add("bob"))?;
            let during = reader.read_snapshot(&[ReadOp::ListUsers]).unwrap();
            assert_eq!(
                (during.applied_index, users(&during)),
                (1, vec!["ann".to_owned()])
            );
            Ok::<_, StoreError>(())
        })
        .unwrap();
    let after = reader.read_snapshot(&[ReadOp::ListUsers]).unwrap();
    assert_eq!(after.applied_index, 2);
    assert_eq!(users(&after), ["ann", "bob"]);
    assert_eq!(
        format!("{:?}", after.outcomes[0].as_ref().unwrap()),
        format!("{:?}", machine.read(&ReadOp::ListUsers).unwrap())
    );
}

/// Each write adds one user, so a consistent read has exactly as many users as its applied
/// index. The store commits on another thread meanwhile: a read whose index and answer came
/// from different states would show it.
#[test]
fn a_reader_answers_and_its_index_come_from_one_state_while_commits_go_on() {
    let (_dir, store, mut reader) = store_on_a_file_with_a_reader();
    let writer = std::thread::spawn(move || {
        let mut machine = StateMachine::new(store);
        for index in 1..=3_000u64 {
            let op = WriteOp::AddUser {
                username: Username::parse(&format!("u{index}")).unwrap(),
                password_hash: "h".into(),
            };
            machine
                .apply(index, &RequestId(format!("r{index}")), &op)
                .unwrap();
        }
    });
    let mut reads = 0;
    let mut seen = std::collections::BTreeSet::new();
    while !writer.is_finished() {
        let read = reader.read_snapshot(&[ReadOp::ListUsers]).unwrap();
        let Ok(rideshare_core::ops::ReadOutcome::Users { users }) = &read.outcomes[0] else {
            panic!("{:?}", read.outcomes[0]);
        };
        assert_eq!(
            users.len() as u64,
            read.applied_index,
            "after {reads} reads"
        );
        seen.insert(read.applied_index);
        reads += 1;
    }
    writer.join().unwrap();
    assert!(seen.len() > 10, "the reads saw only {} states", seen.len());
}

/// Applies `writes` (request ids `r0`, `r1`, ...) at indexes 1, 2, ..., exports the store, and
/// opens the copy with `open`: the copy must hold the same data, applied index, request memory
/// and checksum, and go on from there exactly as the original does.
fn export_round_trip<S: Store>(
    store: S,
    writes: &[WriteOp],
    open: impl Fn(&std::path::Path) -> S,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snapshot");
    let mut original = StateMachine::new(store);
    let half = writes.len() / 2;
    for (i, op) in writes[..half].iter().enumerate() {
        original
            .apply(i as u64 + 1, &RequestId(format!("r{i}")), op)
            .unwrap();
    }
    original.export(&path).unwrap();
    let parts = original.checksum_parts().unwrap();
    let mut copy = StateMachine::with_checksum(open(&path), parts);
    prop_assert_eq!(copy.applied_index().unwrap(), half as u64);
    prop_assert_eq!(
        copy.full_checksum().unwrap(),
        original.full_checksum().unwrap()
    );
    prop_assert_eq!(
        copy.store().dump().unwrap(),
        original.store().dump().unwrap()
    );
    // The request memory came along: a redelivery is a duplicate in both.
    if half > 0 {
        let again = copy.apply(half as u64 + 1, &RequestId("r0".into()), &writes[0]);
        prop_assert!(matches!(again, Ok(Applied::Duplicate(_))), "{:?}", again);
        original
            .apply(half as u64 + 1, &RequestId("r0".into()), &writes[0])
            .unwrap();
    }
    for (i, op) in writes[half..].iter().enumerate() {
        let index = (half + i) as u64 + 2;
        let id = RequestId(format!("r{}", half + i));
        let a = original.apply(index, &id, op).unwrap();
        let b = copy.apply(index, &id, op).unwrap();
        prop_assert_eq!(format!("{a:?}"), format!("{b:?}"));
    }
    prop_assert_eq!(copy.checksum().unwrap(), copy.full_checksum().unwrap());
    prop_assert_eq!(copy.checksum().unwrap(), original.full_checksum().unwrap());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn an_exported_store_reopens_as_the_same_state(
        writes in prop::collection::vec(write_op(), 0..40)
    ) {
        export_round_trip(MemStore::new(), &writes, |p| MemStore::import(p).unwrap())?;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("original.db");
        export_round_trip(SqliteStore::open(&db).unwrap(), &writes, |p| SqliteStore::open(p).unwrap())?;
    }
}

/// A request id is remembered for `REQUEST_MEMORY` log entries after its own and forgotten
/// after that, by every store, whether its commits run one at a time or in groups (the SQLite
/// store prunes once per group then).
#[test]
fn request_ids_are_remembered_for_request_memory_entries_then_forgotten() {
    use rideshare_core::machine::REQUEST_MEMORY;
    fn remembered<S: Store>(store: S, grouped: bool, last: u64) -> bool {
        let mut m = StateMachine::new(store);
        let add = |name: &str| WriteOp::AddUser {
            username: Username::parse(name).unwrap(),
            password_hash: "h".into(),
        };
        let writes = |m: &mut StateMachine<S>| -> Result<(), rideshare_core::error::StoreError> {
            m.apply(1, &RequestId("first".into()), &add("first"))?;
            m.apply(last, &RequestId("last".into()), &add("last"))?;
            Ok(())
        };
        if grouped {
            m.grouped(writes).unwrap();
        } else {
            writes(&mut m).unwrap();
        }
        assert_eq!(m.applied_index().unwrap(), last);
        m.store()
            .applied_request(&RequestId("first".into()))
            .unwrap()
            .is_some()
    }
    for grouped in [false, true] {
        for (last, kept) in [(REQUEST_MEMORY, true), (REQUEST_MEMORY + 1, false)] {
            assert_eq!(
                remembered(MemStore::default(), grouped, last),
                kept,
                "memory, grouped {grouped}, last {last}"
            );
            assert_eq!(
                remembered(SqliteStore::in_memory().unwrap(), grouped, last),
                kept,
                "sqlite, grouped {grouped}, last {last}"
            );
        }
    }
}

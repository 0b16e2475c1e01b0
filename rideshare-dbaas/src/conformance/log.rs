//! The [`Log`] conformance suite: one case per "must" of the trait's contract.
//!
//! The factory must return an empty log (the real adapter: a fresh stream) for each case.
//!
//! The truncation cases accept a log that keeps more than asked (up to everything, as the
//! default `truncate_before` does), but not one that drops an entry at or above the index or
//! renumbers what it keeps.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt;

use super::{check, check_eq, ok, run_suite, within, Case, CaseResult, Report};
use crate::error::Error;
use crate::log::{Log, LogReader, Record};

/// Runs every log case, each on a fresh, empty log from `make`.
pub async fn log_suite<L, F, Fut>(make: F) -> Report
where
    L: Log,
    F: Fn() -> Fut,
    Fut: Future<Output = L>,
{
    let cases: Vec<Case<L>> = vec![
        ("read_from_one_yields_every_entry_in_order", |l| {
            read_from_one_yields_every_entry_in_order(l).boxed()
        }),
        ("read_from_k_starts_at_k", |l| {
            read_from_k_starts_at_k(l).boxed()
        }),
        ("reader_waiting_at_the_tail_gets_a_later_append", |l| {
            reader_waiting_at_the_tail_gets_a_later_append(l).boxed()
        }),
        ("end_is_the_last_index", |l| {
            end_is_the_last_index(l).boxed()
        }),
        ("concurrent_appends_each_appear_exactly_once", |l| {
            concurrent_appends_each_appear_exactly_once(l).boxed()
        }),
        ("pipelined_appends_keep_call_order", |l| {
            pipelined_appends_keep_call_order(l).boxed()
        }),
        (
            "appends_enqueued_then_confirmed_in_reverse_keep_call_order",
            |l| appends_enqueued_then_confirmed_in_reverse_keep_call_order(l).boxed(),
        ),
        (
            "readers_following_the_tail_see_one_order_without_gaps",
            |l| readers_following_the_tail_see_one_order_without_gaps(l).boxed(),
        ),
        ("a_cancelled_next_loses_no_entry", |l| {
            a_cancelled_next_loses_no_entry(l).boxed()
        }),
        ("truncation_keeps_every_entry_at_or_above_the_index", |l| {
            truncation_keeps_every_entry_at_or_above_the_index(l).boxed()
        }),
        ("truncating_up_to_the_end_keeps_the_next_index", |l| {
            truncating_up_to_the_end_keeps_the_next_index(l).boxed()
        }),
        ("a_reader_behind_the_truncation_gets_log_truncated", |l| {
            a_reader_behind_the_truncation_gets_log_truncated(l).boxed()
        }),
    ];
    run_suite("log", make, cases).await
}

fn entry(text: impl Into<String>) -> Bytes {
    Bytes::from(text.into())
}

async fn append(log: &impl Log, text: impl Into<String>) -> CaseResult {
    let text = text.into();
    ok(
        format!("append {text:?}"),
        log.append(entry(text.clone())).await,
    )
}

async fn reader(log: &impl Log, from: u64) -> Result<Box<dyn LogReader>, String> {
    ok(format!("read_from({from})"), log.read_from(from).await)
}

/// The next record, within the wait limit.
async fn next(reader: &mut Box<dyn LogReader>, what: &str) -> Result<Record, String> {
    match within(what, reader.next()).await? {
        Some(Ok(record)) => Ok(record),
        Some(Err(e)) => Err(format!("{what}: unexpected error: {e}")),
        None => Err(format!("{what}: log closed")),
    }
}

async fn read_from_one_yields_every_entry_in_order<L: Log>(log: L) -> CaseResult {
    for i in 1..=5 {
        append(&log, format!("e{i}")).await?;
    }
    let mut r = reader(&log, 1).await?;
    for i in 1..=5u64 {
        let record = next(&mut r, &format!("entry {i}")).await?;
        check_eq!(
            record,
            Record {
                index: i,
                data: entry(format!("e{i}"))
            },
            "record {i}"
        );
    }
    Ok(())
}

/// `next` is cancel-safe: futures dropped before they are ready (at the tail, and while
/// entries arrive) take nothing with them.
async fn a_cancelled_next_loses_no_entry<L: Log>(log: L) -> CaseResult {
    append(&log, "e1").await?;
    let mut r = reader(&log, 1).await?;
    next(&mut r, "entry 1").await?;
    for _ in 0..3 {
        if let Some(got) = r.next().now_or_never() {
            return Err(format!("next at the tail gave {got:?} before any append"));
        }
    }
    for i in 2..=6 {
        append(&log, format!("e{i}")).await?;
    }
    // Waits of 1 ms, most of them cut off: every entry still comes, once, in order.
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while got.len() < 5 && tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(1), r.next()).await {
            Ok(Some(Ok(record))) => got.push(record),
            Ok(Some(Err(e))) => return Err(format!("unexpected error: {e}")),
            Ok(None) => return Err("log closed".into()),
            Err(_) => {}
        }
    }
    let want: Vec<Record> = (2..=6u64)
        .map(|i| Record {
            index: i,
            data: entry(format!("e{i}")),
        })
        .collect();
    check_eq!(got, want, "entries read through cancelled waits");
    Ok(())
}

async fn read_from_k_starts_at_k<L: Log>(log: L) -> CaseResult {
    for i in 1..=5 {
        append(&log, format!("e{i}")).await?;
    }
    let mut r = reader(&log, 3).await?;
    for i in 3..=5u64 {
        let record = next(&mut r, &format!("entry {i}")).await?;
        check_eq!(record.index, i, "index read from 3");
        check_eq!(record.data, entry(format!("e{i}")), "data of entry {i}");
    }
    Ok(())
}

async fn reader_waiting_at_the_tail_gets_a_later_append<L: Log>(log: L) -> CaseResult {
    append(&log, "e1").await?;
    append(&log, "e2").await?;
    let mut r = reader(&log, 1).await?;
    next(&mut r, "entry 1").await?;
    next(&mut r, "entry 2").await?;
    let waiting = tokio::spawn(async move {
        let record = next(&mut r, "entry 3, appended while waiting").await;
        (r, record)
    });
    // Let the reader reach the tail and wait there before the append.
    tokio::time::sleep(Duration::from_millis(50)).await;
    check!(
        !waiting.is_finished(),
        "reader returned before entry 3 was appended"
    );
    append(&log, "e3").await?;
    let (mut r, record) = waiting.await.map_err(|e| format!("reader task: {e}"))?;
    let record = record?;
    check_eq!(
        record,
        Record {
            index: 3,
            data: entry("e3")
        },
        "entry appended while the reader waited"
    );
    append(&log, "e4").await?;
    let record = next(&mut r, "entry 4").await?;
    check_eq!(record.index, 4, "index after the tail moved again");
    Ok(())
}

async fn end_is_the_last_index<L: Log>(log: L) -> CaseResult {
    check_eq!(
        ok("end of an empty log", log.end().await)?,
        0,
        "end of an empty log"
    );
    for i in 1..=3u64 {
        append(&log, format!("e{i}")).await?;
        check_eq!(ok("end", log.end().await)?, i, "end after {i} appends");
    }
    Ok(())
}

async fn concurrent_appends_each_appear_exactly_once<L: Log>(log: L) -> CaseResult {
    const COUNT: u64 = 100;
    let log = Arc::new(log);
    let tasks: Vec<_> = (0..COUNT)
        .map(|i| {
            let log = Arc::clone(&log);
            tokio::spawn(async move { log.append(entry(format!("c{i}"))).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let result = within(format!("append c{i}"), task)
            .await?
            .map_err(|e| format!("append task c{i}: {e}"))?;
        ok(format!("append c{i}"), result)?;
    }
    check_eq!(
        ok("end", log.end().await)?,
        COUNT,
        "end after {COUNT} appends"
    );
    let mut r = reader(&*log, 1).await?;
    let mut seen = vec![false; COUNT as usize];
    for index in 1..=COUNT {
        let record = next(&mut r, &format!("entry {index}")).await?;
        check_eq!(record.index, index, "index");
        let text = String::from_utf8_lossy(&record.data).into_owned();
        let i: usize = text
            .strip_prefix('c')
            .and_then(|n| n.parse().ok())
            .filter(|&i: &usize| i < COUNT as usize)
            .ok_or_else(|| format!("entry {index} holds {text:?}, never appended"))?;
        check!(!seen[i], "{text:?} appears twice");
        seen[i] = true;
    }
    Ok(())
}

async fn pipelined_appends_keep_call_order<L: Log>(log: L) -> CaseResult {
    const COUNT: u64 = 50;
    // Created in order, then awaited together: the appends overlap in flight.
    let appends: Vec<_> = (1..=COUNT)
        .map(|i| log.append(entry(format!("p{i}"))))
        .collect();
    for (i, result) in within("pipelined appends", futures::future::join_all(appends))
        .await?
        .into_iter()
        .enumerate()
    {
        ok(format!("append p{}", i + 1), result)?;
    }
    let mut r = reader(&log, 1).await?;
    for i in 1..=COUNT {
        let record = next(&mut r, &format!("entry {i}")).await?;
        check_eq!(
            record.data,
            entry(format!("p{i}")),
            "entry {i} of a pipelined run"
        );
    }
    Ok(())
}

/// The order is fixed when `append` returns, not when its confirmation is polled: a run of
/// appends enqueued with no await in between, whose confirmations are then awaited one at a
/// time from the last to the first, lands in call order, each entry once, with its contents.
async fn appends_enqueued_then_confirmed_in_reverse_keep_call_order<L: Log>(log: L) -> CaseResult {
    const COUNT: u64 = 20;
    let mut confirmations: Vec<_> = (1..=COUNT)
        .map(|i| (i, log.append(entry(format!("q{i}")))))
        .collect();
    while let Some((i, confirmation)) = confirmations.pop() {
        ok(
            format!("append q{i}"),
            within(format!("confirmation of q{i}"), confirmation).await?,
        )?;
    }
    check_eq!(
        ok("end", log.end().await)?,
        COUNT,
        "end after {COUNT} confirmed appends"
    );
    let mut r = reader(&log, 1).await?;
    for i in 1..=COUNT {
        let record = next(&mut r, &format!("entry {i}")).await?;
        check_eq!(
            record,
            Record {
                index: i,
                data: entry(format!("q{i}"))
            },
            "entry {i} of appends confirmed in reverse"
        );
    }
    Ok(())
}

async fn readers_following_the_tail_see_one_order_without_gaps<L: Log>(log: L) -> CaseResult {
    const WRITERS: u64 = 3;
    const EACH: u64 = 20;
    const TOTAL: u64 = WRITERS * EACH;
    let log = Arc::new(log);
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut r = reader(&*log, 1).await?;
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for index in 1..=TOTAL {
                let record = next(&mut r, &format!("entry {index}")).await?;
                check_eq!(record.index, index, "index while following the tail");
                got.push(record.data);
            }
            Ok::<_, String>(got)
        }));
    }
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                for i in 0..EACH {
                    // Each append is awaited before the next: this writer's order must hold.
                    log.append(entry(format!("w{w}-{i:02}")))
                        .await
                        .map_err(|e| format!("append w{w}-{i:02}: {e}"))?;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for writer in writers {
        within("writer", writer)
            .await?
            .map_err(|e| format!("writer task: {e}"))??;
    }
    let mut orders = Vec::new();
    for r in readers {
        orders.push(
            within("reader", r)
                .await?
                .map_err(|e| format!("reader task: {e}"))??,
        );
    }
    check!(orders[0] == orders[1], "two readers saw different orders");
    for w in 0..WRITERS {
        let prefix = format!("w{w}-");
        let mine: Vec<&Bytes> = orders[0]
            .iter()
            .filter(|d| d.starts_with(prefix.as_bytes()))
            .collect();
        let want: Vec<Bytes> = (0..EACH).map(|i| entry(format!("w{w}-{i:02}"))).collect();
        check!(
            mine.len() == want.len() && mine.iter().zip(&want).all(|(a, b)| *a == b),
            "writer {w}'s entries out of order or missing: {mine:?}"
        );
    }
    Ok(())
}

/// `read_from(from)` below the first index held fails with `LogTruncated` naming that index.
async fn read_below_first_is_log_truncated(log: &impl Log, from: u64, first: u64) -> CaseResult {
    match log.read_from(from).await {
        Err(Error::LogTruncated { first: said }) => {
            check_eq!(said, first, "first index named by read_from({from})");
            Ok(())
        }
        Err(e) => Err(format!(
            "read_from({from}) below first {first}: expected LogTruncated, got {e}"
        )),
        Ok(_) => Err(format!(
            "read_from({from}) below first {first}: expected LogTruncated, got a reader"
        )),
    }
}

/// Truncation may keep more than asked, never less, and renumbers nothing: the kept entries,
/// and later appends, have the indexes and contents they had.
async fn truncation_keeps_every_entry_at_or_above_the_index<L: Log>(log: L) -> CaseResult {
    for i in 1..=10 {
        append(&log, format!("e{i}")).await?;
    }
    let first = ok("truncate_before(6)", log.truncate_before(6).await)?;
    check!(
        (1..=6).contains(&first),
        "truncate_before(6) says the first index kept is {first}: it may keep more, never less"
    );
    check_eq!(
        ok("first", log.first().await)?,
        first,
        "first() after truncate_before(6)"
    );
    check_eq!(ok("end", log.end().await)?, 10, "end after truncation");
    let mut r = reader(&log, first).await?;
    for i in first..=10 {
        let record = next(&mut r, &format!("entry {i}")).await?;
        check_eq!(
            record,
            Record {
                index: i,
                data: entry(format!("e{i}"))
            },
            "entry {i} after truncate_before(6)"
        );
    }
    if first > 1 {
        read_below_first_is_log_truncated(&log, first - 1, first).await?;
    }
    append(&log, "e11").await?;
    let record = next(&mut r, "entry 11, appended after truncation").await?;
    check_eq!(
        record,
        Record {
            index: 11,
            data: entry("e11")
        },
        "the append after truncation"
    );
    // First only moves forward: truncating below it again changes nothing.
    check_eq!(
        ok("truncate_before(2)", log.truncate_before(2).await)?,
        first,
        "truncate_before(2) after truncate_before(6)"
    );
    check_eq!(
        ok("first", log.first().await)?,
        first,
        "first() after truncate_before(2)"
    );
    Ok(())
}

/// Truncating everything a snapshot can cover (up to `end + 1`) leaves the next append at the
/// index it would have had.
async fn truncating_up_to_the_end_keeps_the_next_index<L: Log>(log: L) -> CaseResult {
    for i in 1..=3 {
        append(&log, format!("e{i}")).await?;
    }
    let first = ok("truncate_before(4)", log.truncate_before(4).await)?;
    check!(
        (1..=4).contains(&first),
        "truncate_before(4) says the first index kept is {first}"
    );
    check_eq!(ok("first", log.first().await)?, first, "first()");
    check_eq!(
        ok("end", log.end().await)?,
        3,
        "end after truncating everything"
    );
    let mut at_the_tail = reader(&log, 4).await?;
    append(&log, "e4").await?;
    check_eq!(
        next(&mut at_the_tail, "entry 4").await?,
        Record {
            index: 4,
            data: entry("e4")
        },
        "the append after truncating everything"
    );
    let mut r = reader(&log, first).await?;
    for i in first..=4 {
        let record = next(&mut r, &format!("entry {i}")).await?;
        check_eq!(record.index, i, "index read from the first kept");
    }
    Ok(())
}

/// A reader whose next entry was dropped says so instead of skipping ahead; one whose next
/// entry was kept reads it.
async fn a_reader_behind_the_truncation_gets_log_truncated<L: Log>(log: L) -> CaseResult {
    for i in 1..=6 {
        append(&log, format!("e{i}")).await?;
    }
    let mut behind = reader(&log, 1).await?;
    let record = next(&mut behind, "entry 1").await?;
    check_eq!(record.index, 1, "first entry read");
    let first = ok("truncate_before(5)", log.truncate_before(5).await)?;
    let got = within("next() of a reader left behind", behind.next()).await?;
    if first <= 2 {
        match got {
            Some(Ok(record)) => check_eq!(
                record,
                Record {
                    index: 2,
                    data: entry("e2")
                },
                "entry 2, which the log kept"
            ),
            other => return Err(format!("entry 2 was kept (first {first}), got {other:?}")),
        }
    } else {
        match got {
            Some(Err(Error::LogTruncated { first: said })) => {
                check_eq!(said, first, "first index named to a reader left behind")
            }
            other => {
                return Err(format!(
                    "entry 2 was dropped (first {first}): expected LogTruncated, got {other:?}"
                ))
            }
        }
    }
    Ok(())
}

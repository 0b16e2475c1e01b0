//! The [`Broker`] conformance suite: one case per "must" of the trait's contract.

use std::collections::BTreeSet;
use std::future::Future;

use bytes::Bytes;
use futures::FutureExt;
use tokio::sync::mpsc;

use super::{check, check_eq, ok, run_suite, unique, within, Case, CaseResult, Report, QUIET};
use crate::broker::{Broker, Consumer, Delivery, Message};

/// Runs every broker case, each on a fresh broker from `make`.
pub async fn broker_suite<B, F, Fut>(make: F) -> Report
where
    B: Broker,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    let cases: Vec<Case<B>> = vec![
        ("round_trip_keeps_correlation_id_and_reply_to", |b| {
            round_trip_keeps_correlation_id_and_reply_to(b).boxed()
        }),
        (
            "competing_consumers_get_distinct_messages_and_all_are_delivered",
            |b| competing_consumers_get_distinct_messages_and_all_are_delivered(b).boxed(),
        ),
        ("consumer_holds_at_most_prefetch_unacked", |b| {
            consumer_holds_at_most_prefetch_unacked(b).boxed()
        }),
        (
            "unacked_messages_are_redelivered_after_consumer_drops",
            |b| unacked_messages_are_redelivered_after_consumer_drops(b).boxed(),
        ),
        ("nack_with_requeue_redelivers", |b| {
            nack_with_requeue_redelivers(b).boxed()
        }),
        ("nack_without_requeue_discards", |b| {
            nack_without_requeue_discards(b).boxed()
        }),
        ("acked_messages_are_not_redelivered", |b| {
            acked_messages_are_not_redelivered(b).boxed()
        }),
        ("single_consumer_gets_messages_in_publish_order", |b| {
            single_consumer_gets_messages_in_publish_order(b).boxed()
        }),
        (
            "higher_priority_consumer_with_room_gets_every_message",
            |b| higher_priority_consumer_with_room_gets_every_message(b).boxed(),
        ),
    ];
    run_suite("broker", make, cases).await
}

fn body(text: impl Into<String>) -> Bytes {
    Bytes::from(text.into())
}

fn text(delivery: &Delivery) -> String {
    String::from_utf8_lossy(&delivery.message.body).into_owned()
}

async fn declared(broker: &impl Broker, prefix: &str) -> Result<String, String> {
    let queue = unique(prefix);
    ok(format!("declare {queue}"), broker.declare(&queue).await)?;
    Ok(queue)
}

async fn publish(broker: &impl Broker, queue: &str, text: impl Into<String>) -> CaseResult {
    let text = text.into();
    ok(
        format!("publish {text:?} to {queue}"),
        broker
            .publish(queue, Message::new(body(text.clone())))
            .await,
    )
}

async fn consume(
    broker: &impl Broker,
    queue: &str,
    prefetch: u16,
) -> Result<Box<dyn Consumer>, String> {
    ok(
        format!("consume {queue} with prefetch {prefetch}"),
        broker.consume(queue, prefetch).await,
    )
}

/// The next delivery, within the wait limit.
async fn recv(consumer: &mut Box<dyn Consumer>, what: &str) -> Result<Delivery, String> {
    match within(what, consumer.next()).await? {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(e)) => Err(format!("{what}: unexpected error: {e}")),
        None => Err(format!("{what}: consumer closed")),
    }
}

/// Fails if a delivery arrives within [`QUIET`].
async fn expect_quiet(consumer: &mut Box<dyn Consumer>, what: &str) -> CaseResult {
    match tokio::time::timeout(QUIET, consumer.next()).await {
        Err(_) => Ok(()),
        Ok(Some(Ok(d))) => Err(format!("{what}: unexpected delivery {:?}", text(&d))),
        Ok(Some(Err(e))) => Err(format!("{what}: unexpected error: {e}")),
        Ok(None) => Err(format!("{what}: consumer closed")),
    }
}

async fn ack(delivery: &Delivery) -> CaseResult {
    ok(format!("ack {:?}", text(delivery)), delivery.ack().await)
}

async fn round_trip_keeps_correlation_id_and_reply_to<B: Broker>(broker: B) -> CaseResult {
    let requests = declared(&broker, "requests").await?;
    let replies = unique("replies");
    ok(
        "declare_exclusive",
        broker.declare_exclusive(&replies).await,
    )?;
    let mut server = consume(&broker, &requests, 1).await?;
    let mut client = consume(&broker, &replies, 1).await?;

    let request = Message {
        body: body("ping"),
        correlation_id: Some("corr-1".into()),
        reply_to: Some(replies.clone()),
        transient: true,
    };
    ok(
        "publish request",
        broker.publish(&requests, request.clone()).await,
    )?;
    let got = recv(&mut server, "request").await?;
    check_eq!(got.message, request, "request as delivered");
    check!(!got.redelivered, "first delivery marked redelivered");

    let reply_to = got
        .message
        .reply_to
        .clone()
        .ok_or("request lost its reply_to")?;
    let reply = Message {
        body: body("pong"),
        correlation_id: got.message.correlation_id.clone(),
        reply_to: None,
        transient: false,
    };
    ok(
        "publish reply",
        broker.publish(&reply_to, reply.clone()).await,
    )?;
    ack(&got).await?;
    let answer = recv(&mut client, "reply").await?;
    check_eq!(answer.message, reply, "reply as delivered");
    ack(&answer).await?;

    // Absent properties stay absent.
    ok(
        "publish without properties",
        broker.publish(&requests, Message::new(body("bare"))).await,
    )?;
    let bare = recv(&mut server, "bare request").await?;
    check_eq!(
        bare.message,
        Message::new(body("bare")),
        "bare message as delivered"
    );
    ack(&bare).await
}

async fn competing_consumers_get_distinct_messages_and_all_are_delivered<B: Broker>(
    broker: B,
) -> CaseResult {
    const COUNT: usize = 10;
    let queue = declared(&broker, "competing").await?;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for who in 0..2 {
        let mut consumer = consume(&broker, &queue, 1).await?;
        let seen_tx = seen_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let acked = delivery.ack().await.map_err(|e| e.to_string());
                if seen_tx.send((who, text(&delivery), acked)).is_err() {
                    break;
                }
            }
        }));
    }
    for i in 0..COUNT {
        publish(&broker, &queue, format!("m{i}")).await?;
    }
    let mut bodies = BTreeSet::new();
    let mut per_consumer = [0usize; 2];
    let outcome: CaseResult = async {
        for n in 0..COUNT {
            let (who, text, acked) = within(format!("delivery {} of {COUNT}", n + 1), seen.recv())
                .await?
                .ok_or("both consumers stopped")?;
            acked.map_err(|e| format!("ack of {text:?} failed: {e}"))?;
            check!(bodies.insert(text.clone()), "{text:?} delivered twice");
            per_consumer[who] += 1;
        }
        if let Ok(Some((_, extra, _))) = tokio::time::timeout(QUIET, seen.recv()).await {
            return Err(format!("{extra:?} delivered after all {COUNT} were"));
        }
        Ok(())
    }
    .await;
    for task in &tasks {
        task.abort();
    }
    outcome?;
    let want: BTreeSet<String> = (0..COUNT).map(|i| format!("m{i}")).collect();
    check_eq!(bodies, want, "messages delivered");
    check!(
        per_consumer.iter().all(|&n| n > 0),
        "one consumer got everything: {per_consumer:?}"
    );
    Ok(())
}

async fn consumer_holds_at_most_prefetch_unacked<B: Broker>(broker: B) -> CaseResult {
    let queue = declared(&broker, "prefetch").await?;
    let mut holder = consume(&broker, &queue, 2).await?;
    for i in 0..5 {
        publish(&broker, &queue, format!("m{i}")).await?;
    }
    let first = recv(&mut holder, "first of two").await?;
    let second = recv(&mut holder, "second of two").await?;
    expect_quiet(&mut holder, "third delivery to a consumer with prefetch 2").await?;

    let mut other = consume(&broker, &queue, 10).await?;
    let mut rest = BTreeSet::new();
    for n in 0..3 {
        let d = recv(&mut other, &format!("remaining message {}", n + 1)).await?;
        rest.insert(text(&d));
        ack(&d).await?;
    }
    let held: BTreeSet<String> = [text(&first), text(&second)].into();
    check!(
        held.is_disjoint(&rest),
        "held {held:?} also delivered in {rest:?}"
    );
    check_eq!(held.len() + rest.len(), 5, "distinct messages delivered");
    drop(other);

    // Acking one makes room for exactly one more.
    publish(&broker, &queue, "m5").await?;
    publish(&broker, &queue, "m6").await?;
    expect_quiet(&mut holder, "delivery to a full consumer").await?;
    ack(&first).await?;
    let third = recv(&mut holder, "delivery after an ack made room").await?;
    check_eq!(text(&third), "m5".to_owned(), "delivery after ack");
    expect_quiet(&mut holder, "delivery beyond prefetch after one ack").await?;
    ack(&second).await?;
    ack(&third).await
}

/// What keeps a frozen old master from receiving writes: the new master consumes at a higher
/// priority, so the old one gets nothing while the new one has room; when the new one is full,
/// the lower one is served again.
async fn higher_priority_consumer_with_room_gets_every_message<B: Broker>(broker: B) -> CaseResult {
    let queue = declared(&broker, "priority").await?;
    let mut low = broker
        .consume_prioritized(&queue, 10, 1)
        .await
        .map_err(|e| format!("consume at priority 1: {e}"))?;
    let mut high = broker
        .consume_prioritized(&queue, 3, 7)
        .await
        .map_err(|e| format!("consume at priority 7: {e}"))?;
    for i in 0..3 {
        publish(&broker, &queue, format!("m{i}")).await?;
    }
    for i in 0..3 {
        let d = recv(
            &mut high,
            &format!("message {i} at the high-priority consumer"),
        )
        .await?;
        check_eq!(text(&d), format!("m{i}"), "high-priority delivery order");
    }
    expect_quiet(
        &mut low,
        "delivery to the low-priority consumer while the high one has room",
    )
    .await?;
    // The high-priority consumer is full now (prefetch 3, nothing acked): the low one is next.
    publish(&broker, &queue, "m3").await?;
    let d = recv(
        &mut low,
        "delivery to the low-priority consumer once the high one is full",
    )
    .await?;
    check_eq!(text(&d), "m3".to_owned(), "overflow delivery");
    ack(&d).await
}

async fn unacked_messages_are_redelivered_after_consumer_drops<B: Broker>(broker: B) -> CaseResult {
    let queue = declared(&broker, "redeliver").await?;
    for i in 0..3 {
        publish(&broker, &queue, format!("m{i}")).await?;
    }
    let mut first = consume(&broker, &queue, 10).await?;
    let mut held = BTreeSet::new();
    for n in 0..3 {
        let d = recv(&mut first, &format!("first delivery {}", n + 1)).await?;
        check!(
            !d.redelivered,
            "first delivery of {:?} marked redelivered",
            text(&d)
        );
        held.insert(text(&d));
        // Deliveries are dropped unsettled: the consumer going away must requeue them.
    }
    drop(first);

    let mut second = consume(&broker, &queue, 10).await?;
    let mut again = BTreeSet::new();
    for n in 0..3 {
        let d = recv(&mut second, &format!("redelivery {}", n + 1)).await?;
        check!(
            d.redelivered,
            "redelivery of {:?} not marked redelivered",
            text(&d)
        );
        again.insert(text(&d));
        ack(&d).await?;
    }
    check_eq!(again, held, "messages redelivered");
    expect_quiet(&mut second, "delivery after all were redelivered").await
}

async fn nack_with_requeue_redelivers<B: Broker>(broker: B) -> CaseResult {
    let queue = declared(&broker, "nack-requeue").await?;
    let mut consumer = consume(&broker, &queue, 1).await?;
    publish(&broker, &queue, "m").await?;
    let first = recv(&mut consumer, "first delivery").await?;
    ok("nack(requeue)", first.nack(true).await)?;
    let again = recv(&mut consumer, "delivery after nack(requeue)").await?;
    check_eq!(text(&again), "m".to_owned(), "redelivered body");
    check!(again.redelivered, "nacked message not marked redelivered");
    ack(&again).await?;
    expect_quiet(&mut consumer, "delivery after ack").await
}

async fn nack_without_requeue_discards<B: Broker>(broker: B) -> CaseResult {
    let queue = declared(&broker, "nack-discard").await?;
    let mut consumer = consume(&broker, &queue, 1).await?;
    publish(&broker, &queue, "discarded").await?;
    let first = recv(&mut consumer, "first delivery").await?;
    ok("nack(no requeue)", first.nack(false).await)?;
    publish(&broker, &queue, "next").await?;
    let next = recv(&mut consumer, "delivery after nack(no requeue)").await?;
    check_eq!(
        text(&next),
        "next".to_owned(),
        "delivery after a discarding nack"
    );
    ack(&next).await?;
    expect_quiet(&mut consumer, "delivery of the discarded message").await
}

async fn acked_messages_are_not_redelivered<B: Broker>(broker: B) -> CaseResult {
    let queue = declared(&broker, "acked").await?;
    let mut first = consume(&broker, &queue, 1).await?;
    publish(&broker, &queue, "acked").await?;
    let d = recv(&mut first, "first delivery").await?;
    ack(&d).await?;
    drop(d);
    first.close().await;

    publish(&broker, &queue, "fresh").await?;
    let mut second = consume(&broker, &queue, 1).await?;
    let next = recv(&mut second, "delivery to the second consumer").await?;
    check_eq!(
        text(&next),
        "fresh".to_owned(),
        "first delivery to the second consumer"
    );
    check!(!next.redelivered, "fresh message marked redelivered");
    ack(&next).await?;
    expect_quiet(&mut second, "redelivery of an acked message").await
}

async fn single_consumer_gets_messages_in_publish_order<B: Broker>(broker: B) -> CaseResult {
    const COUNT: usize = 20;
    let queue = declared(&broker, "fifo").await?;
    for i in 0..COUNT {
        publish(&broker, &queue, format!("m{i:02}")).await?;
    }
    let mut consumer = consume(&broker, &queue, 5).await?;
    let mut got = Vec::new();
    for n in 0..COUNT {
        let d = recv(&mut consumer, &format!("delivery {}", n + 1)).await?;
        got.push(text(&d));
        ack(&d).await?;
    }
    let want: Vec<String> = (0..COUNT).map(|i| format!("m{i:02}")).collect();
    check_eq!(got, want, "delivery order");
    Ok(())
}

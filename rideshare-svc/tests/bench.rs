//! `rideshare bench` against an embedded system in this process (loopback, port 0): every
//! operation of the mix gets answers, the figures hold together, and the users it created are
//! all listed afterwards.

mod common;

use std::time::Duration;

use clap::Parser;
use common::embedded_args;
use rideshare_svc::bench::mix::Op;
use rideshare_svc::bench::run_bench;
use rideshare_svc::cli::{Cli, Command};
use rideshare_svc::up::start;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_mixed_run_reports_every_operation_and_finds_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let up = start(embedded_args(dir.path(), Duration::from_secs(120)))
        .await
        .unwrap();

    let gateway = format!("http://{}", up.gateway);
    let pid = std::process::id().to_string();
    let cli = Cli::try_parse_from([
        "rideshare",
        "bench",
        "--gateway",
        &gateway,
        "--concurrency",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "100ms",
        "--mix",
        "list=1,create-ride=1,add-user=1,details=1,join=1,health=1",
        "--list-size",
        "5",
        "--join-users",
        "4",
        "--verify-users",
        "--watch-pid",
        &pid,
    ])
    .unwrap();
    let Command::Bench(args) = cli.command else {
        panic!("not the bench command");
    };
    let report = run_bench(&args).await.unwrap();
    println!("{}", report.table());

    assert_eq!(report.levels.len(), 1);
    let level = &report.levels[0];
    assert_eq!(level.concurrency, 2);
    assert!(level.elapsed_s >= 1.0, "{}", level.elapsed_s);
    assert_eq!(level.ops.len(), 6);
    for op in Op::ALL {
        let r = level
            .op(op)
            .unwrap_or_else(|| panic!("{op} is not reported"));
        assert!(r.requests > 0, "{op}: no request in {r:?}");
        assert!(r.req_per_s > 0.0, "{op}: {r:?}");
        assert_eq!(r.timeouts + r.transport_errors, 0, "{op}: {r:?}");
        assert!(r.latency_ms.p50 > 0.0, "{op}: {r:?}");
        assert!(r.latency_ms.p50 <= r.latency_ms.p99, "{op}: {r:?}");
        assert!(r.latency_ms.p99 <= r.latency_ms.max, "{op}: {r:?}");
        if op == Op::Join {
            assert!(r.ok > 0, "no join succeeded: {r:?}");
        } else {
            assert_eq!(r.non_2xx, 0, "{op}: {r:?}");
        }
    }
    let total = &level.total;
    assert_eq!(
        total.requests,
        level.ops.iter().map(|r| r.requests).sum::<u64>()
    );

    assert_eq!(report.seeded.list_rides, 5);
    assert!(report.seeded.run_id.len() == 8);

    let process = level.process.as_ref().expect("--watch-pid figures");
    assert!(
        process.samples >= 5 && process.peak_rss_mb > 0.0,
        "{process:?}"
    );
    assert!(process.final_threads >= 2, "{process:?}");

    let verify = report
        .verify_users
        .as_ref()
        .expect("--verify-users figures");
    assert!(verify.created > 0, "{verify:?}");
    assert_eq!(verify.listed, verify.created, "{verify:?}");
    assert_eq!(verify.missing, 0, "{verify:?}");

    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["levels"][0]["ops"][0]["op"], "list");
    assert!(json["levels"][0]["ops"][0]["latency_ms"]["p99"].is_number());
    assert!(json["verify_users"]["missing"] == 0);

    up.stop().await.unwrap();
}

#[tokio::test]
async fn a_bad_mix_or_gateway_is_refused_with_a_clear_error() {
    let err = Cli::try_parse_from(["rideshare", "bench", "--mix", "list=8,bogus=2"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown operation \"bogus\""), "{err}");
    let err = Cli::try_parse_from(["rideshare", "bench", "--mix", "list=0"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("weight \"0\" of list"), "{err}");

    let cli =
        Cli::try_parse_from(["rideshare", "bench", "--gateway", "https://127.0.0.1:1"]).unwrap();
    let Command::Bench(args) = cli.command else {
        panic!("not the bench command");
    };
    let err = run_bench(&args).await.unwrap_err().to_string();
    assert!(err.contains("only http://"), "{err}");
}

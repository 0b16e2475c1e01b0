//! What `rideshare bench` measured: per-client counters and latency histograms (merged once a
//! level ends), and the report built from them, printed as a table or written as JSON.
//!
//! Latency is recorded in microseconds for every request that got an HTTP answer, whatever its
//! status; requests that timed out or failed in transport are counted apart and have no latency.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::client::Failure;
use super::mix::Op;
use super::seed::Seeded;
use super::watch::ProcessReport;

/// Significant figures the histograms keep.
const SIGFIGS: u8 = 3;

/// What one client saw of one operation; merged into the level's figures at the end.
#[derive(Debug, Clone)]
pub struct OpStats {
    pub requests: u64,
    pub ok: u64,
    /// Answers outside 2xx, by status.
    pub statuses: BTreeMap<u16, u64>,
    pub transport_errors: u64,
    pub timeouts: u64,
    /// Latency of answered requests, in microseconds.
    pub latency_us: Histogram<u64>,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            requests: 0,
            ok: 0,
            statuses: BTreeMap::new(),
            transport_errors: 0,
            timeouts: 0,
            // An auto-resizing histogram starts small and grows to the values it sees.
            latency_us: Histogram::new(SIGFIGS).unwrap_or_else(|_| {
                unreachable!("{SIGFIGS} significant figures are within hdrhistogram's 0..=5")
            }),
        }
    }
}

impl OpStats {
    /// An HTTP answer with `status` after `latency`.
    pub fn answered(&mut self, status: u16, latency: Duration) {
        self.requests += 1;
        if (200..300).contains(&status) {
            self.ok += 1;
        } else {
            *self.statuses.entry(status).or_default() += 1;
        }
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        // `record` grows the histogram; `saturating_record` would clamp to its current range.
        if self.latency_us.record(micros).is_err() {
            self.latency_us.saturating_record(micros);
        }
    }

    /// A request that got no answer.
    pub fn failed(&mut self, failure: &Failure) {
        self.requests += 1;
        match failure {
            Failure::Timeout => self.timeouts += 1,
            Failure::Transport(_) => self.transport_errors += 1,
        }
    }

    pub fn non_2xx(&self) -> u64 {
        self.statuses.values().sum()
    }

    pub fn merge(&mut self, other: &OpStats) {
        self.requests += other.requests;
        self.ok += other.ok;
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        self.transport_errors += other.transport_errors;
        self.timeouts += other.timeouts;
        // Both histograms auto-resize, so adding cannot run out of range.
        let _ = self.latency_us.add(&other.latency_us);
    }

    /// The figures of this operation over `elapsed`.
    pub fn report(&self, op: &str, elapsed: Duration) -> OpReport {
        let h = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        let answered = !h.is_empty();
        let at = |q: f64| {
            if answered {
                ms(h.value_at_quantile(q))
            } else {
                0.0
            }
        };
        let seconds = elapsed.as_secs_f64();
        OpReport {
            op: op.to_owned(),
            requests: self.requests,
            req_per_s: if seconds > 0.0 {
                self.requests as f64 / seconds
            } else {
                0.0
            },
            ok: self.ok,
            non_2xx: self.non_2xx(),
            statuses: self
                .statuses
                .iter()
                .map(|(s, n)| (s.to_string(), *n))
                .collect(),
            transport_errors: self.transport_errors,
            timeouts: self.timeouts,
            latency_ms: Latency {
                p50: at(0.5),
                p99: at(0.99),
                p999: at(0.999),
                max: if answered { ms(h.max()) } else { 0.0 },
                mean: if answered { h.mean() / 1000.0 } else { 0.0 },
            },
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// One operation's figures at one concurrency level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpReport {
    /// The operation's name, or `all` for the level's total.
    pub op: String,
    /// Requests sent and finished in the measured window (answered, timed out or failed).
    pub requests: u64,
    pub req_per_s: f64,
    /// 2xx answers.
    pub ok: u64,
    pub non_2xx: u64,
    /// Non-2xx answers by status.
    pub statuses: BTreeMap<String, u64>,
    pub transport_errors: u64,
    pub timeouts: u64,
    pub latency_ms: Latency,
}

/// One concurrency level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelReport {
    pub concurrency: u32,
    /// The measured window: from the end of the warm-up to the last client's last answer.
    pub elapsed_s: f64,
    /// The operations of the mix, in report order.
    pub ops: Vec<OpReport>,
    /// Every operation together.
    pub total: OpReport,
    /// `--watch-pid` figures over this level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessReport>,
}

impl LevelReport {
    pub fn op(&self, op: Op) -> Option<&OpReport> {
        self.ops.iter().find(|r| r.op == op.name())
    }
}

/// `--verify-users`: did every user the bench created (201) make it into the user list?
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    /// Usernames that got 201 (warm-up included).
    pub created: u64,
    /// Of those, how many `GET /api/v1/users` lists.
    pub listed: u64,
    pub missing: u64,
    /// Up to ten of the missing names.
    pub missing_examples: Vec<String>,
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub gateway: String,
    pub mix: String,
    pub list_size: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub timeout_s: f64,
    pub seeded: SeedSummary,
    pub levels: Vec<LevelReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify_users: Option<VerifyReport>,
}

/// What was seeded, without the ids.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeedSummary {
    pub run_id: String,
    pub owner: String,
    pub list_pair: (u16, u16),
    pub list_rides: usize,
    pub create_pair: (u16, u16),
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_pair: Option<(u16, u16)>,
    pub join_users: usize,
    pub join_rides: usize,
    /// Joins that can succeed (users × rides); joins past them get 400.
    pub join_pairs: usize,
    /// How long seeding took.
    pub seconds: f64,
}

impl SeedSummary {
    /// What `s` holds, seeded in `seconds`.
    pub fn new(s: &Seeded, seconds: f64) -> Self {
        SeedSummary {
            run_id: s.run_id.clone(),
            owner: s.owner.clone(),
            list_pair: s.list_pair,
            list_rides: s.list_rides.len(),
            create_pair: s.create_pair,
            join_pair: s.join_pair,
            join_users: s.join_users.len(),
            join_rides: s.join_rides.len(),
            join_pairs: s.join_pairs(),
            seconds,
        }
    }
}

impl Report {
    /// The human-readable tables: one per concurrency level, one row per operation.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let s = &self.seeded;
        let _ = writeln!(
            out,
            "rideshare bench: {} mix {} run {} ({} rides listed on {}->{}), {} s per level{}",
            self.gateway,
            self.mix,
            s.run_id,
            s.list_rides,
            s.list_pair.0,
            s.list_pair.1,
            self.duration_s,
            if self.warmup_s > 0.0 {
                format!(" after {} s warm-up", self.warmup_s)
            } else {
                String::new()
            }
        );
        for level in &self.levels {
            let _ = writeln!(
                out,
                "\nconcurrency {} ({:.1} s measured)",
                level.concurrency, level.elapsed_s
            );
            let _ = writeln!(
                out,
                "{:<12} {:>9} {:>10} {:>8} {:>7} {:>8} {:>8} {:>8} {:>9} {:>8}",
                "op",
                "requests",
                "req/s",
                "non-2xx",
                "errors",
                "timeouts",
                "p50 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms"
            );
            let rows = level.ops.iter().chain(if level.ops.len() > 1 {
                Some(&level.total)
            } else {
                None
            });
            for r in rows {
                let l = &r.latency_ms;
                let _ = writeln!(
                    out,
                    "{:<12} {:>9} {:>10.1} {:>8} {:>7} {:>8} {:>8.2} {:>8.2} {:>9.2} {:>8.2}",
                    r.op,
                    r.requests,
                    r.req_per_s,
                    r.non_2xx,
                    r.transport_errors,
                    r.timeouts,
                    l.p50,
                    l.p99,
                    l.p999,
                    l.max
                );
            }
            for r in &level.ops {
                if !r.statuses.is_empty() {
                    let by: Vec<String> = r
                        .statuses
                        .iter()
                        .map(|(s, n)| format!("{s}: {n}"))
                        .collect();
                    let _ = writeln!(out, "  {} non-2xx by status: {}", r.op, by.join(", "));
                }
            }
            if let Some(p) = &level.process {
                let _ = writeln!(
                    out,
                    "  pid {}: peak VmRSS {:.1} MB, VmHWM {:.1} MB, threads {} (peak {}){}",
                    p.pid,
                    p.peak_rss_mb,
                    p.final_hwm_mb,
                    p.final_threads,
                    p.peak_threads,
                    if p.exited { ", exited" } else { "" }
                );
            }
        }
        if let Some(v) = &self.verify_users {
            let _ = writeln!(
                out,
                "\nverify users: {} of {} created users listed, {} missing{}",
                v.listed,
                v.created,
                v.missing,
                if v.missing_examples.is_empty() {
                    String::new()
                } else {
                    format!(" (e.g. {})", v.missing_examples.join(", "))
                }
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_failures_are_counted_apart() {
        let mut a = OpStats::default();
        a.answered(200, Duration::from_micros(1_000));
        a.answered(201, Duration::from_micros(3_000));
        a.answered(400, Duration::from_micros(2_000));
        let mut b = OpStats::default();
        b.answered(400, Duration::from_micros(9_000));
        b.answered(503, Duration::from_micros(5_000));
        b.failed(&Failure::Timeout);
        b.failed(&Failure::Transport("reset".into()));
        a.merge(&b);
        let r = a.report("list", Duration::from_secs(2));
        assert_eq!((r.requests, r.ok, r.non_2xx), (7, 2, 3));
        assert_eq!((r.timeouts, r.transport_errors), (1, 1));
        assert_eq!(r.statuses.get("400"), Some(&2));
        assert_eq!(r.statuses.get("503"), Some(&1));
        assert!((r.req_per_s - 3.5).abs() < 1e-9);
        assert!((r.latency_ms.p50 - 3.0).abs() < 0.01, "{:?}", r.latency_ms);
        assert!((r.latency_ms.max - 9.0).abs() < 0.01, "{:?}", r.latency_ms);
        assert!(r.latency_ms.p50 <= r.latency_ms.p99 && r.latency_ms.p99 <= r.latency_ms.max);
    }

    #[test]
    fn nothing_answered_reports_zero_latency() {
        let r = OpStats::default().report("join", Duration::ZERO);
        assert_eq!((r.requests, r.req_per_s, r.latency_ms.max), (0, 0.0, 0.0));
    }
}

//! `rideshare status`, `rideshare crash master|slave` and `rideshare switchover`: the cluster in
//! the terminal, and the operator's hands on it, through the orchestrator's HTTP API.
//!
//! This module only talks to the orchestrator (`GET /api/v1/status`, `POST /api/v1/crash/*`,
//! `POST /api/v1/switchover`); it holds no state and touches no engine.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::{Args, ValueEnum};
use rideshare_dbaas::orchestrator::api::{
    ClusterStatus, ScalingStatus, ShownRole, SwitchoverReport, WorkerState, WorkerStatus,
};

/// Bound on one call to the orchestrator (a switchover waits for the hand-over).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Which orchestrator to ask, and with what token.
#[derive(Debug, Clone, Args)]
pub struct OrchestratorTarget {
    /// Base URL of the DBaaS orchestrator.
    #[arg(
        long = "orchestrator",
        env = "RIDESHARE_ORCHESTRATOR_URL",
        default_value = "http://127.0.0.1:8083"
    )]
    pub orchestrator_url: String,
    /// Admin token, sent as `Authorization: Bearer <token>`.
    #[arg(long, env = "RIDESHARE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: OrchestratorTarget,
    /// Refresh every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
}

/// What `rideshare crash` kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CrashWhat {
    /// The master's worker (a slave takes over).
    Master,
    /// The slave with the highest pid (a new slave replaces it).
    Slave,
}

#[derive(Debug, Clone, Args)]
pub struct CrashArgs {
    /// `master` or `slave`.
    #[arg(value_enum)]
    pub what: CrashWhat,
    #[command(flatten)]
    pub target: OrchestratorTarget,
}

#[derive(Debug, Clone, Args)]
pub struct SwitchoverArgs {
    #[command(flatten)]
    pub target: OrchestratorTarget,
}

impl OrchestratorTarget {
    fn client(&self) -> anyhow::Result<reqwest::Client> {
        reqwest::Client::builder()
            .timeout(CALL_TIMEOUT)
            .build()
            .context("cannot build an HTTP client")
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{path}", self.orchestrator_url.trim_end_matches('/'));
        let request = client.request(method, url);
        match &self.admin_token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn fetch_status(&self, client: &reqwest::Client) -> anyhow::Result<ClusterStatus> {
        let response = self
            .request(client, reqwest::Method::GET, "/api/v1/status")
            .send()
            .await
            .with_context(|| {
                format!("cannot reach the orchestrator at {}", self.orchestrator_url)
            })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("the orchestrator answered {status}: {body}");
        }
        response
            .json()
            .await
            .context("the orchestrator's status is not what this build expects")
    }

    async fn post(&self, path: &str) -> anyhow::Result<String> {
        let client = self.client()?;
        let response = self
            .request(&client, reqwest::Method::POST, path)
            .send()
            .await
            .with_context(|| {
                format!("cannot reach the orchestrator at {}", self.orchestrator_url)
            })?;
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        if status.is_success() {
            Ok(body)
        } else {
            anyhow::bail!("the orchestrator answered {status}: {body}")
        }
    }
}

/// `rideshare status [--watch]`.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = args.target.client()?;
    if !args.watch {
        let status = args.target.fetch_status(&client).await?;
        print!("{}", render(&args.target.orchestrator_url, &status));
        return Ok(());
    }
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        // Clear the screen and go home, like `watch`.
        let screen = match args.target.fetch_status(&client).await {
            Ok(status) => render(&args.target.orchestrator_url, &status),
            Err(e) => format!("{e:#}\n"),
        };
        print!("\x1b[2J\x1b[H{screen}");
    }
}

/// `rideshare crash master|slave`.
pub async fn crash(args: CrashArgs) -> anyhow::Result<()> {
    let path = match args.what {
        CrashWhat::Master => "/api/v1/crash/master",
        CrashWhat::Slave => "/api/v1/crash/slave",
    };
    let body = args.target.post(path).await?;
    let pids: Vec<u32> = serde_json::from_str(&body).unwrap_or_default();
    match pids.first() {
        Some(pid) => println!("killed worker pid {pid}"),
        None => println!("{body}"),
    }
    Ok(())
}

/// `rideshare switchover`.
pub async fn switchover(args: SwitchoverArgs) -> anyhow::Result<()> {
    let body = args.target.post("/api/v1/switchover").await?;
    match serde_json::from_str::<SwitchoverReport>(&body) {
        Ok(report) => println!(
            "switched over from pid {} to pid {} in {} ms",
            report.old_pid, report.new_pid, report.duration_ms
        ),
        Err(_) => println!("{body}"),
    }
    Ok(())
}

fn duration_text(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn clock_text(unix_ms: u64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let ago = SystemTime::now()
        .duration_since(at)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default();
    format!("{} ago", duration_text(ago))
}

fn or_dash(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

/// The status as a table, like `patronictl list`.
pub fn render(url: &str, status: &ClusterStatus) -> String {
    let mut out = String::new();
    let master = match &status.master {
        Some(m) if m.ready => format!("master pid {} (epoch {})", m.pid, m.epoch),
        Some(m) => format!("master pid {} taking over", m.pid),
        None => "NO MASTER (election in progress)".to_owned(),
    };
    let _ = writeln!(
        out,
        "Orchestrator {url} ({}, up {}) | {master} | acked index {}",
        status.orchestrator,
        duration_text(status.uptime_s),
        status.acked_index
    );
    out += &workers_table(&status.workers);
    scaling_lines(&mut out, &status.scaling);
    history_lines(&mut out, status);
    out
}

/// The workers as a text table.
fn workers_table(workers: &[WorkerStatus]) -> String {
    let mut out = String::new();
    let header = ["pid", "role", "epoch", "applied", "lag", "state", "uptime"];
    let rows: Vec<[String; 7]> = workers
        .iter()
        .map(|w| {
            [
                w.pid.to_string(),
                match w.role {
                    ShownRole::Master => "master",
                    ShownRole::Slave => "slave",
                    ShownRole::None => "-",
                }
                .to_owned(),
                or_dash(w.epoch),
                or_dash(w.applied_index),
                or_dash(w.lag),
                match w.state {
                    WorkerState::Starting => "starting",
                    WorkerState::CatchingUp => "catching_up",
                    WorkerState::Serving => "serving",
                }
                .to_owned(),
                duration_text(w.uptime_s),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or_default()
        })
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+\n";
    let line = |cells: &[String]| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("| {c:<w$} "))
            .collect::<String>()
            + "|\n"
    };
    out += &rule;
    out += &line(&header.map(str::to_owned));
    out += &rule;
    for row in &rows {
        out += &line(row);
    }
    out += &rule;
    out
}

/// The scaler's window, target and last decision.
fn scaling_lines(out: &mut String, s: &ScalingStatus) {
    let next = s
        .next_decision_s
        .map_or("the first read starts the window".to_owned(), |n| {
            format!("next decision in {}", duration_text(n))
        });
    let _ = writeln!(
        out,
        "Scaling: {} reads so far in this {} window, target {} slave(s) ({} reads per slave, at most {}), {next}",
        s.reads,
        duration_text(s.window_s),
        s.target_slaves,
        s.reads_per_slave,
        s.max_slaves
    );
    if let Some(d) = s.decisions.last() {
        let _ = writeln!(
            out,
            "Last decision: {} reads -> {} -> {} slave(s), {}",
            d.reads,
            d.from_slaves,
            d.to_slaves,
            clock_text(d.at_unix_ms)
        );
    }
}

/// Totals since start and the last failovers.
fn history_lines(out: &mut String, status: &ClusterStatus) {
    let t = &status.totals;
    let _ = writeln!(
        out,
        "Since start: {} writes acknowledged, {} failed; {} reads answered, {} failed",
        t.writes_acked, t.writes_failed, t.reads_answered, t.reads_failed
    );
    if status.failovers.is_empty() {
        out.push_str("Failovers: none seen by this orchestrator\n");
    } else {
        out.push_str("Last failovers:\n");
        for f in status.failovers.iter().rev() {
            let _ = writeln!(
                out,
                "  {}: pid {} -> pid {} (epoch {}), took {}",
                clock_text(f.at_unix_ms),
                f.old_pid,
                f.new_pid,
                f.epoch,
                f.duration_ms
                    .map_or("an unseen time".to_owned(), |ms| format!("{ms} ms"))
            );
        }
    }
}

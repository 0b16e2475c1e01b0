//! `--watch-pid`: samples `/proc/PID/status` every 100 ms while a concurrency level runs, for the
//! memory and thread figures of the process under load (e.g. the `rideshare up` being measured).

use std::time::Duration;

use serde::Serialize;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::BenchError;

const PERIOD: Duration = Duration::from_millis(100);

/// One reading of `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sample {
    /// Resident set size now (`VmRSS`), in kB.
    pub rss_kb: u64,
    /// Peak resident set size since the process started (`VmHWM`), in kB.
    pub hwm_kb: u64,
    /// Threads now (`Threads`).
    pub threads: u64,
}

/// Reads the fields of a `/proc/PID/status` text that [`Sample`] holds.
pub fn parse_status(text: &str) -> Sample {
    let mut sample = Sample::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let number = || {
            value
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match key {
            "VmRSS" => sample.rss_kb = number(),
            "VmHWM" => sample.hwm_kb = number(),
            "Threads" => sample.threads = number(),
            _ => {}
        }
    }
    sample
}

fn read(pid: u32) -> std::io::Result<Sample> {
    std::fs::read_to_string(format!("/proc/{pid}/status")).map(|text| parse_status(&text))
}

/// What the watched process did during one concurrency level.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProcessReport {
    pub pid: u32,
    /// Samples taken.
    pub samples: u64,
    /// Highest `VmRSS` seen, in MB.
    pub peak_rss_mb: f64,
    /// `VmHWM` at the last sample, in MB.
    pub final_hwm_mb: f64,
    /// Threads at the last sample.
    pub final_threads: u64,
    /// Most threads seen.
    pub peak_threads: u64,
    /// The process was gone before the level ended.
    pub exited: bool,
}

impl ProcessReport {
    fn take(&mut self, sample: Sample) {
        self.samples += 1;
        self.peak_rss_mb = self.peak_rss_mb.max(mb(sample.rss_kb));
        self.final_hwm_mb = mb(sample.hwm_kb);
        self.final_threads = sample.threads;
        self.peak_threads = self.peak_threads.max(sample.threads);
    }
}

/// A running sampler.
pub struct Watch {
    stop: oneshot::Sender<()>,
    task: JoinHandle<ProcessReport>,
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

impl Watch {
    /// Starts sampling `pid`; fails when its status cannot be read now.
    pub fn start(pid: u32) -> Result<Self, BenchError> {
        let first = read(pid)
            .map_err(|e| BenchError::Watch(format!("cannot read /proc/{pid}/status: {e}")))?;
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut report = ProcessReport {
                pid,
                samples: 0,
                peak_rss_mb: 0.0,
                final_hwm_mb: 0.0,
                final_threads: 0,
                peak_threads: 0,
                exited: false,
            };
            report.take(first);
            let mut ticks = tokio::time::interval(PERIOD);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                let last = tokio::select! {
                    _ = ticks.tick() => false,
                    _ = &mut stopped => true,
                };
                match read(pid) {
                    Ok(sample) => report.take(sample),
                    Err(_) => {
                        report.exited = true;
                        break;
                    }
                }
                if last {
                    break;
                }
            }
            report
        });
        Ok(Watch { stop, task })
    }

    /// Takes a last sample and returns the figures.
    pub async fn finish(self) -> Result<ProcessReport, BenchError> {
        let _ = self.stop.send(());
        self.task
            .await
            .map_err(|e| BenchError::Watch(format!("the sampler failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_are_read_in_kb() {
        let text = "Name:\trideshare\nVmPeak:\t  999 kB\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t7\n";
        assert_eq!(
            parse_status(text),
            Sample {
                rss_kb: 10240,
                hwm_kb: 20480,
                threads: 7
            }
        );
    }

    #[tokio::test]
    async fn this_process_can_be_watched() {
        let watch = Watch::start(std::process::id()).unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let report = watch.finish().await.unwrap();
        assert!(report.samples >= 3, "{report:?}");
        assert!(report.peak_rss_mb > 0.0 && report.final_hwm_mb >= report.peak_rss_mb * 0.5);
        assert!(report.final_threads >= 1 && !report.exited);
    }
}

//! Commands the run starts that have no client library (the engine restarts).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A command run without a shell (`--restart-rabbitmq-cmd`), split like a POSIX shell would
/// split it, so quoting works but nothing else of a shell does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine(Vec<String>);

impl std::str::FromStr for CommandLine {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match shlex::split(text) {
            Some(words) if !words.is_empty() => Ok(CommandLine(words)),
            Some(_) => Err("the command is empty".into()),
            None => Err(format!("unbalanced quotes in {text:?}")),
        }
    }
}

impl CommandLine {
    /// Runs it to its end (off the async threads: an engine restart takes seconds) and returns
    /// how long it took.
    pub async fn run(&self) -> anyhow::Result<Duration> {
        let words = self.0.clone();
        let started = Instant::now();
        let status = tokio::task::spawn_blocking(move || {
            Command::new(&words[0])
                .args(&words[1..])
                .stdout(Stdio::null())
                .status()
        })
        .await?
        .with_context(|| format!("cannot run {:?}", self.0))?;
        anyhow::ensure!(status.success(), "{:?} failed: {status}", self.0);
        Ok(started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_split_like_a_shell_without_one() {
        let parsed: CommandLine = "scripts/engines.sh restart-zk 'a b'"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            parsed,
            CommandLine(vec![
                "scripts/engines.sh".into(),
                "restart-zk".into(),
                "a b".into()
            ])
        );
        assert!("echo 'unbalanced".parse::<CommandLine>().is_err());
        assert!("   ".parse::<CommandLine>().is_err());
    }

    #[tokio::test]
    async fn a_failing_command_is_an_error() {
        let ok: CommandLine = "true".parse().unwrap_or_else(|e| panic!("{e}"));
        let failing: CommandLine = "false".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(ok.run().await.is_ok());
        assert!(failing.run().await.is_err());
    }
}

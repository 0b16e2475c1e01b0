//! Commands the run starts that have no client library (the engine restarts and kills).

use std::fmt;
use std::os::unix::process::CommandExt;
use std::path::Path;
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

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            shlex::try_join(self.0.iter().map(String::as_str)).unwrap_or_default()
        )
    }
}

impl CommandLine {
    /// Runs it to its end (off the async threads: an engine restart takes seconds) and returns
    /// how long it took.
    pub async fn run(&self) -> anyhow::Result<Duration> {
        let words = self.0.clone();
        let started = Instant::now();
        let status = tokio::task::spawn_blocking(move || command(&words).status())
            .await?
            .with_context(|| format!("cannot run `{self}`"))?;
        anyhow::ensure!(status.success(), "`{self}` failed: {status}");
        Ok(started.elapsed())
    }

    /// The same, for a `Drop` (blocking, no runtime needed).
    pub fn run_blocking(&self) -> anyhow::Result<()> {
        let status = command(&self.0)
            .status()
            .with_context(|| format!("cannot run `{self}`"))?;
        anyhow::ensure!(status.success(), "`{self}` failed: {status}");
        Ok(())
    }

    /// Whether the command can be run at all, before the run needs it: its program exists,
    /// and `scripts/engines.sh` (which knows which engines it started) says it can do this
    /// (`engines.sh can <action>`). The error says why not.
    pub fn preflight(&self) -> anyhow::Result<()> {
        let program = Path::new(&self.0[0]);
        let found = if program.components().count() > 1 {
            program.is_file()
        } else {
            std::env::var_os("PATH")
                .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
        };
        anyhow::ensure!(found, "`{self}`: {} not found", program.display());
        if program.file_name().is_some_and(|name| name == "engines.sh") {
            let output = Command::new(program)
                .arg("can")
                .args(&self.0[1..])
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("cannot run `{self}`"))?;
            anyhow::ensure!(
                output.status.success(),
                "`{self}` cannot: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }
}

/// A command of its own process group: a Ctrl-C at the terminal reaches the run, which undoes
/// what it did, and not an engine restart half way through (nor the engine it starts).
fn command(words: &[String]) -> Command {
    let mut command = Command::new(&words[0]);
    command
        .args(&words[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .process_group(0);
    command
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
        assert!(ok.preflight().is_ok());
        let absent: CommandLine = "/nonexistent/kill-engine now"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(absent
            .preflight()
            .is_err_and(|e| e.to_string().contains("not found")));
        assert_eq!(absent.to_string(), "/nonexistent/kill-engine now");
    }
}

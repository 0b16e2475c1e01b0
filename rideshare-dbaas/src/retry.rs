//! The one retry policy: how many tries, how long to pause between them, how fast the pause
//! grows. Every retry loop of the DBaaS (the orchestrator's writes and reads, the HTTP client,
//! the reply queue's resubscription) is this policy with its own parameters, carried out by
//! `backon` on tokio's clock (so paused-time tests and simulations see the same pauses).

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

/// Tries and pauses. The pause starts at `pause`, is multiplied by `growth` after each failed
/// try, and never exceeds `max_pause`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Tries in all (the first included); `None`: until it succeeds.
    pub tries: Option<u32>,
    pub pause: Duration,
    pub growth: f32,
    pub max_pause: Duration,
}

impl RetryPolicy {
    /// `tries` tries with the same pause between them: for a failover in progress, whose end
    /// the caller cannot hasten.
    pub const fn fixed(tries: u32, pause: Duration) -> Self {
        RetryPolicy {
            tries: Some(tries),
            pause,
            growth: 1.0,
            max_pause: pause,
        }
    }

    /// Tries until one succeeds, the pause doubling from `first` up to `max`: for an engine
    /// that is away for an unknown time, so as not to hammer it.
    pub const fn doubling(first: Duration, max: Duration) -> Self {
        RetryPolicy {
            tries: None,
            pause: first,
            growth: 2.0,
            max_pause: max,
        }
    }

    /// The policy as `backon` backoff (no jitter: pauses are part of what tests expect).
    pub fn backoff(self) -> ExponentialBuilder {
        let builder = ExponentialBuilder::new()
            .with_min_delay(self.pause)
            .with_max_delay(self.max_pause)
            .with_factor(self.growth);
        match self.tries {
            // backon counts retries, not tries.
            Some(tries) => builder.with_max_times(tries.saturating_sub(1) as usize),
            None => builder.without_max_times(),
        }
    }

    /// Runs `attempt` until it succeeds, `retryable` refuses its error, or the tries run out
    /// (then the last error is returned).
    pub async fn run<T, E, Fut>(
        self,
        attempt: impl FnMut() -> Fut,
        retryable: impl FnMut(&E) -> bool,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        attempt
            .retry(self.backoff())
            .sleep(tokio::time::sleep)
            .when(retryable)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use backon::BackoffBuilder;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn fixed_pauses_the_same_between_its_tries() {
        let pauses: Vec<Duration> = RetryPolicy::fixed(4, Duration::from_millis(100))
            .backoff()
            .build()
            .collect();
        assert_eq!(pauses, vec![Duration::from_millis(100); 3]);
    }

    #[test]
    fn doubling_grows_to_its_bound_and_goes_on() {
        let pauses: Vec<Duration> =
            RetryPolicy::doubling(Duration::from_millis(50), Duration::from_secs(2))
                .backoff()
                .build()
                .take(8)
                .collect();
        let ms: Vec<u128> = pauses.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
    }

    #[tokio::test(start_paused = true)]
    async fn run_stops_at_a_refused_error_and_after_the_last_try() {
        let tries = AtomicU32::new(0);
        let policy = RetryPolicy::fixed(3, Duration::from_millis(10));
        let started = tokio::time::Instant::now();
        let result: Result<(), &str> = policy
            .run(
                || async {
                    tries.fetch_add(1, Ordering::SeqCst);
                    Err("again")
                },
                |_| true,
            )
            .await;
        assert_eq!(result, Err("again"));
        assert_eq!(tries.swap(0, Ordering::SeqCst), 3);
        assert_eq!(started.elapsed(), Duration::from_millis(20));
        let result: Result<(), &str> = policy
            .run(
                || async {
                    tries.fetch_add(1, Ordering::SeqCst);
                    Err("final")
                },
                |e| *e != "final",
            )
            .await;
        assert_eq!((result, tries.load(Ordering::SeqCst)), (Err("final"), 1));
    }
}

//! Password hashing on a bounded pool: the client's SHA-1 digest is hashed again with argon2id
//! before it reaches the database (SPEC.md), without letting a burst of sign-ups take the memory
//! or the cores of the process.
//!
//! A fixed set of threads (by default one per core) each own one argon2 memory area, reused for
//! every hash, so resident memory is `threads × m_cost` whatever the load. Requests wait in a
//! short bounded queue; when it is full the caller is told at once ([`HashError::Busy`]) and
//! answers 503 with `Retry-After`, instead of piling hashes onto an unbounded blocking pool.
//!
//! Written by hand because no crate pools argon2 memory: the argon2 crate gives the
//! building block (`hash_password_into_with_memory`), this module only owns the threads.

use std::thread;

use argon2::password_hash::{Output, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use thiserror::Error;
use tokio::sync::oneshot;

use crate::domain::PasswordDigest;

/// Bytes of random salt per hash (the PHC recommendation).
const SALT_BYTES: usize = 16;
/// Bytes of argon2 output (the crate's default).
const OUTPUT_BYTES: usize = 32;

/// The argon2id cost and the pool's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PasswordHashing {
    /// Memory cost in KiB (each hashing thread keeps this much).
    pub m_cost_kib: u32,
    /// Iterations.
    pub t_cost: u32,
    /// Hashing threads; 0 means one per core.
    pub threads: usize,
    /// Hashes that may wait for a thread; past it the answer is 503.
    pub queue: usize,
}

impl Default for PasswordHashing {
    /// OWASP's argon2id minimum: 19 MiB, 2 iterations, 1 lane; a thread per core and a queue of
    /// four hashes per thread.
    fn default() -> Self {
        PasswordHashing {
            m_cost_kib: 19 * 1024,
            t_cost: 2,
            threads: 0,
            queue: 0,
        }
    }
}

impl PasswordHashing {
    /// The cheapest real argon2id: for tests only.
    pub fn fast_for_tests() -> Self {
        PasswordHashing {
            m_cost_kib: 8,
            t_cost: 1,
            threads: 2,
            queue: 64,
        }
    }

    fn params(&self) -> Result<Params, HashError> {
        Params::new(self.m_cost_kib, self.t_cost, 1, Some(OUTPUT_BYTES))
            .map_err(|e| HashError::Misconfigured(e.to_string()))
    }

    fn thread_count(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    fn queue_len(&self, threads: usize) -> usize {
        if self.queue > 0 {
            self.queue
        } else {
            4 * threads
        }
    }
}

/// Why no hash came back.
#[derive(Debug, Error)]
pub enum HashError {
    #[error("every password hasher is busy")]
    Busy,
    #[error("password hashing misconfigured: {0}")]
    Misconfigured(String),
    #[error("password hashing failed: {0}")]
    Failed(String),
}

struct Job {
    digest: PasswordDigest,
    reply: oneshot::Sender<Result<String, HashError>>,
}

/// The pool. Dropping the last handle lets its threads finish their job and exit.
#[derive(Clone)]
pub struct Hasher {
    jobs: Sender<Job>,
}

impl Hasher {
    /// Starts the threads. Fails only when the cost parameters are invalid.
    pub fn start(config: PasswordHashing) -> Result<Hasher, HashError> {
        let params = config.params()?;
        let threads = config.thread_count();
        let (jobs, queue) = crossbeam_channel::bounded(config.queue_len(threads));
        for n in 0..threads {
            let queue = queue.clone();
            let params = params.clone();
            thread::Builder::new()
                .name(format!("argon2-{n}"))
                .spawn(move || hash_jobs(params, queue))
                .map_err(|e| HashError::Failed(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Hasher { jobs })
    }

    /// Hashes `digest` into a PHC string (`$argon2id$v=19$...`) with a random salt, or says at
    /// once that the queue is full.
    pub async fn hash(&self, digest: PasswordDigest) -> Result<String, HashError> {
        let (reply, answer) = oneshot::channel();
        match self.jobs.try_send(Job { digest, reply }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => return Err(HashError::Busy),
            Err(TrySendError::Disconnected(_)) => {
                return Err(HashError::Failed("the hashing threads are gone".into()))
            }
        }
        answer
            .await
            .map_err(|_| HashError::Failed("a hashing thread stopped".into()))?
    }

    /// Hashes waiting for a thread now.
    pub fn queued(&self) -> usize {
        self.jobs.len()
    }
}

/// One hashing thread: one memory area, reused for every job until the pool is dropped.
fn hash_jobs(params: Params, queue: Receiver<Job>) {
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut memory = vec![Block::default(); argon2.params().block_count()];
    for job in queue.iter() {
        // The caller may have gone (its request timed out): skip the work.
        if job.reply.is_closed() {
            continue;
        }
        let result = hash_one(&argon2, &job.digest, &mut memory);
        let _ = job.reply.send(result);
    }
}

fn hash_one(
    argon2: &Argon2<'_>,
    digest: &PasswordDigest,
    memory: &mut [Block],
) -> Result<String, HashError> {
    let salt: [u8; SALT_BYTES] = rand::random();
    let mut out = [0u8; OUTPUT_BYTES];
    argon2
        .hash_password_into_with_memory(digest.expose().as_bytes(), &salt, &mut out, memory)
        .map_err(|e| HashError::Failed(e.to_string()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError::Failed(e.to_string()))?;
    let hash = Output::new(&out).map_err(|e| HashError::Failed(e.to_string()))?;
    let p = argon2.params();
    Ok(format!(
        "$argon2id$v=19$m={},t={},p={}${salt}${hash}",
        p.m_cost(),
        p.t_cost(),
        p.p_cost()
    ))
}

#[cfg(test)]
mod tests {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};

    use super::*;

    fn digest() -> PasswordDigest {
        PasswordDigest::parse("3d4f2bf07dc1be38b20cd6e46949a1071f9d0e3d").unwrap()
    }

    #[tokio::test]
    async fn a_pooled_hash_is_a_phc_string_argon2_verifies() {
        let hasher = Hasher::start(PasswordHashing::fast_for_tests()).unwrap();
        for _ in 0..3 {
            let phc = hasher.hash(digest()).await.unwrap();
            assert!(phc.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{phc}");
            let parsed = PasswordHash::new(&phc).unwrap();
            Argon2::default()
                .verify_password(digest().expose().as_bytes(), &parsed)
                .unwrap();
            assert!(Argon2::default()
                .verify_password(b"another", &parsed)
                .is_err());
        }
    }

    #[tokio::test]
    async fn salts_differ_between_hashes() {
        let hasher = Hasher::start(PasswordHashing::fast_for_tests()).unwrap();
        assert_ne!(
            hasher.hash(digest()).await.unwrap(),
            hasher.hash(digest()).await.unwrap()
        );
    }

    #[tokio::test]
    async fn a_full_queue_answers_busy_at_once() {
        // One slow thread and a queue of one: of many hashes asked at once, some must be
        // refused without waiting.
        let hasher = Hasher::start(PasswordHashing {
            m_cost_kib: 4 * 1024,
            t_cost: 4,
            threads: 1,
            queue: 1,
        })
        .unwrap();
        let results = futures::future::join_all((0..8).map(|_| hasher.hash(digest()))).await;
        let busy = results
            .iter()
            .filter(|r| matches!(r, Err(HashError::Busy)))
            .count();
        let done = results.iter().filter(|r| r.is_ok()).count();
        assert!(busy >= 5, "busy {busy}");
        assert!(done >= 1, "done {done}");
        assert_eq!(busy + done, 8);
    }

    #[test]
    fn invalid_costs_are_refused_at_start() {
        let bad = PasswordHashing {
            m_cost_kib: 1,
            ..PasswordHashing::default()
        };
        assert!(matches!(
            Hasher::start(bad),
            Err(HashError::Misconfigured(_))
        ));
    }
}

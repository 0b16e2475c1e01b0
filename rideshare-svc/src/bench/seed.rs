//! What `rideshare bench` puts in the system before it measures, through the public API only.
//!
//! Every run has a namespace of its own: usernames start with `bench-<8 hex>-`, and the rides it
//! lists live on an area pair chosen at random and checked to hold no upcoming ride yet, so the
//! rides of earlier runs (kept in the data directory) do not change what `list` returns. Rides
//! are dated in 2099, so they stay upcoming. `POST /api/v1/rides` answers `{}`, so ride ids are
//! read back from the list endpoint, keeping only the rides this run's owner created.

use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, StatusCode, Uri};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::task::JoinSet;

use super::client::{Conn, Target};
use super::mix::{Mix, Op};
use super::BenchError;

/// Requests seeding keeps in flight (user creation runs argon2 in the users service).
const SEED_CONNECTIONS: usize = 4;
/// Attempts at finding an area pair with no upcoming ride.
const PAIR_ATTEMPTS: usize = 32;
/// Areas are numbered 1..=198 (`data/AreaNameEnum.csv`).
const AREAS: u16 = 198;

/// What seeding needs to know.
#[derive(Debug, Clone)]
pub struct SeedPlan {
    pub mix: Mix,
    /// Upcoming rides on the listed pair.
    pub list_size: usize,
    /// Users created to join rides (only when the mix joins).
    pub join_users: usize,
    /// (user, ride) pairs to prepare for `join`: each join takes one, so every join can succeed.
    pub join_pairs: usize,
}

/// The namespace and data of one run, and the requests built from it.
#[derive(Debug, Clone, Serialize)]
pub struct Seeded {
    /// Random id of this run; usernames start with `bench-<run_id>-`.
    pub run_id: String,
    /// The user who created every seeded ride and whom `create-ride` creates rides for.
    pub owner: String,
    /// The pair `list` reads: it holds exactly `list_rides` upcoming rides.
    pub list_pair: (u16, u16),
    /// Ids of the listed rides (`details` reads them).
    pub list_rides: Vec<u64>,
    /// The pair `create-ride` adds rides to (not the listed one).
    pub create_pair: (u16, u16),
    /// The pair holding the rides to join, when the mix joins.
    pub join_pair: Option<(u16, u16)>,
    /// Rides to join.
    pub join_rides: Vec<u64>,
    /// Users who join them (none of them created a ride).
    pub join_users: Vec<String>,
    /// The password digest every user of this run has.
    #[serde(skip)]
    pub password: String,
}

impl Seeded {
    /// Prefix of every username this run creates.
    pub fn prefix(&self) -> String {
        format!("bench-{}-", self.run_id)
    }

    /// How many distinct joins can succeed.
    pub fn join_pairs(&self) -> usize {
        self.join_rides.len() * self.join_users.len()
    }
}

/// A `DD-MM-YYYY:SS-MM-HH` timestamp at a random moment of 2099.
pub fn future_timestamp(rng: &mut impl Rng) -> String {
    format!(
        "{:02}-{:02}-2099:{:02}-{:02}-{:02}",
        rng.gen_range(1..=28),
        rng.gen_range(1..=12),
        rng.gen_range(0..60),
        rng.gen_range(0..60),
        rng.gen_range(0..24),
    )
}

/// A random pair of distinct areas.
fn random_pair(rng: &mut impl Rng) -> (u16, u16) {
    let source = rng.gen_range(1..=AREAS);
    let mut destination = rng.gen_range(1..AREAS);
    if destination >= source {
        destination += 1;
    }
    (source, destination)
}

pub fn uri(path: String) -> Result<Uri, BenchError> {
    Uri::try_from(path.as_str()).map_err(|e| BenchError::Seed(format!("bad path {path:?}: {e}")))
}

pub fn list_uri(pair: (u16, u16)) -> Result<Uri, BenchError> {
    uri(format!(
        "/api/v1/rides?source={}&destination={}",
        pair.0, pair.1
    ))
}

/// `PUT /api/v1/users` body.
pub fn user_body(username: &str, password: &str) -> Bytes {
    Bytes::from(json!({"username": username, "password": password}).to_string())
}

/// `POST /api/v1/rides` body.
pub fn ride_body(owner: &str, timestamp: &str, pair: (u16, u16)) -> Bytes {
    Bytes::from(
        json!({"created_by": owner, "timestamp": timestamp, "source": pair.0, "destination": pair.1})
            .to_string(),
    )
}

/// One request seeding sends, and the status it must get.
struct Step {
    method: Method,
    uri: Uri,
    body: Option<Bytes>,
    expect: StatusCode,
}

#[derive(Deserialize)]
struct Listed {
    #[serde(rename = "rideId")]
    ride_id: u64,
    username: String,
}

/// Creates the run's users and rides.
pub async fn seed(
    target: &Target,
    timeout: Duration,
    plan: &SeedPlan,
) -> Result<Seeded, BenchError> {
    let mut rng = SmallRng::from_entropy();
    let run_id = format!("{:08x}", rng.gen::<u32>());
    let password: String = (0..40)
        .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
        .collect();
    let prefix = format!("bench-{run_id}-");
    let owner = format!("{prefix}owner");
    let mut conn = Conn::new(target.clone(), timeout);

    one(
        &mut conn,
        Step {
            method: Method::PUT,
            uri: uri("/api/v1/users".into())?,
            body: Some(user_body(&owner, &password)),
            expect: StatusCode::CREATED,
        },
    )
    .await?;

    let list_pair = empty_pair(&mut conn, &mut rng, &[]).await?;
    let list_rides = seed_rides(
        target,
        timeout,
        &mut conn,
        &owner,
        list_pair,
        plan.list_size,
        &mut rng,
    )
    .await?;

    let mut create_pair = random_pair(&mut rng);
    while create_pair == list_pair {
        create_pair = random_pair(&mut rng);
    }

    let (join_pair, join_rides, join_users) = if plan.mix.contains(Op::Join) {
        let users: Vec<String> = (0..plan.join_users.max(1))
            .map(|i| format!("{prefix}joiner{i}"))
            .collect();
        let steps: Vec<Step> = users
            .iter()
            .map(|name| {
                Ok(Step {
                    method: Method::PUT,
                    uri: uri("/api/v1/users".into())?,
                    body: Some(user_body(name, &password)),
                    expect: StatusCode::CREATED,
                })
            })
            .collect::<Result<_, BenchError>>()?;
        fan_out(target, timeout, steps).await?;
        let rides = plan.join_pairs.div_ceil(users.len()).max(1);
        let pair = empty_pair(&mut conn, &mut rng, &[list_pair, create_pair]).await?;
        let ids = seed_rides(target, timeout, &mut conn, &owner, pair, rides, &mut rng).await?;
        (Some(pair), ids, users)
    } else {
        (None, Vec::new(), Vec::new())
    };

    Ok(Seeded {
        run_id,
        owner,
        list_pair,
        list_rides,
        create_pair,
        join_pair,
        join_rides,
        join_users,
        password,
    })
}

/// Creates `count` rides by `owner` on `pair` and returns their ids, read back from the list.
async fn seed_rides(
    target: &Target,
    timeout: Duration,
    conn: &mut Conn,
    owner: &str,
    pair: (u16, u16),
    count: usize,
    rng: &mut SmallRng,
) -> Result<Vec<u64>, BenchError> {
    let steps: Vec<Step> = (0..count)
        .map(|_| {
            Ok(Step {
                method: Method::POST,
                uri: uri("/api/v1/rides".into())?,
                body: Some(ride_body(owner, &future_timestamp(rng), pair)),
                expect: StatusCode::CREATED,
            })
        })
        .collect::<Result<_, BenchError>>()?;
    fan_out(target, timeout, steps).await?;
    let ids = listed(conn, pair, owner).await?;
    if ids.len() != count {
        return Err(BenchError::Seed(format!(
            "created {count} rides on {pair:?} but {} are listed",
            ids.len()
        )));
    }
    Ok(ids)
}

/// A random pair, other than `avoid`, that has no upcoming ride.
async fn empty_pair(
    conn: &mut Conn,
    rng: &mut SmallRng,
    avoid: &[(u16, u16)],
) -> Result<(u16, u16), BenchError> {
    for _ in 0..PAIR_ATTEMPTS {
        let pair = random_pair(rng);
        if avoid.contains(&pair) {
            continue;
        }
        let (status, _) = call(conn, Method::GET, list_uri(pair)?, None).await?;
        match status {
            StatusCode::NO_CONTENT => return Ok(pair),
            StatusCode::OK => continue,
            other => {
                return Err(BenchError::Seed(format!(
                    "listing rides on {pair:?} answered {other}"
                )))
            }
        }
    }
    Err(BenchError::Seed(format!(
        "{PAIR_ATTEMPTS} random area pairs all hold upcoming rides already"
    )))
}

/// Ids of the upcoming rides on `pair` that `owner` created.
async fn listed(conn: &mut Conn, pair: (u16, u16), owner: &str) -> Result<Vec<u64>, BenchError> {
    let (status, body) = call(conn, Method::GET, list_uri(pair)?, None).await?;
    match status {
        StatusCode::NO_CONTENT => Ok(Vec::new()),
        StatusCode::OK => {
            let rides: Vec<Listed> = serde_json::from_slice(&body)
                .map_err(|e| BenchError::Seed(format!("the ride list is not as specified: {e}")))?;
            Ok(rides
                .into_iter()
                .filter(|r| r.username == owner)
                .map(|r| r.ride_id)
                .collect())
        }
        other => Err(BenchError::Seed(format!(
            "listing rides on {pair:?} answered {other}"
        ))),
    }
}

async fn call(
    conn: &mut Conn,
    method: Method,
    uri: Uri,
    body: Option<Bytes>,
) -> Result<(StatusCode, Bytes), BenchError> {
    let what = format!("{method} {uri}");
    conn.call(method, uri, body)
        .await
        .map_err(|e| BenchError::Seed(format!("{what}: {e}")))
}

async fn one(conn: &mut Conn, step: Step) -> Result<(), BenchError> {
    let what = format!("{} {}", step.method, step.uri);
    let (status, body) = call(conn, step.method, step.uri, step.body).await?;
    if status != step.expect {
        return Err(BenchError::Seed(format!(
            "{what} answered {status} (wanted {}): {}",
            step.expect,
            String::from_utf8_lossy(&body)
        )));
    }
    Ok(())
}

/// Sends `steps` over a few connections at once; fails on the first unexpected answer.
async fn fan_out(target: &Target, timeout: Duration, steps: Vec<Step>) -> Result<(), BenchError> {
    let lanes_count = SEED_CONNECTIONS.min(steps.len());
    let mut lanes: Vec<Vec<Step>> = (0..lanes_count).map(|_| Vec::new()).collect();
    for (i, step) in steps.into_iter().enumerate() {
        lanes[i % lanes_count].push(step);
    }
    let mut tasks = JoinSet::new();
    for lane in lanes {
        let mut conn = Conn::new(target.clone(), timeout);
        tasks.spawn(async move {
            for step in lane {
                one(&mut conn, step).await?;
            }
            Ok::<(), BenchError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| BenchError::Seed(format!("a seeding task failed: {e}")))??;
    }
    Ok(())
}

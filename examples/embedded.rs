//! Embeds rideshare-core as a library: no server, no database server, nothing installed.
//!
//! Creates two users and a ride through the `Db` seam on an in-memory store, has one user join,
//! and lists what is there. Run: `cargo run --example embedded`.

use rideshare_core::db::{Db, LocalDb};
use rideshare_core::ops::{ReadOp, ReadOutcome, WriteOp, WriteOutcome};
use rideshare_core::store::MemStore;
use rideshare_core::{Area, Timestamp, Username};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = LocalDb::new(MemStore::new());
    for name in ["asha", "ravi"] {
        let outcome = db
            .write(WriteOp::AddUser {
                username: Username::parse(name)?,
                // A real service stores an argon2 hash of the client's digest here.
                password_hash: "$argon2id$example".into(),
            })
            .await?;
        println!("add user {name}: {outcome:?}");
    }
    let from = Area::new(1)?;
    let to = Area::parse("42")?;
    let WriteOutcome::RideCreated { ride_id } = db
        .write(WriteOp::CreateRide {
            created_by: Username::parse("asha")?,
            timestamp: Timestamp::parse("01-09-2030:05-10-17")?,
            source: from,
            destination: to,
        })
        .await?
    else {
        anyhow::bail!("ride was not created");
    };
    println!("ride {ride_id} from {} to {}", from.name(), to.name());
    let joined = db
        .write(WriteOp::JoinRide {
            ride_id,
            username: Username::parse("ravi")?,
        })
        .await?;
    println!("ravi joins: {joined:?}");

    if let ReadOutcome::Users { users } = db.read(ReadOp::ListUsers).await? {
        println!("users: {users:?}");
    }
    let after = Timestamp::parse("01-01-2030:00-00-00")?;
    if let ReadOutcome::Rides { rides } = db
        .read(ReadOp::UpcomingRides {
            source: from,
            destination: to,
            after,
        })
        .await?
    {
        println!("upcoming after {after}: {}", rides.json());
    }
    if let ReadOutcome::Ride { ride: Some(ride) } = db.read(ReadOp::GetRide { ride_id }).await? {
        println!("ride {ride_id}: {}", serde_json::to_string(&ride)?);
    }
    Ok(())
}

//! The write mix the benches apply: add-user, create-ride (twice as often) and join-ride, over
//! 1 000 users and every area, the same for a given `i`.

use rideshare_core::ops::WriteOp;
use rideshare_core::{Area, RideId, Timestamp, Username};

/// The `i`-th write of the mix.
pub fn workload(i: u64) -> WriteOp {
    let user = Username::parse(&format!("user{}", i % 1000)).unwrap_or_else(|_| unreachable!());
    match i % 4 {
        0 => WriteOp::AddUser {
            username: user,
            password_hash: "$argon2id$bench".into(),
        },
        1 | 2 => WriteOp::CreateRide {
            created_by: user,
            timestamp: Timestamp::from_seconds(1_893_456_000 + (i as i64 % 86_400))
                .unwrap_or_else(|| unreachable!()),
            source: Area::new((i % 198 + 1) as u16).unwrap_or_else(|_| unreachable!()),
            destination: Area::new(((i + 7) % 198 + 1) as u16).unwrap_or_else(|_| unreachable!()),
        },
        _ => WriteOp::JoinRide {
            ride_id: RideId(i / 2),
            username: user,
        },
    }
}

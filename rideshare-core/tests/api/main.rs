//! Integration tests of the HTTP services against the contract (`SPEC.md`), in one test binary.
//!
//! - `users`, `rides`: every status of every row of the contract, the request counters, 405s.
//! - `gateway`: routing, pass-through, upstream failures, body limits.
//! - `bad_input`: malformed, wrongly typed, huge and random input never gets a 5xx.

mod bad_input;
mod edge;
mod gateway;
mod helpers;
mod rides;
mod users;

//! The integration tests' harness: the real `service-mgr` binary started as
//! manager, agents and clients on ephemeral loopback ports, with one fake
//! service(8), and every child killed when its test ends, fails or times out.
//!
//! - `proc`: spawning and awaiting children, readiness, timeouts, kill on drop
//! - `pki`: a deployment's keys and the `-O` snippets that point at them
//! - `fleet`: managers and agents, and waits on what the manager reports
//! - `client`: the `Client` builder for client command lines
//! - `service`: the fake service(8) and its call log
//! - `wire`: raw zmq sockets and management round trips
//! - `keys`: the keys each daemon is pinned by, applied by endpoint
//! - `pg`: PostgreSQL for the shared job store's tests (a database per test, a cuttable relay)

mod client;
mod fleet;
pub mod keys;
pub mod pg;
mod pki;
mod proc;
mod service;
mod wire;

pub use client::*;
pub use fleet::*;
pub use pki::*;
pub use proc::*;
pub use service::*;
pub use wire::*;

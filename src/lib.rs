//! service-mgr: control the services of a UNIX/Linux cluster from one place.
//!
//! # Layout
//! - [`cli`]: the multicall command line, composed from the roles' arguments;
//!   it parses and dispatches. `main.rs` only calls [`cli::main`].
//! - [`daemon`]: start-up of both daemons (config, pid file, detaching,
//!   logging, signals; `stop`/`status`), one entry [`daemon::run`].
//! - [`manager`], [`agent`], [`client`], [`mgmt`], [`demo`]: the roles, each
//!   with one `run` and its own clap arguments.
//! - [`report`]: the client's typed report; [`output`]: formats, tables and
//!   colour, rendering reports and management replies.
//! - [`protocol`]: every wire message, one file per socket (frontend, backend,
//!   sink, results, mgmt), each frame decoded once at the edge; limits.
//!   Golden copies of each message are in `tests/fixtures/`.
//! - [`manager`]: the loop and sockets in `mod.rs`; `frontend` (requests,
//!   follow), `routing` (who must answer: a pure function), `backend`
//!   (subscriptions, presence), `sink` (results, announcements, departures),
//!   `mgmt`, `registry` (the agents), `trust` (the gate). [`agent`]: the loop,
//!   `guard` (its checks and signatures), `exec`, `simulate`.
//! - [`completion`]: `-T`/`-N` targets for the completion scripts; [`hints`]:
//!   the values they offer for `-c` and `mgmt` (not enforced).
//! - [`config`], [`logging`], [`runtime`], [`transport`], [`host`], [`exit`],
//!   [`args`]: what the roles share.
//!
//! Imports point one way: `cli` → `daemon` → roles → shared modules.

pub mod agent;
pub mod args;
pub mod cli;
pub mod client;
pub mod clock;
pub mod completion;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod exit;
pub mod hints;
pub mod host;
pub mod jobstore;
pub mod logging;
pub mod manager;
pub mod metrics;
pub mod mgmt;
pub mod output;
pub mod protocol;
pub mod report;
pub mod runtime;
pub mod security;
pub mod transport;
pub mod zap;

//! service-mgr: control the services of a UNIX/Linux cluster from one place.
//!
//! # Layout
//! The product is this crate: one library and the multicall binary. Beside it
//! in the workspace, and not shipped: `xtask/` (man pages and completions),
//! `bench/` (the benchmark, driving the shipped binary), `fuzz/targets/` (the
//! fuzz targets' checks; `fuzz/` runs them under libFuzzer) and `vendor/zmq-sys`
//! (zmq-sys building libzmq with CURVE).
//!
//! Entry and start-up:
//! - [`cli`]: the multicall command line, composed from the roles' arguments;
//!   it parses and dispatches. `main.rs` only calls [`cli::main`].
//! - [`daemon`]: start-up of both daemons (config, pid file, detaching,
//!   logging, signals; `stop`/`status`), one entry [`daemon::run`].
//!
//! The roles, each with one `run` and its own clap arguments:
//! - [`manager`]: the loop and sockets in `mod.rs`; `frontend` (requests,
//!   follow), `routing` (who must answer: a pure function), `backend`
//!   (subscriptions, presence), `sink` (results, announcements, departures),
//!   `mgmt`, `registry` (the agents), `journal` (the agents it knew, kept
//!   across restarts), `late` (requests to agents not back yet), `trust` (the gate),
//!   `keysync` (key decisions shared through a PostgreSQL job store).
//! - [`agent`]: the loop; `guard` (its checks and signatures), `exec` (running
//!   the host's service manager), `simulate` (a fleet in one process).
//! - [`client`] (requests and rollouts), [`mgmt`] (management, keys, keygen),
//!   [`demo`] (a manager and an agent on loopback).
//!
//! What they share:
//! - [`protocol`]: every wire message, one file per socket (frontend, backend,
//!   sink, results, mgmt), each frame decoded once at the edge; limits.
//!   Golden copies of each message are in `tests/fixtures/`.
//! - [`security`]: keys, key files, signed envelopes, sealing, the replay
//!   guard and the key store; [`zap`]: who may complete a CURVE handshake.
//! - [`config`]: both daemons' settings, defaults and checks; `policy` (who may
//!   run what on an agent).
//! - [`jobstore`]: the manager's jobs and results, one interface (`mod.rs`)
//!   and two stores: `redb` (embedded, the default) and `postgres` (shared by
//!   several managers, written by a thread of its own; its schema and views
//!   are `migrations/postgres/`).
//! - [`metrics`]: Prometheus metrics and their HTTP endpoint.
//! - [`report`]: the client's typed report; [`output`]: formats, tables and
//!   colour, rendering reports and management replies.
//! - [`completion`]: `-T`/`-N` targets for the completion scripts; [`hints`]:
//!   the values they offer for `-c` and `mgmt` (not enforced).
//! - [`transport`] (sockets, binds, bounded receives), [`runtime`] (signals,
//!   pid files, ready files), [`logging`], [`host`], [`clock`], [`exit`] (exit
//!   codes, usage errors), [`args`].
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

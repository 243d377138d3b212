//! service-mgr: control the services of a UNIX/Linux cluster from one place.
//!
//! # Layout
//! - [`cli`]: the multicall command line; `main.rs` only calls [`cli::main`].
//! - [`protocol`]: every wire message, decoders for untrusted bytes, limits.
//! - [`manager`], [`agent`], [`client`], [`mgmt`], [`demo`]: the roles, each with one `run`.
//! - [`config`], [`logging`], [`runtime`], [`transport`], [`host`], [`exit`]: what the roles share.

pub mod agent;
pub mod args;
pub mod bench;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod docs;
pub mod exit;
pub mod fuzz_targets;
pub mod host;
pub mod jobstore;
pub mod logging;
pub mod manager;
pub mod mgmt;
pub mod output;
pub mod protocol;
pub mod report;
pub mod runtime;
pub mod security;
pub mod transport;

//! Management requests (`service-mgr mgmt`, `service-mgrd -e EP status|stop`):
//! one JSON command to a REP socket of the manager or an agent.

use crate::client::to_json_pretty;
use crate::protocol::{self as p, MgmtReply};
use crate::transport;
use anyhow::{Context, Result};
use serde_json::{json, Value};
use std::time::Duration;

/// Send `{"cmd": cmd}` and return the reply. A reply that is not ours is kept
/// as raw JSON so that a 0.1 peer's answer still prints.
pub fn call(endpoint: &str, cmd: &str, timeout: Duration, retries: u32) -> Result<Value> {
    let ctx = zmq::Context::new();
    let reply = transport::request(
        &ctx,
        endpoint,
        &p::encode(&json!({ "cmd": cmd })),
        timeout,
        retries,
    )?;
    serde_json::from_slice(&reply)
        .with_context(|| format!("the answer from {endpoint} is not JSON"))
}

/// Whether a reply reports success (`"success": 0`).
pub fn succeeded(reply: &Value) -> bool {
    serde_json::from_value::<MgmtReply>(reply.clone()).is_ok_and(|r| r.success == 0)
}

/// Run a management command and print the reply as 0.1 did; true on success.
pub fn run_and_print(endpoint: &str, cmd: &str, timeout: Duration, retries: u32) -> Result<bool> {
    let reply = call(endpoint, cmd, timeout, retries)?;
    println!("{}", to_json_pretty(&reply));
    Ok(succeeded(&reply))
}

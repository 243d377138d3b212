//! The keys a test's daemons pin each other by: every manager and agent the
//! harness starts registers its endpoints here, with what a command line
//! aimed at them needs (`SERVICE_MGR_MANAGER_KEY`, `SERVICE_MGR_SERVER_KEY`,
//! `SERVICE_MGR_KEY`) and, for raw management round trips, a key the daemon
//! admits. Command lines the harness runs get these by their `-e ENDPOINT`,
//! so tests read as a user types them on the daemon's own host.

use service_mgr::security::KeyPair;
use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};

/// What reaching one endpoint takes.
#[derive(Clone, Default)]
pub struct Creds {
    /// Environment for command lines that name the endpoint with `-e`.
    pub envs: Vec<(String, String)>,
    /// For raw sockets: the daemon's CURVE key, and a key pair it admits.
    pub curve: Option<([u8; 32], Arc<KeyPair>)>,
}

fn registry() -> &'static Mutex<HashMap<String, Creds>> {
    static R: OnceLock<Mutex<HashMap<String, Creds>>> = OnceLock::new();
    R.get_or_init(Default::default)
}

pub fn register(endpoint: &str, creds: Creds) {
    registry()
        .lock()
        .unwrap()
        .insert(endpoint.to_owned(), creds);
}

/// An endpoint the test binds itself now: whatever daemon had its port before is gone.
pub fn forget(endpoint: &str) {
    registry().lock().unwrap().remove(endpoint);
}

pub fn creds(endpoint: &str) -> Option<Creds> {
    registry().lock().unwrap().get(endpoint).cloned()
}

/// Add the registered environment of the endpoint `cmd` names with `-e`
/// (without overriding what the test set itself).
pub fn apply(cmd: &mut Command) {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let endpoint = args
        .windows(2)
        .find(|w| w[0] == "-e" || w[0] == "--endpoint")
        .map(|w| w[1].clone());
    let Some(creds) = endpoint.as_deref().and_then(creds) else {
        return;
    };
    let set: Vec<String> = cmd
        .get_envs()
        .map(|(k, _)| k.to_string_lossy().into_owned())
        .collect();
    for (k, v) in creds.envs {
        if !set.contains(&k) {
            cmd.env(k, v);
        }
    }
}

/// A raw REQ socket to a registered endpoint speaks CURVE with its creds.
pub fn secure(s: &zmq::Socket, endpoint: &str) {
    if let Some((server, key)) = creds(endpoint).and_then(|c| c.curve) {
        s.set_curve_serverkey(&server).unwrap();
        s.set_curve_publickey(&key.public().curve_key()).unwrap();
        s.set_curve_secretkey(&key.curve_secret()).unwrap();
    }
}

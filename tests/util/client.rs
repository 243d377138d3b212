//! Command lines of `service-mgr client`, built by name instead of by hand.

use super::{output, pki::NO_KEY, Proc, Running};
use serde_json::Value;
use std::process::{Command, Output};

/// `service-mgr client -e ENDPOINT [-k KEY] ARGS...`; the arguments keep the
/// order the builder calls give them.
///
/// `Client::new(&mgr).topic("any").cmd("status").service("cron").run()`
#[must_use]
pub struct Client {
    endpoint: String,
    key: Option<String>,
    args: Vec<String>,
    envs: Vec<(String, String)>,
}

impl Client {
    /// A client of `mgr`'s frontend, signing with the deployment's client key
    /// if `mgr` has one.
    pub fn new(mgr: &Proc) -> Client {
        let mut c = Client::at(&mgr.ep("frontend_endpoint"));
        c.key = mgr.pki.as_ref().map(|p| p.client_key());
        c
    }
    /// A client of the frontend at `endpoint`, no key given.
    pub fn at(endpoint: &str) -> Client {
        Client {
            endpoint: endpoint.to_owned(),
            key: None,
            args: Vec::new(),
            envs: Vec::new(),
        }
    }
    /// Sign with this key file instead (`-k`).
    pub fn key(mut self, file: &str) -> Client {
        self.key = Some(file.to_owned());
        self
    }
    /// No key at all, not even from the environment: unsigned, as a 0.1 client.
    pub fn unsigned(mut self) -> Client {
        self.key = None;
        self.env(NO_KEY.0, NO_KEY.1)
    }
    pub fn topic(self, topic: &str) -> Client {
        self.arg("-T").arg(topic)
    }
    pub fn nodes(self, nodes: &str) -> Client {
        self.arg("-N").arg(nodes)
    }
    pub fn glob(self, glob: &str) -> Client {
        self.arg("-G").arg(glob)
    }
    pub fn cmd(self, cmd: &str) -> Client {
        self.arg("-c").arg(cmd)
    }
    pub fn service(self, service: &str) -> Client {
        self.arg("-s").arg(service)
    }
    /// `-w SECS`: how long to wait for answers.
    pub fn wait(self, secs: &str) -> Client {
        self.arg("-w").arg(secs)
    }
    pub fn format(self, format: &str) -> Client {
        self.arg("--format").arg(format)
    }
    pub fn arg(mut self, arg: &str) -> Client {
        self.args.push(arg.to_owned());
        self
    }
    pub fn env(mut self, key: &str, value: &str) -> Client {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    fn command(&self) -> Command {
        let mut c = Command::new(super::bin());
        c.args(["client", "-e", &self.endpoint]);
        if let Some(key) = &self.key {
            c.args(["-k", key]);
        }
        c.args(&self.args);
        c.envs(self.envs.iter().map(|(k, v)| (k, v)));
        // A manager the harness did not start (a 0.1 one, a fake): plaintext.
        if super::keys::creds(&self.endpoint).is_none()
            && !self
                .envs
                .iter()
                .any(|(k, _)| k == "SERVICE_MGR_MANAGER_KEY")
        {
            c.env("SERVICE_MGR_MANAGER_KEY", "plaintext");
        }
        c
    }
    /// Run it and collect the output.
    pub fn output(&self) -> Output {
        output(&mut self.command())
    }
    /// Run it and parse its stdout as JSON (panics, showing both streams, if it is not).
    pub fn run(&self) -> (Output, Value) {
        let out = self.output();
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "client output is not JSON ({e}):\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out, v)
    }
    /// Run it and return stdout as text, unparsed.
    pub fn text(&self) -> (Output, String) {
        let out = self.output();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out, text)
    }
    /// Start it in the background (e.g. to act while it waits for answers).
    pub fn spawn(&self) -> Running {
        Running::spawn(&mut self.command())
    }
}

//! The keys of one test deployment: a client key the manager accepts, the
//! manager's key store, and agent keys made on demand.

pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        use service_mgr::security::{keygen, KeyStore, Role};
        let dir = tempfile::tempdir().unwrap();
        keygen(
            &dir.path().join("client.key"),
            Role::Client,
            "tester",
            false,
        )
        .unwrap();
        let mut store = KeyStore::open(&dir.path().join("state/keys")).unwrap();
        store
            .import_accepted(&dir.path().join("client.key.pub"))
            .unwrap();
        Pki { dir }
    }
    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
    pub fn client_key(&self) -> String {
        self.path("client.key")
    }
    /// An agent key for `node`, accepted by the manager.
    pub fn agent_key(&self, node: &str) -> String {
        use service_mgr::security::{keygen, KeyStore, Role};
        let file = self.dir.path().join(format!("{node}.key"));
        if !file.exists() {
            keygen(&file, Role::Agent, node, false).unwrap();
            let mut store = KeyStore::open(&self.dir.path().join("state/keys")).unwrap();
            store
                .import_accepted(&self.dir.path().join(format!("{node}.key.pub")))
                .unwrap();
        }
        file.display().to_string()
    }
}

/// A policy that lets the test client do everything (inline TOML for -O).
pub const ALLOW_ALL: &str =
    r#"policy=[{name = "tests", keys = ["tester"], commands = ["*"], services = ["*"]}]"#;

/// No client key: the binary runs unsigned, as a 0.1 client.
pub const NO_KEY: (&str, &str) = ("SERVICE_MGR_KEY", "none");

/// `s` as a TOML string (for `-O key=value`).
pub fn toml_str(s: &str) -> String {
    format!("{:?}", s)
}

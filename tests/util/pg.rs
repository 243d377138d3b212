//! PostgreSQL for the shared job store's tests: `SERVICE_MGR_TEST_PG` names a
//! server and a role that may create databases (`.ci/run` starts a throwaway
//! cluster and sets it). Each test gets a database of its own, dropped at the
//! end, and may put a [`Proxy`] between the manager and the server to take the
//! database away and bring it back under load.

use postgres::{Client, NoTls};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// The server the tests use, or `None` (after a loud message) when it is not
/// set or not reachable here. Under CI (`CI` set) that is a failure instead:
/// CI must run these tests.
pub fn server(test: &str) -> Option<String> {
    let why = match std::env::var("SERVICE_MGR_TEST_PG") {
        Ok(url) if !url.is_empty() => match Client::connect(&url, NoTls) {
            Ok(_) => return Some(url),
            Err(e) => format!("SERVICE_MGR_TEST_PG={url} is not reachable: {e}"),
        },
        _ => "SERVICE_MGR_TEST_PG is not set".to_owned(),
    };
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: {why}; CI must run the PostgreSQL tests (.ci/run starts a throwaway cluster)"
        );
    }
    eprintln!(
        "\n*** SKIP {test}: {why}.\n*** The PostgreSQL job store is NOT tested. Run `. .ci/postgres.sh; start_test_postgres` \
         (as root, or with a PostgreSQL server installed) and export SERVICE_MGR_TEST_PG to run it.\n"
    );
    None
}

/// A database of its own for one test, dropped with it.
pub struct Db {
    admin: String,
    name: String,
    /// Its URL, for `job_store`.
    pub url: String,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Db {
    /// A new, empty database on `server` (a URL from [`server`]).
    pub fn new(server: &str) -> Db {
        let name = format!(
            "smt_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut admin = Client::connect(server, NoTls).unwrap();
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name}"))
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap();
        let url = with_database(server, &name);
        Db {
            admin: server.to_owned(),
            name,
            url,
        }
    }

    /// A connection to it, to check what the manager wrote.
    pub fn client(&self) -> Client {
        Client::connect(&self.url, NoTls).unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Ok(mut admin) = Client::connect(&self.admin, NoTls) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}

/// `url` with its database replaced by `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let base = match base[after_scheme..].find('/') {
        Some(i) => &base[..after_scheme + i],
        None => base,
    };
    format!("{base}/{db}{query}")
}

/// A TCP relay on a loopback port in front of the PostgreSQL server: taking
/// it down cuts every connection and refuses new ones, as a database that
/// stopped or a lost network would look from the manager.
pub struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    /// New connections are accepted and never answered (a hung server).
    stalled: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// A relay to the server of `url`.
    pub fn new(url: &str) -> Proxy {
        let config: postgres::Config = url.parse().unwrap();
        let host = match &config.get_hosts()[0] {
            postgres::config::Host::Tcp(h) => h.clone(),
            other => panic!("the PostgreSQL tests need a TCP server, not {other:?}"),
        };
        let upstream = format!(
            "{host}:{}",
            config.get_ports().first().copied().unwrap_or(5432)
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (down, conns, stop, stalled) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(Mutex::new(Vec::<TcpStream>::new())),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let (d, c, s, st) = (down.clone(), conns.clone(), stop.clone(), stalled.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                if d.load(Ordering::SeqCst) {
                    drop(client); // refused: closed at once
                    continue;
                }
                if st.load(Ordering::SeqCst) {
                    c.lock().unwrap().push(client); // held, never answered
                    continue;
                }
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let mut list = c.lock().unwrap();
                list.push(client.try_clone().unwrap());
                list.push(server.try_clone().unwrap());
                drop(list);
                pump(client.try_clone().unwrap(), server.try_clone().unwrap());
                pump(server, client);
            }
        });
        Proxy {
            port,
            down,
            stalled,
            conns,
            stop,
        }
    }

    /// `url` pointed at the relay instead of the server.
    pub fn url(&self, url: &str) -> String {
        let config: postgres::Config = url.parse().unwrap();
        let host = match &config.get_hosts()[0] {
            postgres::config::Host::Tcp(h) => h.clone(),
            other => panic!("{other:?}"),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        url.replacen(
            &format!("{host}:{port}"),
            &format!("127.0.0.1:{}", self.port),
            1,
        )
    }

    /// Take the database away: every connection cut, new ones refused.
    pub fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// A server that hangs: every connection cut, new ones accepted and
    /// never answered.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }

    /// Bring it back.
    pub fn up(&self) {
        self.stalled.store(false, Ordering::SeqCst);
        self.down.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.down();
        let _ = TcpStream::connect(("127.0.0.1", self.port)); // wakes the accept loop
    }
}

/// Copy one direction until either side closes.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

/// A PostgreSQL cluster of its own for one test, on a free loopback port, that
/// the test may stop and start (`SERVICE_MGR_TEST_PG_BIN` names the server's
/// bin directory, else the newest /usr/lib/postgresql/*/bin). Run as the
/// postgres user when we are root (initdb refuses root). Stopped and removed
/// on drop.
pub struct Cluster {
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl Cluster {
    /// A new cluster, started; `None` (after a loud message) without the
    /// server's programs, a failure under CI.
    pub fn new(test: &str) -> Option<Cluster> {
        let bin = std::env::var_os("SERVICE_MGR_TEST_PG_BIN")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
                    .ok()?
                    .filter_map(|e| Some(e.ok()?.path().join("bin")))
                    .filter(|b| b.join("initdb").exists())
                    .collect();
                dirs.sort_by_key(|d| {
                    d.parent()
                        .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
                        .unwrap_or(0)
                });
                dirs.pop()
            });
        let Some(bin) = bin else {
            let why = "no PostgreSQL server programs (apt-get install postgresql, or set SERVICE_MGR_TEST_PG_BIN)";
            if std::env::var_os("CI").is_some() {
                panic!("{test}: {why}; CI must run the PostgreSQL tests");
            }
            eprintln!("\n*** SKIP {test}: {why}.\n");
            return None;
        };
        let as_postgres = nix::unistd::geteuid().is_root();
        let dir = tempfile::tempdir().unwrap();
        if as_postgres {
            let pg = nix::unistd::User::from_name("postgres")
                .unwrap()
                .expect("a postgres user (the postgresql package makes it)");
            std::os::unix::fs::chown(dir.path(), Some(pg.uid.as_raw()), Some(pg.gid.as_raw()))
                .unwrap();
        }
        let port = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let c = Cluster {
            bin,
            dir,
            port,
            as_postgres,
        };
        let data = c.dir.path().join("data");
        let data = data.to_str().unwrap();
        c.run(
            "initdb",
            &["-D", data, "-A", "trust", "-U", "postgres", "--no-sync"],
        );
        c.start();
        Some(c)
    }

    /// A server program, as the postgres user when we are root.
    fn run(&self, program: &str, args: &[&str]) {
        let exe = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            std::process::Command::new(&exe)
        };
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn pg_ctl(&self, args: &[&str]) {
        let data = self.dir.path().join("data");
        let mut all = vec!["-D", data.to_str().unwrap()];
        all.extend_from_slice(args);
        self.run("pg_ctl", &all);
    }

    /// Start the server (again), on its port.
    pub fn start(&self) {
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        self.pg_ctl(&[
            "-w",
            "-t",
            "60",
            "-l",
            log.to_str().unwrap(),
            "-o",
            &opts,
            "start",
        ]);
    }

    /// Stop the server (fast: connections are told and closed).
    pub fn stop(&self) {
        self.pg_ctl(&["-w", "-m", "fast", "stop"]);
    }

    /// The URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let exe = self.bin.join("pg_ctl");
        let args = [
            "-D",
            data.to_str().unwrap_or_default(),
            "-m",
            "immediate",
            "stop",
        ];
        let _ = if self.as_postgres {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&exe)
                .args(args)
                .output()
        } else {
            std::process::Command::new(&exe).args(args).output()
        };
    }
}

/// `job_store = "URL"`, as a `-O` setting.
pub fn job_store(url: &str) -> String {
    format!("job_store={}", super::toml_str(url))
}

/// A manager of the job store `url` on the state_dir (and so the keys) of
/// `pki`, on new loopback ports or on `endpoints` (a restart).
pub fn manager_on(pki: &super::Pki, url: &str, endpoints: Option<&[String]>) -> super::Proc {
    let state = format!("state_dir={}", super::toml_str(&pki.path("state")));
    let store = job_store(url);
    let fresh = super::MANAGER_ENDPOINTS.map(|k| format!("{k}={}", super::LOOPBACK));
    let mut args = vec![
        "daemon",
        "-D",
        "-f",
        "/dev/null",
        "-O",
        &state,
        "-O",
        &store,
    ];
    args.extend(["-O", r#"mgmt_admin_keys=["tester"]"#]);
    for e in endpoints.unwrap_or(&fresh) {
        args.extend(["-O", e.as_str()]);
    }
    let p = super::spawn_ready(&args);
    super::register_manager(&p, pki);
    p
}

//! A real PostgreSQL server on 127.0.0.1, owned by the test: a scratch
//! cluster (initdb) run as an unprivileged user, password authentication
//! on TCP, stopped (fast shutdown) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The password of the cluster's one role, `gitpulse`: tests look for it
/// in everything gitpulse prints.
pub const POSTGRES_PASSWORD: &str = "pg-CANARY-s3cret-4711";

/// A running PostgreSQL cluster.
pub struct PostgresServer {
    child: Child,
    port: u16,
    bin: PathBuf,
    data: PathBuf,
    sockets: PathBuf,
    /// With TLS: the CA that signed its certificate (for 127.0.0.1).
    ca: Option<PathBuf>,
    /// The unprivileged user and group it runs as, when the test runs as
    /// root.
    user: Option<(u32, u32)>,
    _dir: tempfile::TempDir,
}

/// Debian's server binaries (`postgresql-NN`), newest first, else `PATH`.
fn bin_dir() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|b| b.join("initdb").is_file())
        .collect();
    found.sort_by_key(|b| {
        b.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        let which = Command::new("sh")
            .args(["-c", "command -v initdb"])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
        let initdb = which.expect(
            "PostgreSQL's server is needed for the PostgreSQL tests (Debian package postgresql)",
        );
        PathBuf::from(initdb)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    })
}

fn uid_of(user: &str) -> Option<(u32, u32)> {
    let id = |flag: &str| {
        Command::new("id")
            .args([flag, user])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
    };
    Some((id("-u")?, id("-g")?))
}

impl PostgresServer {
    /// Makes a scratch cluster and starts it; panics with a clear message
    /// when PostgreSQL is missing or will not start.
    pub fn start() -> PostgresServer {
        PostgresServer::start_as(false)
    }

    /// Like [`PostgresServer::start`], offering TLS with a certificate for
    /// 127.0.0.1 that a scratch CA signed ([`PostgresServer::ca_file`]).
    pub fn start_with_tls() -> PostgresServer {
        PostgresServer::start_as(true)
    }

    fn start_as(tls: bool) -> PostgresServer {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("scratch dir");
        // initdb and postgres refuse to run as root: the cluster belongs
        // to `nobody` then.
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let user = root.then(|| uid_of("nobody").expect("the user `nobody` exists"));
        let data = dir.path().join("data");
        let sockets = dir.path().join("sockets");
        std::fs::create_dir(&sockets).expect("socket dir");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, POSTGRES_PASSWORD).expect("password file");
        let certs = dir.path().join("certs");
        let ca = tls.then(|| {
            std::fs::create_dir(&certs).expect("certs dir");
            let (ca, cert, key) = crate::certs::self_signed(&certs);
            // The server reads its key only if nobody else may.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("key mode");
            assert!(cert.exists());
            ca
        });
        if let Some((uid, gid)) = user {
            let mut paths = vec![dir.path().to_path_buf(), sockets.clone(), pwfile.clone()];
            if tls {
                paths.extend([certs.clone(), certs.join("cert.pem"), certs.join("key.pem")]);
            }
            for path in paths {
                std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown scratch dir");
            }
        }
        let server = PostgresServer {
            // Replaced below; a placeholder child that is already gone.
            child: Command::new("true").spawn().expect("true runs"),
            port: 0,
            bin,
            data: data.clone(),
            sockets: sockets.clone(),
            ca,
            user,
            _dir: dir,
        };
        let out = server
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "gitpulse",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server.run()
    }

    fn run(mut self) -> PostgresServer {
        for _ in 0..5 {
            if self.serve_on(crate::free_port()) {
                return self;
            }
        }
        panic!("postgres did not start on 127.0.0.1");
    }

    /// Starts the server on `port`; whether it came up (not: the port
    /// was taken).
    fn serve_on(&mut self, port: u16) -> bool {
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &port.to_string(), "-F"])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.sockets.display()
            ))
            .args(["-c", "max_connections=200", "-c", "shared_buffers=16MB"])
            .args(self.tls_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres runs");
        self.child = child;
        self.port = port;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn tls_args(&self) -> Vec<String> {
        let Some(ca) = &self.ca else {
            return Vec::new();
        };
        let certs = ca.parent().map(Path::to_path_buf).unwrap_or_default();
        vec![
            "-c".into(),
            "ssl=on".into(),
            "-c".into(),
            format!("ssl_cert_file={}", certs.join("cert.pem").display()),
            "-c".into(),
            format!("ssl_key_file={}", certs.join("key.pem").display()),
        ]
    }

    /// The CA that signed the server's certificate (started with TLS).
    pub fn ca_file(&self) -> Option<&Path> {
        self.ca.as_deref()
    }

    /// Stops the server (fast shutdown: sessions are ended) and keeps it
    /// down until [`PostgresServer::start_again`].
    pub fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a stopped server again, on the same port with the same data.
    pub fn start_again(&mut self) {
        assert!(
            self.serve_on(self.port),
            "postgres did not start again on port {}",
            self.port
        );
    }

    /// A server binary, run as the cluster's user.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={uid}"),
                    &format!("--regid={gid}"),
                    "--clear-groups",
                    "--",
                ])
                .arg(path);
                // nobody's home is not writable; the cluster is its cwd.
                c.current_dir(self._dir.path());
                c
            }
            None => Command::new(path),
        }
    }

    /// The server's process id (its backends are its children).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Makes an empty database `name` and gives its URL (with the
    /// password: a secret, as a user's would be).
    pub fn database(&self, name: &str) -> String {
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "a plain database name: {name}"
        );
        self.sql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(name)
    }

    /// The URL of database `name`, password included.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://gitpulse:{POSTGRES_PASSWORD}@127.0.0.1:{}/{name}",
            self.port
        )
    }

    /// Runs `sql` in database `db` with psql; its output, or a panic.
    pub fn sql(&self, db: &str, sql: &str) -> String {
        let psql = Some(self.bin.join("psql"))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("psql"));
        let out = Command::new(psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "gitpulse", "-d", db, "-c", sql])
            .env("PGPASSWORD", POSTGRES_PASSWORD)
            .output()
            .expect("psql runs (Debian package postgresql-client)");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // Fast shutdown (SIGINT): backends end, shared memory is given back.
        self.stop();
    }
}

//! A real OpenSSH server on 127.0.0.1, owned by the test: its own host key,
//! its own authorized key for the current user, no PAM, no passwords.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::fixture::git_ok;

/// A running `sshd`; killed when dropped.
pub struct Sshd {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    user: String,
}

fn keygen(path: &Path) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("ssh-keygen can be run (package openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Sshd {
    /// Starts sshd; panics with a clear message when OpenSSH is missing.
    pub fn start() -> Sshd {
        let sshd = ["/usr/sbin/sshd", "/usr/local/sbin/sshd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("sshd is needed for the SSH tests (Debian package openssh-server)");
        let dir = tempfile::tempdir().expect("scratch dir");
        let d = dir.path();
        keygen(&d.join("host_ed25519"));
        keygen(&d.join("client"));
        keygen(&d.join("stranger"));
        std::fs::copy(d.join("client.pub"), d.join("authorized_keys")).expect("authorized_keys");
        let user = git_ok(d, &["var", "GIT_COMMITTER_IDENT"]); // forces git to be runnable
        drop(user);
        let user = std::env::var("USER")
            .ok()
            .or_else(|| {
                Command::new("id")
                    .arg("-un")
                    .output()
                    .ok()
                    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            })
            .unwrap_or_else(|| "root".into());
        // sshd insists on its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        for _ in 0..5 {
            let port = crate::free_port();
            let config = d.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {host}\nAuthorizedKeysFile {keys}\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                     UsePAM no\nStrictModes no\nPidFile none\nPermitRootLogin prohibit-password\n\
                     AllowUsers {user}\nLogLevel ERROR\n",
                    host = d.join("host_ed25519").display(),
                    keys = d.join("authorized_keys").display(),
                ),
            )
            .expect("sshd_config");
            let mut child = Command::new(sshd)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("sshd can be started");
            let until = Instant::now() + Duration::from_secs(10);
            while Instant::now() < until {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sshd {
                        child,
                        port,
                        dir,
                        user,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("sshd did not start");
    }

    /// `ssh://USER@127.0.0.1:PORT/ABSOLUTE/PATH`
    pub fn url(&self, repo: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            repo.display()
        )
    }

    /// The private key sshd accepts.
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client")
    }

    /// A private key sshd does not accept.
    pub fn stranger_key(&self) -> PathBuf {
        self.dir.path().join("stranger")
    }

    /// A known_hosts file listing this server's real host key.
    pub fn known_hosts(&self) -> PathBuf {
        let key =
            std::fs::read_to_string(self.dir.path().join("host_ed25519.pub")).expect("host key");
        let mut fields = key.split_whitespace();
        let line = format!(
            "[127.0.0.1]:{} {} {}\n",
            self.port,
            fields.next().unwrap_or(""),
            fields.next().unwrap_or("")
        );
        let path = self.dir.path().join("known_hosts");
        std::fs::write(&path, line).expect("known_hosts");
        path
    }

    /// A known_hosts file that lists another key for this server.
    pub fn wrong_known_hosts(&self) -> PathBuf {
        let key = std::fs::read_to_string(self.dir.path().join("stranger.pub")).expect("key");
        let mut fields = key.split_whitespace();
        let path = self.dir.path().join("wrong_known_hosts");
        let line = format!(
            "[127.0.0.1]:{} {} {}\n",
            self.port,
            fields.next().unwrap_or(""),
            fields.next().unwrap_or("")
        );
        std::fs::write(&path, line).expect("known_hosts");
        path
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

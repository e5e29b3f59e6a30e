//! A real SMTP server (Python's aiosmtpd) that keeps every message it
//! accepts, optionally behind STARTTLS or implicit TLS with a self-signed
//! certificate, and with a login.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How the server is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP.
    None,
    /// STARTTLS offered and required before MAIL.
    StartTls,
    /// TLS from the first byte (smtps).
    Implicit,
}

/// A received message: the raw text and what the envelope said.
#[derive(Debug, Clone)]
pub struct Mail {
    pub raw: String,
    pub mail_from: String,
    pub rcpt_tos: Vec<String>,
    /// Whether the session was encrypted.
    pub tls: bool,
    /// Who logged in, if anyone.
    pub login: Option<String>,
}

impl Mail {
    /// A header's (unfolded) value.
    pub fn header(&self, name: &str) -> Option<String> {
        let head = self.raw.split("\r\n\r\n").next().unwrap_or("");
        let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
        unfolded.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

/// A running SMTP server; stopped when dropped.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    /// The CA that signed the server's certificate (PEM), when TLS is on.
    pub ca_file: Option<PathBuf>,
}

impl SmtpServer {
    /// Starts a server; `login` is (user, password) when AUTH is required.
    pub fn start(tls: SmtpTls, login: Option<(&str, &str)>) -> SmtpServer {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let mail = dir.path().join("mail");
        std::fs::create_dir_all(&mail).expect("a mail directory");
        let certs = (tls != SmtpTls::None).then(|| crate::certs::self_signed(dir.path()));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp_server.py");
        for _ in 0..5 {
            let port = crate::free_port();
            let mut cmd = Command::new("python3");
            cmd.arg(&script)
                .arg("--port")
                .arg(port.to_string())
                .arg("--dir")
                .arg(&mail);
            if let Some((_, cert, key)) = &certs {
                cmd.arg("--cert").arg(cert).arg("--key").arg(key);
                match tls {
                    SmtpTls::Implicit => cmd.arg("--implicit-tls"),
                    _ => cmd.arg("--require-starttls"),
                };
            }
            if let Some((user, password)) = login {
                cmd.args(["--user", user, "--password", password]);
            }
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 runs (aiosmtpd is installed by .ci/run)");
            let ready = child.stdout.take().map(|out| {
                let mut line = String::new();
                let _ = BufReader::new(out).read_line(&mut line);
                line.trim() == "ready"
            });
            if ready == Some(true) {
                return SmtpServer {
                    child,
                    port,
                    dir,
                    ca_file: certs.map(|(ca, _, _)| ca),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("the SMTP server did not start: is aiosmtpd installed (python3 -m pip install aiosmtpd)?");
    }

    /// `smtp://127.0.0.1:PORT` (or `smtps://` for implicit TLS).
    pub fn url(&self, implicit: bool) -> String {
        format!(
            "{}://127.0.0.1:{}",
            if implicit { "smtps" } else { "smtp" },
            self.port
        )
    }

    /// Every message received so far, in order.
    pub fn messages(&self) -> Vec<Mail> {
        let dir = self.dir.path().join("mail");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        names.retain(|p| p.extension().is_some_and(|e| e == "eml"));
        names.sort();
        names
            .into_iter()
            .filter_map(|eml| {
                let raw = std::fs::read_to_string(&eml).ok()?;
                let meta: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(eml.with_extension("json")).ok()?,
                )
                .ok()?;
                Some(Mail {
                    raw,
                    mail_from: meta["mail_from"].as_str().unwrap_or("").to_string(),
                    rcpt_tos: meta["rcpt_tos"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(String::from))
                                .collect()
                        })
                        .unwrap_or_default(),
                    tls: meta["tls"].as_bool().unwrap_or(false),
                    login: meta["login"].as_str().map(String::from),
                })
            })
            .collect()
    }

    /// Waits up to `limit` for at least `n` messages.
    pub fn wait_for(&self, n: usize, limit: Duration) -> Vec<Mail> {
        let until = Instant::now() + limit;
        loop {
            let got = self.messages();
            if got.len() >= n || Instant::now() > until {
                return got;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! The daemon's API as its command-line clients use it (`gitpulse status
//! --live`, `gitpulse trigger`): where it listens and the token it expects
//! come from the same config and the same token rules the daemon uses
//! ([`configured_token`]). Nothing here serves; see `server`.

use std::time::Duration;

use crate::config::{ApiToken, DaemonSettings};
use crate::redact::Secret;

/// Why a request to the daemon did not get an answer it accepts.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The token cannot be read here.
    #[error("{0}")]
    Token(String),
    /// Nothing answers at the listen address.
    #[error("cannot reach the daemon at {addr}: {why}")]
    Unreachable {
        /// The listen address.
        addr: String,
        /// What the connection said.
        why: String,
    },
    /// The daemon refused the token.
    #[error("the daemon refused the API token in {0}: is it the daemon of this config?")]
    Refused(String),
    /// The daemon knows no such repository.
    #[error("{0}")]
    NotFound(String),
    /// Any other answer.
    #[error("the daemon answered {status}: {said}")]
    Answered {
        /// Its HTTP status.
        status: u16,
        /// What it said.
        said: String,
    },
}

/// The token a config names itself (`api_token_env`, `api_token_file`);
/// none when the daemon makes one at start. The daemon and its clients
/// read it the same way.
pub(crate) fn configured_token(daemon: &DaemonSettings) -> Result<Option<String>, String> {
    match &daemon.api_token {
        ApiToken::Env(var) => std::env::var(var)
            .map(Some)
            .map_err(|_| format!("the API token variable {var} is not set in this shell")),
        ApiToken::File(path) => std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| format!("cannot read the API token at {}: {e}", path.display())),
        ApiToken::Generated => Ok(None),
    }
}

/// A client of one daemon's API.
pub struct Client {
    base: String,
    token: Secret,
    token_place: String,
    agent: ureq::Agent,
}

impl Client {
    /// The client of the daemon `daemon` configures: its listen address and
    /// its token (the configured one, else the one it wrote at start).
    pub fn of(daemon: &DaemonSettings) -> Result<Client, ClientError> {
        let token = match configured_token(daemon).map_err(ClientError::Token)? {
            Some(token) => token,
            None => {
                let file = daemon.api_token_file();
                std::fs::read_to_string(&file).map_err(|e| {
                    ClientError::Token(format!(
                        "cannot read the daemon's API token at {}: {e} (is the daemon running, as this user?)",
                        file.display()
                    ))
                })?
            }
        };
        Ok(Client {
            base: format!("http://{}", daemon.listen),
            token: Secret::new(token.trim()),
            token_place: daemon.api_token_file().display().to_string(),
            // Statuses are answers, not errors.
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(10)))
                .build()
                .into(),
        })
    }

    /// `GET /v1/status`: the daemon's own view (running pulls included),
    /// as JSON text.
    pub fn status(&self) -> Result<String, ClientError> {
        let request = self
            .agent
            .get(format!("{}/v1/status", self.base))
            .header("Authorization", &format!("Bearer {}", self.token.expose()));
        let (status, body) = self.answer(request.call())?;
        match status {
            200 => Ok(body),
            _ => Err(self.refusal(status, &body)),
        }
    }

    /// Asks for a pull of `repo` now (none: of every repository).
    pub fn trigger(&self, repo: Option<&str>) -> Result<(), ClientError> {
        let url = match repo {
            Some(repo) => format!("{}/v1/repos/{repo}/pull", self.base),
            None => format!("{}/v1/pull", self.base),
        };
        let request = self
            .agent
            .post(url)
            .header("Authorization", &format!("Bearer {}", self.token.expose()))
            .content_type("application/json");
        let (status, body) = self.answer(request.send("{}"))?;
        match status {
            202 => Ok(()),
            _ => Err(self.refusal(status, &body)),
        }
    }

    fn answer(
        &self,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, String), ClientError> {
        let mut response = sent.map_err(|e| ClientError::Unreachable {
            addr: self.base.trim_start_matches("http://").to_string(),
            why: e.to_string(),
        })?;
        let body = response.body_mut().read_to_string().unwrap_or_default();
        Ok((response.status().as_u16(), body))
    }

    fn refusal(&self, status: u16, body: &str) -> ClientError {
        // The API says why in `{"error": …}`.
        let said = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| body.trim().to_string());
        match status {
            401 => ClientError::Refused(self.token_place.clone()),
            404 => ClientError::NotFound(said),
            status => ClientError::Answered { status, said },
        }
    }
}

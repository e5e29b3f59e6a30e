//! The daemon's HTTP face: `/healthz`, `/status` (JSON), and the manual
//! trigger API (`POST /trigger/REPO`, `POST /trigger` for all). Binds where
//! `[daemon] listen` says (loopback by default). It reads state and sends
//! commands; it never pulls or schedules by itself.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

/// What the HTTP face may ask of whatever runs behind it (the daemon): the
/// server depends on this, not on the daemon.
pub trait Control: Send + Sync + 'static {
    /// Whether a repository of that name is configured.
    fn has_repo(&self, name: &str) -> bool;
    /// Asks for an immediate pull of `repo`, or of every repository.
    fn trigger(&self, repo: Option<&str>);
    /// Every repository's state and the counters, as JSON. Blocks (it reads
    /// the state database): the server calls it off the async workers.
    fn status(&self) -> serde_json::Value;
}

type View = Arc<dyn Control>;

/// Serves until the listener fails; runs on the caller's runtime.
pub async fn serve(listener: tokio::net::TcpListener, view: View) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/status", get(status))
        .route("/trigger", post(trigger_all))
        .route("/trigger/{repo}", post(trigger))
        .with_state(view);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("HTTP server stopped: {e}");
    }
}

async fn status(State(view): State<View>) -> Result<Json<serde_json::Value>, (StatusCode, String)> {
    // The state lives in SQLite: read it off the async workers.
    tokio::task::spawn_blocking(move || view.status())
        .await
        .map(Json)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")))
}

async fn trigger(State(view): State<View>, Path(repo): Path<String>) -> (StatusCode, String) {
    if !view.has_repo(&repo) {
        return (
            StatusCode::NOT_FOUND,
            format!("no repository named `{repo}` in the running config\n"),
        );
    }
    view.trigger(Some(&repo));
    (
        StatusCode::ACCEPTED,
        format!("pull of `{repo}` requested\n"),
    )
}

async fn trigger_all(State(view): State<View>) -> (StatusCode, String) {
    view.trigger(None);
    (
        StatusCode::ACCEPTED,
        "pull of every repository requested\n".to_string(),
    )
}

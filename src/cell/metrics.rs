//! A cell's own `/metrics` (with `cell.metrics_listen`): its slots, running jobs and
//! each encode's speed, from the last beat it sent ([`crate::metrics::cell`]).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

use super::Cell;

impl Cell {
    /// Serves `/metrics` on `addr` until the cell stops (the task is aborted).
    pub(super) async fn serve_metrics(self: Arc<Self>, addr: SocketAddr) {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                return tracing::warn!(%addr, error = %e, "cannot serve metrics (cell.metrics_listen)")
            }
        };
        let cell = self.clone();
        let app = axum::Router::new().route(
            "/metrics",
            get(move || async move {
                let beat = cell.last_beat.lock().expect("never poisoned").clone();
                match beat {
                    Some(beat) => (
                        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                        crate::metrics::cell(&beat),
                    )
                        .into_response(),
                    None => (StatusCode::SERVICE_UNAVAILABLE, "no beat yet\n").into_response(),
                }
            }),
        );
        tracing::info!(%addr, "serving metrics");
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!(%addr, error = %e, "metrics server stopped");
        }
    }
}

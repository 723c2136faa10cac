//! `cellfarm dashboard`: one page that shows the farm at a glance and over time, the
//! same data as JSON under `/api/`, and `/metrics` for Prometheus.
//!
//! Read-only: every request reads what the ledger, the broker and Redis hold now
//! ([`snapshot::gather`]); nothing is kept between requests but the connections. The page
//! is rendered on the server ([`page`]): HTML with inline SVG charts, no script, no build
//! step, no request to anywhere else, refreshed by the browser every
//! [`REFRESH_SECS`]. It binds to loopback unless told otherwise, and with
//! `dashboard.token` in the config every request must carry the token.

pub mod page;
pub mod snapshot;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::sync::Mutex;

use crate::boot::Systems;
use crate::config::Config;
use crate::queue::Broker;

/// Seconds between the page's refreshes.
pub const REFRESH_SECS: u64 = 10;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address to serve on; loopback by default, so that only this machine sees the farm.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
}

/// What every request reads from.
struct Dashboard {
    config: Config,
    systems: Systems,
    /// Connected on first use, and again after a failure.
    broker: Mutex<Option<Broker>>,
}

/// `cellfarm dashboard`: serves until SIGINT or SIGTERM.
pub async fn run(config: &Config, sdk: &aws_config::SdkConfig, args: &Args) -> anyhow::Result<()> {
    let systems = Systems::connect(config, sdk).await?;
    let state = Arc::new(Dashboard {
        config: config.clone(),
        systems,
        broker: Mutex::new(None),
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener.local_addr()?;
    // The one line a script or a test reads to find the page.
    println!("dashboard at http://{bound}/");
    tracing::info!(%bound, token = config.dashboard.token.is_some(), "dashboard serving");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(stopped())
        .await
        .context("serving the dashboard")?;
    Ok(())
}

fn router(state: Arc<Dashboard>) -> Router {
    Router::new()
        .route("/", get(page_route))
        .route("/api/snapshot", get(api_snapshot))
        .route("/api/jobs/{id}", get(api_job))
        .route("/metrics", get(metrics_route))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .with_state(state)
}

async fn stopped() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler can be installed");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Lets a request through when no token is configured, or when it carries the token
/// (`Authorization: Bearer <token>` or `?token=<token>`).
async fn authorize(State(d): State<Arc<Dashboard>>, request: Request, next: Next) -> Response {
    let Some(token) = d.config.dashboard.token.as_deref() else {
        return next.run(request).await;
    };
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let query = request.uri().query().unwrap_or_default();
    let in_query = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("token="))
        .any(|t| percent_encoding::percent_decode_str(t).decode_utf8_lossy() == token);
    if bearer == Some(token) || in_query {
        next.run(request).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "a token is needed: dashboard.token in the config\n",
        )
            .into_response()
    }
}

impl Dashboard {
    /// What the page appends to its links: the token, when one guards the dashboard.
    fn link_query(&self) -> String {
        self.config
            .dashboard
            .token
            .as_deref()
            .map_or(String::new(), |t| {
                let t =
                    percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC);
                format!("?token={t}")
            })
    }

    /// The farm now, through the held broker connection (made again after a failure).
    async fn snapshot(&self) -> anyhow::Result<snapshot::Snapshot> {
        let mut held = self.broker.lock().await;
        if held.is_none() {
            *held = Some(crate::boot::broker(&self.config).await?);
        }
        let broker = held.as_ref().expect("connected above");
        let got = snapshot::gather(&self.config, &self.systems, broker).await;
        if got.is_err() {
            *held = None;
        }
        got
    }
}

/// A failure to read the farm, as the page or API shows it.
fn unavailable(e: &anyhow::Error) -> Response {
    tracing::warn!(error = %format!("{e:#}"), "cannot read the farm");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("cannot read the farm: {e:#}\n"),
    )
        .into_response()
}

fn with_type(body: String, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

async fn page_route(State(d): State<Arc<Dashboard>>) -> Response {
    match d.snapshot().await {
        Ok(s) => with_type(
            page::render(&s, &d.link_query()),
            "text/html; charset=utf-8",
        ),
        Err(e) => unavailable(&e),
    }
}

async fn api_snapshot(State(d): State<Arc<Dashboard>>) -> Response {
    match d.snapshot().await {
        Ok(s) => with_type(
            serde_json::to_string(&s).expect("a snapshot always serializes"),
            "application/json",
        ),
        Err(e) => unavailable(&e),
    }
}

async fn api_job(State(d): State<Arc<Dashboard>>, Path(id): Path<String>) -> Response {
    match snapshot::job(&d.systems.ledger, &id).await {
        Ok(Some(job)) => with_type(job.to_string(), "application/json"),
        Ok(None) => (StatusCode::NOT_FOUND, format!("no job {id}\n")).into_response(),
        Err(e) => unavailable(&e),
    }
}

async fn metrics_route(State(d): State<Arc<Dashboard>>) -> Response {
    match d.snapshot().await {
        Ok(s) => with_type(crate::metrics::farm(&s), crate::metrics::CONTENT_TYPE),
        Err(e) => unavailable(&e),
    }
}

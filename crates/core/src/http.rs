//! The operational endpoints every service serves: `/metrics`, `/healthz`, `/readyz`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::Registry;

/// Readiness of a service: ready when every dependency it needs is reachable and it is not
/// shutting down. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health {
    inner: Arc<HealthInner>,
}

#[derive(Debug, Default)]
struct HealthInner {
    ready: AtomicBool,
    stopping: AtomicBool,
    why_not: Mutex<String>,
}

impl Health {
    pub fn new() -> Self {
        let h = Health::default();
        h.set_not_ready("starting");
        h
    }

    pub fn set_ready(&self) {
        self.inner.ready.store(true, Ordering::Release);
    }

    pub fn set_not_ready(&self, why: impl Into<String>) {
        if let Ok(mut w) = self.inner.why_not.lock() {
            *w = why.into();
        }
        self.inner.ready.store(false, Ordering::Release);
    }

    pub fn set_stopping(&self) {
        self.inner.stopping.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire) && !self.inner.stopping.load(Ordering::Acquire)
    }

    fn status(&self) -> (StatusCode, String) {
        if self.inner.stopping.load(Ordering::Acquire) {
            (StatusCode::SERVICE_UNAVAILABLE, "not ready: shutting down\n".into())
        } else if self.inner.ready.load(Ordering::Acquire) {
            (StatusCode::OK, "ready\n".into())
        } else {
            let why = self.inner.why_not.lock().map(|w| w.clone()).unwrap_or_default();
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"))
        }
    }
}

#[derive(Clone)]
struct Ops {
    registry: Registry,
    health: Health,
}

/// `/metrics`, `/healthz` (the process is up) and `/readyz` (it can do its job).
pub fn ops_router<S: Clone + Send + Sync + 'static>(registry: Registry, health: Health) -> Router<S> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Ops { registry, health })
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        crate::telemetry::render(&ops.registry),
    )
}

async fn readyz(State(ops): State<Ops>) -> impl IntoResponse {
    ops.health.status()
}

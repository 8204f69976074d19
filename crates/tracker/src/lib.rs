//! fleetstream tracker: the history and the live map of the fleet.
//!
//! It consumes `positions` and `events` in its own consumer group and stores every position
//! (batched, idempotently on `(obu_id, boot, seq)`) and every fleet event (idempotently on its
//! `event_id`; trips in their own table) in SQLite (default, embedded) or PostgreSQL
//! (`DATABASE_URL=postgres://...`), for `--retention`; it commits offsets only after a batch is
//! durable. At start-up it reads `vehicle-latest` whole, so the latest position of every vehicle
//! is there at once. It follows the compacted `geofences` topic whole, and writes it for the
//! API. It serves, on one port: the map page (`/`), the API (`/api/...`, see docs/api.md:
//! vehicles, tracks, events, trips, geofences), the live feeds (`/api/live`, `/api/events/live`,
//! Server-Sent Events) and `/metrics`, `/healthz`, `/readyz`. Every `/api` route needs a bearer
//! token with a role (`viewer` reads, `admin` also writes geofences and decommissions vehicles;
//! see `auth.rs` and docs/security.md); the page and the ops endpoints hold no data and stay
//! open. It follows `vehicle-latest` after the seed for tombstones (decommissioned vehicles,
//! whoever wrote them), and writes them for the API (`latest.rs`).
//!
//! ```text
//! TRACKER_API_TOKENS='s3cret admin' tracker --kafka-brokers 127.0.0.1:9092    # SQLite file in the working dir
//! DATABASE_URL=postgres://tracker:secret@db/fleet tracker --api-tokens-file tokens  # PostgreSQL
//! ```

pub mod api;
mod auth;
mod config;
mod geofences;
mod ingest;
mod latest;
mod live;
mod metrics;
pub mod store;
mod view;
mod web;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use axum::Router;
use rdkafka::producer::FutureProducer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use fleetstream_core::http::{ops_router, Health};
use fleetstream_core::now_ms;
use fleetstream_core::otel::Tracing;
use fleetstream_core::publish::Publisher;

use geofences::Geofences;
use ingest::{Ingest, Stopping};
use live::Feeds;

pub use auth::{ApiAuth, Role};
pub use config::Config;
pub use metrics::Metrics;
pub use store::Store;

/// A tracker with its database open and migrated, its consumer subscribed and its port bound.
pub struct Application {
    config: Arc<Config>,
    listener: TcpListener,
    store: Store,
    consumer: Arc<ingest::IngestConsumer>,
    /// Every write of the tracker: geofences, tombstones.
    producer: FutureProducer,
    fences: Geofences,
    guard: auth::Guard,
    metrics: Metrics,
    health: Health,
    /// Spans of traced positions (off unless --otlp-endpoint).
    tracing: Tracing,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application").field("group", &self.config.group_id).field("store", &self.store.backend()).finish()
    }
}

impl Application {
    /// Opens the database (applying migrations), creates the Kafka clients, binds the port.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let metrics = Metrics::new();
        // First: a tracker that would serve its API to anyone by mistake does not start.
        let guard = auth::Guard::from_config(&config, &metrics)?;
        let store = Store::open(config.database_url.expose(), config.db_pool_size)
            .await
            .with_context(|| format!("cannot open the database ({})", redact_url(config.database_url.expose())))?;
        let consumer = ingest::subscribe(&config)?;
        let producer: FutureProducer = config.kafka.producer_config(&config.producer).create().context("cannot create the Kafka producer")?;
        let fences = Geofences::new(&config, metrics.clone(), producer.clone());

        let listener = TcpListener::bind(config.listen).await.with_context(|| format!("cannot listen on {}", config.listen))?;
        tracing::info!(
            addr = %listener.local_addr()?,
            database = %redact_url(config.database_url.expose()),
            backend = store.backend(),
            brokers = %config.kafka.brokers,
            options = ?config.kafka.redacted_options(),
            group = %config.group_id,
            positions = %config.positions_topic,
            latest = %config.latest_topic,
            events = %config.events_topic,
            geofences = %config.geofences_topic,
            "tracker started"
        );
        // Traces mostly start at the receiver; here only for positions that arrive without one.
        let tracing = Tracing::start(&config.trace, "fleetstream-tracker", config.trace_sample_ratio)?;
        Ok(Application {
            tracing,
            config: Arc::new(config),
            listener,
            store,
            consumer: Arc::new(consumer),
            producer,
            fences,
            guard,
            metrics,
            health: Health::new(),
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// The database, for tests and tools that look inside.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Serves and ingests until `shutdown` resolves; then writes and commits the batch in hand
    /// (within `--shutdown-timeout`), leaves the group, and returns.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let stop_http = CancellationToken::new();
        let stop_ingest = CancellationToken::new();
        let abort = CancellationToken::new();
        // Open feeds end with the HTTP server, so they cannot hold its graceful shutdown.
        let live = Feeds::new(self.config.live_buffer, &self.metrics, stop_http.clone());
        // Tombstones are written while the API serves.
        let publisher = Publisher::new(self.producer.clone(), stop_http.clone());
        let vehicles = latest::Vehicles::new(&self.config, publisher, self.store.clone(), self.metrics.clone(), live.positions.clone());

        let state = api::AppState::new(self.config.clone(), self.store.clone(), self.metrics.clone(), self.fences.clone(), vehicles.clone());
        let router = router(state, &self.guard, live.clone(), self.metrics.clone(), self.health.clone());
        let server_stop = stop_http.clone();
        let server = tokio::spawn(async move { axum::serve(self.listener, router).with_graceful_shutdown(server_stop.cancelled_owned()).await });

        let ingest = Ingest::new(
            self.config.clone(),
            self.consumer.clone(),
            self.store.clone(),
            self.metrics.clone(),
            self.health.clone(),
            live,
            vehicles.clone(),
            Stopping { drain: stop_ingest.clone(), abort: abort.clone() },
            self.tracing.clone(),
        );
        let ingest = tokio::spawn(ingest.run());
        let latest_follower = tokio::spawn(vehicles.follow(self.config.clone(), stop_ingest.clone()));
        let pruner = tokio::spawn(prune(self.store.clone(), self.metrics.clone(), self.config.clone(), stop_ingest.clone()));
        let follower = tokio::spawn(self.fences.clone().follow(self.config.clone(), stop_ingest.clone()));

        let mut ingest = ingest;
        tokio::select! {
            () = shutdown => {}
            result = &mut ingest => {
                stop_http.cancel();
                let _ = server.await;
                anyhow::bail!("the ingest loop ended unexpectedly: {result:?}");
            }
        }
        self.health.set_stopping();
        stop_http.cancel();
        stop_ingest.cancel();
        if tokio::time::timeout(self.config.shutdown_timeout, &mut ingest).await.is_err() {
            tracing::warn!(timeout = ?self.config.shutdown_timeout, "the batch in hand was not stored in time; it will be read again after a restart");
            abort.cancel();
            let _ = ingest.await;
        }
        let _ = pruner.await;
        let _ = follower.await;
        let _ = latest_follower.await;
        // The last reference: dropping it closes the consumer, which leaves the group at once.
        drop(self.consumer);
        match server.await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "HTTP server error"),
            Err(error) => tracing::warn!(%error, "HTTP server task failed"),
        }
        let spans = self.tracing.clone();
        let _ = tokio::task::spawn_blocking(move || spans.shutdown()).await;
        tracing::info!("tracker stopped");
        Ok(())
    }
}

/// The map page and its assets, the API (behind the token check: see [`auth`]), the live feeds
/// (which also take `?access_token=`), and the open ops endpoints.
fn router(state: api::AppState, guard: &auth::Guard, live: Feeds, metrics: Metrics, health: Health) -> Router {
    let api = Router::new()
        .route("/api/config", get(api::map_config))
        .route("/api/vehicles", get(api::vehicles))
        .route("/api/vehicles/{id}", get(api::vehicle).delete(api::decommission))
        .route("/api/vehicles/{id}/track", get(api::track))
        .route("/api/vehicles/{id}/events", get(api::vehicle_events))
        .route("/api/vehicles/{id}/trips", get(api::trips))
        .route("/api/events", get(api::events))
        .route("/api/geofences", get(api::geofences).post(api::create_geofence))
        .route("/api/geofences/{id}", get(api::geofence).put(api::put_geofence).delete(api::delete_geofence))
        .route_layer(from_fn_with_state(guard.clone(), auth::require))
        .with_state(state);
    // EventSource cannot set headers: the feeds also take the token in the query string.
    let feeds = Router::new()
        .route("/api/live", get(live::serve).with_state(live.positions))
        .route("/api/events/live", get(live::serve).with_state(live.events))
        .route_layer(from_fn_with_state(guard.with_query_token(), auth::require));
    // The page holds no data (it asks the API, with a token), so it stays open.
    let page = Router::new().route("/", get(web::index)).route("/static/{*path}", get(web::asset));
    page.merge(api)
        .merge(feeds)
        .fallback(api::fallback)
        .layer(DefaultBodyLimit::max(api::MAX_BODY_BYTES))
        .merge(ops_router::<()>(metrics.registry.clone(), health))
        .layer(axum::middleware::from_fn_with_state(metrics, api::count_requests))
}

/// Deletes positions, events and trips older than the retention, now and every
/// `--prune-interval`.
async fn prune(store: Store, metrics: Metrics, config: Arc<Config>, stop: CancellationToken) {
    let retention = i64::try_from(config.retention.as_millis()).unwrap_or(i64::MAX);
    loop {
        let before = now_ms().saturating_sub(retention);
        pruned(&metrics, "positions", &metrics.pruned, before, store.prune(before).await);
        pruned(&metrics, "events", &metrics.events_pruned, before, store.prune_events(before).await);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(config.prune_interval) => {}
        }
    }
}

/// Counts and logs one pruning of `what` (rows with `ts < before`).
fn pruned(metrics: &Metrics, what: &'static str, counter: &prometheus::IntCounter, before: i64, result: Result<u64, store::StoreError>) {
    match result {
        Ok(0) => {}
        Ok(n) => {
            counter.inc_by(n);
            tracing::info!(deleted = n, before, what, "rows older than the retention deleted");
        }
        Err(error) => {
            metrics.db_errors.with_label_values(&["prune"]).inc();
            tracing::warn!(error = error.chain(), what, "pruning old rows failed; trying again next interval");
        }
    }
}

/// The database URL with its password masked, for logs.
fn redact_url(url: &str) -> String {
    // scheme://user:password@host...: mask between the first ':' after "//" and the '@'.
    let Some(start) = url.find("://").map(|i| i + 3) else { return url.to_string() };
    let rest = &url[start..];
    match (rest.find('@'), rest.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!("{}{}:***{}", &url[..start], &rest[..colon], &rest[at..]),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_logs() {
        assert_eq!(redact_url("postgres://tracker:s3cret@db:5432/fleet"), "postgres://tracker:***@db:5432/fleet");
        assert_eq!(redact_url("postgres://db/fleet"), "postgres://db/fleet");
        assert_eq!(redact_url("sqlite://fleetstream-tracker.db"), "sqlite://fleetstream-tracker.db");
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        use clap::Parser as _;
        let c = Config::try_parse_from(["tracker"]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen.port(), 30002);
        assert_eq!((c.positions_topic.as_str(), c.latest_topic.as_str()), ("positions", "vehicle-latest"));
        assert_eq!((c.events_topic.as_str(), c.geofences_topic.as_str()), ("events", "geofences"));
        assert_eq!(c.max_events, 1_000);
        assert_eq!(c.group_id, "fleetstream-tracker");
        assert_eq!(c.retention, std::time::Duration::from_secs(86_400));
        assert_eq!(c.flush_interval, std::time::Duration::from_secs(1));
        assert_eq!((c.api_auth, c.api_tokens_file.is_none(), c.api_tokens.is_none()), (ApiAuth::Token, true, true));
    }
}

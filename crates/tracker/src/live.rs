//! The live feed: Server-Sent Events at `GET /api/live`, one `position` event per position newly
//! stored, in the order they were stored (per vehicle: the order of the positions topic).
//!
//! SSE rather than WebSocket: the feed only flows one way, browsers reconnect by themselves
//! (`EventSource`), and it passes through any HTTP proxy. Each client has a bounded buffer; one
//! that falls behind gets a `lagged` event (and should reload `/api/vehicles`) instead of
//! slowing the ingest down.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::IntoResponse;
use futures_util::stream::{self, Stream};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;
use tokio_util::sync::CancellationToken;

use crate::api::AppState;
use crate::ingest::LiveUpdate;
use crate::Metrics;

/// Counts a client in the gauge for as long as its stream exists.
struct ClientGuard(Metrics);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.live_clients.dec();
    }
}

struct Client {
    updates: Receiver<LiveUpdate>,
    stop: CancellationToken,
    started: bool,
    _guard: ClientGuard,
}

/// `GET /api/live`
pub(crate) async fn live(State(app): State<AppState>) -> impl IntoResponse {
    app.metrics.live_clients.inc();
    // Subscribed before the response goes out: once a client has the headers, it misses
    // nothing stored after that.
    let client = Client { updates: app.live.subscribe(), stop: app.stop.clone(), started: false, _guard: ClientGuard(app.metrics.clone()) };
    let lagged = app.metrics.live_lagged.clone();
    Sse::new(events(client, lagged)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

fn events(client: Client, lagged: prometheus::IntCounter) -> impl Stream<Item = Result<Event, Infallible>> {
    stream::unfold(client, move |mut c| {
        let lagged = lagged.clone();
        async move {
            if !c.started {
                // Tells the browser how soon to reconnect, and gets the headers flushed at once.
                c.started = true;
                return Some((Ok(Event::default().retry(Duration::from_secs(2)).comment("fleetstream live feed")), c));
            }
            // Ends the stream on shutdown: an open feed must not hold the server's graceful
            // shutdown forever.
            let next = tokio::select! {
                () = c.stop.cancelled() => return None,
                next = c.updates.recv() => next,
            };
            let event = match next {
                Ok(json) => Event::default().event("position").data(&*json),
                Err(RecvError::Lagged(missed)) => {
                    lagged.inc();
                    Event::default().event("lagged").data(format!("{{\"missed\":{missed}}}"))
                }
                Err(RecvError::Closed) => return None,
            };
            Some((Ok(event), c))
        }
    })
}

//! The live map: a static page, its script and style, and Leaflet, all compiled into the binary
//! so the tracker needs no CDN and no files next to it. Only the map tiles come from outside
//! (`--tile-url`); without them the markers are drawn on a blank background.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use crate::api::ApiError;

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    /// Vendored files never change within a build; ours may between restarts.
    immutable: bool,
}

macro_rules! asset {
    ($path:literal, $ty:literal, $immutable:literal) => {
        Asset { path: $path, content_type: $ty, body: include_bytes!(concat!("../static/", $path)), immutable: $immutable }
    };
}

const ASSETS: &[Asset] = &[
    asset!("app.js", "text/javascript; charset=utf-8", false),
    asset!("app.css", "text/css; charset=utf-8", false),
    asset!("vendor/leaflet/leaflet.js", "text/javascript; charset=utf-8", true),
    asset!("vendor/leaflet/leaflet.css", "text/css; charset=utf-8", true),
    asset!("vendor/leaflet/LICENSE", "text/plain; charset=utf-8", true),
    asset!("vendor/leaflet/images/layers.png", "image/png", true),
    asset!("vendor/leaflet/images/layers-2x.png", "image/png", true),
    asset!("vendor/leaflet/images/marker-icon.png", "image/png", true),
    asset!("vendor/leaflet/images/marker-icon-2x.png", "image/png", true),
    asset!("vendor/leaflet/images/marker-shadow.png", "image/png", true),
];

const INDEX: &str = include_str!("../static/index.html");

/// `GET /`
pub(crate) async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX).into_response()
}

/// `GET /static/{*path}`
pub(crate) async fn asset(Path(path): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(a) => {
            let cache = if a.immutable { "public, max-age=86400" } else { "no-cache" };
            ([(header::CONTENT_TYPE, a.content_type), (header::CACHE_CONTROL, cache)], a.body).into_response()
        }
        None => ApiError::not_found(format!("no such file: /static/{path}")).into_response(),
    }
}

//! Who may use the API: bearer tokens with a role, kept only as SHA-256 hashes (the line format
//! of [`fleetstream_core::tokens`], shared with the receiver's device tokens).
//!
//! Every `/api` route needs a token; reads need `viewer` (or `admin`), anything that changes
//! state (`POST`, `PUT`, `DELETE`: the geofences, decommissioning a vehicle) needs `admin`. The live feeds also take the
//! token as `?access_token=`, because a browser's `EventSource` cannot set headers. A refusal is
//! the API's JSON error with `401` (no or unknown token, and `WWW-Authenticate: Bearer`) or `403`
//! (known token, role too low), counted by reason; a token is never logged or echoed.

use std::str::FromStr;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::IntCounterVec;

use fleetstream_core::tokens::{self, TokenTable};

use crate::api::ApiError;
use crate::config::Config;
use crate::metrics::Metrics;

/// `--api-auth`: whether the API checks tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ApiAuth {
    /// Every /api request needs `Authorization: Bearer TOKEN` of a configured API token.
    Token,
    /// The API is open to anyone who reaches the port (local demos only; a warning is logged).
    None,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads: positions, tracks, events, trips, geofences, the live feeds, the map config.
    Viewer,
    /// Reads, and everything that changes state (geofence writes, decommissioning vehicles).
    Admin,
}

impl FromStr for Role {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Role> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "admin" => Ok(Role::Admin),
            // Not quoted: in an entry with its fields swapped, this is the token.
            _ => bail!("unknown role: expected `viewer` or `admin`"),
        }
    }
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }
}

/// Why a request was refused: the `reason` label of `fleetstream_tracker_api_auth_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// No token in the request.
    Missing,
    /// A token that is not configured.
    Invalid,
    /// A valid token whose role may not do this.
    Forbidden,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Invalid => "invalid",
            Refusal::Forbidden => "forbidden",
        }
    }
}

const REALM: &str = "Bearer realm=\"fleetstream-tracker\"";
const LINE: &str = "`TOKEN ROLE` or `sha256:HEX ROLE` (ROLE `viewer` or `admin`)";

/// The API's gatekeeper: the configured tokens (none with `--api-auth none`).
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    tokens: Option<Arc<TokenTable<Role>>>,
    refused: IntCounterVec,
    /// Whether `?access_token=` is accepted too (the live feeds only).
    query_token: bool,
}

impl Guard {
    /// Reads the tokens of `--api-tokens-file` and `--api-tokens`; with `--api-auth token` and
    /// none configured, refuses to start.
    pub(crate) fn from_config(config: &Config, metrics: &Metrics) -> anyhow::Result<Guard> {
        let refused = metrics.api_auth_refused.clone();
        for reason in [Refusal::Missing, Refusal::Invalid, Refusal::Forbidden] {
            refused.with_label_values(&[reason.as_str()]);
        }
        if config.api_auth == ApiAuth::None {
            tracing::warn!(
                "--api-auth none: the tracker API is open: anyone who reaches it can read every vehicle's position, change geofences and decommission vehicles"
            );
            return Ok(Guard { tokens: None, refused, query_token: false });
        }
        let mut table = TokenTable::default();
        if let Some(path) = &config.api_tokens_file {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read --api-tokens-file {}", path.display()))?;
            table.extend(TokenTable::parse(&text, LINE, str::parse).with_context(|| format!("--api-tokens-file {}", path.display()))?);
        }
        if let Some(list) = config.api_tokens.as_ref().map(fleetstream_core::secret::Secret::expose) {
            table.extend(TokenTable::parse(&list.replace(';', "\n"), LINE, str::parse).context("--api-tokens (TRACKER_API_TOKENS)")?);
        }
        if table.is_empty() {
            bail!(
                "no API token configured: with --api-auth token (the default) set --api-tokens-file / TRACKER_API_TOKENS_FILE or \
                 --api-tokens / TRACKER_API_TOKENS (entries `TOKEN ROLE` or `sha256:HEX ROLE`, ROLE viewer or admin), \
                 or, for a local demo only, --api-auth none"
            );
        }
        tracing::info!(tokens = table.len(), "API tokens loaded");
        Ok(Guard { tokens: Some(Arc::new(table)), refused, query_token: false })
    }

    /// The same gatekeeper, also accepting `?access_token=` (for `EventSource`).
    pub(crate) fn with_query_token(&self) -> Guard {
        Guard { query_token: true, ..self.clone() }
    }

    fn check(&self, request: &Request) -> Result<(), Refusal> {
        let Some(tokens) = &self.tokens else { return Ok(()) };
        let from_query = || {
            let Query(pairs) = Query::<Vec<(String, String)>>::try_from_uri(request.uri()).ok()?;
            pairs.into_iter().find(|(name, _)| name == "access_token").map(|(_, token)| token)
        };
        let token = match tokens::bearer(request.headers()) {
            Some(t) => Some(t.to_string()),
            None if self.query_token => from_query(),
            None => None,
        };
        let token = token.filter(|t| !t.is_empty()).ok_or(Refusal::Missing)?;
        let role = *tokens.get(&token).ok_or(Refusal::Invalid)?;
        let needed = if matches!(*request.method(), Method::GET | Method::HEAD) { Role::Viewer } else { Role::Admin };
        if role < needed {
            return Err(Refusal::Forbidden);
        }
        Ok(())
    }

    fn refuse(&self, refusal: Refusal, request: &Request) -> Response {
        self.refused.with_label_values(&[refusal.as_str()]).inc();
        tracing::debug!(reason = refusal.as_str(), method = %request.method(), path = request.uri().path(), "API request refused");
        let how = if self.query_token { "`Authorization: Bearer TOKEN` or `?access_token=TOKEN`" } else { "`Authorization: Bearer TOKEN`" };
        let (error, challenge) = match refusal {
            Refusal::Missing => (ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", format!("an API token is required: send {how}")), REALM.to_string()),
            Refusal::Invalid => (
                ApiError::new(StatusCode::UNAUTHORIZED, "invalid_token", "the API token is not valid"),
                format!("{REALM}, error=\"invalid_token\""),
            ),
            Refusal::Forbidden => (
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!("a {} token may only read; {} {} needs an admin token", Role::Viewer.as_str(), request.method(), request.uri().path()),
                ),
                format!("{REALM}, error=\"insufficient_scope\""),
            ),
        };
        let mut response = error.into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// The middleware in front of every /api route.
pub(crate) async fn require(State(guard): State<Guard>, request: Request, next: Next) -> Response {
    match guard.check(&request) {
        Ok(()) => next.run(request).await,
        Err(refusal) => guard.refuse(refusal, &request),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_and_token_lists_parse_and_hide_their_secrets() {
        assert_eq!("admin".parse::<Role>().ok(), Some(Role::Admin));
        assert_eq!("viewer".parse::<Role>().ok(), Some(Role::Viewer));
        assert!("root".parse::<Role>().is_err());
        assert!(Role::Viewer < Role::Admin);
        let list: fleetstream_core::secret::Secret = "s3cret admin".parse().unwrap_or_else(|e| match e {});
        assert!(!format!("{list:?}").contains("s3cret"));
    }
}

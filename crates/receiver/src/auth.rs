//! Device authentication: a bearer token (header or `?token=` query parameter) bound to the
//! obu_id(s) it may publish as. Tokens are kept only as SHA-256 hashes, in memory and, if the
//! operator wishes, at rest (`sha256:HEX` entries); a token is never logged.

use std::collections::HashSet;

use anyhow::Context;
use axum::http::HeaderMap;
use fleetstream_core::tokens::{self, TokenTable};

/// Which vehicles a token may publish as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    Any,
    Only(HashSet<u64>),
}

impl Allowed {
    pub fn permits(&self, obu_id: u64) -> bool {
        match self {
            Allowed::Any => true,
            Allowed::Only(ids) => ids.contains(&obu_id),
        }
    }
}

/// Why a connection attempt was refused before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Invalid,
}

impl AuthFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Invalid => "invalid",
        }
    }
}

/// The known device tokens (their hashes; the line format and the lookup are
/// [`fleetstream_core::tokens`]'s, shared with the tracker's API tokens).
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    table: TokenTable<Allowed>,
}

impl Tokens {
    /// Parses entries in the line format (`TOKEN IDS` / `sha256:HEX IDS`).
    pub fn parse(text: &str) -> anyhow::Result<Tokens> {
        let table = TokenTable::parse(text, "`TOKEN OBU_IDS` (OBU_IDS comma-separated or `*`)", |ids| {
            if ids == "*" {
                return Ok(Allowed::Any);
            }
            let ids = ids
                .split(',')
                .map(|s| s.trim().parse::<u64>())
                .collect::<Result<HashSet<_>, _>>()
                .context("obu ids must be unsigned integers or `*`")?;
            Ok(Allowed::Only(ids))
        })?;
        Ok(Tokens { table })
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Checks the token presented with a connection attempt.
    pub fn authenticate(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<Allowed, AuthFailure> {
        self.credential(headers, query_token).map(|(_, allowed)| allowed)
    }

    /// The presented token's hash (what a connection keeps) and what it allows.
    pub fn credential(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<(tokens::TokenHash, Allowed), AuthFailure> {
        let token = tokens::bearer(headers).or(query_token).filter(|t| !t.is_empty()).ok_or(AuthFailure::Missing)?;
        let key = tokens::hash(token);
        self.table.get_hashed(&key).cloned().map(|allowed| (key, allowed)).ok_or(AuthFailure::Invalid)
    }

    /// What the token with this hash allows now, if it is still known.
    pub fn allowed(&self, key: &tokens::TokenHash) -> Option<Allowed> {
        self.table.get_hashed(key).cloned()
    }

    /// The tokens of `--auth-tokens-file` and `--auth-tokens`, at least one.
    pub fn load(file: Option<&std::path::Path>, inline: Option<&str>) -> anyhow::Result<Tokens> {
        let mut text = String::new();
        if let Some(path) = file {
            text = std::fs::read_to_string(path).with_context(|| format!("cannot read token file {}", path.display()))?;
        }
        if let Some(inline) = inline {
            text.push('\n');
            text.push_str(&inline.replace(';', "\n"));
        }
        let tokens = Tokens::parse(&text)?;
        if tokens.is_empty() {
            anyhow::bail!(
                "--auth token needs device tokens: set --auth-tokens-file / RECEIVER_AUTH_TOKENS_FILE or \
                 --auth-tokens / RECEIVER_AUTH_TOKENS (or --auth none for a local demo)"
            );
        }
        Ok(tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_bind_devices_to_their_ids() {
        let digest = tokens::hash_hex("hashed-secret");
        let tokens = Tokens::parse(&format!(
            "# fleet tokens\nsecret-a 1,2\nsha256:{digest} 3 # stored hashed\nadmin *\n"
        ))
        .unwrap_or_default();
        assert_eq!(tokens.len(), 3);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer secret-a"));
        let a = tokens.authenticate(&headers, None);
        assert!(matches!(&a, Ok(allowed) if allowed.permits(1) && allowed.permits(2) && !allowed.permits(3)));
        let h = tokens.authenticate(&HeaderMap::new(), Some("hashed-secret"));
        assert!(matches!(&h, Ok(allowed) if allowed.permits(3) && !allowed.permits(1)));
        assert!(matches!(tokens.authenticate(&HeaderMap::new(), Some("admin")), Ok(Allowed::Any)));
        assert_eq!(tokens.authenticate(&HeaderMap::new(), None), Err(AuthFailure::Missing));
        assert_eq!(tokens.authenticate(&HeaderMap::new(), Some("nope")), Err(AuthFailure::Invalid));
        assert!(Tokens::parse("only-a-token").is_err());
        assert!(Tokens::parse("t x,y").is_err());
    }
}

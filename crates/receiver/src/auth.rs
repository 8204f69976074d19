//! Device authentication: a bearer token (header or `?token=` query parameter) bound to the
//! obu_id(s) it may publish as. Tokens are kept only as SHA-256 hashes, in memory and, if the
//! operator wishes, at rest (`sha256:HEX` entries); a token is never logged.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context};
use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

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

/// The known device tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    by_hash: HashMap<[u8; 32], Allowed>,
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// Parses entries in the line format (`TOKEN IDS` / `sha256:HEX IDS`).
    pub fn parse(text: &str) -> anyhow::Result<Tokens> {
        let mut by_hash = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(secret), Some(ids), None) = (parts.next(), parts.next(), parts.next()) else {
                bail!("token entry {}: expected `TOKEN OBU_IDS` (OBU_IDS comma-separated or `*`)", n + 1);
            };
            let key = match secret.strip_prefix("sha256:") {
                Some(h) => {
                    let bytes = hex::decode(h).with_context(|| format!("token entry {}: sha256 value is not hex", n + 1))?;
                    <[u8; 32]>::try_from(bytes.as_slice())
                        .map_err(|_| anyhow::anyhow!("token entry {}: sha256 value must be 64 hex digits", n + 1))?
                }
                None => hash(secret),
            };
            let allowed = if ids == "*" {
                Allowed::Any
            } else {
                let ids = ids
                    .split(',')
                    .map(|s| s.trim().parse::<u64>())
                    .collect::<Result<HashSet<_>, _>>()
                    .with_context(|| format!("token entry {}: obu ids must be unsigned integers or `*`", n + 1))?;
                Allowed::Only(ids)
            };
            by_hash.insert(key, allowed);
        }
        Ok(Tokens { by_hash })
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Checks the token presented with a connection attempt.
    pub fn authenticate(&self, headers: &HeaderMap, query_token: Option<&str>) -> Result<Allowed, AuthFailure> {
        let bearer = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let token = bearer.or(query_token).filter(|t| !t.is_empty()).ok_or(AuthFailure::Missing)?;
        self.by_hash.get(&hash(token)).cloned().ok_or(AuthFailure::Invalid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn tokens_bind_devices_to_their_ids() {
        let digest = hex::encode(hash("hashed-secret"));
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

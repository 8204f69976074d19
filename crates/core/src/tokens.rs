//! Bearer tokens kept only as SHA-256 hashes: the line format shared by the receiver's device
//! tokens and the tracker's API tokens (`TOKEN VALUE` or `sha256:HEX VALUE`, `#` comments),
//! and the lookup of a presented token by its hash. A token is never logged, and neither the
//! table's `Debug` nor its errors show a token or a hash.

use std::collections::HashMap;

use anyhow::{bail, Context as _};
use axum::http::{header, HeaderMap};
use sha2::{Digest as _, Sha256};

/// The SHA-256 of a token: what is kept in memory (and, with `sha256:HEX`, at rest).
pub type TokenHash = [u8; 32];

/// The SHA-256 of `token`.
pub fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// `sha256:HEX` as an entry names it, as lowercase hex: what an operator stores instead of the token.
pub fn hash_hex(token: &str) -> String {
    hex::encode(hash(token))
}

/// The token of an `Authorization: Bearer TOKEN` header, if there is one.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Tokens (by hash), each with what it grants.
#[derive(Clone)]
pub struct TokenTable<V> {
    by_hash: HashMap<TokenHash, V>,
}

impl<V> Default for TokenTable<V> {
    fn default() -> Self {
        TokenTable { by_hash: HashMap::new() }
    }
}

impl<V> std::fmt::Debug for TokenTable<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenTable").field("tokens", &self.by_hash.len()).finish_non_exhaustive()
    }
}

impl<V> TokenTable<V> {
    /// Parses one entry a line, `SECRET VALUE` where SECRET is a token or `sha256:HEX` (the
    /// token's SHA-256, 64 hex digits); blank lines and `#` comments are skipped. `value` reads
    /// VALUE (its error is reported with the line number, and should not quote VALUE: a line with
    /// its fields swapped holds the secret there); `expected` describes a line, for the error when
    /// one has the wrong shape. Errors never quote a secret.
    pub fn parse(text: &str, expected: &str, value: impl Fn(&str) -> anyhow::Result<V>) -> anyhow::Result<Self> {
        let mut by_hash = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(secret), Some(v), None) = (parts.next(), parts.next(), parts.next()) else {
                bail!("token entry {}: expected {expected}", n + 1);
            };
            let key = match secret.strip_prefix("sha256:") {
                Some(h) => {
                    let bytes = hex::decode(h).map_err(|_| anyhow::anyhow!("token entry {}: sha256 value is not hex", n + 1))?;
                    <[u8; 32]>::try_from(bytes.as_slice())
                        .map_err(|_| anyhow::anyhow!("token entry {}: sha256 value must be 64 hex digits", n + 1))?
                }
                None => hash(secret),
            };
            let v = value(v).with_context(|| format!("token entry {}", n + 1))?;
            by_hash.insert(key, v);
        }
        Ok(TokenTable { by_hash })
    }

    /// Adds the entries of `other` (an entry for the same token replaces this one's).
    pub fn extend(&mut self, other: TokenTable<V>) {
        self.by_hash.extend(other.by_hash);
    }

    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// What `token` grants, if it is known. The lookup is by the token's hash, so how long it
    /// takes does not depend on how much of a known token was guessed.
    pub fn get(&self, token: &str) -> Option<&V> {
        self.by_hash.get(&hash(token))
    }

    /// What the token with this hash grants (a connection keeps the hash, not the token, to
    /// check it again when the tokens are reloaded).
    pub fn get_hashed(&self, key: &TokenHash) -> Option<&V> {
        self.by_hash.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn entries_are_tokens_or_their_hashes_and_errors_quote_neither() {
        let entries = format!("# comment\nplain-secret one\n\nsha256:{} two # stored hashed\n", hash_hex("hashed-secret"));
        let table = TokenTable::parse(&entries, "`TOKEN WORD`", |v| Ok(v.to_string())).unwrap_or_default();
        assert_eq!(table.len(), 2);
        assert_eq!(table.get("plain-secret").map(String::as_str), Some("one"));
        assert_eq!(table.get("hashed-secret").map(String::as_str), Some("two"));
        assert!(table.get("nope").is_none());
        assert!(!format!("{table:?}").contains("secret"));

        let error = |text: &str| TokenTable::parse(text, "`TOKEN WORD`", |v| if v == "ok" { Ok(()) } else { bail!("bad value") });
        for bad in ["s3cret-only", "s3cret ok extra", "sha256:zz ok", "sha256:abcd ok", "s3cret nope"] {
            let e = format!("{:#}", error(bad).err().unwrap_or_else(|| anyhow::anyhow!("accepted")));
            assert!(e.starts_with("token entry 1"), "{bad}: {e}");
            assert!(!e.contains("s3cret"), "{bad}: {e}");
        }
    }

    #[test]
    fn bearer_reads_the_authorization_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }
}

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
        refuse_weak(&text)?;
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

/// Fewest characters a device token may have: a token that may publish as a vehicle should not
/// be guessable (`openssl rand -hex 24` gives 48).
pub const MIN_TOKEN_CHARS: usize = 16;

/// Tokens that have been shipped as examples or defaults (the compose file's old default among
/// them): refused even as `sha256:` entries, so a copied example never opens the receiver.
const PLACEHOLDERS: &[&str] = &["change-me-fleet-token", "change-me-device-token", "replace-with-a-random-token"];

/// Refuses a token entry (plain or `sha256:`) that is a known placeholder, and a plain token
/// shorter than [`MIN_TOKEN_CHARS`] or starting with `change-me`/`changeme`. The error names the
/// entry's line, never the token. Checked at start-up and at every reload (a refused reload
/// keeps the tokens in use).
fn refuse_weak(text: &str) -> anyhow::Result<()> {
    let placeholders: Vec<String> = PLACEHOLDERS.iter().map(|p| tokens::hash_hex(p)).collect();
    for (n, line) in text.lines().enumerate() {
        let Some(secret) = line.split('#').next().and_then(|l| l.split_whitespace().next()) else {
            continue;
        };
        let placeholder = match secret.strip_prefix("sha256:") {
            Some(hex) => placeholders.iter().any(|p| p.eq_ignore_ascii_case(hex)),
            None => {
                let lower = secret.to_ascii_lowercase();
                if !PLACEHOLDERS.contains(&lower.as_str()) && secret.chars().count() < MIN_TOKEN_CHARS {
                    anyhow::bail!(
                        "token entry {}: a device token needs at least {MIN_TOKEN_CHARS} characters \
                         (make one with `openssl rand -hex 24`)",
                        n + 1
                    );
                }
                PLACEHOLDERS.contains(&lower.as_str()) || lower.starts_with("change-me") || lower.starts_with("changeme")
            }
        };
        if placeholder {
            anyhow::bail!(
                "token entry {}: a placeholder token from an example; generate real ones \
                 (`openssl rand -hex 24`, or scripts/compose-secrets for docker compose)",
                n + 1
            );
        }
    }
    Ok(())
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

    #[test]
    fn placeholders_and_short_tokens_are_refused_at_start_up_without_quoting_them() {
        let refused = |inline: &str| {
            Tokens::load(None, Some(inline)).err().map(|e| format!("{e:#}")).unwrap_or_else(|| "accepted".into())
        };
        let placeholder_hash = tokens::hash_hex("change-me-fleet-token");
        for (inline, why) in [
            ("change-me-fleet-token *", "placeholder"),
            ("CHANGE-ME-FLEET-TOKEN *", "placeholder"),
            ("changeme-please-0123456789 *", "placeholder"),
            (&*format!("sha256:{placeholder_hash} *"), "placeholder"),
            ("0123456789abcdef0123 1;s3cret *", "at least 16 characters"),
        ] {
            let e = refused(inline);
            assert!(e.contains(why), "{inline}: {e}");
            assert!(!e.contains("s3cret") && !e.contains("change-me-fleet") && !e.contains(&placeholder_hash), "{e}");
        }
        assert!(refused("0123456789abcdef0123 1;s3cret *").starts_with("token entry 3"), "the entry is named");
        let good = Tokens::load(None, Some("0123456789abcdef 1;# change-me in a comment\nsha256:00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff *"));
        assert_eq!(good.map(|t| t.len()).ok(), Some(2));
    }
}

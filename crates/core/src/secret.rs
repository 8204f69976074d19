//! A secret value (a password, a token list, a database URL with a password in it) that can be
//! handed around in a `Config` without ever being printed: its `Debug` and `Display` show
//! `***`, so a `tracing` field, a `{:?}` of the whole config or a panic message cannot leak it.
//! The value is read with [`Secret::expose`], at the one place that needs it.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself. Call it only where the secret is used, never to log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Reads a secret from a file, as Docker and Kubernetes mount them: the whole file, less
    /// one trailing newline (editors add one; a password never ends with one on purpose).
    pub fn from_file(path: &Path) -> anyhow::Result<Secret> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read the secret file {}: {e}", path.display()))?;
        let value = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(&text);
        if value.is_empty() {
            anyhow::bail!("the secret file {} is empty", path.display());
        }
        Ok(Secret(value.to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// For clap: `--flag VALUE` and `env = ...` parse into a `Secret` directly.
impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s} {:?}", Some(&s)), "*** *** Some(***)");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn reads_a_file_without_its_trailing_newline() {
        let dir = std::env::temp_dir().join(format!("fleetstream-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(Secret::from_file(&file).unwrap().expose(), "s3cret");
        std::fs::write(&file, "with space \r\n").unwrap();
        assert_eq!(Secret::from_file(&file).unwrap().expose(), "with space ");
        std::fs::write(&file, "\n").unwrap();
        let error = Secret::from_file(&file).unwrap_err().to_string();
        assert!(error.contains("is empty"), "{error}");
        let error = Secret::from_file(&dir.join("missing")).unwrap_err().to_string();
        assert!(error.contains("cannot read the secret file") && error.contains("missing"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! Do a service's secrets stay secret? Runs its real binary with secrets set (in env vars and
//! files), asks it for `--help`, lets it run and fail at what the secrets are for, reads its
//! `/metrics` and other pages, stops it, and reports every place a secret showed up: its
//! output (logs at debug level, human and JSON), the help text, an HTTP body.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// One run of a service binary.
#[derive(Debug, Clone, Default)]
pub struct SecretsCheck {
    /// Arguments after the binary (not secrets themselves: those go in `env`).
    pub args: Vec<String>,
    /// Environment: where the secrets are set.
    pub env: Vec<(String, String)>,
    /// The values that must never appear.
    pub secrets: Vec<String>,
    /// `http://127.0.0.1:<port>` paths to read while it runs (`/metrics`, `/readyz`, ...), with
    /// an optional `Authorization` header value.
    pub pages: Vec<(u16, String, Option<String>)>,
    /// How long to let it run (it retries and logs what fails meanwhile).
    pub run_for: Duration,
    /// Expected to exit by itself (a command-line tool) instead of being stopped.
    pub exits: bool,
}

/// The environment of a service that talks SASL to `brokers` as `user` with `password`: a
/// plaintext broker refuses it, so the service logs and returns the refusal while holding the
/// secret.
pub fn sasl_env(brokers: &str, user: &str, password: &str) -> Vec<(String, String)> {
    vec![
        ("KAFKA_BROKERS".into(), brokers.into()),
        ("KAFKA_SECURITY_PROTOCOL".into(), "sasl_plaintext".into()),
        ("KAFKA_SASL_USERNAME".into(), user.into()),
        ("KAFKA_SASL_PASSWORD".into(), password.into()),
    ]
}

/// What was seen: empty when no secret leaked. Each entry names where the secret appeared.
pub fn leaks(binary: &Path, check: &SecretsCheck) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    let mut look = |place: &str, text: &str| {
        for s in &check.secrets {
            if text.contains(s.as_str()) {
                found.push(format!("{place} shows a secret ({} chars): {}", s.len(), excerpt(text, s)));
            }
        }
    };

    let help = Command::new(binary).arg("--help").envs(check.env.iter().cloned()).output().context("cannot run --help")?;
    look("--help", &String::from_utf8_lossy(&help.stdout));
    look("--help (stderr)", &String::from_utf8_lossy(&help.stderr));

    for format in ["human", "json"] {
        let mut child = Command::new(binary)
            .args(&check.args)
            .envs(check.env.iter().cloned())
            .env("RUST_LOG", "debug")
            .env("LOG_FORMAT", format)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        // Drained on threads: a full pipe would block the service.
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut out = String::new();
                if let Some(mut p) = pipe {
                    let mut bytes = Vec::new();
                    let _ = p.read_to_end(&mut bytes);
                    out = String::from_utf8_lossy(&bytes).into_owned();
                }
                out
            })
        };
        let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let deadline = Instant::now() + check.run_for;
        let mut pages_read = false;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                break;
            }
            if !pages_read && !check.pages.is_empty() && Instant::now() + check.run_for / 2 > deadline {
                for (port, path, auth) in &check.pages {
                    // A page that does not answer would prove nothing.
                    let body = match http_get(*port, path, auth.as_deref()) {
                        Ok(body) if body.starts_with("HTTP/1.1 ") => body,
                        Ok(body) => anyhow::bail!("GET {path} on port {port}: not an HTTP answer: {body:?}"),
                        Err(e) => anyhow::bail!("GET {path} on port {port}: {e}"),
                    };
                    look(&format!("GET {path} ({format} logs run)"), &body);
                }
                pages_read = true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if child.try_wait()?.is_none() {
            if check.exits {
                let _ = child.kill();
                anyhow::bail!("{} did not exit within {:?}", binary.display(), check.run_for);
            }
            // SIGTERM: the one shutdown path, which logs too.
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).context("pid")?);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let stop = Instant::now() + Duration::from_secs(20);
            while child.try_wait()?.is_none() && Instant::now() < stop {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
        let (out, err) = (stdout.join().unwrap_or_default(), stderr.join().unwrap_or_default());
        if out.len() + err.len() < 20 {
            anyhow::bail!("{} printed nothing: the check would prove nothing", binary.display());
        }
        look(&format!("stdout ({format} logs)"), &out);
        look(&format!("stderr ({format} logs)"), &err);
    }
    Ok(found)
}

/// A plain HTTP/1.1 GET on 127.0.0.1 (the body, status line included).
fn http_get(port: u16, path: &str, auth: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = auth.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n")?;
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    Ok(text)
}

/// Where in `text` the secret is, with the secret itself masked.
fn excerpt(text: &str, secret: &str) -> String {
    let at = text.find(secret).unwrap_or(0);
    let start = text[..at].char_indices().rev().nth(60).map(|(i, _)| i).unwrap_or(0);
    let end = (at + secret.len() + 60).min(text.len());
    let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
    text[start..end].replace(secret, "<SECRET>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_in_the_output_is_found_and_not_repeated_in_the_report() {
        let check = SecretsCheck {
            args: vec!["starting with password=s3cr3t-value and more text".into()],
            secrets: vec!["s3cr3t-value".into()],
            run_for: Duration::from_secs(10),
            exits: true,
            ..Default::default()
        };
        let found = leaks(Path::new("/bin/echo"), &check).expect("echo runs");
        assert_eq!(found.len(), 2, "once per log format: {found:?}");
        assert!(found[0].starts_with("stdout (human logs) shows a secret (12 chars)"), "{found:?}");
        assert!(found.iter().all(|f| f.contains("password=<SECRET>") && !f.contains("s3cr3t-value")), "{found:?}");
    }
}

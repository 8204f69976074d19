//! The health probe of the fleetstream images: `GET http://127.0.0.1:PORT/PATH` (or `https://`),
//! exit 0 when the answer is `200`, 1 otherwise with the reason on stderr. The images carry no
//! curl or wget; the compose file's and the Dockerfile's `HEALTHCHECK`s run this.
//!
//! ```text
//! healthcheck 30000 /readyz                                  plain HTTP
//! healthcheck 30000 /readyz --tls-cert /certs/cert.pem       HTTPS; the server must present exactly
//!                                                            this certificate (the receiver's own)
//! healthcheck 30000 /readyz --tls-ca ca.pem --tls-name fleet.example.com
//!                                                            HTTPS verified against a (private) CA
//! healthcheck 30000 /readyz --tls-insecure                   HTTPS, the certificate not verified
//! ```
//!
//! A probe of the container's own loopback port does not need the certificate's host name: the
//! default for a TLS receiver is `--tls-cert` with the certificate the receiver serves (pinned:
//! byte for byte the first certificate of the file), which verifies the server without a CA and
//! whatever names the certificate holds. `--tls-insecure` is there for a certificate the probe
//! cannot read; it still speaks TLS, so it checks that the TLS listener answers.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// What to probe and how.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "healthcheck", version, about = "GET 127.0.0.1:PORT/PATH (HTTP or HTTPS); exit 0 on 200")]
pub struct Probe {
    /// Port on 127.0.0.1 (the service's own, inside its container).
    pub port: u16,
    /// Path to ask for.
    #[arg(default_value = "/readyz")]
    pub path: String,
    /// Speak HTTPS and accept only a server presenting exactly the first certificate of this PEM
    /// file (the server's own certificate: pinned, so neither a CA nor a host name is needed).
    #[arg(long, env = "HEALTHCHECK_TLS_CERT", conflicts_with_all = ["tls_ca", "tls_insecure"])]
    pub tls_cert: Option<PathBuf>,
    /// Speak HTTPS and verify the server's certificate chain against the CA certificates of this
    /// PEM file, for the name --tls-name.
    #[arg(long, env = "HEALTHCHECK_TLS_CA", conflicts_with = "tls_insecure")]
    pub tls_ca: Option<PathBuf>,
    /// The name the certificate must hold (with --tls-ca), also sent as SNI.
    #[arg(long, env = "HEALTHCHECK_TLS_NAME", default_value = "localhost")]
    pub tls_name: String,
    /// Speak HTTPS without verifying the server's certificate at all (a local probe of a
    /// certificate it cannot read).
    #[arg(long, env = "HEALTHCHECK_TLS_INSECURE", default_value_t = false)]
    pub tls_insecure: bool,
    /// Longest the whole probe may take (connect, handshake, answer).
    #[arg(long, env = "HEALTHCHECK_TIMEOUT", default_value = "4s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

impl Probe {
    /// A plain-HTTP probe of `port` and `path`, with the defaults.
    pub fn http(port: u16, path: &str) -> Probe {
        Probe {
            port,
            path: path.to_string(),
            tls_cert: None,
            tls_ca: None,
            tls_name: "localhost".into(),
            tls_insecure: false,
            timeout: Duration::from_secs(4),
        }
    }

    /// Ok when the server answered `200`; otherwise why not.
    pub fn run(&self) -> anyhow::Result<()> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let tcp = TcpStream::connect_timeout(&addr, self.timeout).with_context(|| format!("cannot connect to {addr}"))?;
        tcp.set_read_timeout(Some(self.timeout))?;
        tcp.set_write_timeout(Some(self.timeout))?;
        let request = format!("GET {} HTTP/1.0\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", self.path, self.port);
        let status = match self.tls_config()? {
            None => exchange(tcp, &request)?,
            Some(config) => {
                let name = ServerName::try_from(self.tls_name.clone()).context("--tls-name is not a host name")?;
                let conn = rustls::ClientConnection::new(config, name).context("TLS client")?;
                exchange(rustls::StreamOwned::new(conn, tcp), &request).context("HTTPS")?
            }
        };
        if status != "200" {
            bail!("{addr}{} answered {status}", self.path);
        }
        Ok(())
    }

    /// The TLS client configuration the flags ask for; None for plain HTTP.
    fn tls_config(&self) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?;
        let config = if let Some(ca) = &self.tls_ca {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).with_context(|| format!("bad CA certificate in {}", ca.display()))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else if self.tls_cert.is_some() || self.tls_insecure {
            let pinned = match &self.tls_cert {
                Some(path) => Some(read_certs(path)?.swap_remove(0)),
                None => None,
            };
            builder.dangerous().with_custom_certificate_verifier(Arc::new(Pinned { pinned, provider })).with_no_client_auth()
        } else {
            return Ok(None);
        };
        Ok(Some(Arc::new(config)))
    }
}

/// The certificates of a PEM file, at least one.
fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad PEM in {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

/// Sends the request, returns the status code of the answer's first line.
fn exchange(mut stream: impl std::io::Read + std::io::Write, request: &str) -> anyhow::Result<String> {
    stream.write_all(request.as_bytes()).context("cannot send the request")?;
    stream.flush()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if head.is_empty() => return Err(e).context("no answer"),
            Err(_) => break,
        }
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    match line.split(' ').collect::<Vec<_>>().as_slice() {
        [version, status, ..] if version.starts_with("HTTP/") => Ok((*status).to_string()),
        _ => bail!("not an HTTP answer: {:?}", line.chars().take(80).collect::<String>()),
    }
}

/// Accepts the server's certificate if it is the pinned one (or any, when none is pinned: the
/// explicit --tls-insecure); handshake signatures are still checked.
#[derive(Debug)]
struct Pinned {
    pinned: Option<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match &self.pinned {
            Some(pinned) if pinned.as_ref() != end_entity.as_ref() => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server on 127.0.0.1 answering every connection with `status`, over TLS with `tls`.
    fn serve(status: &'static str, tls: Option<Arc<rustls::ServerConfig>>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let tls = tls.clone();
                std::thread::spawn(move || {
                    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                    let _ = match tls {
                        None => answer_one(stream, &answer),
                        Some(config) => match rustls::ServerConnection::new(config) {
                            Ok(conn) => answer_one(rustls::StreamOwned::new(conn, stream), &answer),
                            Err(_) => Ok(()),
                        },
                    };
                });
            }
        });
        port
    }

    fn answer_one(mut s: impl std::io::Read + std::io::Write, answer: &str) -> std::io::Result<()> {
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(answer.as_bytes())?;
        s.flush()
    }

    /// A self-signed certificate for `name`, written to a temp dir: (server config, cert path).
    fn certificate(name: &str) -> (Arc<rustls::ServerConfig>, PathBuf) {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap_or_else(|e| panic!("{e}"));
        let dir = std::env::temp_dir().join(format!("healthcheck-{name}-{}-{:?}", std::process::id(), std::thread::current().id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("cert.pem");
        std::fs::write(&path, certified.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(certified.signing_key.serialize_pem().as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .and_then(|b| b.with_no_client_auth().with_single_cert(vec![certified.cert.der().clone()], key))
            .unwrap_or_else(|e| panic!("{e}"));
        (Arc::new(config), path)
    }

    fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        listener.local_addr().map(|a| a.port()).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn plain_http_passes_on_200_only() {
        assert!(Probe::http(serve("200 OK", None), "/readyz").run().is_ok());
        let e = Probe::http(serve("503 Service Unavailable", None), "/readyz").run().err().map(|e| format!("{e:#}"));
        assert!(e.as_deref().is_some_and(|e| e.contains("answered 503")), "{e:?}");
        let e = Probe::http(closed_port(), "/readyz").run().err().map(|e| format!("{e:#}"));
        assert!(e.as_deref().is_some_and(|e| e.contains("cannot connect")), "{e:?}");
    }

    #[test]
    fn https_with_the_pinned_certificate_a_ca_or_explicitly_unverified() {
        // The certificate names a public host, not localhost: pinning does not care.
        let (config, cert) = certificate("fleet.example.com");
        let port = serve("200 OK", Some(config));
        let probe = |f: &dyn Fn(&mut Probe)| {
            let mut p = Probe::http(port, "/readyz");
            f(&mut p);
            p.run().map_err(|e| format!("{e:#}"))
        };
        assert_eq!(probe(&|p| p.tls_cert = Some(cert.clone())), Ok(()));
        assert_eq!(probe(&|p| p.tls_insecure = true), Ok(()));
        // A self-signed certificate is its own CA; the name must match.
        assert_eq!(probe(&|p| (p.tls_ca, p.tls_name) = (Some(cert.clone()), "fleet.example.com".into())), Ok(()));
        assert!(probe(&|p| p.tls_ca = Some(cert.clone())).is_err_and(|e| e.contains("HTTPS")), "localhost is not in it");
        // Another certificate than the one served is refused; plain HTTP to a TLS port fails.
        let (_, other) = certificate("other.example.com");
        assert!(probe(&|p| p.tls_cert = Some(other.clone())).is_err());
        assert!(probe(&|_| {}).is_err());
        // An HTTPS probe of a plain-HTTP port fails.
        let mut p = Probe::http(serve("200 OK", None), "/readyz");
        p.tls_insecure = true;
        assert!(p.run().is_err());
        for path in [cert, other] {
            let _ = path.parent().map(std::fs::remove_dir_all);
        }
    }
}

//! fleetstream OBU simulator: simulated vehicles streaming positions to the receiver.
//!
//! Fleet mode (default) drives N vehicles along plausible routes inside an area and has each
//! report at an interval; load mode pushes a fixed total rate (or as fast as acks allow) for
//! benchmarks. Either way every position is kept until the receiver acks it and resent after
//! a reconnect, and the run ends with a summary (`--json` for scripts).
//!
//! ```text
//! obu-sim --vehicles 20                         # a small fleet in Berlin
//! obu-sim --mode load --rate 20000 --duration 30s --connections 8 --batch 50 --json
//! ```

pub mod config;
pub mod movement;
mod lane;
pub mod stats;

use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use config::{Area, Config, Fault, Mode, SourceAddresses};
pub use stats::{AckedSeqs, Stats, Summary};

use lane::{Control, Lane};

/// Runs the simulation until `--duration`, `--count` or `stop` resolves; then waits up to
/// `--drain-timeout` for outstanding acks and returns the summary.
pub async fn run(mut config: Config, stop: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<Summary> {
    anyhow::ensure!(config.vehicles > 0, "--vehicles must be at least 1");
    // One boot for the whole run, higher than the last run's: restarted, the simulated devices
    // count their seqs from 1 again without being taken for duplicates.
    config.boot.get_or_insert_with(|| fleetstream_core::now_ms().max(1) as u64);
    let stats = Arc::new(Stats::new());
    let control = Control {
        stop_generating: CancellationToken::new(),
        hard_stop: CancellationToken::new(),
        budget: config.count.map(|c| Arc::new(AtomicU64::new(c))),
        connector: None,
        handshakes: Arc::new(tokio::sync::Semaphore::new(lane::HANDSHAKES)),
    };
    let metrics_server = match config.metrics_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            let health = fleetstream_core::http::Health::new();
            health.set_ready();
            let router = fleetstream_core::http::ops_router::<()>(stats.registry.clone(), health);
            Some(tokio::spawn(async move { axum::serve(listener, router).await }))
        }
        None => None,
    };
    let connector = match &config.tls_ca {
        Some(path) => Some(tls_connector(path)?),
        None => None,
    };
    let control = Control { connector, ..control };
    let config = Arc::new(config);
    let ids: Vec<u64> = (0..config.vehicles).map(|i| config.first_obu_id + i).collect();
    let lanes = if config.connections == 0 { ids.len() } else { config.connections.min(ids.len()) };
    let mut groups: Vec<Vec<u64>> = vec![Vec::new(); lanes];
    for (i, id) in ids.into_iter().enumerate() {
        groups[i % lanes].push(id);
    }
    // A descriptor per connection, and a few for the runtime, the metrics server and logs.
    fleetstream_core::nofile::raise_and_log("simulator", Some(lanes as u64 + 64));
    if let Some(sources) = &config.source_addresses {
        tracing::info!(addresses = sources.len(), "connecting from several source addresses");
    }
    tracing::info!(url = %config.url, mode = ?config.mode, vehicles = config.vehicles, connections = lanes, "simulation starting");
    let started = Instant::now();
    let tasks: Vec<_> = groups
        .into_iter()
        .enumerate()
        .map(|(i, g)| tokio::spawn(Lane::new(i, g, lanes, config.clone(), stats.clone(), control.clone()).run()))
        .collect();

    // Stop generating on Ctrl-C, --duration or --count (the lanes cancel on an empty budget).
    let generating = control.stop_generating.clone();
    let duration = config.duration;
    tokio::spawn(async move {
        let until = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = stop => {}
            () = until => {}
            () = generating.cancelled() => {}
        }
        generating.cancel();
    });
    let progress = (!config.quiet).then(|| tokio::spawn(progress_line(stats.clone(), control.stop_generating.clone())));

    control.stop_generating.cancelled().await;
    let drain = config.drain_timeout;
    let hard = control.hard_stop.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(drain).await;
        hard.cancel();
    });
    for t in tasks {
        let _ = t.await;
    }
    timer.abort();
    if let Some(p) = progress {
        p.abort();
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!();
        }
    }
    if let Some(s) = metrics_server {
        s.abort();
    }
    Ok(stats.summary(started.elapsed()))
}

/// A TLS connector trusting exactly the certificates in `path`.
fn tls_connector(path: &std::path::Path) -> anyhow::Result<tokio_tungstenite::Connector> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_file_iter(path).with_context(|| format!("cannot read {}", path.display()))? {
        roots.add(cert.with_context(|| format!("bad PEM in {}", path.display()))?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_tungstenite::Connector::Rustls(Arc::new(config)))
}

async fn progress_line(stats: Arc<Stats>, stop: CancellationToken) {
    use std::io::IsTerminal as _;
    // On a terminal one line rewritten every second; in a log a line every ten seconds.
    let terminal = std::io::stderr().is_terminal();
    let (every, end) = if terminal { (1, "\r") } else { (10, "\n") };
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(every));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => {}
        }
        let s = stats.summary(started.elapsed());
        let refused: u64 = s.refused.values().sum();
        let line = format!(
            "{:>6.0}s  generated {}  acked {} ({:.0}/s)  refused {}  resent {}  dropped {}  connections {}   ",
            s.elapsed_s, s.generated, s.acked, s.acked_per_s, refused, s.resent, s.dropped, stats.connected.get()
        );
        if terminal {
            eprint!("{end}{line}");
        } else {
            eprint!("{line}{end}");
        }
        if stop.is_cancelled() {
            return;
        }
    }
}

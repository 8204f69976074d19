use std::time::Duration;

use clap::Parser as _;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use fleetstream_core::frames::ServerFrame;
use fleetstream_receiver::{Application, Config};
pub use fleetstream_testkit::http_get;
use fleetstream_testkit::{Broker, Running, Topics};

pub type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A receiver running in this process.
pub struct TestReceiver {
    pub port: u16,
    running: Running,
}

impl TestReceiver {
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl std::ops::Deref for TestReceiver {
    type Target = Running;
    fn deref(&self) -> &Running {
        &self.running
    }
}

impl std::ops::DerefMut for TestReceiver {
    fn deref_mut(&mut self) -> &mut Running {
        &mut self.running
    }
}

pub fn config(broker: &Broker, topics: &Topics, extra: &[&str]) -> Config {
    let mut args = vec![
        "receiver".to_string(),
        "--listen=127.0.0.1:0".into(),
        format!("--kafka-brokers={}", broker.brokers()),
        format!("--topic={}", topics.raw),
        format!("--dlq-topic={}", topics.dlq),
        "--kafka-linger-ms=1".into(),
        "--shutdown-timeout=10s".into(),
    ];
    if !extra.iter().any(|a| a.starts_with("--auth=")) {
        args.push("--auth=none".into());
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    Config::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"))
}

pub async fn spawn(config: Config) -> TestReceiver {
    let tls = config.tls_cert.is_some();
    let app = Application::build(config).await.unwrap_or_else(|e| panic!("receiver: {e:#}"));
    let port = app.port();
    let running = Running::spawn(app.metrics().registry, |stop| app.run_until_stopped(stop));
    let r = TestReceiver { port, running };
    if tls {
        // /readyz is behind TLS too; the readiness gauge says the same.
        for _ in 0..100 {
            if r.metric("fleetstream_receiver_kafka_up", None) == 1.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    } else {
        wait_ready(&r).await;
    }
    r
}

/// Waits until /readyz says ready (Kafka reachable, topic present).
pub async fn wait_ready(r: &TestReceiver) {
    for _ in 0..100 {
        if http_get(&r.http("/readyz")).await.map(|(s, _)| s == 200).unwrap_or(false) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("receiver never became ready");
}

/// A minimal HTTP/1.1 GET: (status, body).
pub async fn connect(url: &str, token: Option<&str>) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let mut request = url.into_client_request()?;
    if let Some(t) = token {
        request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {t}")).unwrap_or_else(|e| panic!("{e}")));
    }
    tokio_tungstenite::connect_async(request).await.map(|(ws, _)| ws)
}

pub async fn send(ws: &mut Ws, text: &str) {
    ws.send(Message::Text(text.into())).await.unwrap_or_else(|e| panic!("send: {e}"));
}

/// The next server frame (skipping pings); `None` when the connection closed.
pub async fn next_frame(ws: &mut Ws, within: Duration) -> Option<ServerFrame> {
    loop {
        let m = tokio::time::timeout(within, ws.next()).await.ok()??.ok()?;
        match m {
            Message::Text(t) => return Some(serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("bad frame {t}: {e}"))),
            Message::Close(_) => return None,
            _ => continue,
        }
    }
}

/// Reads frames until the close frame; returns them and the close code.
pub async fn frames_until_close(ws: &mut Ws, within: Duration) -> (Vec<ServerFrame>, Option<u16>) {
    let mut frames = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, ws.next()).await else { return (frames, None) };
        match next {
            Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(t.as_str()).unwrap_or_else(|e| panic!("bad frame {t}: {e}"))),
            Some(Ok(Message::Close(c))) => return (frames, c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return (frames, None),
        }
    }
}

pub fn position(obu: u64, seq: u64) -> String {
    format!(
        r#"{{"obu_id":{obu},"seq":{seq},"ts":{},"lat":52.5{:04},"lon":13.4,"speed":30.0,"heading":90.0}}"#,
        fleetstream_core::now_ms(),
        seq % 10_000
    )
}

pub async fn broker_and_topics() -> (Broker, Topics) {
    let broker = Broker::shared();
    let topics = broker.topics(3).await.unwrap_or_else(|e| panic!("{e:#}"));
    (broker, topics)
}

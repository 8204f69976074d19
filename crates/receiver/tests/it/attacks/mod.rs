//! The attack battery (issue 14; docs/security.md, "Attack battery"): each attack on real
//! sockets against a real receiver (port 0, Apache Kafka behind it), with small limits so each
//! test stays short. After each: the documented answer, the metric scraped from /metrics over
//! HTTP, and a normal device still served (a position sent and acked).

mod frames;
mod upgrade;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::MaybeTlsStream;

use fleetstream_core::frames::ServerFrame;
use fleetstream_testkit::metric_value;

use crate::helpers::*;

/// The address of the attacker and of the normal devices, unless a test says otherwise.
pub const HOME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
/// Another client address (all of 127.0.0.0/8 is loopback on Linux).
pub const ELSEWHERE: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));

/// A TCP connection to the receiver from `from`, with its receive buffer set if asked.
pub async fn tcp_from(from: IpAddr, port: u16, receive_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("a socket");
    socket.bind(SocketAddr::new(from, 0)).unwrap_or_else(|e| panic!("binding {from}: {e}"));
    if let Some(bytes) = receive_buffer {
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    }
    socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await.unwrap_or_else(|e| panic!("connect from {from}: {e}"))
}

/// A WebSocket to the receiver from `from` (`receive_buffer`: SO_RCVBUF of the device's socket).
pub async fn ws_from(r: &TestReceiver, from: IpAddr, receive_buffer: Option<u32>) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
    let tcp = tcp_from(from, r.port, receive_buffer).await;
    tokio_tungstenite::client_async(r.url(), MaybeTlsStream::Plain(tcp)).await.map(|(ws, _)| ws)
}

/// A metric as a user sees it: /metrics fetched over HTTP from `from`.
pub async fn scraped_from(r: &TestReceiver, from: IpAddr, name: &str, label: Option<(&str, &str)>) -> f64 {
    let request = format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n", r.port);
    let answer = exchange(tcp_from(from, r.port, None).await, request.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status(&answer), Some(200), "GET /metrics: {answer}");
    metric_value(&answer, name, label)
}

pub async fn scraped(r: &TestReceiver, name: &str, label: Option<(&str, &str)>) -> f64 {
    scraped_from(r, HOME, name, label).await
}

/// Waits until the scraped metric reaches `at_least`; its last value.
pub async fn scraped_reaches(r: &TestReceiver, name: &str, label: Option<(&str, &str)>, at_least: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let value = scraped(r, name, label).await;
        if value >= at_least || tokio::time::Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A normal device, from `from`, after an attack: connects, sends a position, gets its ack.
pub async fn serves_a_device_from(r: &TestReceiver, from: IpAddr, obu_id: u64, seq: u64) {
    let mut ws = ws_from(r, from, None).await.unwrap_or_else(|e| panic!("a normal device cannot connect after the attack: {e}"));
    send(&mut ws, &position(obu_id, seq)).await;
    assert_eq!(
        next_frame(&mut ws, Duration::from_secs(10)).await,
        Some(ServerFrame::Ack { obu_id, seq }),
        "a normal device's position is acked after the attack"
    );
}

pub async fn serves_a_device(r: &TestReceiver, obu_id: u64, seq: u64) {
    serves_a_device_from(r, HOME, obu_id, seq).await;
}

/// Writes `request` and reads the answer: its head and `Content-Length` bytes of body, or
/// whatever came until the server closed, or until `within`.
pub async fn exchange(mut tcp: TcpStream, request: &[u8], within: Duration) -> String {
    // The server may answer and close before it read everything (a refusal): keep what it said.
    let _ = tcp.write_all(request).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(end) = find(&got, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if got.len() >= end + 4 + length {
                    return;
                }
            }
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The status code of an HTTP answer.
pub fn status(answer: &str) -> Option<u16> {
    answer.strip_prefix("HTTP/1.1 ").and_then(|rest| rest.get(..3)).and_then(|code| code.parse().ok())
}

/// The body of an HTTP answer.
pub fn body(answer: &str) -> &str {
    answer.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// A WebSocket upgrade request for /ws, with `extra` header lines (each ending in CRLF).
pub fn upgrade_request(port: u16, extra: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{extra}\r\n"
    )
}

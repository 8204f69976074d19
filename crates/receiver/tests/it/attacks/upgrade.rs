//! Attacks on the HTTP upgrade: slowloris, oversized heads, malformed handshakes, a connection
//! flood from one address.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use fleetstream_core::frames::ServerFrame;

use super::*;
use crate::helpers::*;

const REFUSED: &str = "fleetstream_receiver_connections_refused_total";

/// Opens a connection and sends the start of an upgrade request, then one more header byte
/// every `every`, never finishing it; returns how long until the receiver closed the
/// connection, and what it answered.
async fn drip(port: u16, every: Duration) -> (Duration, String) {
    let started = Instant::now();
    let tcp = tcp_from(HOME, port, None).await;
    let (mut read, mut write) = tcp.into_split();
    let head = format!("GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nX-Drip: ");
    let _ = write.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::sleep(Duration::from_secs(20));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            read = read.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(every) => {
                // Writes after the receiver closed may fail; the read above then ends.
                let _ = write.write_all(b"a").await;
            }
            () = &mut deadline => panic!("a dripping client was never cut off"),
        }
    }
    (started.elapsed(), String::from_utf8_lossy(&answer).into_owned())
}

/// A connection that sends nothing: how long until the receiver closed it, and what it said.
async fn silent(port: u16) -> (Duration, String) {
    let started = Instant::now();
    let mut tcp = tcp_from(HOME, port, None).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "a silent connection was never cut off");
    (started.elapsed(), String::from_utf8_lossy(&answer).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_upgrade_requests_are_cut_off_after_the_upgrade_timeout() {
    let (broker, topics) = broker_and_topics().await;
    let receiver = spawn(config(&broker, &topics, &["--upgrade-timeout=1s"])).await;
    let (dripping, quiet) = tokio::join!(drip(receiver.port, Duration::from_millis(100)), silent(receiver.port));
    for (what, (after, answer)) in [("dripping headers", dripping), ("sending nothing", quiet)] {
        assert!(after >= Duration::from_millis(900), "{what}: cut off after {after:?}, before the timeout of 1 s");
        assert!(after < Duration::from_secs(4), "{what}: cut off only after {after:?}");
        assert_eq!(answer, "", "{what}: closed without an answer");
    }
    assert_eq!(scraped(&receiver, REFUSED, Some(("reason", "upgrade_timeout"))).await, 2.0);
    serves_a_device(&receiver, 1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_upgrade_request_heads_get_431() {
    let (broker, topics) = broker_and_topics().await;
    let receiver = spawn(config(&broker, &topics, &["--max-header-bytes=4096"])).await;
    let port = receiver.port;
    let pad = |n: usize| format!("X-Pad: {}\r\n", "p".repeat(n));

    // Under the limit: the upgrade goes through.
    let answer = exchange(tcp_from(HOME, port, None).await, upgrade_request(port, &pad(3000)).as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status(&answer), Some(101), "a 3.1 KB head is upgraded: {answer}");

    // Over it in bytes, and in header fields (101 small ones, about 1.7 KB).
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    for (what, extra) in [("a 5 KB header", pad(5000)), ("101 header fields", many)] {
        let answer = exchange(tcp_from(HOME, port, None).await, upgrade_request(port, &extra).as_bytes(), Duration::from_secs(10)).await;
        assert_eq!(status(&answer), Some(431), "{what}: {answer}");
        assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large"), "{what}: {answer}");
    }
    assert_eq!(scraped(&receiver, REFUSED, Some(("reason", "headers_too_large"))).await, 2.0);
    serves_a_device(&receiver, 1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upgrade_requests_get_a_4xx_and_break_nothing() {
    let (broker, topics) = broker_and_topics().await;
    let receiver = spawn(config(&broker, &topics, &[])).await;
    let port = receiver.port;
    let host = format!("Host: 127.0.0.1:{port}\r\n");
    let valid = upgrade_request(port, "");
    let without = |line: &str| valid.replace(line, "");
    // (what, request bytes, status (none: closed without an answer), a fragment of the body
    // or "" when hyper answers bare)
    let cases: Vec<(&str, Vec<u8>, Option<u16>, &str)> = vec![
        ("no Sec-WebSocket-Key", without("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n").into_bytes(), Some(400), "`Sec-WebSocket-Key` header missing"),
        ("WebSocket version 8", valid.replace("Version: 13", "Version: 8").into_bytes(), Some(400), "`Sec-WebSocket-Version` header did not include '13'"),
        ("Upgrade: h2c", valid.replace("Upgrade: websocket", "Upgrade: h2c").into_bytes(), Some(400), "`Upgrade` header did not include 'websocket'"),
        ("a plain GET", format!("GET /ws HTTP/1.1\r\n{host}\r\n").into_bytes(), Some(400), "Connection header did not include 'upgrade'"),
        ("garbage bytes", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\xff\xfe garbage\r\n\r\n".to_vec(), Some(400), ""),
        ("no HTTP version", b"GET /ws\r\n\r\n".to_vec(), Some(400), ""),
        ("a control byte in a header", format!("GET /ws HTTP/1.1\r\n{host}X-Bad: a\x01b\r\n\r\n").into_bytes(), Some(400), ""),
        ("the HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), None, ""),
    ];
    for (what, request, expected, fragment) in &cases {
        let answer = exchange(tcp_from(HOME, port, None).await, request, Duration::from_secs(10)).await;
        assert_eq!(status(&answer), *expected, "{what}: {answer:?}");
        assert!(body(&answer).contains(fragment), "{what}: the body {:?} lacks {fragment:?}", body(&answer));
    }
    // The wrong method is the router's 405, not a refused handshake.
    let post = valid.replace("GET /ws", "POST /ws");
    let answer = exchange(tcp_from(HOME, port, None).await, post.as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(status(&answer), Some(405), "POST: {answer:?}");

    assert_eq!(scraped(&receiver, REFUSED, Some(("reason", "bad_request"))).await, cases.len() as f64);
    assert_eq!(scraped(&receiver, "fleetstream_receiver_connections_opened_total", None).await, 0.0, "nothing was upgraded");
    serves_a_device(&receiver, 1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_is_refused_over_the_per_ip_limit() {
    let (broker, topics) = broker_and_topics().await;
    let receiver = spawn(config(&broker, &topics, &["--max-connections-per-ip=4"])).await;
    // The attacker's address holds four: three WebSockets and a socket that sends nothing.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(ws_from(&receiver, HOME, None).await.unwrap_or_else(|e| panic!("within the limit: {e}")));
    }
    let idle = tcp_from(HOME, receiver.port, None).await;

    // Ten more attempts (nine WebSocket clients, one raw request): each gets 429 and is closed.
    for attempt in 0..9 {
        match ws_from(&receiver, HOME, None).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 429, "attempt {attempt}"),
            Err(other) => panic!("attempt {attempt}: expected a 429, got {other}"),
            Ok(_) => panic!("attempt {attempt}: a fifth connection from one address was upgraded"),
        }
    }
    let answer = exchange(tcp_from(HOME, receiver.port, None).await, upgrade_request(receiver.port, "").as_bytes(), Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 429 Too Many Requests"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("retry-after: 10"), "{answer}");
    assert!(body(&answer).contains("too many connections from 127.0.0.1: at most 4 may be open at once"), "{answer}");

    // Meanwhile another address is served, and so are the connections already open.
    serves_a_device_from(&receiver, ELSEWHERE, 1, 1).await;
    assert_eq!(scraped_from(&receiver, ELSEWHERE, REFUSED, Some(("reason", "per_ip_limit"))).await, 10.0);
    send(&mut held[0], &position(2, 1)).await;
    assert_eq!(next_frame(&mut held[0], Duration::from_secs(10)).await, Some(ServerFrame::Ack { obu_id: 2, seq: 1 }));

    // Closed connections give their slots back.
    drop(held);
    drop(idle);
    let mut served = false;
    for _ in 0..50 {
        if ws_from(&receiver, HOME, None).await.is_ok() {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "the address's slots were given back");
    serves_a_device(&receiver, 3, 1).await;
}

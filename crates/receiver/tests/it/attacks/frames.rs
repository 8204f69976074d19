//! Attacks inside the WebSocket: invalid UTF-8, fragment abuse, ping floods, and a device that
//! sends without ever reading its answers.

use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use fleetstream_core::frames::ServerFrame;
use fleetstream_core::reason::Reason;
use fleetstream_receiver::close_code;

use super::*;
use crate::helpers::*;

const CLOSED: &str = "fleetstream_receiver_connections_closed_total";

/// A raw data frame: any bytes, any opcode, final or not (the client masks it, nothing else).
fn data_frame(payload: &[u8], opcode: Data, fin: bool) -> Message {
    Message::Frame(Frame::message(payload.to_vec(), OpCode::Data(opcode), fin))
}

/// Sends frames until one fails: the receiver may close the connection part-way.
async fn send_all(ws: &mut Ws, frames: Vec<Message>) {
    for frame in frames {
        if ws.send(frame).await.is_err() {
            break;
        }
    }
}

/// Opens a connection, sends `frames`, and returns the answers and close code it gets.
async fn attack(r: &TestReceiver, frames: Vec<Message>) -> (Vec<ServerFrame>, Option<u16>) {
    let mut ws = ws_from(r, HOME, None).await.unwrap_or_else(|e| panic!("{e}"));
    send_all(&mut ws, frames).await;
    frames_until_close(&mut ws, Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_in_a_text_frame_closes_with_1007() {
    let (broker, topics) = broker_and_topics().await;
    let receiver = spawn(config(&broker, &topics, &[])).await;
    let whole = vec![data_frame(b"{\"obu_id\":1,\"seq\":\xff\xfe}", Data::Text, true)];
    // Valid bytes first, the invalid sequence in the continuation.
    let split = vec![data_frame(b"{\"obu_id\":1,", Data::Text, false), data_frame(b"\"seq\":\xc3\x28}", Data::Continue, true)];
    for (what, frames) in [("a whole frame", whole), ("a continuation", split)] {
        let (answers, code) = attack(&receiver, frames).await;
        assert_eq!(code, Some(close_code::INVALID_PAYLOAD), "{what}");
        assert!(answers.is_empty(), "{what}: {answers:?}");
    }
    assert_eq!(scraped(&receiver, CLOSED, Some(("reason", "invalid_utf8"))).await, 2.0);
    serves_a_device(&receiver, 1, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_abuse_closes_with_the_documented_codes() {
    let (broker, topics) = broker_and_topics().await;
    // Hard cap: 4 x 1024 bytes per message, fragments included.
    let receiver = spawn(config(&broker, &topics, &["--max-frame-bytes=1024"])).await;

    // Fragments that make a message are fine.
    let text = position(1, 1);
    let (a, rest) = text.as_bytes().split_at(20);
    let (b, c) = rest.split_at(20);
    let mut ws = ws_from(&receiver, HOME, None).await.unwrap_or_else(|e| panic!("{e}"));
    send_all(&mut ws, vec![data_frame(a, Data::Text, false), data_frame(b, Data::Continue, false), data_frame(c, Data::Continue, true)]).await;
    assert_eq!(next_frame(&mut ws, Duration::from_secs(10)).await, Some(ServerFrame::Ack { obu_id: 1, seq: 1 }));

    let mut fragmented_ping = Frame::ping(b"ping".to_vec());
    fragmented_ping.header_mut().is_final = false;
    let cases: Vec<(&str, Vec<Message>)> = vec![
        ("a continuation with nothing to continue", vec![data_frame(b"{}", Data::Continue, true)]),
        ("a new message inside a fragmented one", vec![data_frame(b"[", Data::Text, false), data_frame(b"{}", Data::Text, true)]),
        ("a fragmented ping", vec![Message::Frame(fragmented_ping)]),
        ("a ping over 125 bytes", vec![Message::Frame(Frame::ping(vec![b'p'; 126]))]),
    ];
    for (what, frames) in cases {
        let (answers, code) = attack(&receiver, frames).await;
        assert_eq!(code, Some(close_code::PROTOCOL_ERROR), "{what}");
        assert!(answers.is_empty(), "{what}: {answers:?}");
    }

    // Fragments without end: cut off at the hard cap, with an error frame saying why.
    let mut endless = vec![data_frame(b"[", Data::Text, false)];
    endless.extend((0..100).map(|_| data_frame(&[b' '; 1000], Data::Continue, false)));
    let (answers, code) = attack(&receiver, endless).await;
    assert_eq!(code, Some(close_code::MESSAGE_TOO_BIG));
    match answers.as_slice() {
        [ServerFrame::Error(e)] => {
            assert_eq!(e.reason, Reason::FrameTooLarge);
            assert!(e.message.contains("hard limit of 4096 bytes"), "{}", e.message);
        }
        other => panic!("expected one frame_too_large error, got {other:?}"),
    }

    assert_eq!(scraped(&receiver, CLOSED, Some(("reason", "protocol_error"))).await, 4.0);
    assert_eq!(scraped(&receiver, CLOSED, Some(("reason", "frame_too_big"))).await, 1.0);
    assert_eq!(scraped(&receiver, "fleetstream_receiver_positions_refused_total", Some(("reason", "frame_too_large"))).await, 1.0);
    send(&mut ws, &position(1, 2)).await;
    assert_eq!(next_frame(&mut ws, Duration::from_secs(10)).await, Some(ServerFrame::Ack { obu_id: 1, seq: 2 }), "the first connection goes on");
    serves_a_device(&receiver, 2, 1).await;
}

/// The next pong on `ws`, skipping anything else.
async fn pong(ws: &mut Ws) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await.ok()?? {
            Ok(Message::Pong(payload)) => return Some(payload.to_vec()),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_closed_as_abuse_and_polite_pings_get_pongs() {
    let (broker, topics) = broker_and_topics().await;
    let receiver = spawn(config(&broker, &topics, &["--ping-rate-limit=5", "--abuse-limit=3"])).await;

    // A few pings, well under 5 a second: each answered, the connection stays.
    let mut polite = ws_from(&receiver, HOME, None).await.unwrap_or_else(|e| panic!("{e}"));
    for i in 0..3u8 {
        polite.send(Message::Ping(vec![i].into())).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(pong(&mut polite).await, Some(vec![i]), "ping {i} is answered");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A flood, never reading the pongs: 5 are allowed at once, 4 more break the limit 3 times
    // too often, and the connection is closed as abusive.
    let mut flood = ws_from(&receiver, HOME, None).await.unwrap_or_else(|e| panic!("{e}"));
    send_all(&mut flood, (0..500u16).map(|i| Message::Ping(i.to_be_bytes().to_vec().into())).collect()).await;
    let (_, code) = frames_until_close(&mut flood, Duration::from_secs(10)).await;
    assert_eq!(code, Some(close_code::POLICY_VIOLATION));

    assert_eq!(scraped(&receiver, CLOSED, Some(("reason", "abuse"))).await, 1.0);
    assert!(scraped(&receiver, "fleetstream_receiver_frames_total", Some(("type", "ping"))).await >= 3.0 + 9.0);
    send(&mut polite, &position(1, 1)).await;
    assert_eq!(next_frame(&mut polite, Duration::from_secs(10)).await, Some(ServerFrame::Ack { obu_id: 1, seq: 1 }), "the polite connection goes on");
    serves_a_device(&receiver, 2, 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_never_reads_its_answers_is_closed_after_the_write_timeout() {
    let (broker, topics) = broker_and_topics().await;
    // Each frame of 500 positions gets one ack and 499 `rate_limited` errors (about 100 KB of
    // answers, no Kafka round trip): a socket nobody reads fills fast.
    let receiver = spawn(config(&broker, &topics, &["--write-timeout=1s", "--rate-limit=1", "--rate-burst=1", "--abuse-limit=1000000"])).await;
    let mut ws = ws_from(&receiver, HOME, Some(4096)).await.unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let mut sent = 0u32;
    let mut seq = 0u64;
    // Sends, never reads, until the receiver drops the connection.
    loop {
        let frame = format!("[{}]", (0..500).map(|_| { seq += 1; position(7, seq) }).collect::<Vec<_>>().join(","));
        match tokio::time::timeout(Duration::from_secs(20), ws.send(Message::Text(frame.into()))).await {
            Ok(Ok(())) => sent += 1,
            Ok(Err(_)) => break,
            Err(_) => panic!("the receiver neither read nor closed the connection for 20 s (after {sent} frames)"),
        }
        assert!(started.elapsed() < Duration::from_secs(60), "still open after {sent} frames");
    }
    let closed_after = started.elapsed();
    assert!(closed_after >= Duration::from_secs(1), "closed after {closed_after:?}, before the write timeout");

    assert_eq!(scraped_reaches(&receiver, CLOSED, Some(("reason", "write_timeout")), 1.0).await, 1.0);
    // Nothing of the connection is left: no socket, no position holding an in-flight permit.
    let mut left = (1.0, 1.0);
    for _ in 0..100 {
        left = (scraped(&receiver, "fleetstream_receiver_connections", None).await, scraped(&receiver, "fleetstream_receiver_in_flight", None).await);
        if left == (0.0, 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, (0.0, 0.0), "(connections, in flight) after the close");
    // Back-pressure, not buffering: the receiver stopped reading once its answers backed up.
    let read = scraped(&receiver, "fleetstream_receiver_frames_total", Some(("type", "text"))).await;
    assert!(read < f64::from(sent), "the receiver read {read} frames of the {sent} the device got out");
    serves_a_device(&receiver, 1, 1).await;
}

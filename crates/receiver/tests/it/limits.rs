//! Authentication and limits: each produces its documented answer.

use std::time::Duration;

use fleetstream_core::frames::ServerFrame;
use fleetstream_core::reason::Reason;
use fleetstream_receiver::close_code;

use crate::helpers::*;

fn status_of(e: tokio_tungstenite::tungstenite::Error) -> u16 {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(r) => r.status().as_u16(),
        other => panic!("expected an HTTP refusal, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_bound_to_their_vehicles() {
    let (broker, topics) = broker_and_topics().await;
    let receiver = spawn(config(&broker, &topics, &["--auth=token", "--auth-tokens=secret-a-0123456789 1;secret-b-0123456789 2,3"])).await;
    let missing = connect(&receiver.url(), None).await.err().map(status_of);
    assert_eq!(missing, Some(401), "no token");
    let wrong = connect(&receiver.url(), Some("guess")).await.err().map(status_of);
    assert_eq!(wrong, Some(401), "wrong token");
    let query = connect(&format!("{}?token=secret-b-0123456789", receiver.url()), None).await;
    assert!(query.is_ok(), "token in the query string");
    assert_eq!(receiver.metric("fleetstream_receiver_auth_failures_total", Some(("reason", "missing"))), 1.0);
    assert_eq!(receiver.metric("fleetstream_receiver_auth_failures_total", Some(("reason", "invalid"))), 1.0);

    let mut a = connect(&receiver.url(), Some("secret-a-0123456789")).await.unwrap_or_else(|e| panic!("{e}"));
    send(&mut a, &position(1, 1)).await;
    assert_eq!(next_frame(&mut a, Duration::from_secs(10)).await, Some(ServerFrame::Ack { obu_id: 1, seq: 1 }));
    send(&mut a, &position(2, 1)).await;
    match next_frame(&mut a, Duration::from_secs(10)).await {
        Some(ServerFrame::Error(e)) => {
            assert_eq!((e.reason, e.obu_id, e.seq), (Reason::ObuNotAllowed, Some(2), Some(1)));
            assert!(e.message.contains("does not allow obu_id 2"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }
    let stored = broker.read(&topics.raw, 1, Duration::from_millis(500), Duration::from_secs(10)).expect("the topic is readable");
    assert_eq!(stored.len(), 1, "vehicle 2's position never reached gpscoords");
    assert_eq!(stored[0].json()["obu_id"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reload_without_a_restart_and_a_revoked_token_closes_its_connections() {
    let (broker, topics) = broker_and_topics().await;
    let dir = std::env::temp_dir().join(fleetstream_testkit::unique("receiver-tokens"));
    std::fs::create_dir_all(&dir).expect("a temp dir");
    let file = dir.join("tokens");
    std::fs::write(&file, "old-token-0123456789 1\nkept-token-0123456789 2\n").expect("the token file is written");
    let file_flag = format!("--auth-tokens-file={}", file.display());
    let receiver = spawn(config(&broker, &topics, &["--auth=token", &file_flag, "--auth-tokens-poll=100ms"])).await;
    let mut old = connect(&receiver.url(), Some("old-token-0123456789")).await.unwrap_or_else(|e| panic!("{e}"));
    let mut kept = connect(&receiver.url(), Some("kept-token-0123456789")).await.unwrap_or_else(|e| panic!("{e}"));
    send(&mut old, &position(1, 1)).await;
    assert_eq!(next_frame(&mut old, Duration::from_secs(10)).await, Some(ServerFrame::Ack { obu_id: 1, seq: 1 }));

    // Rotation: the old token revoked, a new one added for vehicle 1; nothing restarted.
    std::fs::write(&file, "kept-token-0123456789 2\nnew-token-0123456789 1\n").expect("the token file is rewritten");
    let (_, code) = frames_until_close(&mut old, Duration::from_secs(10)).await;
    assert_eq!(code, Some(close_code::TOKEN_REVOKED), "the revoked token's connection is closed with 4001");
    assert_eq!(connect(&receiver.url(), Some("old-token-0123456789")).await.err().map(status_of), Some(401), "the revoked token is refused");
    let mut new = connect(&receiver.url(), Some("new-token-0123456789")).await.unwrap_or_else(|e| panic!("the new token works at once: {e}"));
    send(&mut new, &position(1, 2)).await;
    assert_eq!(next_frame(&mut new, Duration::from_secs(10)).await, Some(ServerFrame::Ack { obu_id: 1, seq: 2 }));
    send(&mut kept, &position(2, 1)).await;
    assert_eq!(next_frame(&mut kept, Duration::from_secs(10)).await, Some(ServerFrame::Ack { obu_id: 2, seq: 1 }), "other connections go on");

    // A broken file is refused: the tokens in use stay.
    std::fs::write(&file, "a-token-without-vehicles\n").expect("the token file is rewritten");
    let refused = fleetstream_testkit::eventually(Duration::from_secs(10), || async {
        receiver.metric("fleetstream_receiver_token_reloads_total", Some(("outcome", "error"))) >= 1.0
    })
    .await;
    assert!(refused, "the broken file was read and refused");
    assert!(connect(&receiver.url(), Some("new-token-0123456789")).await.is_ok(), "the previous tokens stay in use");
    assert_eq!(receiver.metric("fleetstream_receiver_connections_closed_total", Some(("reason", "token_revoked"))), 1.0);
    assert!(receiver.metric("fleetstream_receiver_token_reloads_total", Some(("outcome", "ok"))) >= 1.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_size_rate_and_connection_limits() {
    let (broker, topics) = broker_and_topics().await;
    let receiver = spawn(config(
        &broker,
        &topics,
        &["--max-frame-bytes=1024", "--rate-limit=5", "--rate-burst=5", "--max-connections=2", "--abuse-limit=3"],
    ))
    .await;

    // Oversized frame: a specific error, the connection stays open.
    let mut ws = connect(&receiver.url(), None).await.unwrap_or_else(|e| panic!("{e}"));
    let big = format!(r#"{{"obu_id":1,"seq":1,"pad":"{}"}}"#, "x".repeat(2000));
    send(&mut ws, &big).await;
    match next_frame(&mut ws, Duration::from_secs(10)).await {
        Some(ServerFrame::Error(e)) => {
            assert_eq!(e.reason, Reason::FrameTooLarge);
            assert!(e.message.contains("limit of 1024 bytes"), "{}", e.message);
        }
        other => panic!("{other:?}"),
    }

    // Rate limit: a burst of 5 is fine, the rest of an 8-position frame is rate limited.
    let frame = format!("[{}]", (1..=8).map(|s| position(1, s)).collect::<Vec<_>>().join(","));
    send(&mut ws, &frame).await;
    let mut acks = 0;
    let mut limited = Vec::new();
    for _ in 0..8 {
        match next_frame(&mut ws, Duration::from_secs(10)).await {
            Some(ServerFrame::Ack { .. }) => acks += 1,
            Some(ServerFrame::Error(e)) => {
                assert_eq!(e.reason, Reason::RateLimited);
                assert!(e.retryable);
                limited.push(e.seq);
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((acks, limited), (5, vec![Some(6), Some(7), Some(8)]));
    assert_eq!(receiver.metric("fleetstream_receiver_positions_refused_total", Some(("reason", "rate_limited"))), 3.0);

    // Connection limit: the third connection is told why and closed with 1013.
    let _second = connect(&receiver.url(), None).await.unwrap_or_else(|e| panic!("{e}"));
    let mut third = connect(&receiver.url(), None).await.unwrap_or_else(|e| panic!("{e}"));
    let (frames, code) = frames_until_close(&mut third, Duration::from_secs(10)).await;
    assert!(matches!(frames.as_slice(), [ServerFrame::Error(e)] if e.reason == Reason::TooManyConnections), "{frames:?}");
    assert_eq!(code, Some(close_code::TRY_AGAIN_LATER));

    // Abuse: two violations so far; two more exceed the limit of 3 and close with 1008.
    for _ in 0..2 {
        send(&mut ws, &big).await;
    }
    let (_, code) = frames_until_close(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(code, Some(close_code::POLICY_VIOLATION));
    assert_eq!(receiver.metric("fleetstream_receiver_connections_closed_total", Some(("reason", "abuse"))), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_wss_and_refuses_plain_text() {
    let (broker, topics) = broker_and_topics().await;
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = std::env::temp_dir().join(fleetstream_testkit::unique("receiver-tls"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap_or_else(|e| panic!("{e}"));
    let receiver = spawn(config(
        &broker,
        &topics,
        &[&format!("--tls-cert={}", cert.display()), &format!("--tls-key={}", key.display())],
    ))
    .await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).unwrap_or_else(|e| panic!("{e}"));
    let client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| panic!("{e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
    let url = format!("wss://localhost:{}/ws", receiver.port);
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        url.as_str(),
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(std::sync::Arc::new(client))),
    )
    .await
    .unwrap_or_else(|e| panic!("wss connect: {e}"));
    send(&mut ws, &position(3, 1)).await;
    assert_eq!(next_frame(&mut ws, Duration::from_secs(10)).await, Some(ServerFrame::Ack { obu_id: 3, seq: 1 }));
    // Plain WebSocket to a TLS port gets no upgrade.
    assert!(connect(&receiver.url(), None).await.is_err());
    let _ = std::fs::remove_dir_all(dir);
}

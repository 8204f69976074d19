//! The pipeline on a locked-down Kafka (`kafka-local --secure`): SASL_SSL only, the
//! StandardAuthorizer on, each service its own principal with the ACLs of docs/security.md and
//! no more. A wrong password and a missing ACL each give an error that says so.

use std::time::{Duration, Instant};

use fleetstream_testkit::{eventually, unique, Dedicated};

use crate::parse;

fn strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_down_cluster_runs_the_pipeline_with_one_principal_per_service_and_says_why_it_refuses() {
    let kafka = tokio::task::spawn_blocking(Dedicated::start_secure).await.expect("no panic").unwrap_or_else(|e| panic!("{e:#}"));
    let topics = kafka.topics(2).await.unwrap_or_else(|e| panic!("{e:#}"));
    let (processor_group, tracker_group) = (unique("secure-processor"), unique("secure-tracker"));
    kafka.grant_access(&topics, &processor_group, &tracker_group).unwrap_or_else(|e| panic!("{e:#}"));

    // Receiver and processor with SCRAM-SHA-512; the tracker with PLAIN (over TLS), the
    // mechanism kept for clients that have nothing better.
    let receiver_flags = kafka.service_flags("receiver", "SCRAM-SHA-512").expect("flags");
    let mut receiver_extra = strs(&receiver_flags);
    receiver_extra.push("--kafka-linger-ms=1");
    let (mut receiver, port, _) = crate::receiver(&kafka, &topics, &receiver_extra).await;
    let processor_flags = kafka.service_flags("processor", "SCRAM-SHA-512").expect("flags");
    let mut processor_extra = strs(&processor_flags);
    processor_extra.push("--kafka-linger-ms=1");
    let (mut processor, _) = crate::processor(&kafka, &topics, &processor_group, &processor_extra).await;

    let viewer = unique("secure-viewer");
    let tracker_flags = kafka.service_flags("tracker", "PLAIN").expect("flags");
    let (mut tracker, tracker_port) = crate::tracker(&kafka, &topics, &tracker_group, &viewer, "viewer", &tracker_flags).await;
    let password = tracker_flags.iter().find_map(|f| f.strip_prefix("--kafka-sasl-password-file=").map(std::fs::read_to_string));
    let password = password.expect("a password file").expect("readable");
    let tracker_config: fleetstream_tracker::Config =
        parse([vec!["tracker".to_string(), format!("--api-tokens={viewer} viewer")], tracker_flags.clone()].concat());
    assert!(tracker_config.kafka.redacted_options().iter().any(|o| o == "sasl.password=***"));
    assert!(password.len() >= 32 && !format!("{tracker_config:?}").contains(&password), "the tracker's config never shows its password");

    // Three vehicles, 20 positions each, through the receiver's WebSocket.
    let sim: fleetstream_obu_sim::Config = parse(vec![
        "obu-sim".into(),
        format!("--url=ws://127.0.0.1:{port}/ws"),
        "--vehicles=3".into(),
        "--interval=20ms".into(),
        "--count=60".into(),
        "--quiet".into(),
        "--drain-timeout=20s".into(),
    ]);
    let summary = fleetstream_obu_sim::run(sim, std::future::pending()).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!((summary.acked, summary.unacked), (60, 0), "every position acked over SASL_SSL: {summary:#?}");
    let positions = kafka.read(&topics.positions, 60, Duration::from_secs(1), Duration::from_secs(60)).expect("readable as admin");
    assert_eq!(positions.len(), 60, "the processor (its own principal, in transactions) wrote each position once");
    let client = reqwest::Client::new();
    let served = eventually(Duration::from_secs(30), || async {
        let answer = client.get(format!("http://127.0.0.1:{tracker_port}/api/vehicles")).bearer_auth(&viewer).send().await;
        let body: serde_json::Value = match answer {
            Ok(a) => a.json().await.unwrap_or_default(),
            Err(_) => return false,
        };
        body.as_array().map(Vec::len) == Some(3) || body["vehicles"].as_array().map(Vec::len) == Some(3)
    })
    .await;
    assert!(served, "the tracker (PLAIN) read the positions it may read and serves the 3 vehicles");

    // A wrong password: the receiver stays up, not ready, and says why.
    let mut wrong = receiver_flags.iter().filter(|f| !f.starts_with("--kafka-sasl-password-file")).cloned().collect::<Vec<_>>();
    wrong.push("--kafka-sasl-password=not-the-password".into());
    let (mut refused, refused_port, _) = crate::receiver(&kafka, &topics, &strs(&wrong)).await;
    let mut readyz = (0, String::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(answer) = client.get(format!("http://127.0.0.1:{refused_port}/readyz")).send().await {
            readyz = (answer.status().as_u16(), answer.text().await.unwrap_or_default());
            if readyz.1.contains("refused the credentials") {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(readyz.0, 503, "{readyz:?}");
    assert!(readyz.1.contains("Kafka refused the credentials of User:receiver (SCRAM-SHA-512)"), "{readyz:?}");
    assert!(!readyz.1.contains("not-the-password"), "{readyz:?}");
    assert!(refused.shutdown().await.is_ok());

    // The tracker, too: not ready, and /readyz says why.
    let mut wrong_tracker = tracker_flags.iter().filter(|f| !f.starts_with("--kafka-sasl-password-file")).cloned().collect::<Vec<_>>();
    wrong_tracker.push("--kafka-sasl-password=not-the-password".into());
    let (mut refused, refused_port) = crate::tracker(&kafka, &topics, &tracker_group, &viewer, "viewer", &wrong_tracker).await;
    let said = eventually(Duration::from_secs(30), || async {
        let answer = client.get(format!("http://127.0.0.1:{refused_port}/readyz")).send().await;
        match answer {
            Ok(a) if a.status().as_u16() == 503 => a.text().await.unwrap_or_default().contains("Kafka refused the credentials of User:tracker (PLAIN)"),
            _ => false,
        }
    })
    .await;
    assert!(said, "the tracker's /readyz names the refused credentials");
    assert!(refused.shutdown().await.is_ok());

    // The processor with a wrong password stops at start-up with the reason, not a hang.
    let args = crate::processor_args(&kafka, &topics, &processor_group);
    let started = Instant::now();
    let mut bad_password = args.clone();
    bad_password.extend(processor_flags.iter().filter(|f| !f.starts_with("--kafka-sasl-password-file")).cloned());
    bad_password.push("--kafka-sasl-password=not-the-password".into());
    let config: fleetstream_processor::Config = parse(bad_password);
    assert!(!format!("{config:?}").contains("not-the-password"), "the config's Debug masks the password");
    let error = match fleetstream_processor::Application::build(config).await {
        Ok(_) => panic!("a processor with a wrong password started"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains("Kafka refused the credentials of User:processor"), "{error}");
    assert!(!error.contains("not-the-password"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(30), "it failed within the metadata timeout: {:?}", started.elapsed());

    // The tracker's principal may not read raw positions: a processor run as it is refused,
    // and the error names the topic.
    let mut as_tracker = args;
    as_tracker.extend(kafka.service_flags("tracker", "SCRAM-SHA-512").expect("flags"));
    let error = match fleetstream_processor::Application::build(parse(as_tracker)).await {
        Ok(_) => panic!("the tracker's principal could read raw positions"),
        Err(e) => format!("{e:#}"),
    };
    assert!(error.contains(&format!("topic `{}`", topics.raw)) && error.contains("TOPIC_AUTHORIZATION_FAILED"), "{error}");
    assert!(error.contains("User:tracker"), "{error}");

    assert!(tracker.shutdown().await.is_ok());
    assert!(processor.shutdown().await.is_ok());
    assert!(receiver.shutdown().await.is_ok());
}

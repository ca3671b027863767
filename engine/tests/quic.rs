//! `tally serve`'s QUIC front door end to end, over real QUIC on 127.0.0.1: every command kind
//! from terminals of two merchants and an operator, authorisation from certificates,
//! refused certificates, malformed frames, overload, and a client that stops reading.

mod quic_support;

use std::time::{Duration, Instant};

use quic_support::*;
use tally_client::{Client, ClientError};
use tally_engine::server::certs::{revoke, Authority};
use tally_engine::server::Limits;
use tally_protocol::wire::{self, Frame, HEADER_BYTES};
use tally_protocol::Reason;

const PURCHASE: &str = r#"{"merchant":"demo","terminal":"pos-1","txn":"p-1","at":"2026-03-03T13:00:00Z","purchase":{"member":{"phone":"+15550102030"},"lines":[{"sku":"LATTE","category":"coffee","qty":2,"unit_price":"4.50"},{"sku":"MUG","category":"merch","qty":1,"unit_price":"12.00"}],"total":"21.00"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_kind_from_two_merchants_terminals_and_an_operator() {
    let server = TestServer::start("quic-kinds", Limits::default());
    let pos = server
        .client(&terminal("demo", Some("downtown"), "pos-1"))
        .await;
    let ops = server.client(&admin(None, "ops")).await;
    let shop = server.client(&terminal("shop", None, "till")).await;

    let terminal_commands = [
        r#"{"merchant":"demo","terminal":"pos-1","txn":"e-1","at":"2026-03-03T12:59:00Z","enroll":{"phone":"(555) 010-2030","birthday":"03-21"}}"#,
        PURCHASE,
        r#"{"merchant":"demo","terminal":"pos-1","txn":"q-1","at":"2026-03-03T13:01:00Z","quote":{"member":{"phone":"+15550102030"},"lines":[{"sku":"LATTE","category":"coffee","qty":1,"unit_price":"4.50"}],"total":"4.50"}}"#,
        r#"{"merchant":"demo","terminal":"pos-1","txn":"r-1","at":"2026-03-03T13:02:00Z","return":{"order":{"txn":"p-1"},"lines":[{"sku":"MUG","qty":1}]}}"#,
        r#"{"merchant":"demo","terminal":"pos-1","txn":"ev-1","at":"2026-03-03T13:03:00Z","event":{"member":{"phone":"+15550102030"},"name":"social_share"}}"#,
        r#"{"merchant":"demo","terminal":"pos-1","txn":"l-1","at":"2026-03-03T13:04:00Z","link":{"member":{"phone":"+15550102030"},"alias":{"card":"C-100"}}}"#,
    ];
    for json in terminal_commands {
        assert_applied(&pos.send(command(json)).await.expect("answered"));
    }
    let operator_commands = [
        r#"{"merchant":"demo","admin":"ops","txn":"a-1","at":"2026-03-03T13:05:00Z","adjust":{"member":{"card":"C-100"},"points":1000,"reason":"goodwill"}}"#,
        r#"{"merchant":"demo","admin":"ops","txn":"c-1","at":"2026-03-03T13:06:00Z","issue_cards":{"count":2,"prefix":"D"}}"#,
        r#"{"merchant":"demo","admin":"ops","txn":"as-1","at":"2026-03-03T13:07:00Z","assign_promotion":{"promotion":"welcome_back","members":[{"card":"C-100"}]}}"#,
        r#"{"merchant":"demo","admin":"ops","txn":"ic-1","at":"2026-03-03T13:08:00Z","issue_codes":{"promotion":"summer_scratch","count":2,"seed":"5f1e0c2a9b7d4e3f8a6c1b2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5"}}"#,
        r#"{"merchant":"demo","admin":"ops","txn":"t-1","at":"2026-03-03T13:09:00Z","tag":{"member":{"card":"C-100"},"add":["staff"]}}"#,
        r#"{"merchant":"shop","admin":"ops","txn":"lp-2","at":"2026-03-03T13:10:00Z","load_program":{"program":"merchant = \"shop\"\nversion = 2\ncurrency = \"EUR\"\ntime_zone = \"Europe/Berlin\"\ncountry_code = \"49\"\npoint_value = \"0.01\"\n\n[[rules]]\nid = \"base\"\nkind = \"per_amount\"\npoints = 2\n"}}"#,
    ];
    for json in operator_commands {
        assert_applied(&ops.send(command(json)).await.expect("answered"));
    }
    // Holds: hold, capture part of it, hold again and release.
    let holds = pos
        .submit(vec![
            command(r#"{"merchant":"demo","terminal":"pos-1","txn":"h-1","at":"2026-03-03T13:11:00Z","hold":{"member":{"card":"C-100"},"points":300}}"#),
            command(r#"{"merchant":"demo","terminal":"pos-1","txn":"h-2","at":"2026-03-03T13:12:00Z","capture":{"hold":{"txn":"h-1"},"points":200}}"#),
            command(r#"{"merchant":"demo","terminal":"pos-1","txn":"h-3","at":"2026-03-03T13:13:00Z","hold":{"member":{"card":"C-100"},"points":100}}"#),
            command(r#"{"merchant":"demo","terminal":"pos-1","txn":"h-4","at":"2026-03-03T13:14:00Z","release":{"hold":{"txn":"h-3"}}}"#),
        ])
        .await
        .expect("answered");
    assert_eq!(holds.len(), 4);
    holds.iter().for_each(assert_applied);
    // A balance lookup by alias shows exactly what the last acknowledged command left.
    let balance = pos
        .send(command(r#"{"merchant":"demo","terminal":"pos-1","txn":"b-1","at":"2026-03-03T13:14:30Z","balance":{"member":{"card":"C-100"}}}"#))
        .await
        .expect("answered");
    assert_applied(&balance);
    let balances = |result: &std::sync::Arc<tally_protocol::CommandResult>| {
        result
            .applied()
            .and_then(|a| a.balances.clone())
            .expect("balances")
    };
    assert_eq!(balances(&balance), balances(&holds[3]));
    let unknown = pos
        .send(command(r#"{"merchant":"demo","terminal":"pos-1","txn":"b-2","at":"2026-03-03T13:14:30Z","balance":{"member":{"card":"NOBODY"}}}"#))
        .await
        .expect("answered");
    assert_rejected(&unknown, Reason::UnknownMember);
    // The other merchant's terminal, under its new program version.
    let shop_purchase = shop
        .send(command(r#"{"merchant":"shop","terminal":"till","txn":"1","at":"2026-03-03T13:15:00Z","purchase":{"member":{"card":"S-1"},"lines":[{"sku":"BREAD","qty":1,"unit_price":"10.00"}],"total":"10.00"}}"#))
        .await
        .expect("answered");
    assert_applied(&shop_purchase);
    assert_eq!(
        shop_purchase.applied().unwrap().points_earned,
        20,
        "version 2 doubles"
    );
    // The statement shows every entry, consistent with what was acknowledged.
    assert!(entries_of(&ops, "demo", r#"{"card":"C-100"}"#, "s-1").await >= 6);
    // A repeat is answered with the first result, applied once.
    let again = pos.send(command(PURCHASE)).await.expect("answered");
    assert_eq!(status(&again), "duplicate");
    // The purchase was filled in with the terminal's store.
    let metrics = &server.running().metrics;
    assert_eq!(metrics.duplicates.get(), 1);
    // Prometheus text over HTTP.
    let address = server.running().metrics_address.expect("metrics on");
    let exposition = tokio::task::spawn_blocking(move || http_get(address, "/metrics"))
        .await
        .unwrap();
    assert!(exposition.starts_with("HTTP/1.1 200"), "{exposition}");
    assert!(
        exposition.contains("tally_commands_duplicate_total 1"),
        "{exposition}"
    );
    assert!(exposition.contains("tally_commands_rejected_total{reason=\"unknown_member\"} 1"));
    assert!(exposition.contains("tally_commit_latency_seconds_bucket{le=\"+Inf\"}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_authorise_and_everything_else_is_unauthorized_and_changes_nothing() {
    let server = TestServer::start("quic-auth", Limits::default());
    let pos = server
        .client(&terminal("demo", Some("downtown"), "pos-1"))
        .await;
    let shop = server.client(&terminal("shop", None, "till")).await;
    let ops = server.client(&admin(None, "ops")).await;
    let demo_manager = server.client(&admin(Some("demo"), "manager")).await;
    assert_applied(&pos.send(command(PURCHASE)).await.unwrap());
    let member = r#"{"phone":"+15550102030"}"#;
    let before = entries_of(&ops, "demo", member, "s-1").await;

    let refused = [
        // Merchant B's terminal cannot touch merchant A.
        (
            &shop,
            r#"{"merchant":"demo","terminal":"till","txn":"x-1","at":"2026-03-03T13:01:00Z","purchase":{"member":{"phone":"+15550102030"},"lines":[{"sku":"LATTE","qty":1,"unit_price":"4.50"}],"total":"4.50"}}"#,
        ),
        (
            &shop,
            r#"{"merchant":"demo","terminal":"till","txn":"x-2","at":"2026-03-03T13:01:00Z","return":{"order":{"terminal":"pos-1","txn":"p-1"}}}"#,
        ),
        // Admin commands from a terminal.
        (
            &pos,
            r#"{"merchant":"demo","terminal":"pos-1","txn":"x-3","at":"2026-03-03T13:01:00Z","adjust":{"member":{"phone":"+15550102030"},"points":500,"reason":"goodwill"}}"#,
        ),
        (
            &pos,
            r#"{"merchant":"demo","admin":"ops","txn":"x-4","at":"2026-03-03T13:01:00Z","adjust":{"member":{"phone":"+15550102030"},"points":500,"reason":"goodwill"}}"#,
        ),
        (
            &pos,
            r#"{"merchant":"demo","terminal":"pos-1","txn":"x-5","at":"2026-03-03T13:01:00Z","statement":{"member":{"phone":"+15550102030"}}}"#,
        ),
        (
            &pos,
            r#"{"merchant":"demo","terminal":"pos-1","txn":"x-6","at":"2026-03-03T13:01:00Z","issue_codes":{"promotion":"summer_scratch","count":1,"seed":"5f1e0c2a9b7d4e3f8a6c1b2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5"}}"#,
        ),
        (
            &pos,
            r#"{"merchant":"demo","terminal":"pos-1","txn":"x-7","at":"2026-03-03T13:01:00Z","load_program":{"program":"merchant = \"demo\""}}"#,
        ),
        // Another terminal's transaction numbers, another store.
        (
            &pos,
            r#"{"merchant":"demo","terminal":"pos-2","txn":"x-8","at":"2026-03-03T13:01:00Z","event":{"member":{"phone":"+15550102030"},"name":"review"}}"#,
        ),
        (
            &pos,
            r#"{"merchant":"demo","terminal":"pos-1","txn":"x-9","at":"2026-03-03T13:01:00Z","purchase":{"member":{"phone":"+15550102030"},"store":"airport","lines":[{"sku":"LATTE","qty":1,"unit_price":"4.50"}],"total":"4.50"}}"#,
        ),
        // An operator of one merchant at another; anyone sending the engine's ticks.
        (
            &demo_manager,
            r#"{"merchant":"shop","admin":"manager","txn":"x-10","at":"2026-03-03T13:01:00Z","adjust":{"member":{"card":"S-1"},"points":5,"reason":"goodwill"}}"#,
        ),
        (
            &ops,
            r#"{"merchant":"demo","admin":"engine","txn":"x-11","at":"2026-03-03T13:01:00Z","adjust":{"member":{"phone":"+15550102030"},"points":5,"reason":"goodwill"}}"#,
        ),
        (
            &ops,
            r#"{"merchant":"demo","admin":"ops","txn":"x-12","at":"2026-03-03T13:01:00Z","tick":{}}"#,
        ),
    ];
    for (client, json) in refused {
        let result = client.send(command(json)).await.expect("answered");
        assert_rejected(&result, Reason::Unauthorized);
    }
    // A frame mixing allowed and refused commands: each gets its own answer.
    let mixed = shop
        .submit(vec![
            command(r#"{"merchant":"shop","terminal":"till","txn":"ok-1","at":"2026-03-03T13:02:00Z","event":{"member":{"card":"S-1"},"name":"review"}}"#),
            command(r#"{"merchant":"demo","terminal":"till","txn":"no-1","at":"2026-03-03T13:02:00Z","event":{"member":{"phone":"+15550102030"},"name":"review"}}"#),
        ])
        .await
        .unwrap();
    assert_eq!(status(&mixed[0]), "applied");
    assert_rejected(&mixed[1], Reason::Unauthorized);
    assert_eq!(
        entries_of(&ops, "demo", member, "s-2").await,
        before,
        "nothing changed"
    );
    let unauthorized = server.running().metrics.rejections(Reason::Unauthorized);
    assert_eq!(unauthorized, 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_certificate_another_ca_or_a_revoked_certificate_is_refused() {
    let server = TestServer::start("quic-certs", Limits::default());
    let ops = server.client(&admin(None, "ops")).await;
    let address = server.running().address;
    let once = |mut config: tally_client::ClientConfig| {
        config.max_attempts = 1;
        config.request_timeout = Duration::from_secs(5);
        config
    };

    // No certificate: the handshake fails.
    let ca = std::fs::read(server.certs.ca_cert()).unwrap();
    let anonymous = Client::new(once(tally_client::ClientConfig::new(address, ca, None))).unwrap();
    assert!(anonymous.send(command(PURCHASE)).await.is_err());

    // A certificate of another CA, naming a valid terminal.
    let other = Authority::generate().unwrap();
    let forged = other
        .issue_client(&terminal("demo", None, "pos-1"))
        .unwrap();
    let mut config = server.config(&terminal("demo", None, "pos-1"));
    config.identity = Some((forged.cert_pem.into_bytes(), forged.key_pem.into_bytes()));
    let impostor = Client::new(once(config)).unwrap();
    assert!(impostor.send(command(PURCHASE)).await.is_err());

    // Revoked while connected: refused from then on, without a restart.
    let identity = terminal("demo", None, "pos-9");
    let authority = Authority::load(&server.certs).unwrap();
    let issued = authority.issue_client(&identity).unwrap();
    let mut config = server.config(&identity);
    config.identity = Some((issued.cert_pem.into_bytes(), issued.key_pem.into_bytes()));
    let doomed = Client::connect(once(config.clone())).await.unwrap();
    let event = |txn: &str| {
        command(&format!(
            r#"{{"merchant":"demo","terminal":"pos-9","txn":"{txn}","at":"2026-03-03T13:00:00Z","event":{{"member":{{"card":"R-1"}},"name":"review"}}}}"#
        ))
    };
    assert_applied(&doomed.send(event("1")).await.unwrap());
    revoke(&server.certs, &issued.serial, "lost").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut txn = 2;
    let refusal = loop {
        assert!(
            Instant::now() < deadline,
            "the revocation took effect in time"
        );
        match doomed.send(event(&txn.to_string())).await {
            Ok(result) => assert_applied(&result),
            Err(error) => break error,
        }
        txn += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(refusal.reason(), Some(Reason::Unauthorized), "{refusal}");
    let entries = entries_of(&ops, "demo", r#"{"card":"R-1"}"#, "s-1").await;
    let reconnect = Client::new(once(config)).unwrap();
    assert!(reconnect.send(event("later")).await.is_err());
    // What was refused changed nothing.
    assert_eq!(
        entries_of(&ops, "demo", r#"{"card":"R-1"}"#, "s-2").await,
        entries
    );
    assert!(server.running().metrics.connections_refused.get() >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_errors_and_the_server_keeps_serving() {
    let server = TestServer::start("quic-malformed", Limits::default());
    let pos = server.client(&terminal("demo", None, "pos-1")).await;
    let ops = server.client(&admin(None, "ops")).await;
    assert_applied(&pos.send(command(PURCHASE)).await.unwrap());
    let member = r#"{"phone":"+15550102030"}"#;
    let before = entries_of(&ops, "demo", member, "s-0").await;

    let valid = wire::encode_request(9, vec![command(&PURCHASE.replace("p-1", "p-2"))]);
    let mut truncated = valid.clone();
    truncated.truncate(valid.len() - 10);
    let mut wrong_version = valid.clone();
    wrong_version[4] = 7;
    let mut oversized = valid.clone();
    oversized[16..20].copy_from_slice(&(100u32 << 20).to_le_bytes());
    let garbage: Vec<u8> = (0..200u32).map(|i| (i * 31 + 7) as u8).collect();
    let mut garbage_payload = valid.clone();
    for byte in &mut garbage_payload[HEADER_BYTES..] {
        *byte = byte.wrapping_mul(7).wrapping_add(3);
    }
    let empty = wire::encode_request(10, vec![]);
    let cases: [(&str, &[u8]); 7] = [
        ("truncated frame", &truncated),
        ("header cut short", &valid[..7]),
        ("wrong version", &wrong_version),
        ("oversized frame", &oversized),
        ("garbage bytes", &garbage),
        ("garbage archive", &garbage_payload),
        ("no commands", &empty),
    ];
    for (case, bytes) in cases {
        match pos.exchange_raw(bytes).await {
            Ok(Frame::Error {
                reason, message, ..
            }) => {
                assert_eq!(reason, Reason::Invalid, "{case}: {message}");
            }
            Ok(other) => panic!("{case}: answered {other:?}"),
            // A closed stream is a clear answer too.
            Err(ClientError::Connection(_)) => {}
            Err(error) => panic!("{case}: {error}"),
        }
        // Every other connection, and this one, is still served.
        let event = command(&format!(
            r#"{{"merchant":"demo","admin":"ops","txn":"after-{case}","at":"2026-03-03T13:00:00Z","tag":{{"member":{{"phone":"+15550102030"}},"add":["ok"]}}}}"#
        ));
        assert_applied(&ops.send(event).await.unwrap());
    }
    // A valid frame with invalid content: a clear rejection, nothing changed.
    let invalid = pos
        .send(command(r#"{"merchant":"demo","terminal":"pos-1","txn":"bad","at":"2026-03-03T13:00:00Z","purchase":{"member":{"phone":"+15550102030"},"lines":[{"sku":"LATTE","qty":-3,"unit_price":"4.50"}],"total":"4.50"}}"#))
        .await
        .unwrap();
    assert_rejected(&invalid, Reason::Invalid);
    assert_eq!(
        entries_of(&ops, "demo", member, "s-1").await,
        before,
        "nothing changed"
    );
    assert!(server.running().metrics.frames_invalid.get() >= 6);
    // The connection that sent the garbage still works.
    assert_applied(
        &pos.send(command(&PURCHASE.replace("p-1", "p-3")))
            .await
            .unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_answered_and_retries_apply_each_command_once() {
    let limits = Limits {
        max_in_flight_commands: 4,
        max_commands_per_frame: 4,
        queue_wait_ms: 0,
        ..Limits::default()
    };
    let server = TestServer::start("quic-overload", limits);
    let frames: Vec<Vec<_>> = (0..24)
        .map(|frame| {
            (0..4)
                .map(|i| command(&format!(r#"{{"merchant":"demo","terminal":"pos-1","txn":"{frame}-{i}","at":"2026-03-03T13:00:00Z","event":{{"member":{{"card":"O-{frame}"}},"name":"review"}}}}"#)))
                .collect()
        })
        .collect();
    // Without retries, some requests are refused as overloaded (and nothing of them applied).
    let mut config = server.config(&terminal("demo", None, "pos-1"));
    config.max_attempts = 1;
    let impatient = Client::connect(config).await.unwrap();
    let answers = futures_join(&impatient, frames.clone()).await;
    let overloaded = answers
        .iter()
        .filter(|a| matches!(a, Err(e) if e.reason() == Some(Reason::Overloaded)))
        .count();
    assert!(overloaded > 0, "some requests found no room");
    // With retries, every command ends applied exactly once: applied now, or (if an earlier
    // request applied it) a duplicate.
    let mut config = server.config(&terminal("demo", None, "pos-1"));
    config.max_attempts = 200;
    config.retry_backoff = Duration::from_millis(2);
    config.max_backoff = Duration::from_millis(20);
    let patient = Client::connect(config).await.unwrap();
    let first_answers = answers;
    let answers = futures_join(&patient, frames).await;
    for (answer, first) in answers.iter().zip(&first_answers) {
        let expected = if first.is_ok() {
            "duplicate"
        } else {
            "applied"
        };
        for result in answer.as_ref().expect("retried until answered") {
            assert_eq!(status(result), expected, "{}", result.to_json_line());
        }
    }
    let metrics = &server.running().metrics;
    assert_eq!(
        metrics.applied.get(),
        96,
        "each of the 96 commands applied once"
    );
    assert!(metrics.requests_overloaded.get() >= overloaded as u64);
}

/// Sends every frame at once (pipelined on one connection) and waits for all answers.
async fn futures_join(
    client: &Client,
    frames: Vec<Vec<tally_protocol::Command>>,
) -> Vec<Result<Vec<std::sync::Arc<tally_protocol::CommandResult>>, ClientError>> {
    let tasks: Vec<_> = frames
        .into_iter()
        .map(|frame| {
            let client = client.clone();
            tokio::spawn(async move { client.submit(frame).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("the task completes"));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_reset_and_others_are_not_delayed() {
    let limits = Limits {
        write_timeout_ms: 1_000,
        ..Limits::default()
    };
    let server = TestServer::start("quic-stall", limits);
    let stalled = server.client(&terminal("demo", None, "pos-1")).await;
    let ops = server.client(&admin(None, "ops")).await;
    // Answers far larger than the client's stream window (quinn's default, 1.25 MB): quotes
    // of many lines, each answered with its per-line detail.
    let lines: Vec<String> = (0..100)
        .map(|i| format!(r#"{{"sku":"SKU-{i}","category":"coffee","qty":1,"unit_price":"1.00"}}"#))
        .collect();
    let quote = |n: usize| {
        command(&format!(
            r#"{{"merchant":"demo","terminal":"pos-1","txn":"q-{n}","at":"2026-03-03T13:00:00Z","quote":{{"member":{{"card":"Q-1"}},"lines":[{}],"total":"100.00"}}}}"#,
            lines.join(",")
        ))
    };
    let frame = wire::encode_request(1, (0..300).map(quote).collect());
    let mut streams = Vec::new();
    for _ in 0..3 {
        let (mut send, recv) = stalled.open_stream().await.unwrap();
        send.write_all(&frame).await.unwrap();
        send.finish().unwrap();
        streams.push((send, recv)); // never read
    }
    // Meanwhile another client is answered promptly, again and again.
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for n in 0..20 {
        let asked = Instant::now();
        let enroll = command(&format!(
            r#"{{"merchant":"demo","admin":"ops","txn":"t-{n}","at":"2026-03-03T13:00:00Z","enroll":{{"card":"T-{n}"}}}}"#
        ));
        assert_applied(&ops.send(enroll).await.unwrap());
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        slowest < Duration::from_millis(900),
        "the slowest answer took {slowest:?}"
    );
    // The stalled answers are dropped after the write timeout: nothing is kept for them.
    let metrics = &server.running().metrics;
    let deadline = started + Duration::from_secs(20);
    while metrics.in_flight_frame_bytes.get() > 0 || metrics.in_flight_commands.get() > 0 {
        assert!(Instant::now() < deadline, "the stalled requests are let go");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (_, mut recv) in streams {
        let mut all = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buffer = vec![0u8; 64 << 10];
            loop {
                match recv.read(&mut buffer).await {
                    Ok(Some(n)) => all.extend_from_slice(&buffer[..n]),
                    Ok(None) => return Ok(()),
                    Err(error) => return Err(error),
                }
            }
        })
        .await
        .expect("the stream ends");
        assert!(read.is_err(), "the server reset the stalled stream");
    }
}

fn http_get(address: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("reads");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_refused() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let server = TestServer::start("quic-connections", limits);
    let first = server.client(&terminal("demo", None, "pos-1")).await;
    let second = server.client(&terminal("demo", None, "pos-2")).await;
    let mut config = server.config(&terminal("demo", None, "pos-3"));
    config.max_attempts = 1;
    config.request_timeout = Duration::from_secs(3);
    let third = Client::new(config).unwrap();
    let event = |terminal: &str| {
        command(&format!(
            r#"{{"merchant":"demo","terminal":"{terminal}","txn":"1","at":"2026-03-03T13:00:00Z","enroll":{{"card":"{terminal}"}}}}"#
        ))
    };
    assert!(
        third.send(event("pos-3")).await.is_err(),
        "the third is refused"
    );
    assert_applied(&first.send(event("pos-1")).await.unwrap());
    assert_applied(&second.send(event("pos-2")).await.unwrap());
    assert!(server.running().metrics.connections_refused.get() >= 1);
}

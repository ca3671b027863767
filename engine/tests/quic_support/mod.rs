//! Helpers of the QUIC tests: a data directory with the engine's CA, a server started on a
//! free loopback port, clients with certificates issued for an identity.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tally_client::{Client, ClientConfig};
use tally_engine::ingest::{Clock, Engine};
use tally_engine::server::certs::{ensure_development_certs, Authority, CertPaths, Identity};
use tally_engine::server::{self, Limits, Running, ServerOptions};
use tally_engine::workload::DEMO_PROGRAM;
use tally_protocol::{parse_command_line, Command, CommandResult, Reason, Status};

/// A second merchant, so that isolation between merchants can be tested.
pub const SHOP_PROGRAM: &str = r#"
merchant = "shop"
version = 1
currency = "EUR"
time_zone = "Europe/Berlin"
country_code = "49"
point_value = "0.01"

[[rules]]
id = "base"
kind = "per_amount"
points = 1
"#;

/// A directory removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("tally-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A server on 127.0.0.1 with the demo and shop programs, the engine on the event clock.
pub struct TestServer {
    pub running: Option<Running>,
    pub data: Scratch,
    pub certs: CertPaths,
}

impl TestServer {
    pub fn start(name: &str, limits: Limits) -> TestServer {
        let data = Scratch::new(name);
        let names = ["localhost".to_string(), "127.0.0.1".to_string()];
        let certs = ensure_development_certs(&data.0, &names)
            .expect("certificates")
            .paths;
        let (mut engine, _) = Engine::open(&data.0, Clock::Event).expect("engine opens");
        engine
            .install_programs(&[DEMO_PROGRAM.to_string(), SHOP_PROGRAM.to_string()])
            .expect("programs");
        let options = ServerOptions {
            listen: "127.0.0.1:0".parse().unwrap(),
            metrics: Some("127.0.0.1:0".parse().unwrap()),
            limits,
            certs: certs.clone(),
            handle_signals: false,
        };
        let running = server::start(engine, options).expect("server starts");
        TestServer {
            running: Some(running),
            data,
            certs,
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    pub fn config(&self, identity: &Identity) -> ClientConfig {
        client_config(&self.certs, self.running().address, identity)
    }

    pub async fn client(&self, identity: &Identity) -> Client {
        Client::connect(self.config(identity))
            .await
            .expect("connects")
    }

    /// Stops the server and returns once the engine has committed and checkpointed.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.shutdown().expect("clean shutdown");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            let _ = running.shutdown();
        }
    }
}

/// A client configuration for `identity`, its certificate issued by the CA in `certs`.
pub fn client_config(
    certs: &CertPaths,
    address: std::net::SocketAddr,
    identity: &Identity,
) -> ClientConfig {
    let authority = Authority::load(certs).expect("the CA loads");
    let issued = authority.issue_client(identity).expect("issues");
    let ca = std::fs::read(certs.ca_cert()).expect("CA certificate");
    let mut config = ClientConfig::new(
        address,
        ca,
        Some((issued.cert_pem.into_bytes(), issued.key_pem.into_bytes())),
    );
    config.request_timeout = Duration::from_secs(10);
    config
}

pub fn terminal(merchant: &str, store: Option<&str>, terminal: &str) -> Identity {
    Identity::Terminal {
        merchant: merchant.into(),
        store: store.map(String::from),
        terminal: terminal.into(),
    }
}

pub fn admin(merchant: Option<&str>, name: &str) -> Identity {
    Identity::Admin {
        merchant: merchant.map(String::from),
        name: name.into(),
    }
}

pub fn command(json: &str) -> Command {
    parse_command_line(json).unwrap_or_else(|e| panic!("{e}: {json}"))
}

pub fn status(result: &CommandResult) -> &'static str {
    match result.status {
        Status::Applied(_) => "applied",
        Status::Duplicate { .. } => "duplicate",
        Status::Rejected { .. } => "rejected",
    }
}

pub fn assert_applied(result: &Arc<CommandResult>) {
    assert_eq!(status(result), "applied", "{}", result.to_json_line());
}

pub fn assert_rejected(result: &Arc<CommandResult>, reason: Reason) {
    assert_eq!(result.reason(), Some(reason), "{}", result.to_json_line());
}

/// Entries a member has in all, by an operator's statement query.
pub async fn entries_of(client: &Client, merchant: &str, member: &str, txn: &str) -> u64 {
    let query = command(&format!(
        r#"{{"merchant":"{merchant}","admin":"ops","txn":"{txn}","at":"2026-03-03T13:00:00Z","statement":{{"member":{member},"per_page":1}}}}"#
    ));
    let result = client.send(query).await.expect("answered");
    match result.applied().and_then(|a| a.statement.as_ref()) {
        Some(page) => page.total_entries,
        None => panic!("no statement: {}", result.to_json_line()),
    }
}

pub fn read_to_string(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

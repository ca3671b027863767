//! `tally serve` as a real process, killed with SIGKILL twice under load from eight terminals
//! over QUIC. The clients retry (same frames, same keys) against the restarted server. In the
//! end every command is answered, every acknowledged command is in the engine exactly once
//! (sent again, each is a `duplicate` of the result first acknowledged), and SIGTERM stops the
//! server cleanly (exit 0) after a checkpoint.

mod quic_support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command as Process, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use quic_support::*;
use tally_client::Client;
use tally_engine::server::certs::CertPaths;
use tally_engine::workload::{Workload, WorkloadConfig};
use tally_protocol::{Command, CommandResult, IdemKey, Origin, Status};

const TERMINALS: usize = 8;
const COMMANDS: usize = 480;
const PER_FRAME: usize = 4;

struct Server {
    child: Child,
}

impl Server {
    /// Starts `tally serve` and waits for its ready line.
    fn start(data: &std::path::Path, listen: &str, metrics: &str) -> Server {
        let mut child = Process::new(env!("CARGO_BIN_EXE_tally"))
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", listen, "--metrics", metrics, "--clock", "event"])
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tally serve starts");
        let stderr = child.stderr.take().expect("piped");
        let (ready, is_ready) = mpsc::channel();
        // Drains the log for the process's whole life, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("tally serve ready") {
                    let _ = ready.send(());
                }
            }
        });
        is_ready
            .recv_timeout(Duration::from_secs(60))
            .expect("tally serve says it is ready");
        Server { child }
    }

    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reaped");
    }

    /// SIGTERM, then the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Process::new("kill").args(["-TERM", &pid]).status();
        assert!(sent.expect("kill runs").success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("waits") {
                return status;
            }
            assert!(Instant::now() < deadline, "tally serve stops after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
    socket.local_addr().unwrap().port()
}

fn free_tcp_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().unwrap().port()
}

/// The workload's purchases, shared out among our terminals (keys renamed to match their
/// certificates, so every key stays unique).
fn commands_by_terminal() -> Vec<Vec<Command>> {
    let mut by_terminal = vec![Vec::new(); TERMINALS];
    let workload = Workload::new(WorkloadConfig::purchases_only(100)).take(COMMANDS);
    for (index, mut command) in workload.enumerate() {
        let terminal = format!("t-{}", index % TERMINALS);
        let IdemKey::Terminal { terminal: old, txn } = &command.key else {
            panic!("terminal keys only")
        };
        command.key = IdemKey::Terminal {
            terminal: terminal.clone(),
            txn: format!("{old}-{txn}"),
        };
        command.origin = Origin::Terminal(terminal);
        by_terminal[index % TERMINALS].push(command);
    }
    by_terminal
}

fn patient(config: &mut tally_client::ClientConfig) {
    config.max_attempts = 400;
    config.request_timeout = Duration::from_secs(5);
    config.retry_backoff = Duration::from_millis(20);
    config.max_backoff = Duration::from_millis(250);
}

#[test]
fn kill_9_under_load_loses_no_acknowledged_command_and_applies_none_twice() {
    let data = Scratch::new("quic-crash");
    let listen = format!("127.0.0.1:{}", free_port());
    let address = listen.parse().unwrap();
    let metrics = format!("127.0.0.1:{}", free_tcp_port());
    let mut server = Some(Server::start(&data.0, &listen, &metrics));
    let certs = CertPaths::new(&data.0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let by_terminal = commands_by_terminal();

    let tasks: Vec<_> = by_terminal
        .iter()
        .enumerate()
        .map(|(index, commands)| {
            let mut config = client_config(
                &certs,
                address,
                &terminal("demo", None, &format!("t-{index}")),
            );
            patient(&mut config);
            let commands = commands.clone();
            let acknowledged = acknowledged.clone();
            runtime.spawn(async move {
                let client = Client::new(config).expect("client");
                let mut answers = Vec::new();
                for frame in commands.chunks(PER_FRAME) {
                    let results = client
                        .submit(frame.to_vec())
                        .await
                        .expect("answered in the end");
                    acknowledged.fetch_add(results.len(), Ordering::Relaxed);
                    answers.extend(results);
                }
                answers
            })
        })
        .collect();

    // Two kills under load, each followed by a restart on the same address.
    for kill_at in [COMMANDS / 3, 2 * COMMANDS / 3] {
        let deadline = Instant::now() + Duration::from_secs(120);
        while acknowledged.load(Ordering::Relaxed) < kill_at {
            assert!(Instant::now() < deadline, "the load makes progress");
            std::thread::sleep(Duration::from_millis(5));
        }
        server.take().expect("running").kill();
        std::thread::sleep(Duration::from_millis(200));
        server = Some(Server::start(&data.0, &listen, &metrics));
    }
    let answers: Vec<Vec<Arc<CommandResult>>> = tasks
        .into_iter()
        .map(|task| runtime.block_on(task).expect("the terminal finishes"))
        .collect();

    // Every command was answered: applied, or a duplicate when the answer to an attempt that
    // was durable was lost in a kill.
    let mut duplicates_after_kills = 0;
    for results in &answers {
        for result in results {
            match &result.status {
                Status::Applied(_) => {}
                Status::Duplicate { .. } => duplicates_after_kills += 1,
                Status::Rejected { .. } => panic!("{}", result.to_json_line()),
            }
        }
    }
    // Sent again, every one is a duplicate of what was first acknowledged: present, once.
    runtime.block_on(async {
        for (index, commands) in by_terminal.iter().enumerate() {
            let mut config = client_config(
                &certs,
                address,
                &terminal("demo", None, &format!("t-{index}")),
            );
            patient(&mut config);
            let client = Client::connect(config).await.expect("connects");
            let again = client.submit(commands.clone()).await.expect("answered");
            for (first, second) in answers[index].iter().zip(&again) {
                let acknowledged = match &first.status {
                    Status::Duplicate { first } => first.as_ref(),
                    _ => first.as_ref(),
                };
                match &second.status {
                    Status::Duplicate { first } => assert_eq!(first.as_ref(), acknowledged),
                    _ => panic!("not a duplicate: {}", second.to_json_line()),
                }
            }
        }
    });
    eprintln!(
        "{COMMANDS} commands from {TERMINALS} terminals, 2 kills: {duplicates_after_kills} answered as duplicates after a retry"
    );
    // `tally status` reads the running server's health.
    let report = Process::new(env!("CARGO_BIN_EXE_tally"))
        .args(["status", "--metrics", &metrics])
        .output()
        .expect("tally status runs");
    let report = String::from_utf8_lossy(&report.stdout);
    assert!(report.contains("status: serving"), "{report}");
    let requests: u64 = report
        .lines()
        .find_map(|line| line.strip_prefix("requests: "))
        .and_then(|n| n.parse().ok())
        .expect("a request count");
    assert!(
        requests >= TERMINALS as u64,
        "at least the last round's frames: {report}"
    );
    let status = server.take().expect("running").terminate();
    assert!(status.success(), "SIGTERM stops cleanly: {status}");
    assert!(
        data.0.join("checkpoint").exists(),
        "the shutdown checkpointed"
    );
}

//! Driving the fleet: every terminal on its own QUIC connection with its own certificate, an
//! open-loop schedule at a constant aggregate rate, latency from each frame's intended send
//! time (so a stall counts for every frame it delays: no coordinated omission), and the
//! read-back that `--verify` compares with the model.
//!
//! Rates and intervals are floats here (a schedule, never money).
#![allow(clippy::float_arithmetic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use tally_certs::{Authority, CertPaths, Identity};
use tally_client::{read_frame, Client, ClientConfig, ClientError};
use tally_protocol::wire::{self, Frame};
use tally_protocol::{
    Balances, Body, Command, CommandResult, IdemKey, LoadProgram, Origin, Reason,
};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::figures::{Recorder, StepFigures};
use crate::fleet::{catalog, FleetConfig, Sent, Sim};
use crate::verify::{Mismatch, Model, VerifyReport, Wallets};
use crate::LoadError;

/// Attempts per frame when the connection is lost or an answer does not come in time.
const FRAME_ATTEMPTS: u32 = 5;
/// Balance queries per frame when reading members back.
const READ_BACK_BATCH: usize = 256;

/// Where the fleet's certificates come from: the caller's CA (the engine's, from its data
/// directory or in memory), so this crate needs no engine.
pub trait Credentials: Send + Sync {
    /// The CA certificate (PEM) the server's certificate must chain to.
    fn ca_pem(&self) -> Vec<u8>;
    /// A certificate and its key (PEM) naming `identity`.
    fn issue(&self, identity: &Identity) -> Result<(Vec<u8>, Vec<u8>), LoadError>;
}

/// Issues on the fly from a CA whose key we hold.
pub struct CaCredentials {
    authority: Authority,
}

impl std::fmt::Debug for CaCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaCredentials")
    }
}

impl CaCredentials {
    pub fn new(authority: Authority) -> CaCredentials {
        CaCredentials { authority }
    }

    /// The engine's CA in its data directory (`<data>/certs`).
    pub fn load(data: &Path) -> Result<CaCredentials, LoadError> {
        Ok(CaCredentials::new(Authority::load(&CertPaths::new(data))?))
    }
}

impl Credentials for CaCredentials {
    fn ca_pem(&self) -> Vec<u8> {
        self.authority.cert_pem.clone().into_bytes()
    }

    fn issue(&self, identity: &Identity) -> Result<(Vec<u8>, Vec<u8>), LoadError> {
        let issued = self.authority.issue_client(identity)?;
        Ok((issued.cert_pem.into_bytes(), issued.key_pem.into_bytes()))
    }
}

/// One step of a run at one rate.
#[derive(Debug, Clone)]
pub struct StepConfig {
    /// Commands per second, all terminals and operators together.
    pub rate_per_s: u64,
    /// The measured part, after the warm-up.
    pub duration: Duration,
    pub warmup: Duration,
    /// Commands per request frame.
    pub batch: usize,
    /// Frames in flight per connection; a frame due while all are busy waits, and its wait
    /// counts in its latency.
    pub streams: usize,
    /// A live progress line on standard error (when it is a terminal).
    pub progress: bool,
}

/// A terminal or an operator with its connection, and its share of the aggregate rate.
#[derive(Clone)]
struct Source {
    client: Client,
    sim: Arc<Mutex<Sim>>,
    merchant: String,
    /// Share of all commands this source sends.
    share: f64,
    /// Where in its interval its frames fall (0..1), so sources do not send in lockstep.
    phase: f64,
}

/// What the fleet shares between its frames' tasks.
struct Shared {
    recorder: Mutex<Recorder>,
    model: Arc<Mutex<Model>>,
    next_request: Arc<AtomicU64>,
}

/// The connected fleet.
pub struct Fleet {
    config: Arc<FleetConfig>,
    sources: Vec<Source>,
    model: Arc<Mutex<Model>>,
    next_request: Arc<AtomicU64>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

/// How a frame ended.
enum Outcome {
    Results {
        results: Vec<Arc<CommandResult>>,
        /// Why each earlier attempt failed (empty when the first one was answered).
        failed_attempts: Vec<String>,
    },
    /// An error frame: nothing of it was applied.
    Refused(Reason),
    /// No answer after every attempt: unknown whether it was applied.
    Failed(String),
}

impl Fleet {
    /// Installs the other merchants' programs if needed, issues a certificate for every
    /// terminal and operator, and connects each.
    pub async fn connect(
        config: FleetConfig,
        server: SocketAddr,
        credentials: &dyn Credentials,
    ) -> Result<Fleet, LoadError> {
        config.check()?;
        let config = Arc::new(config);
        let catalog = Arc::new(catalog(config.skus, config.seed));
        let request_timeout = Duration::from_secs(10);
        let connect = |identity: Identity| async move {
            let mut client_config = ClientConfig::new(
                server,
                credentials.ca_pem(),
                Some(credentials.issue(&identity)?),
            );
            client_config.request_timeout = request_timeout;
            Ok::<_, LoadError>(Client::connect(client_config).await?)
        };
        install_programs(&config, &connect).await?;
        let terminals = config.terminals();
        let operator_share = config.mix.operator_per_mille() as f64 / 1000.0;
        let terminal_share = (1.0 - operator_share) / terminals.len() as f64;
        let mut sources = Vec::new();
        for (index, (merchant, store, terminal)) in terminals.into_iter().enumerate() {
            let identity = Identity::Terminal {
                merchant: merchant.clone(),
                store: Some(store.clone()),
                terminal: terminal.clone(),
            };
            let who = (merchant.clone(), Some(store), terminal);
            let sim = Sim::new(config.clone(), catalog.clone(), who, false, index as u64);
            sources.push(Source {
                client: connect(identity).await?,
                sim: Arc::new(Mutex::new(sim)),
                merchant,
                share: terminal_share,
                phase: 0.0,
            });
        }
        for merchant in &config.merchants {
            let identity = Identity::Admin {
                merchant: Some(merchant.clone()),
                name: "lg-ops".to_string(),
            };
            let who = (merchant.clone(), None, "lg-ops".to_string());
            let index = sources.len() as u64;
            let sim = Sim::new(config.clone(), catalog.clone(), who, true, index);
            sources.push(Source {
                client: connect(identity).await?,
                sim: Arc::new(Mutex::new(sim)),
                merchant: merchant.clone(),
                share: operator_share / config.merchants.len() as f64,
                phase: 0.0,
            });
        }
        let count = sources.len() as f64;
        for (index, source) in sources.iter_mut().enumerate() {
            source.phase = index as f64 / count;
        }
        Ok(Fleet {
            config,
            sources,
            model: Arc::new(Mutex::new(Model::default())),
            next_request: Arc::new(AtomicU64::new(1)),
            request_timeout,
        })
    }

    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// Connections open (terminals and operators).
    pub fn connections(&self) -> usize {
        self.sources.len()
    }

    /// Runs one step: every source on its schedule, then waits for the answers.
    pub async fn step(&self, step: &StepConfig) -> StepFigures {
        let started = Instant::now() + Duration::from_millis(50);
        let ended = started + step.warmup + step.duration;
        let shared = Arc::new(Shared {
            recorder: Mutex::new(Recorder::new(started, step.warmup)),
            model: self.model.clone(),
            next_request: self.next_request.clone(),
        });
        let progress = step
            .progress
            .then(|| tokio::spawn(progress_line(shared.clone(), started, ended)));
        let mut sources = JoinSet::new();
        for source in &self.sources {
            let (source, shared, step) = (source.clone(), shared.clone(), step.clone());
            let timeout = self.request_timeout;
            sources.spawn(drive(source, shared, step, (started, ended), timeout));
        }
        while sources.join_next().await.is_some() {}
        if let Some(progress) = progress {
            progress.abort();
            let _ = progress.await;
        }
        let recorder = shared.recorder.lock().expect("not poisoned");
        recorder.figures(step.rate_per_s, step.batch, ended)
    }

    /// Steps the rate up by `factor` from `start_per_s` until a step misses the objective
    /// (p99 above `slo_p99_ms`, errors, or less achieved than offered) or `max_steps` ran.
    /// Returns every step and the highest sustainable step's achieved throughput.
    pub async fn find_max(
        &self,
        start: &StepConfig,
        factor: f64,
        max_steps: usize,
        slo_p99_ms: f64,
    ) -> (Vec<StepFigures>, Option<f64>) {
        let mut steps = Vec::new();
        let mut best = None;
        let mut step = start.clone();
        for index in 0..max_steps {
            let mut figures = self.step(&step).await;
            figures.label = format!("find-max step {}", index + 1);
            let sustainable = figures.sustainable(slo_p99_ms);
            if sustainable {
                best = Some(figures.throughput_achieved_per_s);
            }
            steps.push(figures);
            if !sustainable {
                break;
            }
            step.rate_per_s = ((step.rate_per_s as f64) * factor).ceil() as u64;
        }
        (steps, best)
    }

    /// Releases every open hold (so none lapses later, unseen by the model).
    pub async fn release_holds(&self) {
        let shared = Shared {
            recorder: Mutex::new(Recorder::new(Instant::now(), Duration::ZERO)),
            model: self.model.clone(),
            next_request: self.next_request.clone(),
        };
        for source in &self.sources {
            let releases = source.sim.lock().expect("not poisoned").release_all();
            if !releases.is_empty() {
                let due = Instant::now();
                exchange(source, &shared, due, releases, self.request_timeout).await;
            }
        }
    }

    /// Reads back every member the model knows and compares (after releasing open holds).
    pub async fn verify(&self) -> Result<VerifyReport, LoadError> {
        self.release_holds().await;
        let expected = self.model.lock().expect("not poisoned").expected();
        let mut mismatches = Vec::new();
        for merchant in &self.config.merchants {
            let members: Vec<_> = expected
                .iter()
                .filter(|((m, _), _)| m == merchant)
                .collect();
            let cards: Vec<String> = members.iter().map(|((_, card), _)| card.clone()).collect();
            let read = self.read_balances(merchant, &cards).await?;
            for (((_, card), want), (_, got)) in members.iter().zip(&read) {
                let got = got.as_ref().map(|(balances, _)| Wallets {
                    points: Decimal::from(balances.points),
                    credit: balances.credit,
                });
                if got.as_ref() != Some(want) {
                    mismatches.push(Mismatch {
                        merchant: merchant.clone(),
                        card: card.clone(),
                        expected: *want,
                        read_back: got,
                    });
                }
            }
        }
        let model = self.model.lock().expect("not poisoned");
        Ok(model.report(expected.len() as u64, mismatches))
    }

    /// Members' balances and tiers over the network (a `balance` query each, from one of the
    /// merchant's terminals); `None` for a member the server does not know.
    pub async fn read_balances(
        &self,
        merchant: &str,
        cards: &[String],
    ) -> Result<Vec<(String, Option<(Balances, Option<String>)>)>, LoadError> {
        let source = self
            .sources
            .iter()
            .find(|s| s.merchant == merchant)
            .ok_or_else(|| LoadError::Config(format!("no terminal of {merchant}")))?;
        let mut read = Vec::with_capacity(cards.len());
        for chunk in cards.chunks(READ_BACK_BATCH) {
            let commands: Vec<Command> = {
                let mut sim = source.sim.lock().expect("not poisoned");
                chunk.iter().map(|card| sim.balance_query(card)).collect()
            };
            let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
            let frame = wire::encode_request(request_id, commands);
            let timeout = self.request_timeout;
            let results = match send(&source.client, &frame, request_id, chunk.len(), timeout).await
            {
                Outcome::Results { results, .. } => results,
                Outcome::Refused(reason) => return Err(LoadError::Refused(reason)),
                Outcome::Failed(why) => {
                    return Err(LoadError::NoAnswer(format!("reading balances: {why}")))
                }
            };
            for (card, result) in chunk.iter().zip(results) {
                let found = result.applied().and_then(|applied| {
                    let balances = applied.balances.clone()?;
                    let tier = applied.tier.as_ref().and_then(|t| t.after.as_deref());
                    Some((balances, tier.map(str::to_string)))
                });
                read.push((card.clone(), found));
            }
        }
        Ok(read)
    }

    /// Closes every connection.
    pub async fn close(&self) {
        for source in &self.sources {
            source.client.close().await;
        }
    }
}

/// A merchant other than `demo` gets the demo program under its name (an operator of every
/// merchant loads it; a version already installed is refused, which is fine).
async fn install_programs<F, Fut>(config: &FleetConfig, connect: &F) -> Result<(), LoadError>
where
    F: Fn(Identity) -> Fut,
    Fut: std::future::Future<Output = Result<Client, LoadError>>,
{
    let others: Vec<&String> = config.merchants.iter().filter(|m| *m != "demo").collect();
    if others.is_empty() {
        return Ok(());
    }
    let name = "lg-setup".to_string();
    let client = connect(Identity::Admin {
        merchant: None,
        name: name.clone(),
    })
    .await?;
    for merchant in others {
        let command = Command {
            merchant: merchant.clone(),
            origin: Origin::Admin(name.clone()),
            key: IdemKey::Admin {
                admin: name.clone(),
                txn: format!("{}-program", config.run_tag),
            },
            at: chrono::Utc::now(),
            program_version: None,
            body: Body::LoadProgram(LoadProgram {
                program: FleetConfig::program_for(merchant),
            }),
        };
        client.send(command).await?;
    }
    client.close().await;
    Ok(())
}

/// One source's schedule: a frame every `batch / (rate × share)` seconds, each sent when due
/// (or as soon as a stream is free) and timed from when it was due.
async fn drive(
    source: Source,
    shared: Arc<Shared>,
    step: StepConfig,
    (started, ended): (Instant, Instant),
    timeout: Duration,
) {
    let rate = step.rate_per_s as f64 * source.share;
    if rate <= 0.0 || step.batch == 0 {
        return;
    }
    let interval = Duration::from_secs_f64(step.batch as f64 / rate);
    let first = started + interval.mul_f64(source.phase);
    let streams = Arc::new(Semaphore::new(step.streams.max(1)));
    let mut in_flight = JoinSet::new();
    for index in 0u32.. {
        let due = first + interval * index;
        if due >= ended {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let batch = source
            .sim
            .lock()
            .expect("not poisoned")
            .next_batch(step.batch);
        shared
            .recorder
            .lock()
            .expect("not poisoned")
            .offered(due, batch.len() as u64);
        let permit = streams.clone().acquire_owned().await.expect("never closed");
        let (source, shared) = (source.clone(), shared.clone());
        in_flight.spawn(async move {
            exchange(&source, &shared, due, batch, timeout).await;
            drop(permit);
        });
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
}

/// Sends one frame and records what came back.
async fn exchange(
    source: &Source,
    shared: &Shared,
    due: Instant,
    batch: Vec<(Command, Sent)>,
    timeout: Duration,
) {
    let (commands, sent): (Vec<Command>, Vec<Sent>) = batch.into_iter().unzip();
    let request_id = shared.next_request.fetch_add(1, Ordering::Relaxed);
    let frame = wire::encode_request(request_id, commands.clone());
    let sent_at = Instant::now();
    let outcome = send(&source.client, &frame, request_id, commands.len(), timeout).await;
    let count = commands.len() as u64;
    match outcome {
        Outcome::Results {
            results,
            failed_attempts,
        } => {
            let resent = !failed_attempts.is_empty();
            let pairs: Vec<(Sent, &CommandResult)> = sent
                .iter()
                .cloned()
                .zip(results.iter().map(|r| &**r))
                .collect();
            {
                let mut recorder = shared.recorder.lock().expect("not poisoned");
                recorder.answered(due, sent_at, &pairs);
                for cause in &failed_attempts {
                    recorder.transport_retry(cause);
                }
            }
            let mut model = shared.model.lock().expect("not poisoned");
            for (sent, result) in &pairs {
                model.record(&source.merchant, sent, result, resent);
            }
            drop(model);
            let mut sim = source.sim.lock().expect("not poisoned");
            for ((command, sent), result) in commands.iter().zip(&sent).zip(&results) {
                sim.observe(command, sent, result);
            }
        }
        Outcome::Refused(reason) => {
            let what = format!("refused {}", reason.code());
            shared
                .recorder
                .lock()
                .expect("not poisoned")
                .failed(due, count, &what);
        }
        Outcome::Failed(_) => {
            // Counted, not printed: a failing server must not flood the output.
            shared
                .recorder
                .lock()
                .expect("not poisoned")
                .failed(due, count, "no answer");
            let mut model = shared.model.lock().expect("not poisoned");
            for sent in &sent {
                model.unanswered(&source.merchant, sent);
            }
        }
    }
}

/// One frame with its retries: the same bytes again after a lost connection or a timeout (so
/// the same keys: the engine answers a repeat with the first result); an error frame is final.
async fn send(
    client: &Client,
    frame: &[u8],
    request_id: u64,
    count: usize,
    timeout: Duration,
) -> Outcome {
    let mut backoff = Duration::from_millis(50);
    let mut failed_attempts = Vec::new();
    loop {
        let answer = tokio::time::timeout(timeout, one_attempt(client, frame)).await;
        let error = match answer {
            Ok(Ok(Frame::Results {
                request_id: id,
                results,
            })) if id == request_id && results.len() == count => {
                return Outcome::Results {
                    results,
                    failed_attempts,
                }
            }
            Ok(Ok(Frame::Error { reason, .. })) => return Outcome::Refused(reason),
            Ok(Ok(_)) => "the answer does not match the request".to_string(),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        if failed_attempts.len() + 1 >= FRAME_ATTEMPTS as usize {
            return Outcome::Failed(error);
        }
        failed_attempts.push(error);
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}

async fn one_attempt(client: &Client, frame: &[u8]) -> Result<Frame, ClientError> {
    let (mut send, mut recv) = client.open_stream().await?;
    send.write_all(frame)
        .await
        .map_err(|e| ClientError::Connection(e.to_string()))?;
    let _ = send.finish();
    read_frame(&mut recv, wire::MAX_FRAME_BYTES_CEILING).await
}

/// A live line on standard error: seconds done, answered per second and p99 of the last
/// second (hidden when standard error is not a terminal).
async fn progress_line(shared: Arc<Shared>, started: Instant, ended: Instant) {
    let total_s = ended.saturating_duration_since(started).as_secs();
    let bar = indicatif::ProgressBar::new(total_s);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos:>3}/{len} s  {msg}")
            .expect("a valid template"),
    );
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let last = shared
            .recorder
            .lock()
            .expect("not poisoned")
            .last_second(now);
        if let Some((second, answered, p99_ms)) = last {
            bar.set_position(second.min(total_s));
            bar.set_message(format!(
                "{answered} commands/s answered, p99 {p99_ms:.1} ms"
            ));
        }
        if now >= ended {
            bar.finish_and_clear();
            return;
        }
    }
}

/// The cards of the busiest members (Zipf ranks 1, 2, …): the ones the demo shows.
pub fn busiest_cards(config: &FleetConfig, count: u64) -> Vec<String> {
    (1..=count.min(config.members))
        .map(|rank| crate::fleet::card_of_rank(&config.run_tag, rank, config.members))
        .collect()
}

//! The limits under the engine, measured in the same run as the engine so that every figure is
//! also a ratio: a raw quinn echo of the same request frames (same TLS set-up with client
//! certificates, each frame answered with its own bytes), redb appends of the same bytes in
//! durable group commits, and the disk's fsync rate.
//!
//! The echo and the engine are measured in rounds, each on frames of its own (fresh keys and
//! members), the echo and then the engine each round: on a shared machine one round's echo
//! can run twice as fast as the next one's, and the median of several rounds' ratios moves
//! far less than one round's.
//!
//! Rates are floats here (for display, never money).
#![allow(clippy::float_arithmetic)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;
use tally_certs::Identity;
use tally_client::{read_frame, Client, ClientConfig};
use tally_protocol::wire::{self, Frame, HEADER_BYTES};

use crate::fleet::{catalog, FleetConfig, Sim};
use crate::run::Credentials;
use crate::LoadError;

/// What the same frames cost each part under the engine, and the engine itself.
#[derive(Debug, Clone, Serialize)]
pub struct Baseline {
    pub commands: u64,
    pub frames: u64,
    pub batch: usize,
    pub connections: usize,
    pub streams_per_connection: usize,
    pub frame_bytes: u64,
    /// Each round's echo and engine, in order.
    pub rounds: Vec<Round>,
    /// Medians over the rounds: commands per second through a raw quinn echo of the frames.
    pub echo_per_s: f64,
    /// Commands per second through the engine (applied durably and answered).
    pub engine_per_s: f64,
    /// The median of the rounds' ratios.
    pub engine_over_echo: f64,
    /// Commands per second when the frames' bytes are appended to redb, `group_frames`
    /// frames per durable commit.
    pub redb_append_per_s: f64,
    pub redb_group_frames: usize,
    /// 4 KiB writes each followed by an fsync, per second.
    pub fsync_per_s: f64,
}

/// One round: the echo, then the engine, on the same frames.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Round {
    pub echo_per_s: f64,
    pub engine_per_s: f64,
    pub engine_over_echo: f64,
}

impl Baseline {
    pub fn text(&self) -> String {
        let mut text = String::new();
        for (index, round) in self.rounds.iter().enumerate() {
            text.push_str(&format!(
                "round {}: echo {:.0} commands/s, tally serve {:.0} commands/s = {:.2} x echo\n",
                index + 1,
                round.echo_per_s,
                round.engine_per_s,
                round.engine_over_echo
            ));
        }
        text + &format!(
            "baseline, each round {} commands in {} frames of {} ({} bytes), {} connections x {} streams; medians of {} rounds:\n\
             \x20 quinn echo of the frames      {:>10.0} commands/s\n\
             \x20 tally serve (durable)         {:>10.0} commands/s  = {:.2} x echo\n\
             \x20 redb append, {} frames/commit {:>10.0} commands/s\n\
             \x20 fsync of 4 KiB                {:>10.0} /s\n",
            self.commands,
            self.frames,
            self.batch,
            self.frame_bytes,
            self.connections,
            self.streams_per_connection,
            self.rounds.len(),
            self.echo_per_s,
            self.engine_per_s,
            self.engine_over_echo,
            self.redb_group_frames,
            self.redb_append_per_s,
            self.fsync_per_s
        )
    }
}

/// What the baseline needs: the server, its certificate and key (for the echo), the fleet's
/// credentials, and a directory on the engine's disk for redb and fsync.
pub struct BaselineConfig<'a> {
    pub server: SocketAddr,
    pub server_cert_pem: Vec<u8>,
    pub server_key_pem: Vec<u8>,
    pub credentials: &'a dyn Credentials,
    pub fleet: FleetConfig,
    pub commands: usize,
    pub batch: usize,
    pub streams: usize,
    /// Rounds of echo then engine (at least one).
    pub rounds: usize,
    pub scratch_dir: &'a Path,
}

/// Runs every baseline and the engine on the same frames.
pub async fn measure(config: BaselineConfig<'_>) -> Result<Baseline, LoadError> {
    let mut rounds = Vec::new();
    let mut last = None;
    for round in 0..config.rounds.max(1) {
        let (identities, frames) = frames(&config, round);
        rounds.push(measure_round(&config, &identities, &frames).await?);
        last = Some((identities, frames));
    }
    let (identities, frames) = last.expect("at least one round");
    let frame_count: usize = frames.iter().map(Vec::len).sum();
    let commands: usize = frames.iter().flatten().map(|(_, n)| n).sum();
    let frame_bytes: usize = frames.iter().flatten().map(|(f, _)| f.len()).sum();
    let flat: Vec<&(Vec<u8>, usize)> = frames.iter().flatten().collect();
    let group_frames = (4096 / config.batch).max(1);
    let redb_elapsed = redb_append(config.scratch_dir, &flat, group_frames)?;
    let fsync_per_s = fsync_rate(config.scratch_dir, Duration::from_secs(2))?;
    let per_s = |elapsed: Duration| commands as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok(Baseline {
        commands: commands as u64,
        frames: frame_count as u64,
        batch: config.batch,
        connections: identities.len(),
        streams_per_connection: config.streams,
        frame_bytes: frame_bytes as u64,
        echo_per_s: median(rounds.iter().map(|r| r.echo_per_s)),
        engine_per_s: median(rounds.iter().map(|r| r.engine_per_s)),
        engine_over_echo: median(rounds.iter().map(|r| r.engine_over_echo)),
        rounds,
        redb_append_per_s: per_s(redb_elapsed),
        redb_group_frames: group_frames,
        fsync_per_s,
    })
}

/// The same frames through the echo, then through the engine.
async fn measure_round(
    config: &BaselineConfig<'_>,
    identities: &[Identity],
    frames: &Frames,
) -> Result<Round, LoadError> {
    let commands: usize = frames.iter().flatten().map(|(_, n)| n).sum();
    let mut clients = Vec::new();
    let echo = echo_server(config)?;
    for identity in identities {
        clients.push(connect(config, echo.local_addr()?, identity).await?);
    }
    let echo_elapsed = closed_loop(&clients, frames, config.streams).await?;
    echo.close(0u32.into(), b"done");
    let mut engine_clients = Vec::new();
    for identity in identities {
        engine_clients.push(connect(config, config.server, identity).await?);
    }
    let engine_elapsed = closed_loop(&engine_clients, frames, config.streams).await?;
    for client in engine_clients.iter().chain(&clients) {
        client.close().await;
    }
    let per_s = |elapsed: Duration| commands as f64 / elapsed.as_secs_f64().max(1e-9);
    Ok(Round {
        echo_per_s: per_s(echo_elapsed),
        engine_per_s: per_s(engine_elapsed),
        engine_over_echo: echo_elapsed.as_secs_f64() / engine_elapsed.as_secs_f64().max(1e-9),
    })
}

/// The middle value (of an even count, the mean of the two in the middle).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut values: Vec<f64> = values.collect();
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    match values.len() % 2 {
        0 if middle > 0 => (values[middle - 1] + values[middle]) / 2.0,
        _ => values.get(middle).copied().unwrap_or(0.0),
    }
}

type Frames = Vec<Vec<(Vec<u8>, usize)>>;

/// Each terminal's frames for round `round`, made by its simulation and encoded once; each
/// round's keys and members are its own (its run tag ends in the round's number). The
/// terminals make their frames in turns, as a fleet's clocks advance together: a member's
/// orders at two terminals carry the times a real fleet would give them, not one terminal's
/// whole run before the next's.
fn frames(config: &BaselineConfig<'_>, round: usize) -> (Vec<Identity>, Frames) {
    let fleet = Arc::new(FleetConfig {
        retry_percent: 0,
        run_tag: format!("{}r{round}", config.fleet.run_tag),
        ..config.fleet.clone()
    });
    let skus = Arc::new(catalog(fleet.skus, fleet.seed));
    let terminals = fleet.terminals();
    let per_terminal = config.commands.div_ceil(terminals.len());
    let mut identities = Vec::new();
    let mut sims = Vec::new();
    for (index, (merchant, store, terminal)) in terminals.into_iter().enumerate() {
        identities.push(Identity::Terminal {
            merchant: merchant.clone(),
            store: Some(store.clone()),
            terminal: terminal.clone(),
        });
        let who = (merchant, Some(store), terminal);
        sims.push(Sim::new(
            fleet.clone(),
            skus.clone(),
            who,
            false,
            index as u64,
        ));
    }
    let mut all: Frames = vec![Vec::new(); sims.len()];
    let mut request_id = 0;
    for _ in 0..per_terminal.div_ceil(config.batch) {
        for (sim, frames) in sims.iter_mut().zip(&mut all) {
            request_id += 1;
            let commands = sim.next_batch(config.batch).into_iter().map(|(c, _)| c);
            let commands: Vec<_> = commands.collect();
            frames.push((wire::encode_request(request_id, commands), config.batch));
        }
    }
    (identities, all)
}

async fn connect(
    config: &BaselineConfig<'_>,
    server: SocketAddr,
    identity: &Identity,
) -> Result<Client, LoadError> {
    let credentials = config.credentials;
    let client_config = ClientConfig::new(
        server,
        credentials.ca_pem(),
        Some(credentials.issue(identity)?),
    );
    Ok(Client::connect(client_config).await?)
}

/// Sends every terminal's frames, `streams` in flight each, as fast as they are answered.
async fn closed_loop(
    clients: &[Client],
    frames: &Frames,
    streams: usize,
) -> Result<Duration, LoadError> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (client, frames) in clients.iter().zip(frames) {
        let frames = Arc::new(frames.clone());
        let next = Arc::new(AtomicUsize::new(0));
        for _ in 0..streams.max(1) {
            let (client, frames, next) = (client.clone(), frames.clone(), next.clone());
            tasks.spawn(async move {
                while let Some((frame, _)) = frames.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (mut send, mut recv) = client.open_stream().await?;
                    send.write_all(frame)
                        .await
                        .map_err(|e| LoadError::NoAnswer(format!("sending: {e}")))?;
                    let _ = send.finish();
                    if let Frame::Error { reason, .. } =
                        read_frame(&mut recv, wire::MAX_FRAME_BYTES_CEILING).await?
                    {
                        return Err(LoadError::Refused(reason));
                    }
                }
                Ok::<(), LoadError>(())
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| LoadError::Task(e.to_string()))??;
    }
    Ok(started.elapsed())
}

/// A raw quinn server with the engine's TLS set-up that answers each frame with itself.
fn echo_server(config: &BaselineConfig<'_>) -> Result<quinn::Endpoint, LoadError> {
    let tls_error = |e: &dyn std::fmt::Display| LoadError::EchoTls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&config.credentials.ca_pem()) {
        roots
            .add(ca.map_err(|e| tls_error(&e))?)
            .map_err(|e| tls_error(&e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| tls_error(&e))?;
    let chain = CertificateDer::pem_slice_iter(&config.server_cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_error(&e))?;
    let key = PrivateKeyDer::from_pem_slice(&config.server_key_pem).map_err(|e| tls_error(&e))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error(&e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| tls_error(&e))?;
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| tls_error(&e))?;
    let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(64u32.into());
    server_config.transport_config(Arc::new(transport));
    let endpoint =
        quinn::Endpoint::server(server_config, "127.0.0.1:0".parse().expect("an address"))?;
    let accepting = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accepting.accept().await {
            tokio::spawn(async move {
                let Ok(connection) = incoming.await else {
                    return;
                };
                while let Ok((send, recv)) = connection.accept_bi().await {
                    tokio::spawn(echo(send, recv));
                }
            });
        }
    });
    Ok(endpoint)
}

async fn echo(mut send: quinn::SendStream, mut recv: quinn::RecvStream) -> Option<()> {
    let mut header = [0u8; HEADER_BYTES];
    recv.read_exact(&mut header).await.ok()?;
    let limits = wire::Limits::default();
    let read = wire::decode_header(&header, &limits).ok()?;
    let mut payload = vec![0u8; read.payload_bytes as usize];
    recv.read_exact(&mut payload).await.ok()?;
    send.write_all(&header).await.ok()?;
    send.write_all(&payload).await.ok()?;
    send.finish().ok()
}

/// Appends the frames' bytes to a fresh redb file, `group` frames per durable commit (the
/// engine's group commit, with nothing to apply); returns the time it took.
fn redb_append(
    dir: &Path,
    frames: &[&(Vec<u8>, usize)],
    group: usize,
) -> Result<Duration, LoadError> {
    const TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("frames");
    let storage = |e: &dyn std::fmt::Display| LoadError::Storage(e.to_string());
    let path = dir.join("baseline.redb");
    let _ = std::fs::remove_file(&path);
    let database = redb::Database::create(&path).map_err(|e| storage(&e))?;
    let started = Instant::now();
    let mut key = 0u64;
    for chunk in frames.chunks(group) {
        let transaction = database.begin_write().map_err(|e| storage(&e))?;
        {
            let mut table = transaction.open_table(TABLE).map_err(|e| storage(&e))?;
            for (frame, _) in chunk {
                key += 1;
                table
                    .insert(key, frame.as_slice())
                    .map_err(|e| storage(&e))?;
            }
        }
        transaction.commit().map_err(|e| storage(&e))?;
    }
    let elapsed = started.elapsed();
    drop(database);
    let _ = std::fs::remove_file(&path);
    Ok(elapsed)
}

/// 4 KiB writes each made durable with `sync_data`, for `duration`: fsyncs per second.
fn fsync_rate(dir: &Path, duration: Duration) -> Result<f64, LoadError> {
    use std::io::Write;
    let path = dir.join("baseline.fsync");
    let mut file = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let started = Instant::now();
    let mut count = 0u64;
    while started.elapsed() < duration {
        file.write_all(&block)?;
        file.sync_data()?;
        count += 1;
    }
    let elapsed = started.elapsed();
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(count as f64 / elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn the_median_is_the_middle_value_or_the_mean_of_the_two_middle_ones() {
        assert_eq!(median([0.3, 0.1, 0.2].into_iter()), 0.2);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert_eq!(median([7.0].into_iter()), 7.0);
        assert_eq!(median(std::iter::empty()), 0.0);
    }
}

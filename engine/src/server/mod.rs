//! The QUIC front door: the only part of tally that knows QUIC, TLS and tokio.
//!
//! Terminals and operators connect with client certificates issued by the engine's CA
//! (`certs`); every bidirectional stream carries request frames (`tally_protocol::wire`) and
//! gets one answer frame per request, in order on that stream. A request's commands are
//! authorised against the certificate (`auth`), then handed to the engine thread as one
//! `Submission` through a bounded channel; the answer is written once the engine calls back,
//! which it does only after the commands are durable.
//!
//! Everything is bounded (`Limits`): connections, streams per connection (QUIC flow control),
//! frame size and commands per frame, bytes of frames being served, and commands in flight in
//! the engine. A request that cannot get room within `queue_wait_ms` is answered `overloaded`
//! and changes nothing; a client that does not read its answers only fills its own stream's
//! window and is reset after `write_timeout_ms`.

pub mod auth;
/// Certificates live in their own crate (`tally-certs`) so that the load generator can issue
/// terminal certificates without depending on the engine.
pub use tally_certs as certs;
pub mod config;
pub mod metrics;
mod snapshot;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use tally_protocol::wire::{self, FrameKind, FrameParts, Limits as FrameLimits, HEADER_BYTES};
use tally_protocol::{Body, Command, CommandResult, Reason};
use tokio::sync::{watch, Semaphore};
use tracing::{debug, info, warn};

use self::certs::{CertPaths, Identity, Revocations};
use self::metrics::Metrics;
use crate::ingest::{Engine, IngestError, Submission};

/// The application protocol named in the TLS handshake.
pub const ALPN: &[u8] = wire::ALPN;
/// The default address `tally serve` listens on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7878";

/// Application close and reset codes (QUIC error codes on the wire).
pub mod codes {
    /// The server is shutting down.
    pub const SHUTDOWN: u32 = 0;
    /// The client's certificate names no tally identity.
    pub const BAD_CERTIFICATE: u32 = 1;
    /// The client's certificate is on the revocation list.
    pub const REVOKED: u32 = 2;
    /// The client did not read its answers within the write timeout.
    pub const WRITE_TIMEOUT: u32 = 3;
    /// The client sent part of a frame and then nothing within the read timeout.
    pub const READ_TIMEOUT: u32 = 4;
}

/// Every limit of the server; `tally.toml`'s `[limits]` table sets them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Open connections; more are refused.
    pub max_connections: u32,
    /// Concurrent bidirectional streams a client may open (QUIC flow control).
    pub max_streams_per_connection: u32,
    /// Largest request payload, in bytes.
    pub max_frame_bytes: u32,
    pub max_commands_per_frame: u32,
    /// Commands submitted to the engine and not yet answered, over all connections.
    pub max_in_flight_commands: u32,
    /// Bytes of request frames being read or served at once, over all connections.
    pub max_frame_memory_bytes: u64,
    /// Bytes a connection may have received and not yet read (QUIC connection window).
    pub connection_window_bytes: u32,
    /// How long a request waits for room before it is answered `overloaded`.
    pub queue_wait_ms: u64,
    /// How long a started frame may take to arrive in full.
    pub read_timeout_ms: u64,
    /// How long an answer may wait for the client to read it.
    pub write_timeout_ms: u64,
    /// A connection with no traffic (and no keep-alive) is closed after this.
    pub idle_timeout_ms: u64,
    /// How long a shutdown waits for requests in flight to be answered.
    pub drain_timeout_ms: u64,
    /// Rows a streamed snapshot sends per chunk: the engine's pause between two groups.
    pub snapshot_rows_per_chunk: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            max_streams_per_connection: 64,
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
            max_commands_per_frame: wire::DEFAULT_MAX_COMMANDS_PER_FRAME,
            max_in_flight_commands: 65_536,
            max_frame_memory_bytes: 256 << 20,
            connection_window_bytes: 8 << 20,
            queue_wait_ms: 500,
            read_timeout_ms: 10_000,
            write_timeout_ms: 10_000,
            idle_timeout_ms: 30_000,
            drain_timeout_ms: 10_000,
            snapshot_rows_per_chunk: crate::snapshot_stream::ROWS_PER_CHUNK as u32,
        }
    }
}

impl Limits {
    /// Refuses limits that cannot work together.
    pub fn check(&self) -> Result<(), ServerError> {
        let problem =
            if self.max_frame_bytes == 0 || self.max_frame_bytes > wire::MAX_FRAME_BYTES_CEILING {
                "max_frame_bytes must be 1..=67108864"
            } else if u64::from(self.max_frame_bytes) > self.max_frame_memory_bytes {
                "max_frame_memory_bytes must be at least max_frame_bytes"
            } else if self.max_commands_per_frame == 0
                || self.max_commands_per_frame > self.max_in_flight_commands
            {
                "max_commands_per_frame must be 1..=max_in_flight_commands"
            } else if self.max_connections == 0 || self.max_streams_per_connection == 0 {
                "max_connections and max_streams_per_connection must be at least 1"
            } else if self.snapshot_rows_per_chunk == 0 {
                "snapshot_rows_per_chunk must be at least 1"
            } else if self.connection_window_bytes < self.max_frame_bytes {
                "connection_window_bytes must be at least max_frame_bytes"
            } else {
                return Ok(());
            };
        Err(ServerError::Config(problem.to_string()))
    }

    fn frames(&self) -> FrameLimits {
        FrameLimits {
            max_frame_bytes: self.max_frame_bytes,
            max_commands_per_frame: self.max_commands_per_frame,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Certs(#[from] certs::CertError),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("listening on {address}: {message}")]
    Listen { address: String, message: String },
    #[error("the engine stopped: {0}")]
    Engine(#[from] IngestError),
}

/// Where and how to serve.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
    pub limits: Limits,
    pub certs: CertPaths,
    /// Stop on SIGTERM or Ctrl-C (the binary); tests call `Running::shutdown`.
    pub handle_signals: bool,
}

/// What a finished server did.
#[derive(Debug, Clone)]
pub struct Summary {
    pub connections: u64,
    pub requests: u64,
    pub commands: u64,
}

/// A started server: its addresses, its metrics, and how to stop it.
pub struct Running {
    pub address: SocketAddr,
    pub metrics_address: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    thread: std::thread::JoinHandle<Result<Summary, ServerError>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("address", &self.address)
            .finish()
    }
}

impl Running {
    /// Stops accepting, answers what is in flight, lets the engine commit and checkpoint, and
    /// returns when everything is closed.
    pub fn shutdown(self) -> Result<Summary, ServerError> {
        let _ = self.shutdown.send(true);
        self.wait()
    }

    /// Waits until the server stops by itself (a signal, or the engine failing).
    pub fn wait(self) -> Result<Summary, ServerError> {
        self.thread
            .join()
            .expect("the server thread does not panic")
    }
}

/// State shared by every connection.
struct Shared {
    limits: Limits,
    frame_limits: FrameLimits,
    metrics: Arc<Metrics>,
    /// The engine's queue; `None` once shutting down.
    submit: RwLock<Option<SyncSender<Submission>>>,
    commands: Semaphore,
    frame_memory: Semaphore,
    revocations: RwLock<Revocations>,
    revoked_path: PathBuf,
    requests_active: metrics::Gauge,
}

/// Starts the engine on its own thread and the QUIC server on a tokio runtime; returns once
/// it listens.
pub fn start(engine: Engine, options: ServerOptions) -> Result<Running, ServerError> {
    options.limits.check()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tally-server")
        .enable_all()
        .build()
        .map_err(|e| ServerError::Config(format!("starting the runtime: {e}")))?;
    let config = quinn_server_config(&options.certs, &options.limits)?;
    let endpoint = {
        let _guard = runtime.enter();
        Endpoint::server(config, options.listen).map_err(|e| ServerError::Listen {
            address: options.listen.to_string(),
            message: e.to_string(),
        })?
    };
    let address = endpoint.local_addr().map_err(|e| ServerError::Listen {
        address: options.listen.to_string(),
        message: e.to_string(),
    })?;
    let metrics_listener = match options.metrics {
        Some(at) => {
            let listen_error = |e: std::io::Error| ServerError::Listen {
                address: at.to_string(),
                message: e.to_string(),
            };
            let listener = std::net::TcpListener::bind(at).map_err(listen_error)?;
            listener.set_nonblocking(true).map_err(listen_error)?;
            let _guard = runtime.enter();
            Some(tokio::net::TcpListener::from_std(listener).map_err(listen_error)?)
        }
        None => None,
    };
    let metrics_address = metrics_listener
        .as_ref()
        .and_then(|listener| listener.local_addr().ok());

    let metrics = Arc::new(Metrics::default());
    // Whole requests of at most `max_commands_per_frame` each: the semaphore bounds commands,
    // so the queue never holds more submissions than commands in flight.
    let queue = options.limits.max_in_flight_commands as usize;
    let (submit, submissions) = sync_channel::<Submission>(queue);
    let (engine_stopped, engine_done) = watch::channel(false);
    let engine_metrics = metrics.clone();
    let rows_per_chunk = options.limits.snapshot_rows_per_chunk as usize;
    let engine_thread = std::thread::Builder::new()
        .name("tally-engine".into())
        .spawn(move || {
            let mut engine = engine;
            engine.set_snapshot_rows_per_chunk(rows_per_chunk);
            let served = engine.serve_observed(&submissions, &mut |group| {
                engine_metrics.group_committed(group)
            });
            let closed = served.and_then(|()| engine.close().map(drop));
            let _ = engine_stopped.send(true);
            closed
        })
        .map_err(|e| ServerError::Config(format!("starting the engine thread: {e}")))?;

    let mut revocations = Revocations::default();
    revocations.reload_if_changed(&options.certs.revoked())?;
    let shared = Arc::new(Shared {
        frame_limits: options.limits.frames(),
        metrics: metrics.clone(),
        submit: RwLock::new(Some(submit)),
        commands: Semaphore::new(options.limits.max_in_flight_commands as usize),
        frame_memory: Semaphore::new(options.limits.max_frame_memory_bytes as usize),
        revocations: RwLock::new(revocations),
        revoked_path: options.certs.revoked(),
        requests_active: metrics::Gauge::default(),
        limits: options.limits.clone(),
    });
    let (shutdown, shutdown_requested) = watch::channel(false);
    let handle_signals = options.handle_signals;
    let thread = std::thread::Builder::new()
        .name("tally-server".into())
        .spawn(move || {
            let stopped = runtime.block_on(serve(
                endpoint,
                shared.clone(),
                metrics_listener,
                shutdown_requested,
                engine_done,
                handle_signals,
            ));
            drop(runtime);
            let engine = engine_thread
                .join()
                .expect("the engine thread does not panic");
            stopped
                .and(engine.map_err(ServerError::from))
                .map(|()| Summary {
                    connections: shared.metrics.connections_accepted.get(),
                    requests: shared.metrics.requests.get(),
                    commands: shared.metrics.commands.get(),
                })
        })
        .map_err(|e| ServerError::Config(format!("starting the server thread: {e}")))?;
    Ok(Running {
        address,
        metrics_address,
        metrics,
        shutdown,
        thread,
    })
}

fn tls_error(error: impl std::fmt::Display) -> ServerError {
    ServerError::Tls(error.to_string())
}

fn quinn_server_config(
    paths: &CertPaths,
    limits: &Limits,
) -> Result<quinn::ServerConfig, ServerError> {
    let read = |path: PathBuf| {
        std::fs::read(&path).map_err(|e| {
            ServerError::Certs(certs::CertError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        })
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&read(paths.ca_cert())?) {
        roots.add(ca.map_err(tls_error)?).map_err(tls_error)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(tls_error)?;
    let chain = CertificateDer::pem_slice_iter(&read(paths.server_cert())?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(tls_error)?;
    let key = PrivateKeyDer::from_pem_slice(&read(paths.server_key())?).map_err(tls_error)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_error)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(tls_error)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    let frame_window = limits.max_frame_bytes + HEADER_BYTES as u32;
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(limits.max_streams_per_connection))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(VarInt::from_u32(frame_window))
        .receive_window(VarInt::from_u32(limits.connection_window_bytes))
        .send_window(u64::from(limits.connection_window_bytes))
        .max_idle_timeout(Some(
            Duration::from_millis(limits.idle_timeout_ms)
                .try_into()
                .map_err(|_| ServerError::Config("idle_timeout_ms is too large".into()))?,
        ));
    config.transport_config(Arc::new(transport));
    config.migration(false);
    Ok(config)
}

async fn serve(
    endpoint: Endpoint,
    shared: Arc<Shared>,
    metrics_listener: Option<tokio::net::TcpListener>,
    mut shutdown: watch::Receiver<bool>,
    mut engine_done: watch::Receiver<bool>,
    handle_signals: bool,
) -> Result<(), ServerError> {
    if let Some(listener) = metrics_listener {
        tokio::spawn(metrics::serve_http(
            listener,
            shared.metrics.clone(),
            shutdown.clone(),
        ));
    }
    tokio::spawn(reload_revocations(shared.clone(), shutdown.clone()));
    let signal = async move {
        if handle_signals {
            wait_for_signal().await
        } else {
            std::future::pending::<()>().await
        }
    };
    tokio::pin!(signal);
    loop {
        tokio::select! {
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let open = shared.metrics.connections_open.get();
                if open >= i64::from(shared.limits.max_connections) {
                    shared.metrics.connections_refused.add(1);
                    warn!(remote = %incoming.remote_address(), open, "connection refused: too many connections");
                    incoming.refuse();
                    continue;
                }
                // Counted from here, handshake included, so a burst cannot pass the limit.
                shared.metrics.connections_open.add(1);
                let shared = shared.clone();
                tokio::spawn(async move {
                    connection(&shared, incoming).await;
                    shared.metrics.connections_open.add(-1);
                });
            }
            _ = shutdown.changed() => break,
            _ = &mut signal => {
                info!("signal received");
                break;
            }
            _ = engine_done.changed() => {
                warn!("the engine stopped; closing the server");
                break;
            }
        }
    }
    drain(&endpoint, &shared).await;
    Ok(())
}

/// Stops accepting, waits for requests in flight to be answered, closes connections, and
/// closes the engine's queue so it commits, checkpoints and stops.
async fn drain(endpoint: &Endpoint, shared: &Shared) {
    endpoint.set_server_config(None);
    let active = shared.requests_active.get();
    info!(
        requests_in_flight = active,
        "shutting down: no new connections; answering what is in flight"
    );
    let deadline = Instant::now() + Duration::from_millis(shared.limits.drain_timeout_ms);
    while shared.requests_active.get() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    *shared.submit.write().expect("not poisoned") = None;
    endpoint.close(VarInt::from_u32(codes::SHUTDOWN), b"server shutting down");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

#[cfg(unix)]
async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM can be handled");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

/// Reads the revocation list again whenever its file changes (checked every second).
async fn reload_revocations(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        let mut revocations = shared.revocations.write().expect("not poisoned");
        match revocations.reload_if_changed(&shared.revoked_path) {
            Ok(true) => info!(revoked = revocations.len(), "revocation list reloaded"),
            Ok(false) => {}
            Err(error) => warn!(%error, "revocation list not reloaded; keeping the previous one"),
        }
    }
}

fn is_revoked(shared: &Shared, serial: &str) -> bool {
    shared
        .revocations
        .read()
        .expect("not poisoned")
        .is_revoked(serial)
}

/// The identity and serial number of the client's certificate (already verified against the
/// CA by TLS).
fn peer(connection: &Connection) -> Result<(Identity, String), String> {
    let certificates = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("no client certificate")?;
    let leaf = certificates.first().ok_or("an empty certificate chain")?;
    certs::identity_of(leaf).map_err(|e| e.to_string())
}

async fn connection(shared: &Arc<Shared>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            shared.metrics.connections_refused.add(1);
            warn!(%remote, %error, "handshake failed");
            return;
        }
    };
    let (identity, serial) = match peer(&connection) {
        Ok(peer) => peer,
        Err(error) => {
            shared.metrics.connections_refused.add(1);
            warn!(%remote, %error, "connection refused: bad certificate");
            connection.close(
                VarInt::from_u32(codes::BAD_CERTIFICATE),
                b"certificate names no tally identity",
            );
            return;
        }
    };
    if is_revoked(shared, &serial) {
        shared.metrics.connections_refused.add(1);
        warn!(%remote, %identity, %serial, "connection refused: certificate revoked");
        connection.close(VarInt::from_u32(codes::REVOKED), b"certificate revoked");
        return;
    }
    shared.metrics.connections_accepted.add(1);
    debug!(%remote, %identity, "connected");
    let peer = Arc::new(Peer {
        identity,
        serial,
        connection: connection.clone(),
    });
    while let Ok((send, recv)) = connection.accept_bi().await {
        tokio::spawn(stream(shared.clone(), peer.clone(), send, recv));
    }
    debug!(%remote, identity = %peer.identity, "disconnected");
}

struct Peer {
    identity: Identity,
    serial: String,
    connection: Connection,
}

/// What ends a stream early.
enum StreamEnd {
    /// The client finished the stream between frames, or went away.
    Done,
    /// The answer could not be delivered in time, or the stream is unusable.
    Reset(u32),
}

/// Serves request frames from one stream, one after the other.
async fn stream(shared: Arc<Shared>, peer: Arc<Peer>, mut send: SendStream, mut recv: RecvStream) {
    loop {
        match serve_frame(&shared, &peer, &mut send, &mut recv).await {
            Ok(()) => continue,
            Err(StreamEnd::Done) => {
                let _ = send.finish();
                return;
            }
            Err(StreamEnd::Reset(code)) => {
                let _ = send.reset(VarInt::from_u32(code));
                let _ = recv.stop(VarInt::from_u32(code));
                return;
            }
        }
    }
}

/// Reads one frame and writes its answer. A frame whose header is unreadable ends the stream
/// after an error frame: the stream cannot be resynchronised.
async fn serve_frame(
    shared: &Shared,
    peer: &Peer,
    send: &mut SendStream,
    recv: &mut RecvStream,
) -> Result<(), StreamEnd> {
    let read_timeout = Duration::from_millis(shared.limits.read_timeout_ms);
    let mut header_bytes = [0u8; HEADER_BYTES];
    // Between frames a stream may stay idle as long as the connection lives; once a frame
    // has started, the rest of its header must follow within the read timeout.
    match recv.read_exact(&mut header_bytes[..1]).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(StreamEnd::Done),
        Err(quinn::ReadExactError::ReadError(_)) => return Err(StreamEnd::Done),
    }
    match tokio::time::timeout(read_timeout, recv.read_exact(&mut header_bytes[1..])).await {
        Ok(Ok(())) => {}
        Ok(Err(quinn::ReadExactError::FinishedEarly(_))) => {
            let error = wire::FrameError::Truncated;
            return refuse_frame(shared, peer, send, 0, &error).await;
        }
        Ok(Err(quinn::ReadExactError::ReadError(_))) => return Err(StreamEnd::Done),
        Err(_) => return Err(StreamEnd::Reset(codes::READ_TIMEOUT)),
    }
    let request_id = u64::from_le_bytes(header_bytes[8..16].try_into().expect("8 bytes"));
    let header = match wire::decode_header(&header_bytes, &shared.frame_limits) {
        Ok(header) if header.kind == FrameKind::Request => header,
        Ok(header) => {
            let error = wire::FrameError::UnexpectedKind {
                found: header.kind,
                expected: FrameKind::Request,
            };
            return refuse_frame(shared, peer, send, request_id, &error).await;
        }
        Err(error) => return refuse_frame(shared, peer, send, request_id, &error).await,
    };
    let _active = Active::new(&shared.requests_active);
    let bytes = header.payload_bytes.max(1);
    let queue_wait = Duration::from_millis(shared.limits.queue_wait_ms);
    // Not reading the payload until there is room is the flow control: the client's stream
    // window fills and its writes wait.
    let Ok(Ok(memory)) =
        tokio::time::timeout(queue_wait, shared.frame_memory.acquire_many(bytes)).await
    else {
        shared.metrics.requests_overloaded.add(1);
        let frame = wire::error_frame(request_id, Reason::Overloaded, Reason::Overloaded.message());
        write_answer(shared, send, frame).await?;
        return Err(StreamEnd::Done);
    };
    let _memory = FrameBytes::new(memory, &shared.metrics.in_flight_frame_bytes);
    let mut payload = vec![0u8; header.payload_bytes as usize];
    match tokio::time::timeout(read_timeout, recv.read_exact(&mut payload)).await {
        Ok(Ok(())) => {}
        Ok(Err(quinn::ReadExactError::FinishedEarly(_))) => {
            let error = wire::FrameError::Truncated;
            return refuse_frame(shared, peer, send, request_id, &error).await;
        }
        Ok(Err(quinn::ReadExactError::ReadError(_))) => return Err(StreamEnd::Done),
        Err(_) => return Err(StreamEnd::Reset(codes::READ_TIMEOUT)),
    }
    let commands = match wire::decode_request(&payload, &shared.frame_limits) {
        Ok(commands) => commands,
        Err(error) => {
            // The frame was read whole: the stream is still in step, keep serving it.
            refuse_frame(shared, peer, send, request_id, &error).await?;
            return Ok(());
        }
    };
    drop(payload);
    if is_revoked(shared, &peer.serial) {
        warn!(identity = %peer.identity, serial = %peer.serial, "request refused: certificate revoked");
        let frame = wire::error_frame(
            request_id,
            Reason::Unauthorized,
            "This terminal's certificate was revoked.",
        );
        write_answer(shared, send, frame).await?;
        // Let the answer arrive before the connection closes.
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
        peer.connection
            .close(VarInt::from_u32(codes::REVOKED), b"certificate revoked");
        return Err(StreamEnd::Done);
    }
    if commands.iter().any(|c| matches!(c.body, Body::Snapshot(_))) {
        return snapshot::serve(shared, peer, send, request_id, commands).await;
    }
    let started = Instant::now();
    let frame = answer(shared, &peer.identity, request_id, commands).await;
    shared.metrics.request_answered(started.elapsed());
    write_answer(shared, send, frame).await
}

/// Answers a frame that is not a valid request with an error frame.
async fn refuse_frame(
    shared: &Shared,
    peer: &Peer,
    send: &mut SendStream,
    request_id: u64,
    error: &wire::FrameError,
) -> Result<(), StreamEnd> {
    shared.metrics.frames_invalid.add(1);
    warn!(identity = %peer.identity, request_id, %error, "frame refused");
    let frame = wire::error_frame(request_id, error.reason(), &error.to_string());
    write_answer(shared, send, frame).await?;
    Err(StreamEnd::Done)
}

/// Writes a frame without copying its payload: QUIC keeps the buffer until it is acknowledged.
async fn write_answer(
    shared: &Shared,
    send: &mut SendStream,
    frame: FrameParts,
) -> Result<(), StreamEnd> {
    let write_timeout = Duration::from_millis(shared.limits.write_timeout_ms);
    let mut chunks = [
        Bytes::copy_from_slice(&frame.header),
        Bytes::from_owner(frame.payload),
    ];
    match tokio::time::timeout(write_timeout, send.write_all_chunks(&mut chunks)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(StreamEnd::Done),
        Err(_) => {
            warn!("answer not read within the write timeout; stream reset");
            Err(StreamEnd::Reset(codes::WRITE_TIMEOUT))
        }
    }
}

/// Authorises, submits and waits for the engine; returns the answer frame.
async fn answer(
    shared: &Shared,
    identity: &Identity,
    request_id: u64,
    commands: Vec<Command>,
) -> FrameParts {
    shared.metrics.requests.add(1);
    shared.metrics.commands.add(commands.len() as u64);
    let mut results: Vec<Option<Arc<CommandResult>>> = vec![None; commands.len()];
    let mut accepted = Vec::with_capacity(commands.len());
    let mut positions = Vec::with_capacity(commands.len());
    for (position, mut command) in commands.into_iter().enumerate() {
        match auth::authorize(identity, &mut command) {
            Ok(()) => {
                positions.push(position);
                accepted.push(command);
            }
            Err(refusal) => {
                warn!(%identity, merchant = %command.merchant, key = %command.key, command = command.kind().name(), reason = %refusal.reason, "refused: {}", refusal.message);
                results[position] = Some(Arc::new(refusal.result(&command)));
            }
        }
    }
    if !accepted.is_empty() {
        match submit(shared, accepted).await {
            Ok(answered) => {
                for (position, result) in positions.into_iter().zip(answered) {
                    results[position] = Some(result);
                }
            }
            Err(message) => {
                shared.metrics.requests_overloaded.add(1);
                return wire::error_frame(request_id, Reason::Overloaded, message);
            }
        }
    }
    let results: Vec<Arc<CommandResult>> = results
        .into_iter()
        .map(|result| result.expect("every command has a result"))
        .collect();
    shared.metrics.count_results(&results);
    wire::results_frame(request_id, results)
}

/// Hands commands to the engine and waits until they are durable. `Err` (a sentence for the
/// cashier) when there is no room in time or the engine is stopping: nothing was applied.
async fn submit(
    shared: &Shared,
    commands: Vec<Command>,
) -> Result<Vec<Arc<CommandResult>>, &'static str> {
    let count = commands.len();
    let queue_wait = Duration::from_millis(shared.limits.queue_wait_ms);
    let wanted = u32::try_from(count).expect("at most max_commands_per_frame");
    let Ok(Ok(_permits)) =
        tokio::time::timeout(queue_wait, shared.commands.acquire_many(wanted)).await
    else {
        return Err(Reason::Overloaded.message());
    };
    let (reply, answered) = tokio::sync::oneshot::channel();
    // The commands' fingerprints are worked out here, on this connection's task.
    let submission = Submission::new(
        commands,
        Box::new(move |results| {
            let _ = reply.send(results);
        }),
    );
    enqueue(shared, submission)?;
    let in_flight = count as i64;
    shared.metrics.in_flight_commands.add(in_flight);
    let answered = answered.await;
    shared.metrics.in_flight_commands.add(-in_flight);
    // A dropped reply means the engine stopped before the group was durable: not applied.
    answered.map_err(|_| RESTARTING)
}

const RESTARTING: &str = "The loyalty service is restarting; try again shortly.";

/// Puts a submission in the engine's queue, if there is room now.
fn enqueue(shared: &Shared, submission: Submission) -> Result<(), &'static str> {
    let queue = shared.submit.read().expect("not poisoned");
    let Some(queue) = queue.as_ref() else {
        return Err(RESTARTING);
    };
    match queue.try_send(submission) {
        Ok(()) => Ok(()),
        Err(TrySendError::Full(_)) => Err(Reason::Overloaded.message()),
        Err(TrySendError::Disconnected(_)) => Err(RESTARTING),
    }
}

/// Counts a request from its frame's header until its answer is written.
struct Active<'a>(&'a metrics::Gauge);

impl<'a> Active<'a> {
    fn new(gauge: &'a metrics::Gauge) -> Self {
        gauge.add(1);
        Active(gauge)
    }
}

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

/// The bytes of one frame being served, counted while held.
struct FrameBytes<'a> {
    _permit: tokio::sync::SemaphorePermit<'a>,
    gauge: &'a metrics::Gauge,
    bytes: i64,
}

impl<'a> FrameBytes<'a> {
    fn new(permit: tokio::sync::SemaphorePermit<'a>, gauge: &'a metrics::Gauge) -> Self {
        let bytes = permit.num_permits() as i64;
        gauge.add(bytes);
        FrameBytes {
            _permit: permit,
            gauge,
            bytes,
        }
    }
}

impl Drop for FrameBytes<'_> {
    fn drop(&mut self) {
        self.gauge.add(-self.bytes);
    }
}

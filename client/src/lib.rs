//! The async client of tally's QUIC front door (`docs/protocol.md`).
//!
//! A [`Client`] holds one QUIC connection to the engine, authenticated with a terminal's or an
//! operator's certificate. Every request travels on a stream of its own, so many requests
//! pipeline on one connection (clone the client into as many tasks as you like; the server's
//! stream limit is the flow control). A request that times out, loses its connection or is
//! answered `overloaded` is sent again — the same frame, so the same idempotency keys — on a
//! new connection if need be: the engine answers a repeat with the first result (`duplicate`),
//! so a retry never applies a command twice.
//!
//! ```no_run
//! # async fn example() -> Result<(), tally_client::ClientError> {
//! use tally_client::{Client, ClientConfig};
//! use tally_protocol::parse_command_line;
//!
//! let config = ClientConfig::from_files(
//!     "127.0.0.1:7878".parse().unwrap(),
//!     "tally-data/certs/ca.pem".as_ref(),
//!     "pos-1.pem".as_ref(),
//!     "pos-1.key".as_ref(),
//! )?;
//! let client = Client::connect(config).await?;
//! let command = parse_command_line(
//!     r#"{"merchant":"demo","terminal":"pos-1","txn":"1","at":"2026-03-01T10:00:00Z",
//!         "purchase":{"member":{"phone":"+15551230000"},"total":"4.50",
//!                     "lines":[{"sku":"latte","qty":1,"unit_price":"4.50"}]}}"#,
//! ).unwrap();
//! let result = client.send(command).await?;
//! println!("{}", result.to_json_line());
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, Endpoint, RecvStream, SendStream, VarInt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tally_protocol::wire::{self, Frame, FrameError, Limits, HEADER_BYTES};
use tally_protocol::{Command, CommandResult, Reason, SnapshotRows};
use tokio::sync::Mutex;

/// How to reach the engine and who to be.
#[derive(Clone)]
pub struct ClientConfig {
    pub server: SocketAddr,
    /// The name the server's certificate must carry (`localhost` for the development one).
    pub server_name: String,
    /// The engine's CA certificate (PEM): the server must present a certificate it issued.
    pub ca_pem: Vec<u8>,
    /// The client certificate and its key (PEM). Without one the server refuses the handshake.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// How long one attempt may wait for its answer.
    pub request_timeout: Duration,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    /// Wait before the first retry; doubled after each, at most `max_backoff`.
    pub retry_backoff: Duration,
    pub max_backoff: Duration,
    /// Largest answer frame accepted, in bytes.
    pub max_answer_bytes: u32,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("server", &self.server)
            .field("server_name", &self.server_name)
            .field("request_timeout", &self.request_timeout)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// A configuration with the default timeouts and retries.
    pub fn new(server: SocketAddr, ca_pem: Vec<u8>, identity: Option<(Vec<u8>, Vec<u8>)>) -> Self {
        ClientConfig {
            server,
            server_name: "localhost".to_string(),
            ca_pem,
            identity,
            request_timeout: Duration::from_secs(10),
            max_attempts: 5,
            retry_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            max_answer_bytes: wire::MAX_FRAME_BYTES_CEILING,
        }
    }

    /// Reads the CA certificate, the client certificate and its key from PEM files.
    pub fn from_files(
        server: SocketAddr,
        ca: &Path,
        cert: &Path,
        key: &Path,
    ) -> Result<Self, ClientError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| ClientError::Config(format!("{}: {e}", path.display())))
        };
        Ok(ClientConfig::new(
            server,
            read(ca)?,
            Some((read(cert)?, read(key)?)),
        ))
    }
}

/// Why a request got no results.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("connection lost: {0}")]
    Connection(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server answered with an error frame: nothing of the request was applied.
    #[error("{reason}: {message}")]
    Refused { reason: Reason, message: String },
    #[error("the server's answer is not a valid frame: {0}")]
    Protocol(#[from] FrameError),
    #[error("gave up after {attempts} attempts; the last error: {last}")]
    GaveUp {
        attempts: u32,
        last: Box<ClientError>,
    },
}

impl ClientError {
    /// Worth sending again (with the same keys): the request may or may not have been applied,
    /// or was refused only for lack of room.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Connect(_) | ClientError::Connection(_) | ClientError::Timeout(_) => true,
            ClientError::Refused { reason, .. } => *reason == Reason::Overloaded,
            _ => false,
        }
    }

    /// The reason code, when the server gave one.
    pub fn reason(&self) -> Option<Reason> {
        match self {
            ClientError::Refused { reason, .. } => Some(*reason),
            ClientError::GaveUp { last, .. } => last.reason(),
            _ => None,
        }
    }
}

/// A connection to the engine; cheap to clone, and every clone shares the connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("config", &self.inner.config)
            .finish()
    }
}

struct Inner {
    endpoint: Endpoint,
    config: ClientConfig,
    connection: Mutex<Option<Connection>>,
    next_request: AtomicU64,
}

fn config_error(error: impl std::fmt::Display) -> ClientError {
    ClientError::Config(error.to_string())
}

fn quinn_client_config(config: &ClientConfig) -> Result<quinn::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in CertificateDer::pem_slice_iter(&config.ca_pem) {
        roots.add(ca.map_err(config_error)?).map_err(config_error)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(config_error)?
        .with_root_certificates(roots);
    let mut tls = match &config.identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(config_error)?;
            let key = PrivateKeyDer::from_pem_slice(key).map_err(config_error)?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(config_error)?
        }
        None => builder.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![wire::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(config_error)?;
    let mut quinn_config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(5)))
        .max_idle_timeout(Some(
            Duration::from_secs(30)
                .try_into()
                .expect("30 s is a valid idle timeout"),
        ));
    quinn_config.transport_config(Arc::new(transport));
    Ok(quinn_config)
}

impl Client {
    /// Connects (and completes the TLS handshake) before returning.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let client = Client::new(config)?;
        client.connection().await?;
        Ok(client)
    }

    /// A client that connects on its first request.
    pub fn new(config: ClientConfig) -> Result<Client, ClientError> {
        let local: SocketAddr = if config.server.is_ipv6() {
            "[::]:0".parse().expect("an address")
        } else {
            "0.0.0.0:0".parse().expect("an address")
        };
        let mut endpoint =
            Endpoint::client(local).map_err(|e| ClientError::Connect(e.to_string()))?;
        endpoint.set_default_client_config(quinn_client_config(&config)?);
        Ok(Client {
            inner: Arc::new(Inner {
                endpoint,
                config,
                connection: Mutex::new(None),
                next_request: AtomicU64::new(1),
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// The live connection, or a new one.
    async fn connection(&self) -> Result<Connection, ClientError> {
        let mut current = self.inner.connection.lock().await;
        if let Some(connection) = current.as_ref() {
            if connection.close_reason().is_none() {
                return Ok(connection.clone());
            }
        }
        let config = &self.inner.config;
        let connecting = self
            .inner
            .endpoint
            .connect(config.server, &config.server_name)
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        let connection = tokio::time::timeout(config.request_timeout, connecting)
            .await
            .map_err(|_| ClientError::Timeout(config.request_timeout))?
            .map_err(|e| ClientError::Connect(e.to_string()))?;
        *current = Some(connection.clone());
        Ok(connection)
    }

    /// Forgets a connection that failed, so the next attempt makes a new one.
    async fn forget(&self, failed: &Connection) {
        let mut current = self.inner.connection.lock().await;
        if current
            .as_ref()
            .is_some_and(|c| c.stable_id() == failed.stable_id())
        {
            *current = None;
        }
    }

    /// Sends one command; see `submit`.
    pub async fn send(&self, command: Command) -> Result<Arc<CommandResult>, ClientError> {
        let mut results = self.submit(vec![command]).await?;
        Ok(results.pop().expect("one result per command"))
    }

    /// Sends a batch of commands in one frame and returns one result per command, in order.
    /// Retries (same frame, same keys) after a timeout, a lost connection or `overloaded`.
    pub async fn submit(
        &self,
        commands: Vec<Command>,
    ) -> Result<Vec<Arc<CommandResult>>, ClientError> {
        let count = commands.len();
        let request_id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let frame = wire::encode_request(request_id, commands);
        let config = &self.inner.config;
        let mut backoff = config.retry_backoff;
        let mut attempt = 1;
        loop {
            let error = match self.attempt(&frame).await {
                Ok(Frame::Results {
                    request_id: id,
                    results,
                }) if id == request_id && results.len() == count => return Ok(results),
                Ok(Frame::Error {
                    reason, message, ..
                }) => ClientError::Refused { reason, message },
                Ok(_) => ClientError::Protocol(FrameError::Payload(
                    "the answer does not match the request".into(),
                )),
                Err(error) => error,
            };
            if !error.is_retryable() {
                return Err(error);
            }
            if attempt >= config.max_attempts {
                return Err(ClientError::GaveUp {
                    attempts: attempt,
                    last: Box::new(error),
                });
            }
            tracing::debug!(attempt, %error, "retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(config.max_backoff);
            attempt += 1;
        }
    }

    /// Sends a `snapshot` command and hands each chunk of rows to `on_rows` as it arrives
    /// (`on_rows` may block: that slows the server's sending, not its engine); returns the
    /// snapshot's result. Each frame must arrive within the request timeout. Not retried: a
    /// snapshot that fails is run again from the start.
    pub async fn snapshot(
        &self,
        command: Command,
        mut on_rows: impl FnMut(SnapshotRows),
    ) -> Result<Arc<CommandResult>, ClientError> {
        let config = &self.inner.config;
        let request_id = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let connection = self.connection().await?;
        let (mut send, mut recv) = connection.open_bi().await.map_err(lost)?;
        send.write_all(&wire::encode_request(request_id, vec![command]))
            .await
            .map_err(lost)?;
        let _ = send.finish();
        let mismatch = || {
            ClientError::Protocol(FrameError::Payload(
                "the answer does not match the request".into(),
            ))
        };
        loop {
            let frame = tokio::time::timeout(
                config.request_timeout,
                read_frame(&mut recv, config.max_answer_bytes),
            )
            .await
            .unwrap_or(Err(ClientError::Timeout(config.request_timeout)))?;
            match frame {
                Frame::Rows {
                    request_id: id,
                    rows,
                } if id == request_id => on_rows(rows),
                Frame::Results {
                    request_id: id,
                    mut results,
                } if id == request_id && results.len() == 1 => {
                    return Ok(results.pop().expect("one result"))
                }
                Frame::Error {
                    reason, message, ..
                } => return Err(ClientError::Refused { reason, message }),
                _ => return Err(mismatch()),
            }
        }
    }

    /// Sends raw bytes on a new stream, finishes it, and reads one answer frame: for tests of
    /// what the server does with malformed input. No retry.
    pub async fn exchange_raw(&self, bytes: &[u8]) -> Result<Frame, ClientError> {
        self.attempt(bytes).await
    }

    /// Opens a stream for a caller that drives it itself (tests of slow or stalled clients).
    pub async fn open_stream(&self) -> Result<(SendStream, RecvStream), ClientError> {
        let connection = self.connection().await?;
        connection
            .open_bi()
            .await
            .map_err(|e| ClientError::Connection(e.to_string()))
    }

    /// One attempt: a stream of its own, the frame, the answer.
    async fn attempt(&self, frame: &[u8]) -> Result<Frame, ClientError> {
        let config = &self.inner.config;
        let connection = self.connection().await?;
        let exchange = async {
            let (mut send, mut recv) = connection.open_bi().await.map_err(lost)?;
            send.write_all(frame).await.map_err(lost)?;
            let _ = send.finish();
            read_frame(&mut recv, config.max_answer_bytes).await
        };
        let answer = tokio::time::timeout(config.request_timeout, exchange)
            .await
            .unwrap_or(Err(ClientError::Timeout(config.request_timeout)));
        if matches!(
            answer,
            Err(ClientError::Connection(_) | ClientError::Timeout(_))
        ) {
            self.forget(&connection).await;
        }
        answer
    }

    /// Closes the connection; requests in flight fail.
    pub async fn close(&self) {
        if let Some(connection) = self.inner.connection.lock().await.take() {
            connection.close(VarInt::from_u32(0), b"client closing");
        }
        self.inner.endpoint.wait_idle().await;
    }
}

fn lost(error: impl std::fmt::Display) -> ClientError {
    ClientError::Connection(error.to_string())
}

/// Reads one whole frame from a stream.
pub async fn read_frame(recv: &mut RecvStream, max_bytes: u32) -> Result<Frame, ClientError> {
    let limits = Limits {
        max_frame_bytes: max_bytes,
        max_commands_per_frame: u32::MAX,
    };
    let mut header = [0u8; HEADER_BYTES];
    recv.read_exact(&mut header).await.map_err(lost)?;
    let header = wire::decode_header(&header, &limits)?;
    let mut payload = vec![0u8; header.payload_bytes as usize];
    recv.read_exact(&mut payload).await.map_err(lost)?;
    Ok(wire::decode_payload(&header, &payload, &limits)?)
}

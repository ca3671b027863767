//! The binary form on the wire (`docs/protocol.md`): length-prefixed, versioned frames whose
//! payloads are rkyv archives of batches of commands, of results, or of an error.
//!
//! Decoding never trusts the bytes: the header is checked field by field against the limits,
//! the payload is copied into an aligned buffer and validated by rkyv (`bytecheck`) before
//! anything reads it, counts are checked on the archive before deserialising, and money and
//! times are range-checked when they are converted back. Nothing here knows the network.

use std::sync::Arc;

use rkyv::rancor::{Fallible, Source};
/// The buffer archives are made in and read from (aligned for them).
pub use rkyv::util::AlignedVec;
use rkyv::with::{ArchiveWith, DeserializeWith, SerializeWith};
use rkyv::{Archive, Place};
use rust_decimal::Decimal;

use crate::command::Command;
use crate::reason::Reason;
use crate::result::CommandResult;
use crate::snapshot::SnapshotRows;
use crate::Timestamp;

/// Every frame starts with these four bytes.
pub const MAGIC: [u8; 4] = *b"TALY";
/// The application protocol both ends name in the TLS handshake (ALPN).
pub const ALPN: &[u8] = b"tally/1";
/// The only version this build speaks; a frame of another version is refused. 2: rows
/// frames carry blocks of rows (`RowBlock`). 3: money is four 32-bit words and an id two
/// 64-bit halves, so that nothing in a command or result is 16-aligned. 4: names (SKUs,
/// rule ids, …) are boxed strings, whose bytes no two pointers share.
pub const VERSION: u8 = 4;
/// magic (4) + version (1) + kind (1) + reserved (2) + request id (8) + payload length (4).
pub const HEADER_BYTES: usize = 20;
/// Default largest payload accepted, in bytes.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 4 << 20;
/// Default most commands one request frame may carry (the engine's group size).
pub const DEFAULT_MAX_COMMANDS_PER_FRAME: u32 = 4096;
/// No limit may exceed this: a length prefix is a `u32` and a buffer is allocated for it.
pub const MAX_FRAME_BYTES_CEILING: u32 = 64 << 20;

const _: () = assert!(DEFAULT_MAX_FRAME_BYTES <= MAX_FRAME_BYTES_CEILING);
const _: () = assert!(HEADER_BYTES == 4 + 1 + 1 + 2 + 8 + 4);

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum FrameKind {
    /// Client to server: a batch of commands.
    Request = 1,
    /// Server to client: one result per command of the request with the same id, in order.
    Results = 2,
    /// Server to client: the request with this id was not applied at all, and why.
    Error = 3,
    /// Server to client: the next rows of the snapshot request with this id (before its
    /// results frame).
    Rows = 4,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<FrameKind> {
        match byte {
            1 => Some(FrameKind::Request),
            2 => Some(FrameKind::Results),
            3 => Some(FrameKind::Error),
            4 => Some(FrameKind::Rows),
            _ => None,
        }
    }
}

/// The size limits a decoder enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_frame_bytes: u32,
    pub max_commands_per_frame: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_commands_per_frame: DEFAULT_MAX_COMMANDS_PER_FRAME,
        }
    }
}

/// A frame's fixed-size header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: FrameKind,
    /// Chosen by the client, echoed in the answer.
    pub request_id: u64,
    pub payload_bytes: u32,
}

/// Why bytes are not a valid frame. Each maps to the reason code sent back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    #[error("not a tally frame: the first four bytes must be \"TALY\"")]
    BadMagic,
    #[error("frame version {found} is not supported; this server speaks version {VERSION}")]
    UnsupportedVersion { found: u8 },
    #[error("unknown frame kind {found}")]
    UnknownKind { found: u8 },
    #[error("the reserved header bytes must be zero")]
    ReservedNotZero,
    #[error("the frame's payload of {bytes} bytes is over the limit of {limit} bytes")]
    TooLarge { bytes: u32, limit: u32 },
    #[error("the frame ends before its header or payload is complete")]
    Truncated,
    #[error("{found} commands in one frame is over the limit of {limit}")]
    TooManyCommands { found: usize, limit: u32 },
    #[error("a request must carry at least one command")]
    Empty,
    #[error("a {found:?} frame was sent where a {expected:?} frame was expected")]
    UnexpectedKind {
        found: FrameKind,
        expected: FrameKind,
    },
    #[error("the payload is not a valid archive: {0}")]
    Payload(String),
    #[error("command {index} of the frame: {message}")]
    InvalidCommand { index: usize, message: String },
}

impl FrameError {
    /// The reason code an error frame carries for this error.
    pub fn reason(&self) -> Reason {
        Reason::Invalid
    }
}

/// A request's payload: the commands, in the order they are to be applied.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct RequestPayload {
    pub commands: Vec<Command>,
}

/// A results frame's payload: one result per command of the request, in the same order.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ResultsPayload {
    pub results: Vec<Arc<CommandResult>>,
}

/// An error frame's payload: nothing of the request was applied.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct ErrorPayload {
    pub reason: Reason,
    pub message: String,
}

/// A whole decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Request {
        request_id: u64,
        commands: Vec<Command>,
    },
    Results {
        request_id: u64,
        results: Vec<Arc<CommandResult>>,
    },
    Error {
        request_id: u64,
        reason: Reason,
        message: String,
    },
    Rows {
        request_id: u64,
        rows: SnapshotRows,
    },
}

/// Checks a header against the limits.
pub fn decode_header(bytes: &[u8; HEADER_BYTES], limits: &Limits) -> Result<Header, FrameError> {
    if bytes[0..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if bytes[4] != VERSION {
        return Err(FrameError::UnsupportedVersion { found: bytes[4] });
    }
    let kind = FrameKind::from_byte(bytes[5]).ok_or(FrameError::UnknownKind { found: bytes[5] })?;
    if bytes[6] != 0 || bytes[7] != 0 {
        return Err(FrameError::ReservedNotZero);
    }
    let request_id = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
    let payload_bytes = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let limit = limits.max_frame_bytes.min(MAX_FRAME_BYTES_CEILING);
    if payload_bytes > limit {
        return Err(FrameError::TooLarge {
            bytes: payload_bytes,
            limit,
        });
    }
    Ok(Header {
        kind,
        request_id,
        payload_bytes,
    })
}

fn encode_header(kind: FrameKind, request_id: u64, payload_bytes: usize) -> [u8; HEADER_BYTES] {
    let length = u32::try_from(payload_bytes).expect("payloads are far below 4 GiB");
    let mut header = [0u8; HEADER_BYTES];
    header[0..4].copy_from_slice(&MAGIC);
    header[4] = VERSION;
    header[5] = kind as u8;
    header[8..16].copy_from_slice(&request_id.to_le_bytes());
    header[16..20].copy_from_slice(&length.to_le_bytes());
    header
}

/// A frame as its header and its payload, which a writer can send one after the other
/// without first copying them into one buffer (a results frame is tens of kilobytes).
pub struct FrameParts {
    pub header: [u8; HEADER_BYTES],
    pub payload: AlignedVec,
}

impl FrameParts {
    fn new(kind: FrameKind, request_id: u64, payload: AlignedVec) -> FrameParts {
        FrameParts {
            header: encode_header(kind, request_id, payload.len()),
            payload,
        }
    }

    /// The whole frame in one buffer.
    pub fn into_vec(self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(HEADER_BYTES + self.payload.len());
        bytes.extend_from_slice(&self.header);
        bytes.extend_from_slice(&self.payload);
        bytes
    }
}

/// About what a result takes in a results payload: the buffer is sized once for the frame
/// instead of doubling its way up (a demo purchase's result is about 1.1 KB).
const RESULT_BYTES_GUESS: usize = 1536;

/// A request frame carrying `commands`.
pub fn encode_request(request_id: u64, commands: Vec<Command>) -> Vec<u8> {
    let payload = RequestPayload { commands };
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&payload).expect("commands archive");
    FrameParts::new(FrameKind::Request, request_id, archive).into_vec()
}

/// A results frame answering request `request_id`.
pub fn encode_results(request_id: u64, results: Vec<Arc<CommandResult>>) -> Vec<u8> {
    results_frame(request_id, results).into_vec()
}

/// A results frame answering request `request_id`, in parts.
pub fn results_frame(request_id: u64, results: Vec<Arc<CommandResult>>) -> FrameParts {
    let buffer = AlignedVec::with_capacity(results.len().saturating_mul(RESULT_BYTES_GUESS));
    let payload = ResultsPayload { results };
    let archive = rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(&payload, buffer)
        .expect("results archive");
    FrameParts::new(FrameKind::Results, request_id, archive)
}

/// An error frame: request `request_id` was not applied.
pub fn encode_error(request_id: u64, reason: Reason, message: &str) -> Vec<u8> {
    error_frame(request_id, reason, message).into_vec()
}

/// An error frame, in parts.
pub fn error_frame(request_id: u64, reason: Reason, message: &str) -> FrameParts {
    let payload = ErrorPayload {
        reason,
        message: message.to_string(),
    };
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&payload).expect("error archive");
    FrameParts::new(FrameKind::Error, request_id, archive)
}

/// A rows frame: the next rows of the snapshot request `request_id`.
pub fn encode_rows(request_id: u64, rows: &SnapshotRows) -> Vec<u8> {
    rows_frame(request_id, rows).into_vec()
}

/// A rows frame, in parts.
pub fn rows_frame(request_id: u64, rows: &SnapshotRows) -> FrameParts {
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(rows).expect("rows archive");
    FrameParts::new(FrameKind::Rows, request_id, archive)
}

/// Validates a rows payload.
pub fn decode_rows(payload: &[u8]) -> Result<SnapshotRows, FrameError> {
    let buffer = aligned(payload);
    let rows =
        rkyv::from_bytes::<SnapshotRows, rkyv::rancor::Error>(&buffer).map_err(payload_error)?;
    rows.rows.check().map_err(FrameError::Payload)?;
    Ok(rows)
}

/// A payload at an address aligned for its archive.
enum Aligned<'a> {
    /// The payload itself: a buffer the allocator gave for it usually is aligned.
    Borrowed(&'a [u8]),
    /// A copy, for a payload at an odd address (inside a larger network buffer).
    Copied(AlignedVec),
}

impl std::ops::Deref for Aligned<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Aligned::Borrowed(bytes) => bytes,
            Aligned::Copied(buffer) => buffer,
        }
    }
}

fn aligned(payload: &[u8]) -> Aligned<'_> {
    if payload.as_ptr().align_offset(AlignedVec::<16>::ALIGNMENT) == 0 {
        return Aligned::Borrowed(payload);
    }
    let mut buffer = AlignedVec::with_capacity(payload.len());
    buffer.extend_from_slice(payload);
    Aligned::Copied(buffer)
}

fn payload_error(error: rkyv::rancor::Error) -> FrameError {
    FrameError::Payload(error.to_string())
}

/// Validates a request payload and turns it into commands, refusing more than the limit.
pub fn decode_request(payload: &[u8], limits: &Limits) -> Result<Vec<Command>, FrameError> {
    let buffer = aligned(payload);
    let archived = rkyv::access::<ArchivedRequestPayload, rkyv::rancor::Error>(&buffer)
        .map_err(payload_error)?;
    let found = archived.commands.len();
    if found > limits.max_commands_per_frame as usize {
        return Err(FrameError::TooManyCommands {
            found,
            limit: limits.max_commands_per_frame,
        });
    }
    if found == 0 {
        return Err(FrameError::Empty);
    }
    let request = rkyv::deserialize::<RequestPayload, rkyv::rancor::Error>(archived)
        .map_err(payload_error)?;
    for (index, command) in request.commands.iter().enumerate() {
        command
            .check_envelope()
            .map_err(|message| FrameError::InvalidCommand { index, message })?;
    }
    Ok(request.commands)
}

/// One command archived on its own, into `buffer` (emptied first): the log's binary form of a
/// command. Only a command whose time is in whole microseconds survives it unchanged
/// (`archives_exactly`); the log writes any other as JSON.
pub fn archive_command(command: &Command, mut buffer: AlignedVec) -> AlignedVec {
    buffer.clear();
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(command, buffer)
        .expect("a command archives")
}

/// Whether `archive_command` keeps everything of `command`: times go as microseconds.
pub fn archives_exactly(command: &Command) -> bool {
    command.at.timestamp_subsec_nanos().is_multiple_of(1_000)
}

/// Validates one archived command (`archive_command`) and turns it back into a command.
pub fn unarchive_command(bytes: &[u8]) -> Result<Command, FrameError> {
    let buffer = aligned(bytes);
    rkyv::from_bytes::<Command, rkyv::rancor::Error>(&buffer).map_err(payload_error)
}

/// Validates a results payload.
pub fn decode_results(payload: &[u8]) -> Result<Vec<Arc<CommandResult>>, FrameError> {
    let buffer = aligned(payload);
    let results =
        rkyv::from_bytes::<ResultsPayload, rkyv::rancor::Error>(&buffer).map_err(payload_error)?;
    Ok(results.results)
}

/// Validates an error payload.
pub fn decode_error(payload: &[u8]) -> Result<ErrorPayload, FrameError> {
    let buffer = aligned(payload);
    rkyv::from_bytes::<ErrorPayload, rkyv::rancor::Error>(&buffer).map_err(payload_error)
}

/// Decodes one whole frame from `bytes` (exactly one frame, nothing after it).
pub fn decode_frame(bytes: &[u8], limits: &Limits) -> Result<Frame, FrameError> {
    let header: &[u8; HEADER_BYTES] = bytes
        .get(..HEADER_BYTES)
        .and_then(|h| h.try_into().ok())
        .ok_or(FrameError::Truncated)?;
    let header = decode_header(header, limits)?;
    let payload = &bytes[HEADER_BYTES..];
    if payload.len() < header.payload_bytes as usize {
        return Err(FrameError::Truncated);
    }
    if payload.len() > header.payload_bytes as usize {
        return Err(FrameError::Payload(
            "bytes follow the end of the payload".to_string(),
        ));
    }
    decode_payload(&header, payload, limits)
}

/// Decodes a payload of the kind its header names.
pub fn decode_payload(
    header: &Header,
    payload: &[u8],
    limits: &Limits,
) -> Result<Frame, FrameError> {
    let request_id = header.request_id;
    Ok(match header.kind {
        FrameKind::Request => Frame::Request {
            request_id,
            commands: decode_request(payload, limits)?,
        },
        FrameKind::Results => Frame::Results {
            request_id,
            results: decode_results(payload)?,
        },
        FrameKind::Error => {
            let error = decode_error(payload)?;
            Frame::Error {
                request_id,
                reason: error.reason,
                message: error.message,
            }
        }
        FrameKind::Rows => Frame::Rows {
            request_id,
            rows: decode_rows(payload)?,
        },
    })
}

/// Money on the wire: the decimal's own four 32-bit words (the layout .NET's `decimal` also
/// uses): the 96-bit magnitude in `lo`, `mid`, `hi`, and `flags` with the scale (0..=28) in
/// bits 16 to 23 and the sign in bit 31. 16 bytes at an alignment of 4, where an `i128`
/// mantissa took 32 at 16. The flags are checked when read back.
#[derive(Debug)]
pub struct AsDecimal;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct DecimalParts {
    pub lo: u32,
    pub mid: u32,
    pub hi: u32,
    pub flags: u32,
}

const SCALE_SHIFT: u32 = 16;
const SIGN_BIT: u32 = 1 << 31;
/// Bits of `flags` that must be zero: all but the scale's byte and the sign.
const FLAGS_UNUSED: u32 = !(SIGN_BIT | (0xFF << SCALE_SHIFT));

impl ArchiveWith<Decimal> for AsDecimal {
    type Archived = ArchivedDecimalParts;
    type Resolver = DecimalPartsResolver;

    fn resolve_with(field: &Decimal, resolver: Self::Resolver, out: Place<Self::Archived>) {
        decimal_parts(field).resolve(resolver, out);
    }
}

fn decimal_parts(decimal: &Decimal) -> DecimalParts {
    let magnitude = decimal.mantissa().unsigned_abs();
    let sign = if decimal.is_sign_negative() {
        SIGN_BIT
    } else {
        0
    };
    DecimalParts {
        lo: magnitude as u32,
        mid: (magnitude >> 32) as u32,
        hi: (magnitude >> 64) as u32,
        flags: sign | (decimal.scale() << SCALE_SHIFT),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("money's flags {0:#010x} are not a sign and a scale of at most 28")]
struct BadMoneyFlags(u32);

impl<S: Fallible + ?Sized> SerializeWith<Decimal, S> for AsDecimal {
    fn serialize_with(field: &Decimal, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        rkyv::Serialize::serialize(&decimal_parts(field), serializer)
    }
}

impl<D: Fallible + ?Sized> DeserializeWith<ArchivedDecimalParts, Decimal, D> for AsDecimal
where
    D::Error: Source,
{
    fn deserialize_with(field: &ArchivedDecimalParts, _: &mut D) -> Result<Decimal, D::Error> {
        let flags = field.flags.to_native();
        let scale = (flags >> SCALE_SHIFT) & 0xFF;
        if flags & FLAGS_UNUSED != 0 || scale > Decimal::MAX_SCALE {
            return Err(D::Error::new(BadMoneyFlags(flags)));
        }
        Ok(Decimal::from_parts(
            field.lo.to_native(),
            field.mid.to_native(),
            field.hi.to_native(),
            flags & SIGN_BIT != 0,
            scale,
        ))
    }
}

/// A 128-bit id on the wire: two little-endian `u64` halves, low first, so that a command
/// is 8-aligned (a `u128` would make every command 16-aligned and pad it).
#[derive(Debug)]
pub struct AsHalves;

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct Halves {
    pub lo: u64,
    pub hi: u64,
}

impl ArchiveWith<u128> for AsHalves {
    type Archived = ArchivedHalves;
    type Resolver = HalvesResolver;

    fn resolve_with(field: &u128, resolver: Self::Resolver, out: Place<Self::Archived>) {
        halves(*field).resolve(resolver, out);
    }
}

fn halves(value: u128) -> Halves {
    Halves {
        lo: value as u64,
        hi: (value >> 64) as u64,
    }
}

impl<S: Fallible + ?Sized> SerializeWith<u128, S> for AsHalves {
    fn serialize_with(field: &u128, serializer: &mut S) -> Result<Self::Resolver, S::Error> {
        rkyv::Serialize::serialize(&halves(*field), serializer)
    }
}

impl<D: Fallible + ?Sized> DeserializeWith<ArchivedHalves, u128, D> for AsHalves {
    fn deserialize_with(field: &ArchivedHalves, _: &mut D) -> Result<u128, D::Error> {
        Ok(u128::from(field.hi.to_native()) << 64 | u128::from(field.lo.to_native()))
    }
}

/// A time on the wire: microseconds since 1970-01-01T00:00:00Z, checked when read back.
#[derive(Debug)]
pub struct AsMicros;

#[derive(Debug, thiserror::Error)]
#[error("a time of {0} microseconds since 1970 is out of range")]
struct TimeOutOfRange(i64);

impl ArchiveWith<Timestamp> for AsMicros {
    type Archived = rkyv::Archived<i64>;
    type Resolver = ();

    fn resolve_with(field: &Timestamp, resolver: (), out: Place<Self::Archived>) {
        field.timestamp_micros().resolve(resolver, out);
    }
}

impl<S: Fallible + ?Sized> SerializeWith<Timestamp, S> for AsMicros {
    fn serialize_with(_: &Timestamp, _: &mut S) -> Result<(), S::Error> {
        Ok(())
    }
}

impl<D: Fallible + ?Sized> DeserializeWith<rkyv::Archived<i64>, Timestamp, D> for AsMicros
where
    D::Error: Source,
{
    fn deserialize_with(field: &rkyv::Archived<i64>, _: &mut D) -> Result<Timestamp, D::Error> {
        let micros = field.to_native();
        chrono::DateTime::from_timestamp_micros(micros)
            .ok_or_else(|| D::Error::new(TimeOutOfRange(micros)))
    }
}

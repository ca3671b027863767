//! Fuzzing the frame decoder: arbitrary bytes and mutations of valid frames (bit flips,
//! overwrites, truncations, splices) must give an error or a frame, never a panic, and any
//! frame decoded must encode back to an equal frame.
//!
//! `PROPTEST_CASES` sets the number of cases (CI runs many more in release; see `.ci/run`).

use std::sync::{Arc, LazyLock};

use proptest::prelude::*;
use tally_protocol::wire::{
    decode_frame, encode_error, encode_request, encode_results, encode_rows, Frame, Limits,
    HEADER_BYTES,
};
use tally_protocol::{parse_command_line, CommandResult, Reason, RowNumbers, RowRef, SnapshotRows};

const COMMANDS_DOC: &str = include_str!("../../docs/commands.md");

/// Valid frames of every kind, from the documented commands and results.
static CORPUS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(corpus);

fn corpus() -> Vec<Vec<u8>> {
    let lines = || COMMANDS_DOC.lines().filter(|line| line.starts_with('{'));
    let commands: Vec<_> = lines()
        .filter(|line| !line.contains("\"status\""))
        .filter_map(|line| parse_command_line(line).ok())
        .collect();
    let results: Vec<_> = lines()
        .filter(|line| line.contains("\"status\""))
        .filter_map(|line| serde_json::from_str::<CommandResult>(line).ok())
        .map(Arc::new)
        .collect();
    let mut frames: Vec<Vec<u8>> = commands
        .iter()
        .map(|command| encode_request(1, vec![command.clone()]))
        .collect();
    frames.push(encode_request(2, commands));
    frames.extend(results.iter().map(|r| encode_results(3, vec![r.clone()])));
    frames.push(encode_results(4, results));
    frames.push(encode_error(5, Reason::Invalid, "a sentence"));
    frames.push(encode_rows(6, &snapshot_rows()));
    frames
}

fn snapshot_rows() -> SnapshotRows {
    let row = |member: u64, tier: Option<&'static str>| RowRef {
        merchant: "demo",
        aliases: "+15550100;card:1234567890",
        tier,
        numbers: RowNumbers {
            member,
            points: 1200,
            available: 900,
            pending: 300,
            held: 0,
            credit_minor: 1250,
            credit_held_minor: 0,
            minor_units: 2,
            window_points_earned: 1500,
            window_amount_spent_minor: 123_456,
            window_orders: 7,
            expiring: [0, 100, 250],
        },
    };
    SnapshotRows {
        log_position: Some(41),
        last_entry_seq: 1234,
        rows: [row(1, Some("gold")), row(2, None)].into_iter().collect(),
        last: true,
        rows_sent: 2,
    }
}

/// Decoding never panics; what decodes re-encodes to the same frame.
fn check(bytes: &[u8]) {
    let limits = Limits::default();
    if let Ok(frame) = decode_frame(bytes, &limits) {
        let again = match frame.clone() {
            Frame::Request {
                request_id,
                commands,
            } => encode_request(request_id, commands),
            Frame::Results {
                request_id,
                results,
            } => encode_results(request_id, results),
            Frame::Error {
                request_id,
                reason,
                message,
            } => encode_error(request_id, reason, &message),
            Frame::Rows { request_id, rows } => encode_rows(request_id, &rows),
        };
        assert_eq!(decode_frame(&again, &limits), Ok(frame));
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Truncate { at: usize },
    Splice { at: usize, bytes: Vec<u8> },
    FixLength,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (
            any::<usize>(),
            proptest::collection::vec(any::<u8>(), 0..16)
        )
            .prop_map(|(at, bytes)| Mutation::Splice { at, bytes }),
        Just(Mutation::FixLength),
    ]
}

fn apply(bytes: &mut Vec<u8>, mutation: &Mutation) {
    let len = bytes.len().max(1);
    match mutation {
        Mutation::Flip { at, bit } => {
            if let Some(byte) = bytes.get_mut(at % len) {
                *byte ^= 1 << bit;
            }
        }
        Mutation::Set { at, byte } => {
            if let Some(slot) = bytes.get_mut(at % len) {
                *slot = *byte;
            }
        }
        Mutation::Truncate { at } => bytes.truncate(at % len),
        Mutation::Splice {
            at,
            bytes: inserted,
        } => {
            let at = at % len;
            let tail = bytes.split_off(at.min(bytes.len()));
            bytes.extend_from_slice(inserted);
            bytes.extend_from_slice(&tail);
        }
        // Make the header's length agree with the payload, so the archive itself is reached.
        Mutation::FixLength => {
            if bytes.len() >= HEADER_BYTES {
                let payload = (bytes.len() - HEADER_BYTES) as u32;
                bytes[16..20].copy_from_slice(&payload.to_le_bytes());
            }
        }
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        check(&bytes);
    }

    #[test]
    fn arbitrary_payloads_behind_a_valid_header_never_panic(
        kind in 1u8..=3,
        payload in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut bytes = encode_error(1, Reason::Invalid, "");
        bytes.truncate(HEADER_BYTES);
        bytes[5] = kind;
        bytes[16..20].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(&payload);
        check(&bytes);
    }

    #[test]
    fn mutated_frames_never_panic(
        pick in any::<prop::sample::Index>(),
        mutations in proptest::collection::vec(mutation(), 1..6),
    ) {
        let mut bytes = pick.get(&CORPUS).clone();
        for mutation in &mutations {
            apply(&mut bytes, mutation);
        }
        check(&bytes);
    }
}

//! The wire form: round trips of every command and result in `docs/commands.md`, each way a
//! frame can be refused, and the hex example of `docs/protocol.md`.

use std::sync::Arc;

use tally_protocol::wire::{
    decode_frame, decode_header, encode_error, encode_request, encode_results, Frame, FrameError,
    Limits, HEADER_BYTES,
};
use tally_protocol::{parse_command_line, Body, Command, CommandResult, IdemKey, Reason};

const COMMANDS_DOC: &str = include_str!("../../docs/commands.md");
const PROTOCOL_DOC: &str = include_str!("../../docs/protocol.md");

/// Every one-line command of `docs/commands.md`.
fn documented_commands() -> Vec<Command> {
    COMMANDS_DOC
        .lines()
        .filter(|line| line.starts_with('{') && !line.contains("\"status\""))
        .filter_map(|line| parse_command_line(line).ok())
        .collect()
}

/// Every one-line result of `docs/commands.md`.
fn documented_results() -> Vec<Arc<CommandResult>> {
    COMMANDS_DOC
        .lines()
        .filter(|line| line.starts_with('{') && line.contains("\"status\""))
        .filter_map(|line| serde_json::from_str::<CommandResult>(line).ok())
        .map(Arc::new)
        .collect()
}

#[test]
fn every_documented_command_and_result_survives_the_wire() {
    let commands = documented_commands();
    let kinds: std::collections::BTreeSet<_> = commands.iter().map(|c| c.kind()).collect();
    assert!(
        kinds.len() >= 14,
        "the corpus covers the command kinds: {kinds:?}"
    );
    let frame = encode_request(7, commands.clone());
    assert_eq!(
        decode_frame(&frame, &Limits::default()),
        Ok(Frame::Request {
            request_id: 7,
            commands
        })
    );
    let results = documented_results();
    assert!(
        results.len() >= 8,
        "the corpus has results: {}",
        results.len()
    );
    let frame = encode_results(u64::MAX, results.clone());
    assert_eq!(
        decode_frame(&frame, &Limits::default()),
        Ok(Frame::Results {
            request_id: u64::MAX,
            results
        })
    );
    let frame = encode_error(3, Reason::Overloaded, Reason::Overloaded.message());
    assert_eq!(
        decode_frame(&frame, &Limits::default()),
        Ok(Frame::Error {
            request_id: 3,
            reason: Reason::Overloaded,
            message: Reason::Overloaded.message().to_string()
        })
    );
}

fn one_command_frame() -> Vec<u8> {
    encode_request(1, documented_commands()[..1].to_vec())
}

#[test]
fn each_malformed_frame_gets_its_error() {
    let limits = Limits::default();
    let good = one_command_frame();
    let with = |edit: &dyn Fn(&mut Vec<u8>)| {
        let mut bytes = good.clone();
        edit(&mut bytes);
        decode_frame(&bytes, &limits)
    };
    assert_eq!(with(&|b| b[0] = b'X'), Err(FrameError::BadMagic));
    assert_eq!(
        with(&|b| b[4] = 1),
        Err(FrameError::UnsupportedVersion { found: 1 })
    );
    assert_eq!(
        with(&|b| b[5] = 9),
        Err(FrameError::UnknownKind { found: 9 })
    );
    assert_eq!(with(&|b| b[7] = 1), Err(FrameError::ReservedNotZero));
    assert_eq!(
        with(&|b| b.truncate(HEADER_BYTES - 1)),
        Err(FrameError::Truncated)
    );
    assert_eq!(
        with(&|b| b.truncate(b.len() - 1)),
        Err(FrameError::Truncated)
    );
    assert!(matches!(with(&|b| b.push(0)), Err(FrameError::Payload(_))));
    let oversized = with(&|b| b[16..20].copy_from_slice(&(64u32 << 20).to_le_bytes()));
    assert!(
        matches!(oversized, Err(FrameError::TooLarge { .. })),
        "{oversized:?}"
    );
    // Garbage where the archive should be: refused by validation, not read.
    let garbage = with(&|b| {
        for (i, byte) in b[HEADER_BYTES..].iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(37) ^ 0xA5;
        }
    });
    assert!(
        matches!(garbage, Err(FrameError::Payload(_))),
        "{garbage:?}"
    );
    let few = Limits {
        max_commands_per_frame: 2,
        ..Limits::default()
    };
    let three = encode_request(1, documented_commands()[..3].to_vec());
    assert_eq!(
        decode_frame(&three, &few),
        Err(FrameError::TooManyCommands { found: 3, limit: 2 })
    );
    assert_eq!(
        decode_frame(&encode_request(1, vec![]), &limits),
        Err(FrameError::Empty)
    );
    let header: [u8; HEADER_BYTES] = good[..HEADER_BYTES].try_into().unwrap();
    assert_eq!(decode_header(&header, &limits).unwrap().request_id, 1);
}

#[test]
fn money_and_times_out_of_range_are_refused_after_validation() {
    // A scale over 28, or a flag bit that means nothing, passes the archive's structure check
    // but not the conversion to money.
    let command = parse_command_line(
        r#"{"merchant":"demo","terminal":"t","txn":"1","at":"2026-03-03T13:00:00Z","hold":{"member":{"id":1},"credit":"1.5"}}"#,
    )
    .unwrap();
    let frame = encode_request(1, vec![command]);
    // The decimal 1.5 is stored as the words lo 15, mid 0, hi 0 and flags with scale 1 in
    // bits 16 to 23: find the flags.
    let words = [15u32, 0, 0, 1 << 16];
    let money: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let at = HEADER_BYTES
        + frame[HEADER_BYTES..]
            .windows(16)
            .position(|w| w == money)
            .expect("the money is in the archive")
        + 12;
    let with_flags = |flags: u32| {
        let mut edited = frame.clone();
        edited[at..at + 4].copy_from_slice(&flags.to_le_bytes());
        decode_frame(&edited, &Limits::default())
    };
    assert!(matches!(with_flags(29 << 16), Err(FrameError::Payload(_))));
    assert!(matches!(
        with_flags(1 << 16 | 1),
        Err(FrameError::Payload(_))
    ));
    let Ok(Frame::Request { commands, .. }) = with_flags(1 << 16 | 1 << 31) else {
        panic!("the sign bit is money's own");
    };
    let Body::Hold(hold) = &commands[0].body else {
        panic!("{:?}", commands[0].body);
    };
    assert_eq!(hold.credit, rust_decimal::Decimal::new(-15, 1));
}

/// A frame's commands pass the same envelope checks as a JSON line: the engine logs them as
/// JSON, and recovery reads them back through those checks.
#[test]
fn a_command_a_json_line_could_not_carry_is_refused_in_a_frame_too() {
    let good = documented_commands()[0].clone();
    let refused = |edit: &dyn Fn(&mut Command)| {
        let mut command = good.clone();
        edit(&mut command);
        let frame = encode_request(1, vec![good.clone(), command]);
        match decode_frame(&frame, &Limits::default()) {
            Err(FrameError::InvalidCommand { index: 1, message }) => message,
            other => panic!("{other:?}"),
        }
    };
    let long_txn = refused(&|c| {
        c.key = IdemKey::Terminal {
            terminal: "pos-1".into(),
            txn: "x".repeat(200),
        }
    });
    assert!(long_txn.contains("txn"), "{long_txn}");
    let blank = refused(&|c| c.merchant = "  ".into());
    assert!(blank.contains("merchant"), "{blank}");
    let far = refused(&|c| c.at = chrono::DateTime::<chrono::Utc>::MIN_UTC);
    assert!(far.contains("outside the years 1900 to 9999"), "{far}");
    assert!(decode_frame(&encode_request(1, vec![good.clone()]), &Limits::default()).is_ok());
}

/// The hex example in `docs/protocol.md` is this frame, byte for byte.
#[test]
fn the_documented_hex_example_is_what_the_encoder_writes() {
    let command = parse_command_line(
        r#"{"merchant":"demo","terminal":"pos-1","txn":"42","at":"2026-03-03T16:30:00Z","event":{"member":{"id":7},"name":"review"}}"#,
    )
    .unwrap();
    let frame = encode_request(1, vec![command.clone()]);
    let documented: String = PROTOCOL_DOC
        .split("<!-- hex-example-start -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- hex-example-end -->").next())
        .expect("docs/protocol.md has the example between its markers")
        .lines()
        .filter(|line| line.starts_with(|c: char| c.is_ascii_hexdigit()) && line.contains(':'))
        .map(|line| {
            let bytes = line.split_once(':').unwrap().1;
            bytes.split("  ").next().unwrap().replace(' ', "")
        })
        .collect();
    let encoded: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    if documented != encoded {
        for (offset, chunk) in frame.chunks(16).enumerate() {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            eprintln!("{:04x}: {}", offset * 16, hex.join(" "));
        }
        panic!("docs/protocol.md's hex example differs from the encoder's bytes (printed above)");
    }
    assert_eq!(
        decode_frame(&frame, &Limits::default()),
        Ok(Frame::Request {
            request_id: 1,
            commands: vec![command]
        })
    );
}

//! The JSON form of a command: one object per line, the envelope fields beside exactly one
//! body key named after the command, e.g.
//! `{"merchant":"demo","terminal":"pos-1","txn":"42","at":"2026-03-01T10:00:00Z","purchase":{…}}`.

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::at::OptionalAt;
use crate::command::*;
use crate::Timestamp;

/// The keys a command line may have: the envelope's, then one per body (named as the
/// command's kind). Any other key is refused, naming the ones allowed.
enum Field {
    Merchant,
    Terminal,
    Admin,
    Txn,
    Id,
    At,
    ProgramVersion,
    Body(CommandKind),
}

const FIELDS: &[&str] = &[
    "merchant",
    "terminal",
    "admin",
    "txn",
    "id",
    "at",
    "program_version",
    "purchase",
    "quote",
    "return",
    "hold",
    "capture",
    "release",
    "adjust",
    "event",
    "enroll",
    "issue_cards",
    "link",
    "load_program",
    "tick",
    "statement",
    "assign_promotion",
    "issue_codes",
    "tag",
    "balance",
    "snapshot",
];

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Field, D::Error> {
        deserializer.deserialize_identifier(FieldVisitor)
    }
}

struct FieldVisitor;

impl Visitor<'_> for FieldVisitor {
    type Value = Field;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a command's field")
    }

    fn visit_str<E: de::Error>(self, name: &str) -> Result<Field, E> {
        Ok(match name {
            "merchant" => Field::Merchant,
            "terminal" => Field::Terminal,
            "admin" => Field::Admin,
            "txn" => Field::Txn,
            "id" => Field::Id,
            "at" => Field::At,
            "program_version" => Field::ProgramVersion,
            body => match CommandKind::of_body_key(body) {
                Some(kind) => Field::Body(kind),
                None => return Err(E::unknown_field(body, FIELDS)),
            },
        })
    }
}

/// A command line read in one pass: the envelope as written, and every body it names (a
/// valid command has exactly one). Each body is read straight into its `Body` variant, so a
/// line is neither copied into nor cloned out of an intermediate form.
struct Parts {
    merchant: String,
    terminal: Option<String>,
    admin: Option<String>,
    txn: Option<String>,
    id: Option<String>,
    at: Option<Timestamp>,
    program_version: Option<u32>,
    bodies: Vec<Body>,
}

impl<'de> Deserialize<'de> for Parts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Parts, D::Error> {
        deserializer.deserialize_map(PartsVisitor)
    }
}

struct PartsVisitor;

impl<'de> Visitor<'de> for PartsVisitor {
    type Value = Parts;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a command object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parts, A::Error> {
        let mut merchant: Option<String> = None;
        let mut terminal = None;
        let mut admin = None;
        let mut txn = None;
        let mut id = None;
        let mut at = None;
        let mut program_version = None;
        let mut bodies = Vec::with_capacity(1);
        while let Some(field) = map.next_key::<Field>()? {
            match field {
                Field::Merchant => once(&mut merchant, "merchant", map.next_value()?)?,
                Field::Terminal => once(&mut terminal, "terminal", map.next_value()?)?,
                Field::Admin => once(&mut admin, "admin", map.next_value()?)?,
                Field::Txn => once(&mut txn, "txn", map.next_value()?)?,
                Field::Id => once(&mut id, "id", map.next_value()?)?,
                Field::At => once(&mut at, "at", map.next_value::<OptionalAt>()?.0)?,
                Field::ProgramVersion => {
                    once(&mut program_version, "program_version", map.next_value()?)?
                }
                Field::Body(kind) => bodies.extend(next_body(kind, &mut map)?),
            }
        }
        Ok(Parts {
            merchant: merchant.ok_or_else(|| de::Error::missing_field("merchant"))?,
            terminal: terminal.flatten(),
            admin: admin.flatten(),
            txn: txn.flatten(),
            id: id.flatten(),
            at: at.flatten(),
            program_version: program_version.flatten(),
            bodies,
        })
    }
}

/// Keeps a field's value, refusing a second one as JSON objects with repeated keys are refused.
fn once<T, E: de::Error>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

/// Reads the value of a body key into its variant; `null` names no body.
fn next_body<'de, A: MapAccess<'de>>(
    kind: CommandKind,
    map: &mut A,
) -> Result<Option<Body>, A::Error> {
    Ok(match kind {
        CommandKind::Purchase => map.next_value::<Option<Purchase>>()?.map(Body::Purchase),
        CommandKind::Quote => map.next_value::<Option<Purchase>>()?.map(Body::Quote),
        CommandKind::Return => map.next_value::<Option<Return>>()?.map(Body::Return),
        CommandKind::Hold => map.next_value::<Option<Hold>>()?.map(Body::Hold),
        CommandKind::Capture => map.next_value::<Option<Capture>>()?.map(Body::Capture),
        CommandKind::Release => map.next_value::<Option<Release>>()?.map(Body::Release),
        CommandKind::Adjust => map.next_value::<Option<Adjust>>()?.map(Body::Adjust),
        CommandKind::Event => map.next_value::<Option<Event>>()?.map(Body::Event),
        CommandKind::Enroll => map.next_value::<Option<Enroll>>()?.map(Body::Enroll),
        CommandKind::IssueCards => map
            .next_value::<Option<IssueCards>>()?
            .map(Body::IssueCards),
        CommandKind::Link => map.next_value::<Option<Link>>()?.map(Body::Link),
        CommandKind::LoadProgram => map
            .next_value::<Option<LoadProgram>>()?
            .map(Body::LoadProgram),
        CommandKind::Tick => map.next_value::<Option<Tick>>()?.map(Body::Tick),
        CommandKind::Statement => map
            .next_value::<Option<StatementQuery>>()?
            .map(Body::Statement),
        CommandKind::AssignPromotion => map
            .next_value::<Option<AssignPromotion>>()?
            .map(Body::AssignPromotion),
        CommandKind::IssueCodes => map
            .next_value::<Option<IssueCodes>>()?
            .map(Body::IssueCodes),
        CommandKind::Tag => map.next_value::<Option<Tag>>()?.map(Body::Tag),
        CommandKind::Balance => map.next_value::<Option<BalanceQuery>>()?.map(Body::Balance),
        CommandKind::Snapshot => map
            .next_value::<Option<SnapshotQuery>>()?
            .map(Body::Snapshot),
        CommandKind::Unknown => unreachable!("no body key names the unknown kind"),
    })
}

/// A command line that could not be read. `key` is set when the envelope was readable, so
/// the rejection can still name the transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    pub message: String,
    pub merchant: Option<String>,
    pub key: Option<IdemKey>,
}

impl ParseError {
    fn new(message: impl Into<String>) -> Self {
        ParseError {
            message: message.into(),
            merchant: None,
            key: None,
        }
    }
}

/// Reads one JSON line into a command.
pub fn parse_command_line(line: &str) -> Result<Command, ParseError> {
    let parts: Parts = serde_json::from_str(line).map_err(|error| {
        let mut parse_error = ParseError::new(format!("malformed command: {error}"));
        // Name the transaction if the envelope alone is readable.
        if let Ok(envelope) = serde_json::from_str::<EnvelopeOnly>(line) {
            parse_error.merchant = envelope.merchant;
            parse_error.key = idem_key(
                &envelope.terminal,
                &envelope.admin,
                &envelope.txn,
                &envelope.id,
            )
            .ok();
        }
        parse_error
    })?;
    Command::try_from(parts)
}

#[derive(Deserialize)]
struct EnvelopeOnly {
    merchant: Option<String>,
    terminal: Option<String>,
    admin: Option<String>,
    txn: Option<String>,
    id: Option<String>,
}

fn idem_key(
    terminal: &Option<String>,
    admin: &Option<String>,
    txn: &Option<String>,
    id: &Option<String>,
) -> Result<IdemKey, String> {
    match (id, txn) {
        (Some(_), Some(_)) => Err("give either `txn` or `id`, not both".into()),
        (Some(id), None) => parse_id(id).map(IdemKey::Id),
        (None, Some(txn)) => match (terminal, admin) {
            (Some(terminal), None) => Ok(IdemKey::Terminal {
                terminal: terminal.clone(),
                txn: txn.clone(),
            }),
            (None, Some(admin)) => Ok(IdemKey::Admin {
                admin: admin.clone(),
                txn: txn.clone(),
            }),
            _ => Err("`txn` needs exactly one of `terminal` or `admin`".into()),
        },
        (None, None) => Err("every command needs an idempotency key: `txn` or `id`".into()),
    }
}

/// A 128-bit id is 32 hex digits; dashes (UUID style) are allowed and ignored.
pub(crate) fn parse_id(text: &str) -> Result<u128, String> {
    let digits: String = text.chars().filter(|c| *c != '-').collect();
    if digits.len() != 32 {
        return Err(format!("`id` must be 32 hex digits, got {:?}", text));
    }
    u128::from_str_radix(&digits, 16).map_err(|_| format!("`id` must be hex, got {:?}", text))
}

/// The earliest and latest event times a command may carry: far enough apart for any real
/// order or import, far enough inside the calendar's limits that date arithmetic (time zones,
/// expiry, month ends) never leaves it.
pub static EARLIEST_AT: std::sync::LazyLock<Timestamp> = std::sync::LazyLock::new(|| {
    chrono::DateTime::parse_from_rfc3339("1900-01-01T00:00:00Z")
        .expect("a valid time")
        .to_utc()
});
pub static LATEST_AT: std::sync::LazyLock<Timestamp> = std::sync::LazyLock::new(|| {
    chrono::DateTime::parse_from_rfc3339("9999-12-31T23:59:59Z")
        .expect("a valid time")
        .to_utc()
});

fn non_empty(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("`{field}` must not be empty"));
    }
    if value.len() > 128 {
        return Err(format!("`{field}` is longer than 128 characters"));
    }
    Ok(())
}

impl TryFrom<Parts> for Command {
    type Error = ParseError;

    fn try_from(mut json: Parts) -> Result<Command, ParseError> {
        let key = idem_key(&json.terminal, &json.admin, &json.txn, &json.id);
        let fail = |message: String| ParseError {
            message,
            merchant: Some(json.merchant.clone()),
            key: key.clone().ok(),
        };
        non_empty("merchant", &json.merchant).map_err(fail)?;
        let origin = match (&json.terminal, &json.admin) {
            (Some(terminal), None) => Origin::Terminal(terminal.clone()),
            (None, Some(admin)) => Origin::Admin(admin.clone()),
            (Some(_), Some(_)) => {
                return Err(fail("give either `terminal` or `admin`, not both".into()))
            }
            (None, None) => {
                return Err(fail(
                    "every command needs a `terminal` or an `admin`".into(),
                ))
            }
        };
        match &origin {
            Origin::Terminal(name) => non_empty("terminal", name),
            Origin::Admin(name) => non_empty("admin", name),
        }
        .map_err(fail)?;
        if let Some(txn) = &json.txn {
            non_empty("txn", txn).map_err(fail)?;
        }
        let key = key.clone().map_err(fail)?;
        let at = json
            .at
            .ok_or_else(|| fail("every command needs its event time `at`".into()))?;
        let body = only_body(&mut json.bodies).map_err(fail)?;
        let command = Command {
            merchant: json.merchant,
            origin,
            key,
            at,
            program_version: json.program_version,
            body,
        };
        command.check_envelope().map_err(|message| ParseError {
            message,
            merchant: Some(command.merchant.clone()),
            key: Some(command.key.clone()),
        })?;
        Ok(command)
    }
}

fn only_body(bodies: &mut Vec<Body>) -> Result<Body, String> {
    match bodies.len() {
        1 => Ok(bodies.pop().expect("one body")),
        0 => Err("the command has no body: add one of `purchase`, `quote`, `return`, `hold`, `capture`, \
                  `release`, `adjust`, `event`, `enroll`, `issue_cards`, `link`, `load_program`, `tick`, \
                  `assign_promotion`, `issue_codes`, `tag`, `statement`, `balance`, `snapshot`"
            .into()),
        _ => Err("a command has exactly one body".into()),
    }
}

/// A command in its JSON form, written from the command itself: the envelope's keys in a
/// fixed order, then the one body key.
struct JsonLine<'a>(&'a Command);

impl Serialize for JsonLine<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let command = self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("merchant", &command.merchant)?;
        match &command.origin {
            Origin::Terminal(terminal) => map.serialize_entry("terminal", terminal)?,
            Origin::Admin(admin) => map.serialize_entry("admin", admin)?,
        }
        match &command.key {
            IdemKey::Terminal { txn, .. } | IdemKey::Admin { txn, .. } => {
                map.serialize_entry("txn", txn)?
            }
            IdemKey::Id(id) => map.serialize_entry("id", &format!("{id:032x}"))?,
        }
        map.serialize_entry("at", &command.at)?;
        if let Some(version) = command.program_version {
            map.serialize_entry("program_version", &version)?;
        }
        let name = command.kind().name();
        match &command.body {
            Body::Purchase(body) | Body::Quote(body) => map.serialize_entry(name, body)?,
            Body::Return(body) => map.serialize_entry(name, body)?,
            Body::Hold(body) => map.serialize_entry(name, body)?,
            Body::Capture(body) => map.serialize_entry(name, body)?,
            Body::Release(body) => map.serialize_entry(name, body)?,
            Body::Adjust(body) => map.serialize_entry(name, body)?,
            Body::Event(body) => map.serialize_entry(name, body)?,
            Body::Enroll(body) => map.serialize_entry(name, body)?,
            Body::IssueCards(body) => map.serialize_entry(name, body)?,
            Body::Link(body) => map.serialize_entry(name, body)?,
            Body::LoadProgram(body) => map.serialize_entry(name, body)?,
            Body::Tick(body) => map.serialize_entry(name, body)?,
            Body::Statement(body) => map.serialize_entry(name, body)?,
            Body::AssignPromotion(body) => map.serialize_entry(name, body)?,
            Body::IssueCodes(body) => map.serialize_entry(name, body)?,
            Body::Tag(body) => map.serialize_entry(name, body)?,
            Body::Balance(body) => map.serialize_entry(name, body)?,
            Body::Snapshot(body) => map.serialize_entry(name, body)?,
        }
        map.end()
    }
}

impl Command {
    /// The command as one JSON line (without the newline).
    pub fn to_json_line(&self) -> String {
        let mut line = Vec::with_capacity(512);
        self.write_json(&mut line);
        String::from_utf8(line).expect("JSON is UTF-8")
    }

    /// The checks every command's envelope passes, however it arrived (a JSON line, a
    /// network frame): the merchant and the key's names and `txn` of 1 to 128 characters,
    /// not blank, and `at` within `EARLIEST_AT..=LATEST_AT`. A command the engine logs must
    /// read back from its JSON, which makes these checks again. (The origin is checked where
    /// it is set: a JSON line names it, a frame's is replaced by its certificate's.)
    pub fn check_envelope(&self) -> Result<(), String> {
        non_empty("merchant", &self.merchant)?;
        match &self.key {
            IdemKey::Terminal { terminal, txn } => {
                non_empty("terminal", terminal)?;
                non_empty("txn", txn)?;
            }
            IdemKey::Admin { admin, txn } => {
                non_empty("admin", admin)?;
                non_empty("txn", txn)?;
            }
            IdemKey::Id(_) => {}
        }
        if self.at < *EARLIEST_AT || self.at > *LATEST_AT {
            return Err(format!(
                "`at` {} is outside the years 1900 to 9999",
                self.at.to_rfc3339()
            ));
        }
        Ok(())
    }

    /// Appends the command's JSON line (without the newline) to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        crate::json_writer::write_json(out, &JsonLine(self)).expect("commands always serialise")
    }

    pub fn kind(&self) -> CommandKind {
        self.body.kind()
    }
}

impl TxnRef {
    /// Resolves the reference against the command that makes it.
    pub fn resolve(&self, origin: &Origin) -> Result<IdemKey, String> {
        match (&self.id, &self.txn, &self.terminal, &self.admin) {
            (Some(id), None, None, None) => parse_id(id).map(IdemKey::Id),
            (None, Some(txn), Some(terminal), None) => Ok(IdemKey::Terminal {
                terminal: terminal.clone(),
                txn: txn.clone(),
            }),
            (None, Some(txn), None, Some(admin)) => Ok(IdemKey::Admin {
                admin: admin.clone(),
                txn: txn.clone(),
            }),
            (None, Some(txn), None, None) => Ok(match origin {
                Origin::Terminal(terminal) => IdemKey::Terminal {
                    terminal: terminal.clone(),
                    txn: txn.clone(),
                },
                Origin::Admin(admin) => IdemKey::Admin {
                    admin: admin.clone(),
                    txn: txn.clone(),
                },
            }),
            _ => Err(
                "a reference names either `txn` (with an optional `terminal` or `admin`) or `id`"
                    .into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PURCHASE: &str = r#"{"merchant":"demo","terminal":"pos-1","txn":"7","at":"2026-03-01T10:00:00Z","purchase":{"member":{"phone":"+15550001111"},"lines":[{"sku":"A","qty":2,"unit_price":"4.50"}],"total":"9.00"}}"#;

    #[test]
    fn round_trips_through_json() {
        let command = parse_command_line(PURCHASE).unwrap();
        assert_eq!(command.kind(), CommandKind::Purchase);
        let again = parse_command_line(&command.to_json_line()).unwrap();
        assert_eq!(command, again);
    }

    /// Times far outside any order's would break the calendar arithmetic behind rules and
    /// expiry: the years 1900 to 9999 are read, nothing outside.
    #[test]
    fn refuses_event_times_outside_the_years_1900_to_9999() {
        for at in [
            "-262143-01-01T00:00:00Z",
            "+262142-12-31T23:59:59Z",
            "1899-12-31T23:59:59Z",
        ] {
            let line = PURCHASE.replace("2026-03-01T10:00:00Z", at);
            let error = parse_command_line(&line).unwrap_err();
            assert!(
                error.message.contains("outside the years"),
                "{at}: {}",
                error.message
            );
        }
        for at in ["1900-01-01T00:00:00Z", "9999-12-31T23:59:59Z"] {
            assert!(parse_command_line(&PURCHASE.replace("2026-03-01T10:00:00Z", at)).is_ok());
        }
    }

    #[test]
    fn refuses_unknown_fields_and_names_the_key() {
        let line = PURCHASE.replace("\"total\"", "\"totl\"");
        let error = parse_command_line(&line).unwrap_err();
        assert!(error.message.contains("totl"), "{}", error.message);
        assert_eq!(
            error.key,
            Some(IdemKey::Terminal {
                terminal: "pos-1".into(),
                txn: "7".into()
            })
        );
    }

    #[test]
    fn needs_exactly_one_body() {
        let line = r#"{"merchant":"demo","terminal":"t","txn":"1","at":"2026-03-01T10:00:00Z"}"#;
        assert!(parse_command_line(line)
            .unwrap_err()
            .message
            .contains("no body"));
    }

    #[test]
    fn promotion_commands_round_trip() {
        for line in [
            r#"{"merchant":"m","admin":"ops","txn":"1","at":"2026-03-01T10:00:00Z","issue_codes":{"promotion":"s","count":3,"seed":"00"}}"#,
            r#"{"merchant":"m","admin":"ops","txn":"2","at":"2026-03-01T10:00:00Z","assign_promotion":{"promotion":"r","tier":"gold"}}"#,
            r#"{"merchant":"m","admin":"ops","txn":"3","at":"2026-03-01T10:00:00Z","tag":{"member":{"id":1},"add":["staff"]}}"#,
        ] {
            let command = parse_command_line(line).unwrap();
            assert!(command.kind().admin_only(), "{line}");
            assert_eq!(
                parse_command_line(&command.to_json_line()).unwrap(),
                command
            );
        }
    }

    #[test]
    fn a_null_body_names_no_body() {
        // Older logs carry `"assign_promotion":null` on every line, and still read.
        let line = PURCHASE.replace("\"purchase\"", "\"assign_promotion\":null,\"purchase\"");
        let command = parse_command_line(&line).unwrap();
        assert_eq!(command, parse_command_line(PURCHASE).unwrap());
        assert!(!command.to_json_line().contains("null"));
    }

    #[test]
    fn refuses_repeated_keys_and_second_bodies() {
        let repeated = PURCHASE.replace("\"txn\":\"7\"", "\"txn\":\"7\",\"txn\":\"8\"");
        let error = parse_command_line(&repeated).unwrap_err();
        assert!(
            error.message.contains("duplicate field `txn`"),
            "{}",
            error.message
        );
        let two = PURCHASE.replace("\"purchase\"", "\"tick\":{},\"purchase\"");
        let error = parse_command_line(&two).unwrap_err();
        assert_eq!(error.message, "a command has exactly one body");
        assert_eq!(error.merchant.as_deref(), Some("demo"));
    }

    #[test]
    fn names_the_keys_allowed_for_an_unknown_one() {
        let line = PURCHASE.replace("\"at\"", "\"when\"");
        let error = parse_command_line(&line).unwrap_err();
        assert!(
            error
                .message
                .contains("unknown field `when`, expected one of `merchant`"),
            "{}",
            error.message
        );
    }

    #[test]
    fn the_keys_an_error_lists_are_the_keys_read() {
        let read = |name: &str| FieldVisitor.visit_str::<serde::de::value::Error>(name);
        let mut bodies = 0;
        for name in FIELDS {
            if let Field::Body(kind) = read(name).unwrap() {
                assert_eq!(kind.name(), *name);
                bodies += 1;
            }
        }
        // Every kind but `Unknown` (the last kind is `Snapshot`) has a body key.
        assert_eq!(bodies, CommandKind::Snapshot as usize);
        assert!(read("unknown").is_err());
    }

    #[test]
    fn reads_uuid_style_ids() {
        let line = r#"{"merchant":"demo","admin":"ops","id":"0123abcd-0123-abcd-0123-abcdef012345","at":"2026-03-01T10:00:00Z","tick":{}}"#;
        let command = parse_command_line(line).unwrap();
        assert_eq!(command.key, IdemKey::Id(0x0123abcd0123abcd0123abcdef012345));
    }
}

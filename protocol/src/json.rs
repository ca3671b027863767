//! The JSON form of a command: one object per line, the envelope fields beside exactly one
//! body key named after the command, e.g.
//! `{"merchant":"demo","terminal":"pos-1","txn":"42","at":"2026-03-01T10:00:00Z","purchase":{…}}`.

use serde::{Deserialize, Serialize};

use crate::command::*;
use crate::Timestamp;

/// The JSON envelope exactly as it is written. Unknown fields are refused.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandJson {
    pub merchant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminal: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub txn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program_version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purchase: Option<Purchase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quote: Option<Purchase>,
    #[serde(default, rename = "return", skip_serializing_if = "Option::is_none")]
    pub return_: Option<Return>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<Hold>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capture: Option<Capture>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Release>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adjust: Option<Adjust>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Event>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enroll: Option<Enroll>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue_cards: Option<IssueCards>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<Link>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_program: Option<LoadProgram>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tick: Option<Tick>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<StatementQuery>,
    pub assign_promotion: Option<AssignPromotion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue_codes: Option<IssueCodes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<Tag>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balance: Option<BalanceQuery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<SnapshotQuery>,
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
    let json: CommandJson = serde_json::from_str(line).map_err(|error| {
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
    Command::try_from(json)
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

fn non_empty(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("`{field}` must not be empty"));
    }
    if value.len() > 128 {
        return Err(format!("`{field}` is longer than 128 characters"));
    }
    Ok(())
}

impl TryFrom<CommandJson> for Command {
    type Error = ParseError;

    fn try_from(json: CommandJson) -> Result<Command, ParseError> {
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
        let body = take_body(&json).map_err(fail)?;
        Ok(Command {
            merchant: json.merchant,
            origin,
            key,
            at,
            program_version: json.program_version,
            body,
        })
    }
}

fn take_body(json: &CommandJson) -> Result<Body, String> {
    let mut bodies: Vec<Body> = Vec::with_capacity(1);
    let mut push = |body: Option<Body>| bodies.extend(body);
    push(json.purchase.clone().map(Body::Purchase));
    push(json.quote.clone().map(Body::Quote));
    push(json.return_.clone().map(Body::Return));
    push(json.hold.clone().map(Body::Hold));
    push(json.capture.clone().map(Body::Capture));
    push(json.release.clone().map(Body::Release));
    push(json.adjust.clone().map(Body::Adjust));
    push(json.event.clone().map(Body::Event));
    push(json.enroll.clone().map(Body::Enroll));
    push(json.issue_cards.clone().map(Body::IssueCards));
    push(json.link.clone().map(Body::Link));
    push(json.load_program.clone().map(Body::LoadProgram));
    push(json.tick.clone().map(Body::Tick));
    push(json.statement.clone().map(Body::Statement));
    push(json.assign_promotion.clone().map(Body::AssignPromotion));
    push(json.issue_codes.clone().map(Body::IssueCodes));
    push(json.tag.clone().map(Body::Tag));
    push(json.balance.clone().map(Body::Balance));
    push(json.snapshot.clone().map(Body::Snapshot));
    match bodies.len() {
        1 => Ok(bodies.pop().expect("one body")),
        0 => Err("the command has no body: add one of `purchase`, `quote`, `return`, `hold`, `capture`, \
                  `release`, `adjust`, `event`, `enroll`, `issue_cards`, `link`, `load_program`, `tick`, \
                  `assign_promotion`, `issue_codes`, `tag`, `statement`, `balance`, `snapshot`"
            .into()),
        _ => Err("a command has exactly one body".into()),
    }
}

impl From<&Command> for CommandJson {
    fn from(command: &Command) -> CommandJson {
        let mut json = CommandJson {
            merchant: command.merchant.clone(),
            at: Some(command.at),
            program_version: command.program_version,
            ..CommandJson::default()
        };
        match &command.origin {
            Origin::Terminal(terminal) => json.terminal = Some(terminal.clone()),
            Origin::Admin(admin) => json.admin = Some(admin.clone()),
        }
        match &command.key {
            IdemKey::Terminal { txn, .. } | IdemKey::Admin { txn, .. } => {
                json.txn = Some(txn.clone())
            }
            IdemKey::Id(id) => json.id = Some(format!("{id:032x}")),
        }
        let body = command.body.clone();
        match body {
            Body::Purchase(b) => json.purchase = Some(b),
            Body::Quote(b) => json.quote = Some(b),
            Body::Return(b) => json.return_ = Some(b),
            Body::Hold(b) => json.hold = Some(b),
            Body::Capture(b) => json.capture = Some(b),
            Body::Release(b) => json.release = Some(b),
            Body::Adjust(b) => json.adjust = Some(b),
            Body::Event(b) => json.event = Some(b),
            Body::Enroll(b) => json.enroll = Some(b),
            Body::IssueCards(b) => json.issue_cards = Some(b),
            Body::Link(b) => json.link = Some(b),
            Body::LoadProgram(b) => json.load_program = Some(b),
            Body::Tick(b) => json.tick = Some(b),
            Body::Statement(b) => json.statement = Some(b),
            Body::AssignPromotion(b) => json.assign_promotion = Some(b),
            Body::IssueCodes(b) => json.issue_codes = Some(b),
            Body::Tag(b) => json.tag = Some(b),
            Body::Balance(b) => json.balance = Some(b),
            Body::Snapshot(b) => json.snapshot = Some(b),
        }
        json
    }
}

impl Command {
    /// The command as one JSON line (without the newline).
    pub fn to_json_line(&self) -> String {
        serde_json::to_string(&CommandJson::from(self)).expect("commands always serialise")
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
    fn reads_uuid_style_ids() {
        let line = r#"{"merchant":"demo","admin":"ops","id":"0123abcd-0123-abcd-0123-abcdef012345","at":"2026-03-01T10:00:00Z","tick":{}}"#;
        let command = parse_command_line(line).unwrap();
        assert_eq!(command.key, IdemKey::Id(0x0123abcd0123abcd0123abcdef012345));
    }
}

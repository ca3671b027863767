//! Authorisation: what an authenticated certificate may submit. The command's `origin` is
//! always replaced by the certificate's identity; whatever the frame claimed is ignored.

use tally_protocol::{
    Body, Command, CommandKind, CommandResult, IdemKey, Origin, Reason, ENGINE_ADMIN,
};

use super::certs::Identity;

/// A command refused before it reached the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: Reason,
    pub message: String,
}

impl Refusal {
    fn unauthorized(message: String) -> Refusal {
        Refusal {
            reason: Reason::Unauthorized,
            message,
        }
    }

    pub fn result(&self, command: &Command) -> CommandResult {
        CommandResult::rejected(
            &command.merchant,
            command.key.text(),
            command.kind(),
            self.reason,
            self.message.clone(),
        )
    }
}

/// Checks a command against the identity that sent it and stamps it with that identity.
pub fn authorize(identity: &Identity, command: &mut Command) -> Result<(), Refusal> {
    let kind = command.kind();
    if kind == CommandKind::Tick {
        return Err(Refusal::unauthorized(
            "Only the engine itself issues time-driven work.".into(),
        ));
    }
    match identity {
        Identity::Terminal {
            merchant,
            store,
            terminal,
        } => {
            if command.merchant != *merchant {
                return Err(Refusal::unauthorized(format!(
                    "This terminal belongs to merchant {merchant}, not {}.",
                    command.merchant
                )));
            }
            if kind.admin_only() {
                return Err(Refusal::unauthorized(format!(
                    "Only an operator may send {}; this is a terminal.",
                    kind.name()
                )));
            }
            match &command.key {
                IdemKey::Terminal {
                    terminal: named, ..
                } if named != terminal => {
                    return Err(Refusal::unauthorized(format!(
                        "This is terminal {terminal}; it cannot use terminal {named}'s transaction numbers."
                    )));
                }
                IdemKey::Admin { .. } => {
                    return Err(Refusal::unauthorized(
                        "A terminal cannot use an operator's transaction numbers.".into(),
                    ));
                }
                _ => {}
            }
            if let Some(store) = store {
                bind_store(command, store)?;
            }
            command.origin = Origin::Terminal(terminal.clone());
        }
        Identity::Admin { merchant, name } => {
            if let (Some(merchant), Body::Snapshot(query)) = (merchant, &command.body) {
                if query.every_merchant {
                    return Err(Refusal::unauthorized(format!(
                        "This operator works for merchant {merchant}; it cannot snapshot every merchant."
                    )));
                }
            }
            if let Some(merchant) = merchant {
                if command.merchant != *merchant {
                    return Err(Refusal::unauthorized(format!(
                        "This operator works for merchant {merchant}, not {}.",
                        command.merchant
                    )));
                }
            }
            match &command.key {
                IdemKey::Admin { admin, .. } if admin != name => {
                    return Err(Refusal::unauthorized(format!(
                        "This is operator {name}; it cannot use operator {admin}'s transaction numbers."
                    )));
                }
                IdemKey::Terminal { .. } => {
                    return Err(Refusal::unauthorized(
                        "An operator cannot use a terminal's transaction numbers.".into(),
                    ));
                }
                _ => {}
            }
            assert_ne!(name, ENGINE_ADMIN, "certificates never name the engine");
            command.origin = Origin::Admin(name.clone());
        }
    }
    Ok(())
}

/// A terminal of one store orders for that store only: a missing store is filled in, another
/// store is refused.
fn bind_store(command: &mut Command, store: &str) -> Result<(), Refusal> {
    let named = match &mut command.body {
        Body::Purchase(order) | Body::Quote(order) => &mut order.store,
        _ => return Ok(()),
    };
    match named {
        Some(named) if named != store => Err(Refusal::unauthorized(format!(
            "This terminal is in store {store}; it cannot order for store {named}."
        ))),
        Some(_) => Ok(()),
        None => {
            *named = Some(store.to_string());
            Ok(())
        }
    }
}

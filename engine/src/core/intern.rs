//! Shared names while a checkpoint is read: rule ids, SKUs and promotion ids appear in every
//! order record, and a running ledger holds one `Arc<str>` per name, not one per use. Reading
//! a checkpoint inside `interning` gives the same sharing (and spares an allocation per use).

use std::cell::RefCell;
use std::sync::Arc;

use rustc_hash::FxHashSet;
use serde::{Deserialize, Deserializer};

thread_local! {
    static NAMES: RefCell<Option<FxHashSet<Arc<str>>>> = const { RefCell::new(None) };
}

/// Runs `read` with names shared; outside it, names are read as they are.
pub fn interning<T>(read: impl FnOnce() -> T) -> T {
    NAMES.with(|names| *names.borrow_mut() = Some(FxHashSet::default()));
    let value = read();
    NAMES.with(|names| *names.borrow_mut() = None);
    value
}

fn shared(name: &str) -> Arc<str> {
    NAMES.with(|names| match names.borrow_mut().as_mut() {
        Some(names) => match names.get(name) {
            Some(known) => known.clone(),
            None => {
                let new: Arc<str> = Arc::from(name);
                names.insert(new.clone());
                new
            }
        },
        None => Arc::from(name),
    })
}

/// `deserialize_with` for an `Arc<str>` name.
pub fn name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Arc<str>, D::Error> {
    // Borrowed from the checkpoint's bytes: no allocation unless the name is new.
    let text = <&'de str>::deserialize(deserializer)?;
    Ok(shared(text))
}

/// `deserialize_with` for a list of names.
pub fn names<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Arc<str>>, D::Error> {
    let read = Vec::<&'de str>::deserialize(deserializer)?;
    Ok(read.into_iter().map(shared).collect())
}

/// `deserialize_with` for counts by name (a member's events).
pub fn counts<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<(Arc<str>, u32)>, D::Error> {
    let read = Vec::<(&'de str, u32)>::deserialize(deserializer)?;
    Ok(read
        .into_iter()
        .map(|(name, count)| (shared(name), count))
        .collect())
}

/// `deserialize_with` for a tier change: (before, after).
#[allow(clippy::type_complexity)]
pub fn tiers<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<(Option<Arc<str>>, Option<Arc<str>>)>, D::Error> {
    let read = Option::<(Option<&'de str>, Option<&'de str>)>::deserialize(deserializer)?;
    Ok(read.map(|(before, after)| (before.map(shared), after.map(shared))))
}

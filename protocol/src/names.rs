//! SKUs and categories read from JSON, shared. A shop sells a few thousand products and every
//! order names some of them again: each thread that parses commands keeps one `Arc<str>` per
//! name it has seen and hands out clones, so reading a line allocates nothing, dropping a
//! command frees nothing, and the engine finds a name it has numbered by the `Arc`'s address.

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;

use rustc_hash::FxHashSet;
use serde::de::{Deserializer, Error, Visitor};
use serde::Deserialize;

/// Names kept per thread; past this, new names are allocated for each use as before, so
/// input full of distinct names cannot grow a reader without bound.
const NAMES_KEPT: usize = 1 << 16;
/// Longer names are not kept: the engine rejects them anyway (1 to 128 characters).
const LONGEST_KEPT: usize = 128;

thread_local! {
    static NAMES: RefCell<FxHashSet<Arc<str>>> = RefCell::new(FxHashSet::default());
}

/// The shared `Arc` for `text`, made and kept if it is new and there is room.
pub fn shared(text: &str) -> Arc<str> {
    if text.len() > LONGEST_KEPT {
        return Arc::from(text);
    }
    NAMES.with_borrow_mut(|names| {
        if let Some(known) = names.get(text) {
            return known.clone();
        }
        let name: Arc<str> = Arc::from(text);
        if names.len() < NAMES_KEPT {
            names.insert(name.clone());
        }
        name
    })
}

struct Name;

impl Visitor<'_> for Name {
    type Value = Arc<str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<Arc<str>, E> {
        Ok(shared(text))
    }
}

/// `deserialize_with` for a name: the text is looked up where it lies in the input.
pub fn name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Arc<str>, D::Error> {
    deserializer.deserialize_str(Name)
}

/// `deserialize_with` for an optional name (`null` is `None`).
pub fn optional_name<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Arc<str>>, D::Error> {
    let name = Option::<ReadName>::deserialize(deserializer)?;
    Ok(name.map(|ReadName(name)| name))
}

/// One name, through `name`.
struct ReadName(Arc<str>);

impl<'de> Deserialize<'de> for ReadName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ReadName, D::Error> {
        name(deserializer).map(ReadName)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn the_same_text_is_the_same_allocation_and_long_text_is_not_kept() {
        let first = shared("MUG");
        let again = shared("MUG");
        assert!(Arc::ptr_eq(&first, &again));
        assert!(!Arc::ptr_eq(&first, &shared("HAT")));
        let long = "X".repeat(LONGEST_KEPT + 1);
        assert!(!Arc::ptr_eq(&shared(&long), &shared(&long)));
        assert_eq!(&*shared(&long), long);
    }

    #[test]
    fn escaped_and_plain_text_read_alike() {
        #[derive(serde::Deserialize)]
        struct Row {
            #[serde(deserialize_with = "name")]
            sku: Arc<str>,
            #[serde(default, deserialize_with = "optional_name")]
            category: Option<Arc<str>>,
        }
        let plain: Row = serde_json::from_str(r#"{"sku":"TEA\"1","category":null}"#).unwrap();
        let escaped: Row =
            serde_json::from_str(r#"{"sku":"TEA\u00221","category":"hot"}"#).unwrap();
        assert_eq!(&*plain.sku, "TEA\"1");
        assert!(Arc::ptr_eq(&plain.sku, &escaped.sku));
        assert_eq!(plain.category, None);
        assert_eq!(escaped.category.as_deref(), Some("hot"));
        let missing: Row = serde_json::from_str(r#"{"sku":"TEA"}"#).unwrap();
        assert_eq!(missing.category, None);
        assert!(serde_json::from_str::<Row>(r#"{"sku":7}"#).is_err());
    }
}

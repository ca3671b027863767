//! Names that many commands and results share: SKUs, categories, rule, promotion and tier
//! ids, gifts. A shop sells a few thousand products and every order names some of them again;
//! a program names its rules in every result.
//!
//! A `Name` is a pointer to text kept for the life of the process, so copying one touches
//! nothing but the copy. They were `Arc<str>`s, one per name: every copy into a result or a
//! ledger entry incremented a count in the name's own memory, and the threads that dropped
//! those results decremented it, so the busiest names' memory moved from core to core a few
//! dozen times a purchase (a tenth of the engine thread's time, in a profile). Text is kept
//! once per process, up to `KEPT_NAMES_MAX` names of at most `KEPT_NAME_BYTES_MAX` bytes;
//! past either bound a name is an `Arc<str>` of its own, so input full of distinct names
//! cannot grow the process without bound.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use rkyv::boxed::{ArchivedBox, BoxResolver};
use rkyv::rancor::Fallible;
use rkyv::{Archive, Place, SerializeUnsized};
use rustc_hash::FxHashSet;
use serde::de::{Deserializer, Error, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Names kept for the process at most.
const KEPT_NAMES_MAX: usize = 1 << 18;
/// Longer names are not kept: the engine refuses them anyway (1 to 128 characters).
const KEPT_NAME_BYTES_MAX: usize = 128;
/// Names each thread remembers having looked up, so that it seldom takes the lock.
const THREAD_NAMES_MAX: usize = 1 << 16;

/// A shared name: compares, hashes and orders as its text.
#[derive(Clone)]
pub struct Name(Repr);

#[derive(Clone)]
enum Repr {
    Kept(&'static str),
    Own(Arc<str>),
}

/// Every name kept, for the life of the process.
static KEPT: Mutex<Option<FxHashSet<&'static str>>> = Mutex::new(None);

thread_local! {
    /// The kept names this thread has asked for.
    static SEEN: RefCell<FxHashSet<&'static str>> = RefCell::new(FxHashSet::default());
}

impl Name {
    /// The name with this text: the kept one if there is one or room for one.
    pub fn new(text: &str) -> Name {
        if text.len() > KEPT_NAME_BYTES_MAX {
            return Name(Repr::Own(Arc::from(text)));
        }
        let seen = SEEN.with_borrow(|seen| seen.get(text).copied());
        match seen.or_else(|| kept(text)) {
            Some(kept) => Name(Repr::Kept(kept)),
            None => Name(Repr::Own(Arc::from(text))),
        }
    }

    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Kept(text) => text,
            Repr::Own(text) => text,
        }
    }

    /// Where the text lies: the same for every copy of this name (the engine numbers names
    /// by it without hashing their text).
    pub fn address(&self) -> usize {
        self.as_str().as_ptr() as usize
    }
}

/// The kept text equal to `text`, kept now if it is new and there is room; remembered by
/// this thread either way.
fn kept(text: &str) -> Option<&'static str> {
    let mut lock = KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let names = lock.get_or_insert_with(FxHashSet::default);
    let kept = match names.get(text) {
        Some(&kept) => kept,
        None if names.len() < KEPT_NAMES_MAX => {
            // Leaked on purpose: a kept name lives as long as the process (bounded above).
            let kept: &'static str = Box::leak(Box::from(text));
            names.insert(kept);
            kept
        }
        None => return None,
    };
    drop(lock);
    SEEN.with_borrow_mut(|seen| {
        if seen.len() < THREAD_NAMES_MAX {
            seen.insert(kept);
        }
    });
    Some(kept)
}

impl std::ops::Deref for Name {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        match (&self.0, &other.0) {
            (Repr::Kept(a), Repr::Kept(b)) if std::ptr::eq(*a, *b) => true,
            _ => self.as_str() == other.as_str(),
        }
    }
}

impl Eq for Name {}

impl Hash for Name {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // As `str` hashes, so that maps keyed by names are searched with `&str`.
        self.as_str().hash(state)
    }
}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    fn cmp(&self, other: &Name) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for Name {
    fn from(text: &str) -> Name {
        Name::new(text)
    }
}

impl From<String> for Name {
    fn from(text: String) -> Name {
        Name::new(&text)
    }
}

impl Default for Name {
    fn default() -> Name {
        Name::new("")
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

struct NameVisitor;

impl Visitor<'_> for NameVisitor {
    type Value = Name;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: Error>(self, text: &str) -> Result<Name, E> {
        Ok(Name::new(text))
    }
}

impl<'de> Deserialize<'de> for Name {
    /// The text is looked up where it lies in the input: no copy unless it is new.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Name, D::Error> {
        deserializer.deserialize_str(NameVisitor)
    }
}

/// On the wire a name is a boxed string: a relative pointer and a length, as an `Arc<str>`
/// was (`docs/protocol.md`).
impl Archive for Name {
    type Archived = ArchivedBox<str>;
    type Resolver = BoxResolver;

    fn resolve(&self, resolver: BoxResolver, out: Place<ArchivedBox<str>>) {
        ArchivedBox::resolve_from_ref(self.as_str(), resolver, out);
    }
}

impl<S: Fallible + ?Sized> rkyv::Serialize<S> for Name
where
    str: SerializeUnsized<S>,
{
    fn serialize(&self, serializer: &mut S) -> Result<BoxResolver, S::Error> {
        ArchivedBox::serialize_from_ref(self.as_str(), serializer)
    }
}

impl<D: Fallible + ?Sized> rkyv::Deserialize<Name, D> for ArchivedBox<str> {
    fn deserialize(&self, _: &mut D) -> Result<Name, D::Error> {
        Ok(Name::new(self.get()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_is_the_same_name_and_long_text_is_not_kept() {
        let first = Name::new("MUG");
        let again = Name::new("MUG");
        assert_eq!(first.address(), again.address());
        assert_ne!(first.address(), Name::new("HAT").address());
        let long = "X".repeat(KEPT_NAME_BYTES_MAX + 1);
        assert_ne!(Name::new(&long).address(), Name::new(&long).address());
        assert_eq!(Name::new(&long), Name::new(&long));
        assert_eq!(&*Name::new(&long), long);
        // Another thread finds the same kept text.
        let there = std::thread::spawn(|| Name::new("MUG").address())
            .join()
            .unwrap();
        assert_eq!(there, first.address());
    }

    #[test]
    fn names_compare_and_hash_as_their_text() {
        use std::collections::HashMap;
        let long = "Y".repeat(KEPT_NAME_BYTES_MAX + 7);
        let mut map = HashMap::new();
        map.insert(Name::new("TEA"), 1);
        map.insert(Name::new(&long), 2);
        assert_eq!(map.get("TEA"), Some(&1));
        assert_eq!(map.get(long.as_str()), Some(&2));
        assert!(Name::new("A") < Name::new("B"));
        assert_eq!(
            format!("{:?} {}", Name::new("TEA"), Name::new("TEA")),
            "\"TEA\" TEA"
        );
    }

    #[test]
    fn escaped_and_plain_text_read_alike() {
        #[derive(serde::Deserialize)]
        struct Row {
            sku: Name,
            #[serde(default)]
            category: Option<Name>,
        }
        let plain: Row = serde_json::from_str(r#"{"sku":"TEA\"1","category":null}"#).unwrap();
        let escaped: Row =
            serde_json::from_str(r#"{"sku":"TEA\u00221","category":"hot"}"#).unwrap();
        assert_eq!(&*plain.sku, "TEA\"1");
        assert_eq!(plain.sku.address(), escaped.sku.address());
        assert_eq!(plain.category, None);
        assert_eq!(escaped.category.as_deref(), Some("hot"));
        let missing: Row = serde_json::from_str(r#"{"sku":"TEA"}"#).unwrap();
        assert_eq!(missing.category, None);
        assert!(serde_json::from_str::<Row>(r#"{"sku":7}"#).is_err());
    }

    #[test]
    fn a_name_crosses_the_wire_as_its_text() {
        let names = vec![Name::new("BEANS-1KG"), Name::new(&"Z".repeat(300))];
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&names).unwrap();
        let back = rkyv::from_bytes::<Vec<Name>, rkyv::rancor::Error>(&bytes).unwrap();
        assert_eq!(back, names);
        assert_eq!(back[0].address(), names[0].address());
        // The same bytes as boxed strings: the layout `docs/protocol.md` gives.
        let boxed: Vec<Box<str>> = names.iter().map(|n| Box::from(n.as_str())).collect();
        let theirs = rkyv::to_bytes::<rkyv::rancor::Error>(&boxed).unwrap();
        assert_eq!(bytes.as_slice(), theirs.as_slice());
    }

    #[test]
    fn two_names_may_not_share_their_bytes_on_the_wire() {
        // Names were `Arc<str>`s, laid out alike: each with text of its own reads as names.
        let own: Vec<Arc<str>> = vec![Arc::from("LONGER-THAN-EIGHT"), Arc::from("TEA")];
        let before = rkyv::to_bytes::<rkyv::rancor::Error>(&own).unwrap();
        let read = rkyv::from_bytes::<Vec<Name>, rkyv::rancor::Error>(&before).unwrap();
        assert_eq!(read, [Name::new("LONGER-THAN-EIGHT"), Name::new("TEA")]);
        // `Arc<str>`s archive shared text once, with both pointers to it.
        let text: Arc<str> = Arc::from("LONGER-THAN-EIGHT");
        let shared = rkyv::to_bytes::<rkyv::rancor::Error>(&vec![text.clone(), text]).unwrap();
        assert!(rkyv::from_bytes::<Vec<Name>, rkyv::rancor::Error>(&shared).is_err());
    }
}

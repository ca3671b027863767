//! A receipt's idempotency key as the state keeps it.
//!
//! Every remembered command keeps its key for as long as the ledger answers its duplicates.
//! As an `IdemKey` behind an `Arc` that was three allocations (the `Arc`, the terminal's name,
//! the transaction number), about 110 bytes a purchase. Here the two strings sit side by side
//! in one `CompactString`, inline up to 24 bytes (a terminal's name and its transaction number
//! fit): 32 bytes and no allocation. A longer key is one `Arc<str>`, which the entries of its
//! command share, and an id is its number. It hashes, compares and serialises as the `IdemKey`
//! it stands for, so maps of them are searched with an `IdemKey`, and checkpoints and the
//! state's digest are byte for byte what they were.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use compact_str::CompactString;
use hashbrown::Equivalent;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tally_protocol::IdemKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptKey(Repr);

/// One form for each key, chosen by its length alone, so that equal keys are equal forms.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Repr {
    /// A terminal's or an operator's key whose name and transaction number fit in 24 bytes:
    /// the name then the number, inline.
    Short(Named<CompactString>),
    /// A longer one, behind an `Arc`: every entry of a command carries its key, and a copy
    /// of a long `CompactString` is an allocation each (7 a demo purchase).
    Long(Named<Arc<str>>),
    /// An id, as its number.
    Id { lo: u64, hi: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Named<T> {
    /// The name then the transaction number.
    text: T,
    /// Where the name ends in `text`.
    split: u32,
    admin: bool,
}

/// A named key's parts: whether an operator's, the name, the transaction number.
type Parts<'a> = (bool, &'a str, &'a str);

impl<T: std::ops::Deref<Target = str>> Named<T> {
    fn parts(&self) -> Parts<'_> {
        let (name, txn) = self.text.split_at(self.split as usize);
        (self.admin, name, txn)
    }
}

impl ReceiptKey {
    fn named(admin: bool, name: &str, txn: &str) -> ReceiptKey {
        let split = u32::try_from(name.len()).expect("a name is shorter than 4 GiB");
        let length = name.len() + txn.len();
        if length <= std::mem::size_of::<CompactString>() {
            let mut text = CompactString::with_capacity(length);
            text.push_str(name);
            text.push_str(txn);
            return ReceiptKey(Repr::Short(Named { text, split, admin }));
        }
        let text = Arc::from([name, txn].concat());
        ReceiptKey(Repr::Long(Named { text, split, admin }))
    }

    /// A named key's parts, or the id.
    fn parts(&self) -> Result<Parts<'_>, u128> {
        match &self.0 {
            Repr::Short(named) => Ok(named.parts()),
            Repr::Long(named) => Ok(named.parts()),
            Repr::Id { lo, hi } => Err(u128::from(*hi) << 64 | u128::from(*lo)),
        }
    }

    /// The key as text (`terminal/txn`, `admin:name/txn` or 32 hex digits), into `out`.
    pub fn write_text(&self, out: &mut String) {
        self.write_into(out)
            .expect("writing to a string does not fail");
    }

    fn write_into(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        match self.parts() {
            Ok((admin, name, txn)) => {
                if admin {
                    out.write_str("admin:")?;
                }
                out.write_str(name)?;
                out.write_char('/')?;
                out.write_str(txn)
            }
            Err(id) => write!(out, "{id:032x}"),
        }
    }

    /// The key as text, as `IdemKey::text` gives it.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(48);
        self.write_text(&mut out);
        out
    }

    pub fn to_idem_key(&self) -> IdemKey {
        match self.parts() {
            Ok((false, terminal, txn)) => IdemKey::Terminal {
                terminal: terminal.to_string(),
                txn: txn.to_string(),
            },
            Ok((true, admin, txn)) => IdemKey::Admin {
                admin: admin.to_string(),
                txn: txn.to_string(),
            },
            Err(id) => IdemKey::Id(id),
        }
    }

    /// The same key as `key`, without building one from it.
    fn is(&self, key: &IdemKey) -> bool {
        match (self.parts(), key) {
            (Ok((false, name, number)), IdemKey::Terminal { terminal, txn })
            | (
                Ok((true, name, number)),
                IdemKey::Admin {
                    admin: terminal,
                    txn,
                },
            ) => name == terminal && number == txn,
            (Err(id), IdemKey::Id(other)) => id == *other,
            _ => false,
        }
    }

    /// The borrowed form serde writes exactly as it writes an `IdemKey`.
    fn as_ref(&self) -> KeyRef<'_> {
        match self.parts() {
            Ok((false, terminal, txn)) => KeyRef::Terminal { terminal, txn },
            Ok((true, admin, txn)) => KeyRef::Admin { admin, txn },
            Err(id) => KeyRef::Id(id),
        }
    }
}

impl From<&IdemKey> for ReceiptKey {
    fn from(key: &IdemKey) -> ReceiptKey {
        match key {
            IdemKey::Terminal { terminal, txn } => ReceiptKey::named(false, terminal, txn),
            IdemKey::Admin { admin, txn } => ReceiptKey::named(true, admin, txn),
            IdemKey::Id(id) => ReceiptKey(Repr::Id {
                lo: *id as u64,
                hi: (*id >> 64) as u64,
            }),
        }
    }
}

/// The calls `#[derive(Hash)]` makes for the `IdemKey`: the variant's index as an `isize`,
/// then each field. Maps hash an `IdemKey` to find one of these.
impl Hash for ReceiptKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self.parts() {
            Ok((admin, name, txn)) => {
                isize::from(admin).hash(state);
                name.hash(state);
                txn.hash(state);
            }
            Err(id) => {
                2_isize.hash(state);
                id.hash(state);
            }
        }
    }
}

impl Equivalent<ReceiptKey> for IdemKey {
    fn equivalent(&self, key: &ReceiptKey) -> bool {
        key.is(self)
    }
}

impl std::fmt::Display for ReceiptKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.write_into(f)
    }
}

/// `IdemKey`'s shape with borrowed strings: serde writes `&str` as it writes `String`.
#[derive(Serialize)]
#[serde(rename = "IdemKey")]
enum KeyRef<'a> {
    Terminal { terminal: &'a str, txn: &'a str },
    Admin { admin: &'a str, txn: &'a str },
    Id(u128),
}

impl Serialize for ReceiptKey {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_ref().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ReceiptKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ReceiptKey, D::Error> {
        IdemKey::deserialize(deserializer).map(|key| ReceiptKey::from(&key))
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;

    use super::*;
    use proptest::prelude::*;

    /// Records every call a `Hash` makes, so two impls can be compared call for call.
    #[derive(Default, PartialEq, Debug)]
    struct Calls(Vec<(&'static str, Vec<u8>)>);

    impl Hasher for Calls {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.push(("write", bytes.to_vec()));
        }
        fn write_u8(&mut self, value: u8) {
            self.0.push(("u8", vec![value]));
        }
        fn write_isize(&mut self, value: isize) {
            self.0.push(("isize", value.to_le_bytes().to_vec()));
        }
        fn write_u128(&mut self, value: u128) {
            self.0.push(("u128", value.to_le_bytes().to_vec()));
        }
        fn write_usize(&mut self, value: usize) {
            self.0.push(("usize", value.to_le_bytes().to_vec()));
        }
    }

    fn calls_of(value: &impl Hash) -> Calls {
        let mut calls = Calls::default();
        value.hash(&mut calls);
        calls
    }

    fn idem_key() -> impl Strategy<Value = IdemKey> {
        let text = "[a-z0-9/:-]{0,30}|\\PC{0,8}";
        prop_oneof![
            (text, text).prop_map(|(terminal, txn)| IdemKey::Terminal { terminal, txn }),
            (text, text).prop_map(|(admin, txn)| IdemKey::Admin { admin, txn }),
            any::<u128>().prop_map(IdemKey::Id),
        ]
    }

    proptest! {
        #[test]
        fn stands_for_the_key_it_came_from(key in idem_key(), other in idem_key()) {
            let kept = ReceiptKey::from(&key);
            prop_assert_eq!(kept.to_idem_key(), key.clone());
            prop_assert_eq!(kept.to_string(), key.to_string());
            prop_assert_eq!(kept.text(), key.text());
            prop_assert_eq!(calls_of(&kept), calls_of(&key));
            prop_assert_eq!(
                rustc_hash::FxBuildHasher.hash_one(&kept),
                rustc_hash::FxBuildHasher.hash_one(&key)
            );
            prop_assert!(key.equivalent(&kept));
            prop_assert_eq!(other.equivalent(&kept), other == key);
            let bytes = bincode::serialize(&kept).expect("serialises");
            prop_assert_eq!(&bytes, &bincode::serialize(&key).expect("serialises"));
            let back: ReceiptKey = bincode::deserialize(&bytes).expect("deserialises");
            prop_assert_eq!(back, kept);
        }
    }

    #[test]
    fn a_terminal_and_its_transaction_number_fit_inline_up_to_24_bytes() {
        assert_eq!(std::mem::size_of::<ReceiptKey>(), 32);
        let key = ReceiptKey::from(&IdemKey::Terminal {
            terminal: "pos-0046".into(),
            txn: "20261123-0001234".into(),
        });
        let Repr::Short(named) = &key.0 else {
            panic!("{key:?} is kept inline");
        };
        assert!(!named.text.is_heap_allocated());
    }

    #[test]
    fn a_long_key_is_shared_by_its_copies_and_an_id_kept_as_its_number() {
        let key = ReceiptKey::from(&IdemKey::Terminal {
            terminal: "store-0046-lane-12".into(),
            txn: "20261123-0001234".into(),
        });
        let copy = key.clone();
        let (Repr::Long(first), Repr::Long(second)) = (&key.0, &copy.0) else {
            panic!("{key:?} is longer than 24 bytes");
        };
        assert!(Arc::ptr_eq(&first.text, &second.text));
        let id = ReceiptKey::from(&IdemKey::Id(u128::MAX - 5));
        assert!(matches!(id.0, Repr::Id { .. }));
        assert_eq!(id.to_idem_key(), IdemKey::Id(u128::MAX - 5));
    }
}

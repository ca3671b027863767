//! A receipt's idempotency key as the state keeps it.
//!
//! Every remembered command keeps its key for as long as the ledger answers its duplicates.
//! As an `IdemKey` behind an `Arc` that was three allocations (the `Arc`, the terminal's name,
//! the transaction number), about 110 bytes a purchase. Here the two strings sit side by side
//! in one `CompactString`, inline up to 24 bytes (a terminal's name and its transaction number
//! fit): 32 bytes and no allocation. It hashes, compares and serialises as the `IdemKey` it
//! stands for, so maps of them are searched with an `IdemKey`, and checkpoints and the state's
//! digest are byte for byte what they were.

use std::hash::{Hash, Hasher};

use compact_str::CompactString;
use hashbrown::Equivalent;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tally_protocol::IdemKey;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptKey {
    /// The name then the transaction number; for an id, its 32 hex digits.
    text: CompactString,
    /// Where the name ends in `text`.
    split: u32,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Terminal,
    Admin,
    Id,
}

impl ReceiptKey {
    fn named(kind: Kind, name: &str, txn: &str) -> ReceiptKey {
        let mut text = CompactString::with_capacity(name.len() + txn.len());
        text.push_str(name);
        text.push_str(txn);
        let split = u32::try_from(name.len()).expect("a name is shorter than 4 GiB");
        ReceiptKey { text, split, kind }
    }

    fn name(&self) -> &str {
        &self.text[..self.split as usize]
    }

    fn txn(&self) -> &str {
        &self.text[self.split as usize..]
    }

    /// The key as text (`terminal/txn`, `admin:name/txn` or 32 hex digits), into `out`.
    pub fn write_text(&self, out: &mut String) {
        self.write_into(out)
            .expect("writing to a string does not fail");
    }

    fn write_into(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        match self.kind {
            Kind::Terminal => {}
            Kind::Admin => out.write_str("admin:")?,
            Kind::Id => return out.write_str(&self.text),
        }
        out.write_str(self.name())?;
        out.write_char('/')?;
        out.write_str(self.txn())
    }

    /// The key as text, as `IdemKey::text` gives it.
    pub fn text(&self) -> String {
        let mut out = String::with_capacity(self.text.len() + 8);
        self.write_text(&mut out);
        out
    }

    fn id(&self) -> u128 {
        u128::from_str_radix(&self.text, 16).expect("an id key holds 32 hex digits")
    }

    pub fn to_idem_key(&self) -> IdemKey {
        match self.kind {
            Kind::Terminal => IdemKey::Terminal {
                terminal: self.name().to_string(),
                txn: self.txn().to_string(),
            },
            Kind::Admin => IdemKey::Admin {
                admin: self.name().to_string(),
                txn: self.txn().to_string(),
            },
            Kind::Id => IdemKey::Id(self.id()),
        }
    }

    /// The same key as `key`, without building one from it.
    fn is(&self, key: &IdemKey) -> bool {
        match (self.kind, key) {
            (Kind::Terminal, IdemKey::Terminal { terminal, txn })
            | (
                Kind::Admin,
                IdemKey::Admin {
                    admin: terminal,
                    txn,
                },
            ) => self.name() == terminal && self.txn() == txn,
            (Kind::Id, IdemKey::Id(id)) => self.id() == *id,
            _ => false,
        }
    }

    /// The borrowed form serde writes exactly as it writes an `IdemKey`.
    fn as_ref(&self) -> KeyRef<'_> {
        match self.kind {
            Kind::Terminal => KeyRef::Terminal {
                terminal: self.name(),
                txn: self.txn(),
            },
            Kind::Admin => KeyRef::Admin {
                admin: self.name(),
                txn: self.txn(),
            },
            Kind::Id => KeyRef::Id(self.id()),
        }
    }
}

impl From<&IdemKey> for ReceiptKey {
    fn from(key: &IdemKey) -> ReceiptKey {
        match key {
            IdemKey::Terminal { terminal, txn } => ReceiptKey::named(Kind::Terminal, terminal, txn),
            IdemKey::Admin { admin, txn } => ReceiptKey::named(Kind::Admin, admin, txn),
            IdemKey::Id(id) => ReceiptKey {
                text: compact_str::format_compact!("{id:032x}"),
                split: 0,
                kind: Kind::Id,
            },
        }
    }
}

/// The calls `#[derive(Hash)]` makes for the `IdemKey`: the variant's index as an `isize`,
/// then each field. Maps hash an `IdemKey` to find one of these.
impl Hash for ReceiptKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self.kind {
            Kind::Terminal | Kind::Admin => {
                let index: isize = if self.kind == Kind::Terminal { 0 } else { 1 };
                index.hash(state);
                self.name().hash(state);
                self.txn().hash(state);
            }
            Kind::Id => {
                2_isize.hash(state);
                self.id().hash(state);
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
        assert!(!key.text.is_heap_allocated());
    }
}

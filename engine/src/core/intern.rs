//! Names in the state's encodings. A name read from a checkpoint is the process's shared
//! `Name` (`tally_protocol::Name`), as the running ledger's are.
//!
//! Order records go further: packed, they name rules, SKUs and promotions by number in their
//! merchant's `NameTable` (half of a record's bytes were names). `numbering` lends the table
//! to the serde hooks below while one record is packed or unpacked.

use std::cell::RefCell;

use rustc_hash::FxHashMap;
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serializer};
use tally_protocol::Name;

/// A merchant's names by number, in the order they were first used: append only, so a
/// number once written into a record always means the same name.
#[derive(Debug, Default, Clone)]
pub struct NameTable {
    names: Vec<Name>,
    numbers: FxHashMap<Name, u32>,
    /// The same numbers by the address of the names' text (`Name::address`): a rule's name
    /// is the program's own in every order, found without hashing its text. Only addresses
    /// of names held here, which no other text can take while they are.
    by_address: FxHashMap<usize, u32>,
}

impl NameTable {
    pub fn from_names(names: Vec<Name>) -> Result<NameTable, String> {
        let mut table = NameTable::default();
        for name in names {
            if table.numbers.contains_key(&name) {
                return Err(format!("the name {name:?} is listed twice"));
            }
            table.number(&name);
        }
        Ok(table)
    }

    pub fn names(&self) -> &[Name] {
        &self.names
    }

    /// The name's number, given it one if it is new.
    pub(crate) fn number(&mut self, name: &Name) -> u32 {
        let address = name.address();
        if let Some(&number) = self.by_address.get(&address) {
            return number;
        }
        if let Some(&number) = self.numbers.get(name) {
            return number;
        }
        let number = u32::try_from(self.names.len()).expect("fewer than 2^32 names");
        self.names.push(name.clone());
        self.numbers.insert(name.clone(), number);
        self.by_address.insert(address, number);
        number
    }

    fn name(&self, number: u32) -> Option<&Name> {
        self.names.get(number as usize)
    }
}

thread_local! {
    static NUMBERING: RefCell<Option<NameTable>> = const { RefCell::new(None) };
}

/// Runs `work` (packing or unpacking one order record) with `table` lent to the hooks below.
pub fn numbering<T>(table: &mut NameTable, work: impl FnOnce() -> T) -> T {
    let lent = std::mem::take(table);
    NUMBERING.with_borrow_mut(|slot| *slot = Some(lent));
    let value = work();
    *table = NUMBERING
        .with_borrow_mut(Option::take)
        .expect("the table lent above");
    value
}

/// `serialize_with` for a name an order record keeps: its number while `numbering`, else the
/// name itself (an order record of format 3 or older, or one in a test).
pub fn number<S: Serializer>(name: &Name, serializer: S) -> Result<S::Ok, S::Error> {
    let number = NUMBERING.with_borrow_mut(|slot| slot.as_mut().map(|table| table.number(name)));
    match number {
        Some(number) => serializer.serialize_u32(number),
        None => serializer.serialize_str(name),
    }
}

/// `serialize_with` for a list of names, as `number` writes each.
pub fn numbers<S: Serializer>(names: &[Name], serializer: S) -> Result<S::Ok, S::Error> {
    struct One<'a>(&'a Name);
    impl serde::Serialize for One<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            number(self.0, serializer)
        }
    }
    let mut sequence = serializer.serialize_seq(Some(names.len()))?;
    for name in names {
        sequence.serialize_element(&One(name))?;
    }
    sequence.end()
}

/// The name `number` stands for in `table`; a number it never gave is a decoding error.
fn named<E: serde::de::Error>(table: &NameTable, number: u32) -> Result<Name, E> {
    table
        .name(number)
        .cloned()
        .ok_or_else(|| E::custom(format!("no name numbered {number}")))
}

/// `deserialize_with` for what `number` wrote.
pub fn numbered<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Name, D::Error> {
    if !NUMBERING.with_borrow(Option::is_some) {
        return Name::deserialize(deserializer);
    }
    let number = u32::deserialize(deserializer)?;
    NUMBERING.with_borrow(|slot| named(slot.as_ref().expect("checked above"), number))
}

/// `deserialize_with` for what `numbers` wrote.
pub fn numbered_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Name>, D::Error> {
    if !NUMBERING.with_borrow(Option::is_some) {
        return Vec::<Name>::deserialize(deserializer);
    }
    let numbers = Vec::<u32>::deserialize(deserializer)?;
    NUMBERING.with_borrow(|slot| {
        let table = slot.as_ref().expect("checked above");
        numbers
            .into_iter()
            .map(|number| named(table, number))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use tally_protocol::Name;

    use super::NameTable;

    #[test]
    fn a_name_keeps_its_number_whichever_copy_brings_it() {
        let mut table = NameTable::default();
        let base = Name::new("base");
        let mug = Name::new("MUG");
        assert_eq!(table.number(&base), 0);
        assert_eq!(table.number(&mug), 1);
        assert_eq!(table.number(&base), 0);
        // Names too long to be kept for the process are text of their own, freed after use:
        // the next such name often takes the same address, and is another name.
        let long = |text: &str| Name::new(&format!("{text}{}", "-".repeat(200)));
        let own = long("MUG");
        assert_eq!(table.number(&own), 2);
        for i in 0..64 {
            let parsed = long("MUG");
            assert_eq!(table.number(&parsed), 2);
            drop(parsed);
            let next = long(&format!("HAT{i:02}"));
            assert_eq!(table.number(&next), 3 + i);
        }
        drop(mug);
        assert_eq!(table.number(&Name::new("MUG")), 1);
        assert_eq!(table.name(1).map(|n| &**n), Some("MUG"));
        // Read back from its list, a table numbers the same.
        let mut read = NameTable::from_names(table.names().to_vec()).unwrap();
        assert_eq!(read.number(&long("HAT07")), 10);
        assert_eq!(read.names(), table.names());
        let twice = vec![Name::new("a"), Name::new("a")];
        assert!(NameTable::from_names(twice).is_err());
    }
}

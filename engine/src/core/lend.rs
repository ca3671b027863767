//! Parts of the ledger lent out for a while: some merchants, applied to on another thread
//! while the rest of the ledger is applied to elsewhere (the engine's shards).
//!
//! Merchants share nothing but the entry numbers, counted over the whole ledger. A lent part
//! numbers its entries provisionally; when it is put back, the engine hands its entries to
//! `adopt_entries` in the order the commands came in, and they get the numbers they would
//! have had if every command had been applied here, one after the other.

use std::collections::BTreeSet;

use super::{Entry, Ledger};

/// Where a lent part's provisional entry numbers start: far above any real one.
const PROVISIONAL_SEQ: u64 = 1 << 62;

impl Ledger {
    /// Takes the named merchants out into a ledger of their own, which writes its entries
    /// into `journal` (an empty buffer, reused). A merchant a command of the part creates
    /// stays in the part until `restore`.
    pub fn lend(&mut self, names: &BTreeSet<&str>, journal: Vec<Entry>) -> Ledger {
        assert!(journal.is_empty(), "a part starts with no entries");
        let merchants = names
            .iter()
            .filter_map(|name| self.merchants.remove_entry(*name))
            .collect();
        Ledger {
            merchants,
            journal,
            next_entry_seq: PROVISIONAL_SEQ,
            results_kept_whole: self.results_kept_whole,
            evicted: Vec::new(),
        }
    }

    /// Puts a lent part's merchants back, and gives its entries (provisionally numbered, in
    /// the order it wrote them) to be adopted.
    pub fn restore(&mut self, part: Ledger) -> Vec<Entry> {
        for (name, merchant) in part.merchants {
            let previous = self.merchants.insert(name, merchant);
            assert!(previous.is_none(), "a merchant was lent to two parts");
        }
        let room = super::EVICTED_HELD_MAX.saturating_sub(self.evicted.len());
        self.evicted.extend(part.evicted.into_iter().take(room));
        part.journal
    }

    /// Room for this many more entries in the journal.
    pub fn reserve_entries(&mut self, more: usize) {
        self.journal.reserve(more);
    }

    /// Numbers entries written by a lent part as the next entries of this ledger, in the
    /// order given, and puts them in the journal; each member's history gets the same numbers.
    pub fn adopt_entries(&mut self, entries: impl IntoIterator<Item = Entry>) {
        for mut entry in entries {
            assert!(
                entry.seq >= PROVISIONAL_SEQ,
                "only a lent part's entries are adopted"
            );
            let seq = self.next_entry_seq;
            self.next_entry_seq += 1;
            let merchant = self
                .merchants
                .get_mut(&*entry.merchant)
                .expect("an adopted entry's merchant is back");
            let history = &mut merchant.members[entry.member as usize - 1].history;
            // A history is ascending: numbers given so far, then the part's provisional ones
            // (above every real number), which are adopted in order, so it stays ascending.
            history.replace(entry.seq, seq);
            entry.seq = seq;
            self.journal.push(entry);
        }
    }
}

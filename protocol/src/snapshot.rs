//! A balance snapshot streamed over the wire: rows of members, all as of one log position.

/// One member as a snapshot shows it, owning its texts (a `RowRef` borrows them from a
/// block). Money is in minor units of the merchant's currency (`minor_units` decimal
/// places), as the engine keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRow {
    pub merchant: String,
    /// Phones as E.164, cards as `card:<number>`, joined by `;`.
    pub aliases: String,
    pub tier: Option<String>,
    pub numbers: RowNumbers,
}

/// The numbers of one row: everything but its texts.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct RowNumbers {
    pub member: u64,
    pub points: i64,
    pub available: i64,
    pub pending: i64,
    pub held: i64,
    pub credit_minor: i64,
    pub credit_held_minor: i64,
    pub minor_units: u32,
    pub window_points_earned: i64,
    pub window_amount_spent_minor: i64,
    pub window_orders: i64,
    /// Points in lots that expire within 30, 60 and 90 days of the merchant's clock.
    pub expiring: [i64; 3],
}

/// One row of a `RowBlock`, its texts borrowed from the block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRef<'a> {
    pub merchant: &'a str,
    pub aliases: &'a str,
    pub tier: Option<&'a str>,
    pub numbers: RowNumbers,
}

impl RowRef<'_> {
    pub fn to_row(&self) -> SnapshotRow {
        SnapshotRow {
            merchant: self.merchant.to_string(),
            aliases: self.aliases.to_string(),
            tier: self.tier.map(str::to_string),
            numbers: self.numbers,
        }
    }
}

impl SnapshotRow {
    pub fn as_ref(&self) -> RowRef<'_> {
        RowRef {
            merchant: &self.merchant,
            aliases: &self.aliases,
            tier: self.tier.as_deref(),
            numbers: self.numbers,
        }
    }
}

/// No tier, in `PackedRow::tier`.
const NO_TIER: u32 = u32::MAX;

/// A row of a block: its numbers, and where its texts are in the block.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct PackedRow {
    /// Indexes into `RowBlock::names` (`NO_TIER`: none).
    merchant: u32,
    tier: u32,
    /// Where the row's aliases end in `RowBlock::aliases` (they start where the last ended).
    aliases_end: u32,
    numbers: RowNumbers,
}

/// Rows as numbers, with their texts in two shared buffers: a chunk of 8,192 members is a
/// handful of allocations, where rows of their own took three each, made on the engine's
/// thread and freed on the reader's.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct RowBlock {
    /// The merchant and tier names the rows name, each once.
    names: Vec<String>,
    /// Every row's aliases, one after the other.
    aliases: String,
    rows: Vec<PackedRow>,
}

impl RowBlock {
    pub fn with_capacity(rows: usize) -> RowBlock {
        RowBlock {
            names: Vec::new(),
            aliases: String::with_capacity(rows * 24),
            rows: Vec::with_capacity(rows),
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Adds a row whose aliases `write_aliases` appends to the buffer it is given.
    pub fn push_with(
        &mut self,
        merchant: &str,
        tier: Option<&str>,
        numbers: RowNumbers,
        write_aliases: impl FnOnce(&mut String),
    ) {
        let merchant = self.name_index(merchant);
        let tier = tier.map_or(NO_TIER, |tier| self.name_index(tier));
        write_aliases(&mut self.aliases);
        let aliases_end =
            u32::try_from(self.aliases.len()).expect("a block's aliases fit in 4 GiB");
        self.rows.push(PackedRow {
            merchant,
            tier,
            aliases_end,
            numbers,
        });
    }

    pub fn push(&mut self, row: RowRef<'_>) {
        self.push_with(row.merchant, row.tier, row.numbers, |aliases| {
            aliases.push_str(row.aliases)
        });
    }

    /// The index of a name, added if new. The last names first: rows come merchant by
    /// merchant, and a program has a few tiers.
    fn name_index(&mut self, name: &str) -> u32 {
        let index = match self.names.iter().rposition(|known| known == name) {
            Some(index) => index,
            None => {
                self.names.push(name.to_string());
                self.names.len() - 1
            }
        };
        index as u32
    }

    pub fn get(&self, index: usize) -> Option<RowRef<'_>> {
        let row = self.rows.get(index)?;
        let start = match index {
            0 => 0,
            _ => self.rows[index - 1].aliases_end as usize,
        };
        let name = |at: u32| self.names.get(at as usize).map_or("", String::as_str);
        Some(RowRef {
            merchant: name(row.merchant),
            aliases: self
                .aliases
                .get(start..row.aliases_end as usize)
                .unwrap_or(""),
            tier: (row.tier != NO_TIER).then(|| name(row.tier)),
            numbers: row.numbers,
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = RowRef<'_>> {
        (0..self.rows.len()).filter_map(|index| self.get(index))
    }

    /// What a block from elsewhere (a frame) must hold for its rows to be read as written:
    /// names that exist, aliases that end in order on character boundaries.
    pub fn check(&self) -> Result<(), String> {
        let mut start = 0;
        for (index, row) in self.rows.iter().enumerate() {
            let names = self.names.len();
            if row.merchant as usize >= names || (row.tier != NO_TIER && row.tier as usize >= names)
            {
                return Err(format!(
                    "row {index} names a merchant or tier the block does not hold"
                ));
            }
            let end = row.aliases_end as usize;
            if end < start || self.aliases.get(start..end).is_none() {
                return Err(format!(
                    "row {index}'s aliases are not within the block's text"
                ));
            }
            start = end;
        }
        Ok(())
    }
}

impl<'a> FromIterator<RowRef<'a>> for RowBlock {
    fn from_iter<I: IntoIterator<Item = RowRef<'a>>>(rows: I) -> RowBlock {
        let mut block = RowBlock::default();
        for row in rows {
            block.push(row);
        }
        block
    }
}

/// A `rows` frame's payload: the next rows of a snapshot. Every frame of one snapshot names
/// the same position; the last one says so and how many rows were sent in all.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SnapshotRows {
    /// The last log batch whose commands the rows include (`None`: an empty log).
    pub log_position: Option<u64>,
    /// The last ledger entry the rows include (0: none): entries `1..=last_entry_seq` add up
    /// to the rows' balances.
    pub last_entry_seq: u64,
    pub rows: RowBlock,
    /// This is the snapshot's last frame.
    pub last: bool,
    /// Rows sent in all, this frame's included.
    pub rows_sent: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(member: u64, merchant: &str, aliases: &str, tier: Option<&str>) -> SnapshotRow {
        RowRef {
            merchant,
            aliases,
            tier,
            numbers: RowNumbers {
                member,
                points: member as i64 * 10,
                ..RowNumbers::default()
            },
        }
        .to_row()
    }

    #[test]
    fn a_block_gives_back_the_rows_it_was_given() {
        let rows = [
            row(1, "demo", "+15550100;card:1", Some("gold")),
            row(2, "demo", "", None),
            row(3, "other", "card:ü-3", Some("gold")),
            row(4, "demo", "+15550104", Some("silver")),
        ];
        let block: RowBlock = rows.iter().map(SnapshotRow::as_ref).collect();
        assert_eq!(block.len(), 4);
        assert_eq!(block.names, ["demo", "gold", "other", "silver"]);
        let back: Vec<SnapshotRow> = block.iter().map(|r| r.to_row()).collect();
        assert_eq!(back, rows);
        assert_eq!(block.check(), Ok(()));
    }

    #[test]
    fn a_block_that_does_not_hold_together_is_refused() {
        let block: RowBlock = [row(1, "demo", "card:ü", None)]
            .iter()
            .map(SnapshotRow::as_ref)
            .collect();
        let mut bad_name = block.clone();
        bad_name.rows[0].merchant = 5;
        assert!(bad_name.check().is_err());
        let mut inside_a_character = block.clone();
        inside_a_character.rows[0].aliases_end -= 1;
        assert!(inside_a_character.check().is_err());
        assert_eq!(inside_a_character.get(0).map(|r| r.aliases), Some(""));
        let mut past_the_end = block;
        past_the_end.rows[0].aliases_end = 99;
        assert!(past_the_end.check().is_err());
    }
}

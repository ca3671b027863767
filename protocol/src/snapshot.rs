//! A balance snapshot streamed over the wire: rows of members, all as of one log position.

/// One member as a snapshot shows it. Money is in minor units of the merchant's currency
/// (`minor_units` decimal places), as the engine keeps it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SnapshotRow {
    pub merchant: String,
    pub member: u64,
    /// Phones as E.164, cards as `card:<number>`, joined by `;`.
    pub aliases: String,
    pub points: i64,
    pub available: i64,
    pub pending: i64,
    pub held: i64,
    pub credit_minor: i64,
    pub credit_held_minor: i64,
    pub minor_units: u32,
    pub tier: Option<String>,
    pub window_points_earned: i64,
    pub window_amount_spent_minor: i64,
    pub window_orders: i64,
    /// Points in lots that expire within 30, 60 and 90 days of the merchant's clock.
    pub expiring: [i64; 3],
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
    pub rows: Vec<SnapshotRow>,
    /// This is the snapshot's last frame.
    pub last: bool,
    /// Rows sent in all, this frame's included.
    pub rows_sent: u64,
}

//! Balance snapshots for analysts: every member as of one log position, as CSV or Parquet.
//!
//! The rows come from one state (`Ledger::snapshot`), so no member is half-updated and no
//! command is counted for one member and missing for another; every row carries the log
//! position (the last batch applied) the snapshot is consistent with.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use parquet::basic::{Compression, Encoding, Type as PhysicalType};
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::{ColumnPath, SchemaDescriptor};

use crate::money::from_minor;
use tally_protocol::{RowBlock, RowRef};

/// Rows per Parquet row group: what is held in memory while writing.
const ROWS_PER_GROUP: usize = 65_536;
/// Money columns in Parquet are decimals with this many places (enough for any currency).
const PARQUET_MONEY_SCALE: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    /// From a file name: `.parquet` is Parquet, anything else CSV.
    pub fn of_path(path: &Path) -> Format {
        match path.extension().and_then(|e| e.to_str()) {
            Some("parquet") => Format::Parquet,
            _ => Format::Csv,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("writing the snapshot: {0}")]
    Io(#[from] std::io::Error),
    #[error("writing the snapshot as Parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
}

pub const CSV_HEADER: &str = "log_position,merchant,member,aliases,points,available,pending,held,credit,credit_held,tier,window_points_earned,window_amount_spent,window_orders,expiring_30d,expiring_60d,expiring_90d";

/// Writes the blocks' rows; returns how many. `position` is the last log batch they include.
pub fn write(
    blocks: impl Iterator<Item = RowBlock>,
    position: Option<u64>,
    format: Format,
    path: &Path,
) -> Result<u64, SnapshotError> {
    let file = std::fs::File::create(path)?;
    match format {
        Format::Csv => write_csv(blocks, position, std::io::BufWriter::new(file)),
        Format::Parquet => write_parquet(blocks, position, file),
    }
}

fn write_csv(
    blocks: impl Iterator<Item = RowBlock>,
    position: Option<u64>,
    mut out: impl Write,
) -> Result<u64, SnapshotError> {
    let position = position.map_or(String::new(), |p| p.to_string());
    writeln!(out, "{CSV_HEADER}")?;
    let mut count = 0;
    for block in blocks {
        for row in block.iter() {
            write_csv_row(&mut out, &position, &row)?;
            count += 1;
        }
    }
    out.flush()?;
    Ok(count)
}

fn write_csv_row(out: &mut impl Write, position: &str, row: &RowRef<'_>) -> std::io::Result<()> {
    let n = &row.numbers;
    let money = |minor| from_minor(minor, n.minor_units);
    writeln!(
        out,
        "{position},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
        row.merchant,
        n.member,
        row.aliases,
        n.points,
        n.available,
        n.pending,
        n.held,
        money(n.credit_minor),
        money(n.credit_held_minor),
        row.tier.unwrap_or(""),
        n.window_points_earned,
        money(n.window_amount_spent_minor),
        n.window_orders,
        n.expiring[0],
        n.expiring[1],
        n.expiring[2],
    )
}

const PARQUET_SCHEMA: &str = "
message snapshot {
    OPTIONAL INT64 log_position;
    REQUIRED BYTE_ARRAY merchant (UTF8);
    REQUIRED INT64 member;
    REQUIRED BYTE_ARRAY aliases (UTF8);
    REQUIRED INT64 points;
    REQUIRED INT64 available;
    REQUIRED INT64 pending;
    REQUIRED INT64 held;
    REQUIRED INT64 credit (DECIMAL(18,4));
    REQUIRED INT64 credit_held (DECIMAL(18,4));
    OPTIONAL BYTE_ARRAY tier (UTF8);
    REQUIRED INT64 window_points_earned;
    REQUIRED INT64 window_amount_spent (DECIMAL(18,4));
    REQUIRED INT64 window_orders;
    REQUIRED INT64 expiring_30d;
    REQUIRED INT64 expiring_60d;
    REQUIRED INT64 expiring_90d;
}";

/// Column-wise buffers of one row group.
struct Columns {
    integers: [Vec<i64>; 13],
    merchant: Repeated,
    aliases: Unique,
    tier: Repeated,
    tier_defined: Vec<i16>,
    rows: usize,
}

impl Columns {
    /// Buffers with room for a whole group: growing them row by row copied each one over
    /// and over.
    fn new() -> Columns {
        let integers = || Vec::with_capacity(ROWS_PER_GROUP);
        Columns {
            integers: std::array::from_fn(|_| integers()),
            merchant: Repeated::with_capacity(ROWS_PER_GROUP),
            aliases: Unique {
                bytes: Vec::with_capacity(ROWS_PER_GROUP * 24),
                ends: Vec::with_capacity(ROWS_PER_GROUP),
            },
            tier: Repeated::with_capacity(ROWS_PER_GROUP),
            tier_defined: Vec::with_capacity(ROWS_PER_GROUP),
            rows: 0,
        }
    }

    fn push(&mut self, row: &RowRef<'_>) {
        let n = &row.numbers;
        let scale = 10i64.pow(PARQUET_MONEY_SCALE - n.minor_units.min(PARQUET_MONEY_SCALE));
        let values = [
            n.member as i64,
            n.points,
            n.available,
            n.pending,
            n.held,
            n.credit_minor * scale,
            n.credit_held_minor * scale,
            n.window_points_earned,
            n.window_amount_spent_minor * scale,
            n.window_orders,
            n.expiring[0],
            n.expiring[1],
            n.expiring[2],
        ];
        for (column, value) in self.integers.iter_mut().zip(values) {
            column.push(value);
        }
        self.merchant.push(row.merchant);
        self.aliases.push(row.aliases);
        match row.tier {
            Some(tier) => {
                self.tier.push(tier);
                self.tier_defined.push(1);
            }
            None => self.tier_defined.push(0),
        }
        self.rows += 1;
    }
}

/// A string column of few distinct values (merchants, tiers): each value shares the bytes of
/// the last equal one, so a row costs no allocation.
struct Repeated {
    values: Vec<ByteArray>,
    recent: Vec<ByteArray>,
}

impl Repeated {
    /// Distinct values remembered: more than a program's tiers.
    const RECENT_MAX: usize = 16;

    fn with_capacity(rows: usize) -> Repeated {
        Repeated {
            values: Vec::with_capacity(rows),
            recent: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) {
        let known = self.recent.iter().find(|v| v.data() == text.as_bytes());
        let value = match known {
            Some(value) => value.clone(),
            None => {
                let value = ByteArray::from(text);
                if self.recent.len() == Self::RECENT_MAX {
                    self.recent.remove(0);
                }
                self.recent.push(value.clone());
                value
            }
        };
        self.values.push(value);
    }
}

/// A string column of unique values (aliases): one buffer for the group, sliced per row.
struct Unique {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Unique {
    fn push(&mut self, text: &str) {
        self.bytes.extend_from_slice(text.as_bytes());
        self.ends.push(self.bytes.len());
    }

    fn values(self) -> Vec<ByteArray> {
        let bytes = bytes::Bytes::from(self.bytes);
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let value = ByteArray::from(bytes.slice(start..end));
                start = end;
                value
            })
            .collect()
    }
}

fn write_parquet(
    blocks: impl Iterator<Item = RowBlock>,
    position: Option<u64>,
    file: std::fs::File,
) -> Result<u64, SnapshotError> {
    let schema = Arc::new(parse_message_type(PARQUET_SCHEMA)?);
    let properties = parquet_properties(&SchemaDescriptor::new(schema.clone()));
    let mut writer = SerializedFileWriter::new(file, schema, Arc::new(properties))?;
    let mut count = 0u64;
    let mut columns = Columns::new();
    for block in blocks {
        for row in block.iter() {
            columns.push(&row);
            if columns.rows == ROWS_PER_GROUP {
                let full = std::mem::replace(&mut columns, Columns::new());
                count += write_group(&mut writer, full, position)?;
            }
        }
    }
    if columns.rows > 0 || count == 0 {
        count += write_group(&mut writer, columns, position)?;
    }
    writer.close()?;
    Ok(count)
}

/// How the columns are encoded, chosen by what a 10,000,000-member snapshot costs
/// (`docs/performance.md`): integers delta-packed (ids ascend, most counters are small or
/// zero; a dictionary would hash every value), merchant and tier names through a dictionary
/// (few values), aliases plain (unique). Strings have no min/max statistics: comparing every
/// alias cost more than a reader gains from them.
fn parquet_properties(schema: &SchemaDescriptor) -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_column_dictionary_enabled(ColumnPath::from("aliases"), false);
    for column in schema.columns() {
        let path = column.path().clone();
        builder = match column.physical_type() {
            PhysicalType::INT64 => builder
                .set_column_dictionary_enabled(path.clone(), false)
                .set_column_encoding(path, Encoding::DELTA_BINARY_PACKED),
            _ => builder.set_column_statistics_enabled(path, EnabledStatistics::None),
        };
    }
    builder.build()
}

/// Writes one row group, its columns in schema order.
fn write_group(
    writer: &mut SerializedFileWriter<std::fs::File>,
    columns: Columns,
    position: Option<u64>,
) -> Result<u64, SnapshotError> {
    let rows = columns.rows;
    let position_values: Vec<i64> = position.map_or(Vec::new(), |p| vec![p as i64; rows]);
    let position_defined = vec![i16::from(position.is_some()); rows];
    let mut group = writer.next_row_group()?;
    let mut integers = columns.integers.into_iter();
    let aliases = columns.aliases.values();
    let mut column_index = 0;
    while let Some(mut column) = group.next_column()? {
        match column_index {
            0 => {
                let typed = column.typed::<Int64Type>();
                typed.write_batch(&position_values, Some(&position_defined), None)?;
            }
            1 => {
                let typed = column.typed::<ByteArrayType>();
                typed.write_batch(&columns.merchant.values, None, None)?;
            }
            3 => {
                let typed = column.typed::<ByteArrayType>();
                typed.write_batch(&aliases, None, None)?;
            }
            10 => {
                let typed = column.typed::<ByteArrayType>();
                typed.write_batch(&columns.tier.values, Some(&columns.tier_defined), None)?;
            }
            _ => {
                let values = integers.next().expect("one buffer per integer column");
                column
                    .typed::<Int64Type>()
                    .write_batch(&values, None, None)?;
            }
        }
        column.close()?;
        column_index += 1;
    }
    group.close()?;
    Ok(rows as u64)
}

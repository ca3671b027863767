//! Balance snapshots for analysts: every member as of one log position, as CSV or Parquet.
//!
//! The rows come from one state (`Ledger::snapshot`), so no member is half-updated and no
//! command is counted for one member and missing for another; every row carries the log
//! position (the last batch applied) the snapshot is consistent with.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use parquet::schema::types::ColumnPath;

use crate::money::from_minor;
use tally_protocol::SnapshotRow;

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

/// Writes the rows; returns how many. `position` is the last log batch they include.
pub fn write(
    rows: impl Iterator<Item = SnapshotRow>,
    position: Option<u64>,
    format: Format,
    path: &Path,
) -> Result<u64, SnapshotError> {
    let file = std::fs::File::create(path)?;
    match format {
        Format::Csv => write_csv(rows, position, std::io::BufWriter::new(file)),
        Format::Parquet => write_parquet(rows, position, file),
    }
}

fn write_csv(
    rows: impl Iterator<Item = SnapshotRow>,
    position: Option<u64>,
    mut out: impl Write,
) -> Result<u64, SnapshotError> {
    let position = position.map_or(String::new(), |p| p.to_string());
    writeln!(out, "{CSV_HEADER}")?;
    let mut count = 0;
    for row in rows {
        let money = |minor| from_minor(minor, row.minor_units);
        writeln!(
            out,
            "{position},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            row.merchant,
            row.member,
            row.aliases,
            row.points,
            row.available,
            row.pending,
            row.held,
            money(row.credit_minor),
            money(row.credit_held_minor),
            row.tier.as_deref().unwrap_or(""),
            row.window_points_earned,
            money(row.window_amount_spent_minor),
            row.window_orders,
            row.expiring[0],
            row.expiring[1],
            row.expiring[2],
        )?;
        count += 1;
    }
    out.flush()?;
    Ok(count)
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
#[derive(Default)]
struct Columns {
    integers: [Vec<i64>; 13],
    merchant: Vec<ByteArray>,
    aliases: Vec<ByteArray>,
    tier: Vec<ByteArray>,
    tier_defined: Vec<i16>,
    rows: usize,
}

impl Columns {
    fn push(&mut self, row: SnapshotRow) {
        let scale = 10i64.pow(PARQUET_MONEY_SCALE - row.minor_units.min(PARQUET_MONEY_SCALE));
        let values = [
            row.member as i64,
            row.points,
            row.available,
            row.pending,
            row.held,
            row.credit_minor * scale,
            row.credit_held_minor * scale,
            row.window_points_earned,
            row.window_amount_spent_minor * scale,
            row.window_orders,
            row.expiring[0],
            row.expiring[1],
            row.expiring[2],
        ];
        for (column, value) in self.integers.iter_mut().zip(values) {
            column.push(value);
        }
        self.merchant
            .push(ByteArray::from(row.merchant.into_bytes()));
        self.aliases.push(ByteArray::from(row.aliases.into_bytes()));
        match row.tier {
            Some(tier) => {
                self.tier.push(ByteArray::from(tier.into_bytes()));
                self.tier_defined.push(1);
            }
            None => self.tier_defined.push(0),
        }
        self.rows += 1;
    }
}

fn write_parquet(
    rows: impl Iterator<Item = SnapshotRow>,
    position: Option<u64>,
    file: std::fs::File,
) -> Result<u64, SnapshotError> {
    let schema = Arc::new(parse_message_type(PARQUET_SCHEMA)?);
    // Ids and aliases are unique per member: a dictionary would only grow and be dropped.
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_column_dictionary_enabled(ColumnPath::from("member"), false)
        .set_column_dictionary_enabled(ColumnPath::from("aliases"), false)
        .build();
    let mut writer = SerializedFileWriter::new(file, schema, Arc::new(properties))?;
    let mut count = 0u64;
    let mut columns = Columns::default();
    for row in rows {
        columns.push(row);
        if columns.rows == ROWS_PER_GROUP {
            count += write_group(&mut writer, std::mem::take(&mut columns), position)?;
        }
    }
    if columns.rows > 0 || count == 0 {
        count += write_group(&mut writer, columns, position)?;
    }
    writer.close()?;
    Ok(count)
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
    let mut column_index = 0;
    while let Some(mut column) = group.next_column()? {
        match column_index {
            0 => {
                let typed = column.typed::<Int64Type>();
                typed.write_batch(&position_values, Some(&position_defined), None)?;
            }
            1 => {
                let typed = column.typed::<ByteArrayType>();
                typed.write_batch(&columns.merchant, None, None)?;
            }
            3 => {
                let typed = column.typed::<ByteArrayType>();
                typed.write_batch(&columns.aliases, None, None)?;
            }
            10 => {
                let typed = column.typed::<ByteArrayType>();
                typed.write_batch(&columns.tier, Some(&columns.tier_defined), None)?;
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

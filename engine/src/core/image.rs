//! The ledger as plain data: what a checkpoint stores and loads. Everything that can be
//! rebuilt from the members (alias index, timer queue, birthday index) is rebuilt rather
//! than stored, so an image holds each fact once.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tally_protocol::Alias;
use tally_protocol::Name;

use rust_decimal::Decimal;
use tally_protocol::TierChange;
use tally_protocol::{Applied, Balances, CommandKind, CommandResult, MemberView, TickSummary};

use super::encode::Encoder;
use super::holds::HoldRecord;
use super::intern::NameTable;
use super::packed::Packed;
use super::parted::PartedMap;
use super::placed::PlacedMap;
use super::purchase::{OrderRecord, PackedOrder};
use super::receipt_key::ReceiptKey;
use super::results::{Results, Stored, StoredRef};
use super::{promotions, Chunked, Ledger, Member, Merchant, Receipt, Record};
use crate::program::{parse_and_compile, ProgramErrors};
use crate::Timestamp;

#[derive(Debug, Serialize, Deserialize)]
pub struct LedgerImage {
    next_entry_seq: u64,
    merchants: Vec<MerchantImage>,
    /// Each merchant's `NameTable`, in the merchants' order (format 4 on).
    names: Vec<Vec<Name>>,
    /// Read from format 3 or older: order records have their names written out.
    #[serde(skip)]
    names_written_out: bool,
}

/// The head of formats 1 to 3, before the name tables.
#[derive(Deserialize)]
struct LedgerImageV3 {
    next_entry_seq: u64,
    merchants: Vec<MerchantImage>,
}

#[derive(Debug, Serialize, Deserialize)]
struct MerchantImage {
    name: String,
    /// The source of every program version, oldest first.
    programs: Vec<String>,
    /// Members and receipts travel in parts of their own (see `encode`), decoded in parallel.
    #[serde(skip)]
    members: Chunked<Member>,
    #[serde(skip)]
    receipts: Vec<(ReceiptKey, ReceiptImage)>,
    /// Keys of the receipts still kept whole, oldest first.
    recent_keys: Vec<ReceiptKey>,
    clock: Timestamp,
    next_day_start: Option<Timestamp>,
    next_month_start: Option<Timestamp>,
    next_card: u64,
    promotions: promotions::State,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("merchant {merchant}: program version {version} no longer compiles: {errors}")]
    Program {
        merchant: String,
        version: usize,
        errors: ProgramErrors,
    },
    #[error("merchant {merchant}: {what}")]
    Inconsistent { merchant: String, what: String },
}

/// The same layout as `LedgerImage`, borrowed from a live ledger: taking a checkpoint
/// serialises the state without copying it first.
#[derive(Debug, Serialize)]
pub struct LedgerImageRef<'a> {
    next_entry_seq: u64,
    merchants: Vec<MerchantImageRef<'a>>,
    names: Vec<&'a [Name]>,
}

#[derive(Debug, Serialize)]
struct MerchantImageRef<'a> {
    name: &'a str,
    programs: Vec<&'a str>,
    #[serde(skip)]
    members: &'a Chunked<Member>,
    #[serde(skip)]
    receipts: &'a PlacedMap<ReceiptKey, Receipt>,
    #[serde(skip)]
    results: &'a Results,
    recent_keys: RecentKeys<'a>,
    clock: Timestamp,
    next_day_start: Option<Timestamp>,
    next_month_start: Option<Timestamp>,
    next_card: u64,
    promotions: &'a promotions::State,
}

/// Members per part of an encoded image, and receipts per part: parts decode in parallel.
/// (Tiny in unit tests, so that their small ledgers are written in many parts.)
const MEMBERS_PER_PART: usize = if cfg!(test) { 7 } else { 32_768 };
const RECEIPTS_PER_PART: usize = if cfg!(test) { 13 } else { 65_536 };
const PART_MEMBERS: u8 = 0;
const PART_RECEIPTS: u8 = 1;

/// The state's encoding: bincode with variable-length integers (most lengths and amounts
/// are small: a third of the size of fixed-width ones).
pub fn state_bincode() -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_varint_encoding()
        .allow_trailing_bytes()
}

/// The same encoding for reading: no length read from the bytes may claim more than the
/// bytes hold, so a damaged length is an error, never a huge allocation.
pub fn bounded_bincode(bytes: usize) -> impl bincode::Options {
    use bincode::Options;
    state_bincode().with_limit(bytes as u64)
}

/// One part of an image to encode: a merchant's members or receipts, by slice.
enum PartJob<'p, 'a> {
    Members(&'p [Member]),
    Receipts(ReceiptsPart<'p, 'a>),
}

/// Receipts as an image keeps them: each with its result, wherever the merchant keeps it.
struct ReceiptsPart<'p, 'a> {
    receipts: &'p [(&'a ReceiptKey, &'a Receipt)],
    results: &'a Results,
}

impl<'a> ReceiptsPart<'_, 'a> {
    /// The receipts of this part whose results are kept whole, with their slots.
    fn window_keys(&self) -> WindowKeys<'a> {
        let in_window = |&(key, receipt): &(&'a ReceiptKey, &'a Receipt)| {
            window_entry(self.results, key, receipt)
        };
        self.receipts.iter().filter_map(in_window).collect()
    }

    /// Asks for what the receipts a few places on will read. Receipts come in the map's
    /// order, their results' slots in the order commands came: each is a cold read, and each
    /// is reached through the one before (the receipt; its slot and order record; the
    /// summary's bytes), so each is asked for once the one before has had time to arrive.
    fn ask_ahead(&self, at: usize) {
        const STEP: usize = 8;
        if let Some((_, receipt)) = self.receipts.get(at + 3 * STEP) {
            super::prefetch::prefetch(*receipt, 1);
        }
        if let Some((_, receipt)) = self.receipts.get(at + 2 * STEP) {
            self.results.ask_for_slot(receipt.slot);
        }
        if let Some((_, receipt)) = self.receipts.get(at + STEP) {
            self.results.ask_for_summary(receipt.slot);
            if let Record::Order(order) = &receipt.record {
                order.ask_for_bytes();
            }
        }
    }
}

impl Serialize for ReceiptsPart<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let receipts = self.receipts.iter().enumerate();
        serializer.collect_seq(receipts.map(|(at, &(key, receipt))| {
            self.ask_ahead(at);
            let image = ReceiptImageRef {
                fingerprint: receipt.fingerprint,
                result: self.results.get(receipt.slot),
                record: &receipt.record,
            };
            (key, image)
        }))
    }
}

/// `receipts` as an image part holds them.
#[cfg(test)]
pub(crate) fn receipts_image<'a>(
    receipts: &'a [(&'a ReceiptKey, &'a Receipt)],
    results: &'a Results,
) -> impl Serialize + 'a {
    ReceiptsPart { receipts, results }
}

/// A receipt in an image: the fields of `ReceiptImage`, borrowed.
#[derive(Serialize)]
struct ReceiptImageRef<'a> {
    fingerprint: u128,
    result: StoredRef<'a>,
    record: &'a Record,
}

/// A receipt as an image holds it: with its result, not a slot.
#[derive(Debug, Deserialize)]
pub(crate) struct ReceiptImage {
    fingerprint: u128,
    result: Stored,
    record: Record,
}

/// The keys of the receipts whose results are kept whole, oldest first. The window keeps
/// no keys (copying one for it was 3% of a purchase), so they are found from the receipts:
/// listed by the parts' encoding, which reads every receipt anyway, or else by a pass of
/// their own.
struct RecentKeys<'a> {
    receipts: &'a PlacedMap<ReceiptKey, Receipt>,
    results: &'a Results,
    listed: std::cell::OnceCell<Vec<&'a ReceiptKey>>,
}

impl<'a> RecentKeys<'a> {
    /// The keys of `(slot, key)` pairs, every receipt in the window once, in any order.
    fn list(&self, found: WindowKeys<'a>) {
        let keys = in_slot_order(found);
        assert_eq!(
            keys.len(),
            self.results.window_len(),
            "every whole result has a receipt"
        );
        // Listed already by an earlier encoding of the same image: the same keys.
        let _ = self.listed.set(keys);
    }

    fn keys(&self) -> &[&'a ReceiptKey] {
        self.listed.get_or_init(|| {
            let in_window = |(key, receipt)| window_entry(self.results, key, receipt);
            in_slot_order(self.receipts.iter().filter_map(in_window).collect())
        })
    }
}

/// The receipt's slot and key, if its result is kept whole.
fn window_entry<'a>(
    results: &Results,
    key: &'a ReceiptKey,
    receipt: &Receipt,
) -> Option<(u64, &'a ReceiptKey)> {
    results
        .in_window(receipt.slot)
        .then_some((receipt.slot, key))
}

/// The keys, oldest result first.
fn in_slot_order(mut found: WindowKeys<'_>) -> Vec<&ReceiptKey> {
    found.sort_unstable_by_key(|&(slot, _)| slot);
    found.into_iter().map(|(_, key)| key).collect()
}

impl Serialize for RecentKeys<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.keys())
    }
}

impl std::fmt::Debug for RecentKeys<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecentKeys({} whole)", self.results.window_len())
    }
}

impl LedgerImageRef<'_> {
    /// The image in segments that, concatenated, are its encoding: the head (everything but
    /// members and receipts, preceded by its length) with the number of parts, then each part
    /// as `merchant: u32, kind: u8`, its length (u64) and its bytes. Integers little-endian.
    /// Parts are encoded on `threads` threads: the engine waits while its state is read, so
    /// that wait is shared out. Segment `i` is written into `buffers[i]` where there is one
    /// (the previous checkpoint's, whose memory is already touched).
    pub fn encode_segments(&self, threads: usize, buffers: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
        let receipts: Vec<Vec<(&ReceiptKey, &Receipt)>> = self
            .merchants
            .iter()
            .map(|m| m.receipts.iter().collect())
            .collect();
        let mut jobs = Vec::new();
        for (index, merchant) in self.merchants.iter().enumerate() {
            let index = index as u32;
            for chunk in merchant.members.slices(MEMBERS_PER_PART) {
                jobs.push((index, PartJob::Members(chunk)));
            }
            for chunk in receipts[index as usize].chunks(RECEIPTS_PER_PART) {
                let part = ReceiptsPart {
                    receipts: chunk,
                    results: merchant.results,
                };
                jobs.push((index, PartJob::Receipts(part)));
            }
        }
        let mut buffers = buffers.into_iter().map(|mut buffer| {
            buffer.clear();
            buffer
        });
        let mut head = buffers.next().unwrap_or_default();
        let buffers: Vec<_> = buffers
            .chain(std::iter::repeat_with(Vec::new))
            .take(jobs.len())
            .map(std::sync::Mutex::new)
            .collect();
        // The parts first: they list the keys of the results kept whole, which the head holds.
        let mut window_keys = vec![Vec::new(); self.merchants.len()];
        let mut segments = vec![Vec::new()];
        for ((index, _), (segment, keys)) in
            jobs.iter()
                .zip(encode_parts(&jobs, &buffers, threads.max(1)))
        {
            window_keys[*index as usize].extend(keys);
            segments.push(segment);
        }
        for (merchant, keys) in self.merchants.iter().zip(window_keys) {
            merchant.recent_keys.list(keys);
        }
        encode_sized(&mut head, self);
        head.extend_from_slice(&(jobs.len() as u64).to_le_bytes());
        segments[0] = head;
        segments
    }
}

/// Encodes the parts on `threads` threads, in order, part `i` into `buffers[i]`.
/// The keys of receipts whose results are kept whole, with their slots, in any order.
type WindowKeys<'a> = Vec<(u64, &'a ReceiptKey)>;

/// With each part, the keys (and slots) of its receipts whose results are kept whole.
fn encode_parts<'a>(
    jobs: &[(u32, PartJob<'_, 'a>)],
    buffers: &[std::sync::Mutex<Vec<u8>>],
    threads: usize,
) -> Vec<(Vec<u8>, WindowKeys<'a>)> {
    on_threads(jobs.len(), threads, |mine| {
        let encode = |i: usize| {
            let mut out = std::mem::take(&mut *buffers[i].lock().expect("not poisoned"));
            encode_part(&mut out, jobs[i].0, &jobs[i].1);
            let window_keys = match &jobs[i].1 {
                PartJob::Receipts(part) => part.window_keys(),
                PartJob::Members(_) => Vec::new(),
            };
            (out, window_keys)
        };
        mine.map(|i| (i, encode(i))).collect()
    })
}

/// Runs `share` on `threads` threads, each given the indexes `i < count` with
/// `i % threads` its own, and returns what they made in the order of `i`.
fn on_threads<R: Send>(
    count: usize,
    threads: usize,
    share: impl Fn(&mut dyn Iterator<Item = usize>) -> Vec<(usize, R)> + Sync,
) -> Vec<R> {
    let run = |thread: usize| share(&mut (thread..count).step_by(threads));
    let mut made: Vec<(usize, R)> = std::thread::scope(|scope| {
        let others: Vec<_> = (1..threads)
            .map(|thread| scope.spawn(move || run(thread)))
            .collect();
        let mut made = run(0);
        for other in others {
            made.extend(other.join().expect("a part's thread does not panic"));
        }
        made
    });
    made.sort_unstable_by_key(|(index, _)| *index);
    made.into_iter().map(|(_, item)| item).collect()
}

fn encode_part(out: &mut Vec<u8>, merchant: u32, job: &PartJob) {
    out.extend_from_slice(&merchant.to_le_bytes());
    match job {
        PartJob::Members(members) => {
            out.push(PART_MEMBERS);
            encode_sized(out, *members);
        }
        PartJob::Receipts(receipts) => {
            out.push(PART_RECEIPTS);
            encode_sized(out, receipts);
        }
    }
}

/// Appends the value's length (u64) and the value, in the state's encoding.
fn encode_sized<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let at = out.len();
    out.extend_from_slice(&0u64.to_le_bytes());
    super::encode::encode_into(out, value);
    let length = (out.len() - at - 8) as u64;
    out[at..at + 8].copy_from_slice(&length.to_le_bytes());
}

/// A part's place in the encoded image.
struct PartAt {
    merchant: usize,
    kind: u8,
    version: u16,
    start: usize,
    end: usize,
}

enum Decoded {
    Members(Vec<Member>),
    Receipts(Vec<(ReceiptKey, ReceiptImage)>),
}

impl LedgerImage {
    /// Reads an image written by `LedgerImageRef::encode_segments`, its parts on `threads`
    /// threads;
    /// `version` is the checkpoint format's (1: receipts before they were kept packed; 2:
    /// summaries with amounts in their fixed 16-byte form).
    pub fn decode(bytes: &[u8], threads: usize, version: u16) -> Result<LedgerImage, String> {
        use bincode::Options;
        let mut reader = Reader { bytes, at: 0 };
        let head = reader.take_sized()?;
        let head_error = |e: bincode::Error| format!("the head does not decode: {e}");
        let mut image: LedgerImage = if version <= 3 {
            let old: LedgerImageV3 = bounded_bincode(head.len())
                .deserialize(head)
                .map_err(head_error)?;
            LedgerImage {
                next_entry_seq: old.next_entry_seq,
                merchants: old.merchants,
                names: Vec::new(),
                names_written_out: true,
            }
        } else {
            bounded_bincode(head.len())
                .deserialize(head)
                .map_err(head_error)?
        };
        let count = reader.u64()?;
        let mut parts = Vec::new();
        for _ in 0..count {
            let merchant = reader.u32()? as usize;
            let kind = reader.u8()?;
            let length = reader.u64()? as usize;
            let start = reader.at;
            reader.skip(length)?;
            if merchant >= image.merchants.len() || kind > PART_RECEIPTS {
                return Err(format!("part at byte {start} names no merchant or kind"));
            }
            parts.push(PartAt {
                merchant,
                kind,
                version,
                start,
                end: start + length,
            });
        }
        if reader.at != bytes.len() {
            return Err(format!("bytes after the last part, at {}", reader.at));
        }
        let decoded = decode_parts(bytes, &parts, threads.max(1))?;
        for (part, decoded) in parts.iter().zip(decoded) {
            let merchant = &mut image.merchants[part.merchant];
            match decoded {
                Decoded::Members(members) => merchant.members.extend(members),
                Decoded::Receipts(receipts) => merchant.receipts.extend(receipts),
            }
        }
        Ok(image)
    }
}

/// Decodes the parts on `threads` threads, in order.
fn decode_parts(bytes: &[u8], parts: &[PartAt], threads: usize) -> Result<Vec<Decoded>, String> {
    let decoded = on_threads(parts.len(), threads, |mine| {
        let decode = |i: usize| decode_part(&bytes[parts[i].start..parts[i].end], &parts[i]);
        mine.map(|i| (i, decode(i))).collect()
    });
    decoded.into_iter().collect()
}

fn decode_part(bytes: &[u8], part: &PartAt) -> Result<Decoded, String> {
    use bincode::Options;
    let error = |e: bincode::Error| format!("part at byte {} does not decode: {e}", part.start);
    let decoder = bounded_bincode(bytes.len());
    Ok(match part.kind {
        PART_MEMBERS => Decoded::Members(decoder.deserialize(bytes).map_err(error)?),
        _ if part.version == 2 => {
            let receipts: Vec<(ReceiptKey, ReceiptImage)> =
                decoder.deserialize(bytes).map_err(error)?;
            let upgraded: Result<_, _> = receipts.into_iter().map(upgrade_v2).collect();
            Decoded::Receipts(upgraded.map_err(error)?)
        }
        _ if part.version == 1 => {
            let receipts: Vec<(ReceiptKey, ReceiptV1)> =
                decoder.deserialize(bytes).map_err(error)?;
            let upgrade = |(key, receipt): (ReceiptKey, ReceiptV1)| {
                receipt
                    .upgrade::<bincode::Error>()
                    .map(|receipt| (key, receipt))
            };
            let upgraded: Result<_, _> = receipts.into_iter().map(upgrade).collect();
            Decoded::Receipts(upgraded.map_err(error)?)
        }
        _ => Decoded::Receipts(decoder.deserialize(bytes).map_err(error)?),
    })
}

/// A receipt of format 2, whose summary's amounts were in their fixed form.
fn upgrade_v2(
    (key, mut receipt): (ReceiptKey, ReceiptImage),
) -> bincode::Result<(ReceiptKey, ReceiptImage)> {
    if let Stored::Summary(packed) = &receipt.result {
        let summary = Summary::from(packed.decode_as::<SummaryV2>()?);
        receipt.result = Stored::Summary(Packed::pack(&summary));
    }
    Ok((key, receipt))
}

/// Little-endian fields of the part index, with their places checked.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, length: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(length)
            .filter(|end| *end <= self.bytes.len());
        let end = end.ok_or_else(|| format!("cut short at byte {}", self.at))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }
    fn skip(&mut self, length: usize) -> Result<(), String> {
        self.take(length).map(|_| ())
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn take_sized(&mut self) -> Result<&'a [u8], String> {
        let length = self.u64()? as usize;
        self.take(length)
    }
}

impl Ledger {
    /// The whole state as plain data, borrowed. The journal must be drained first: entries
    /// belong to the log, not to the state.
    pub fn image(&self) -> LedgerImageRef<'_> {
        assert!(
            self.journal.is_empty(),
            "entries not yet logged would be lost from an image"
        );
        LedgerImageRef {
            next_entry_seq: self.next_entry_seq,
            merchants: self.merchants.values().map(merchant_image).collect(),
            names: self.merchants.values().map(|m| m.names.names()).collect(),
        }
    }

    /// Rebuilds a ledger from an image; `digest()` of the result equals the digest of the
    /// ledger the image was taken from.
    pub fn from_image(image: LedgerImage) -> Result<Ledger, ImageError> {
        let mut ledger = Ledger::new();
        ledger.next_entry_seq = image.next_entry_seq;
        let mut names = image.names.into_iter();
        for merchant in image.merchants {
            let table = match names.next() {
                Some(list) => NameTable::from_names(list),
                None if image.names_written_out => Ok(NameTable::default()),
                None => Err("no name table".to_string()),
            };
            let table = table.map_err(|what| ImageError::Inconsistent {
                merchant: merchant.name.clone(),
                what,
            })?;
            let merchant = restore_merchant(merchant, table, image.names_written_out)?;
            ledger.merchants.insert(merchant.name.to_string(), merchant);
        }
        Ok(ledger)
    }
}

fn merchant_image(merchant: &Merchant) -> MerchantImageRef<'_> {
    MerchantImageRef {
        name: &merchant.name,
        programs: merchant.programs.iter().map(|p| &*p.source).collect(),
        members: &merchant.members,
        receipts: &merchant.receipts,
        results: &merchant.results,
        recent_keys: RecentKeys {
            receipts: &merchant.receipts,
            results: &merchant.results,
            listed: std::cell::OnceCell::new(),
        },
        clock: merchant.clock,
        next_day_start: merchant.next_day_start,
        next_month_start: merchant.next_month_start,
        next_card: merchant.next_card,
        promotions: &merchant.promotions,
    }
}

/// The merchant; `renumber`: its order records have their names written out (formats 1 to
/// 3) and are numbered into `names` here.
fn restore_merchant(
    image: MerchantImage,
    mut names: NameTable,
    renumber: bool,
) -> Result<Merchant, ImageError> {
    let inconsistent = |what: String| ImageError::Inconsistent {
        merchant: image.name.clone(),
        what,
    };
    let mut programs = Vec::with_capacity(image.programs.len());
    for (version, source) in image.programs.iter().enumerate() {
        let program = parse_and_compile(source).map_err(|errors| ImageError::Program {
            merchant: image.name.clone(),
            version,
            errors,
        })?;
        programs.push(Arc::new(program));
    }
    if programs.is_empty() {
        return Err(inconsistent("no program".into()));
    }
    // The receipts' map and the members' indexes are independent: built on two cores.
    let (receipts, indexes) = std::thread::scope(|scope| {
        let receipts = scope.spawn(|| receipts_map(image.receipts, image.recent_keys));
        let indexes = member_indexes(&image.members);
        let receipts = receipts
            .join()
            .expect("building the receipts' map does not panic");
        (receipts, indexes)
    });
    let (mut receipts, results) = receipts.map_err(inconsistent)?;
    if renumber {
        number_order_names(&mut receipts, &mut names).map_err(inconsistent)?;
    }
    let (aliases, timers, birthdays) = indexes.map_err(inconsistent)?;
    Ok(Merchant {
        name: Name::new(&image.name),
        programs,
        members: image.members,
        aliases,
        receipts,
        timers,
        birthdays,
        results,
        clock: image.clock,
        next_day_start: image.next_day_start,
        next_month_start: image.next_month_start,
        next_card: image.next_card,
        promotions: image.promotions,
        names,
    })
}

/// Order records as formats 1 to 3 kept them, names written out, numbered into `names`.
fn number_order_names(receipts: &mut Receipts, names: &mut NameTable) -> Result<(), String> {
    for receipt in receipts.values_mut() {
        if let Record::Order(order) = &mut receipt.record {
            *order = order
                .renumbered(names)
                .map_err(|e| format!("an order record does not decode: {e}"))?;
        }
    }
    Ok(())
}

type Receipts = PlacedMap<ReceiptKey, Receipt>;

/// The receipts by key, and their results in slots: those of the `recent` keys (each of
/// which has a receipt with a whole result) in the window, in that order, after all others.
fn receipts_map(
    image: Vec<(ReceiptKey, ReceiptImage)>,
    recent: Vec<ReceiptKey>,
) -> Result<(Receipts, Results), String> {
    let place: FxHashMap<&ReceiptKey, usize> = recent
        .iter()
        .enumerate()
        .map(|(at, key)| (key, at))
        .collect();
    if place.len() != recent.len() {
        return Err("a recent key is listed twice".into());
    }
    let left_count = image
        .len()
        .checked_sub(recent.len())
        .ok_or("more recent keys than receipts")?;
    let mut left = Chunked::default();
    let mut window: Vec<Option<Arc<CommandResult>>> = vec![None; recent.len()];
    let mut receipts = PlacedMap::default();
    receipts.reserve(image.len());
    for (key, receipt) in image {
        let slot = match (place.get(&key), receipt.result) {
            (Some(&at), Stored::Whole(result)) => {
                window[at] = Some(result);
                left_count + at
            }
            (Some(_), Stored::Summary(_)) => {
                return Err(format!("recent key {key} has only a summary"))
            }
            (None, stored) => {
                left.push(stored);
                left.len() - 1
            }
        };
        let receipt = Receipt {
            fingerprint: receipt.fingerprint,
            slot: slot as u64,
            record: receipt.record,
        };
        receipts.insert(key, receipt);
    }
    if left.len() != left_count {
        return Err("a recent key has no receipt".into());
    }
    let window = window
        .into_iter()
        .map(|result| result.ok_or("a recent key has no receipt"))
        .collect::<Result<VecDeque<_>, _>>()?;
    Ok((receipts, Results::restored(left, window)))
}

type MemberIndexes = (
    PartedMap<Alias, u32>,
    BTreeSet<(Timestamp, u32)>,
    FxHashMap<(u32, u32), Vec<u32>>,
);

/// The indexes a merchant keeps over its members: aliases, timers, birthdays.
fn member_indexes(members: &Chunked<Member>) -> Result<MemberIndexes, String> {
    let mut aliases = PartedMap::default();
    aliases.reserve(members.iter().map(|m| m.aliases.len()).sum());
    let mut timers = Vec::new();
    let mut birthdays: FxHashMap<(u32, u32), Vec<u32>> = FxHashMap::default();
    for (index, member) in members.iter().enumerate() {
        let index = index as u32;
        for alias in &member.aliases {
            if aliases.insert(alias.clone(), index).is_some() {
                return Err(format!("alias {alias:?} belongs to two members"));
            }
        }
        if let Some(due) = member.timer_at {
            timers.push((due, index));
        }
        if let Some(birthday) = member.birthday {
            birthdays.entry(birthday).or_default().push(index);
        }
    }
    // Sorted and built in one pass, not inserted one by one.
    Ok((aliases, BTreeSet::from_iter(timers), birthdays))
}

/// An older remembered result: what `Applied::clone_summary` keeps (balances, totals, tier),
/// in a third of the memory of an `Applied`, and plain data for checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Summary {
    pub command: CommandKind,
    program_version: u32,
    member: Option<(u64, bool)>,
    points_earned: i64,
    points_redeemed: i64,
    credit_redeemed: Amount,
    cashback: Amount,
    points_written_off: i64,
    credit_written_off: Amount,
    /// points, available, pending, held, credit, credit held.
    balances: Option<(i64, i64, i64, i64, Amount, Amount)>,
    tier: Option<TierImage>,
    tick: Option<TickSummary>,
}

/// A summary as checkpoint formats 1 and 2 kept it: amounts in their fixed 16-byte form.
#[derive(Debug, Deserialize)]
struct SummaryV2 {
    command: CommandKind,
    program_version: u32,
    member: Option<(u64, bool)>,
    points_earned: i64,
    points_redeemed: i64,
    credit_redeemed: DecimalImage,
    cashback: DecimalImage,
    points_written_off: i64,
    credit_written_off: DecimalImage,
    balances: Option<(i64, i64, i64, i64, DecimalImage, DecimalImage)>,
    tier: Option<TierImage>,
    tick: Option<TickSummary>,
}

impl From<SummaryV2> for Summary {
    fn from(old: SummaryV2) -> Summary {
        let amount = |image| Amount(Decimal::deserialize(image));
        Summary {
            command: old.command,
            program_version: old.program_version,
            member: old.member,
            points_earned: old.points_earned,
            points_redeemed: old.points_redeemed,
            credit_redeemed: amount(old.credit_redeemed),
            cashback: amount(old.cashback),
            points_written_off: old.points_written_off,
            credit_written_off: amount(old.credit_written_off),
            balances: old.balances.map(
                |(points, available, pending, held, credit, credit_held)| {
                    (
                        points,
                        available,
                        pending,
                        held,
                        amount(credit),
                        amount(credit_held),
                    )
                },
            ),
            tier: old.tier,
            tick: old.tick,
        }
    }
}

/// An amount of money in a summary: its magnitude, then its scale with the sign in the top
/// bit, both variable-length. Two bytes for the usual zero, where the fixed form took sixteen
/// (five amounts a summary, and a summary for every command kept).
#[derive(Debug, Clone, Copy)]
struct Amount(Decimal);

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let sign = if self.0.is_sign_negative() { 0x80 } else { 0 };
        let scale = u8::try_from(self.0.scale()).expect("a decimal's scale is at most 28");
        (self.0.mantissa().unsigned_abs(), scale | sign).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (magnitude, scale_and_sign) = <(u128, u8)>::deserialize(deserializer)?;
        let bad = || serde::de::Error::custom("an amount out of a decimal's range");
        let signed = i128::try_from(magnitude).map_err(|_| bad())?;
        let mut value = Decimal::try_from_i128_with_scale(signed, u32::from(scale_and_sign & 0x7f))
            .map_err(|_| bad())?;
        value.set_sign_negative(scale_and_sign & 0x80 != 0);
        Ok(Amount(value))
    }
}

/// An amount as `Amount` writes it: the magnitude, then the scale with the sign's bit.
fn amount(e: &mut Encoder, value: Decimal) {
    e.varint128(value.mantissa().unsigned_abs());
    let sign = if value.is_sign_negative() { 0x80 } else { 0 };
    e.out.push(value.scale() as u8 | sign);
}

/// Tier before and after.
type TierImage = (Option<Name>, Option<Name>);

/// A decimal in its fixed 16-byte form (the JSON form of decimals is text).
type DecimalImage = [u8; 16];

impl Summary {
    /// The summary of a result, through its fields (`pack_of` writes it directly).
    #[cfg(test)]
    pub fn of(command: CommandKind, applied: &Applied) -> Summary {
        Summary {
            command,
            program_version: applied.program_version,
            member: applied.member.as_ref().map(|m| (m.id, m.enrolled)),
            points_earned: applied.points_earned,
            points_redeemed: applied.points_redeemed,
            credit_redeemed: Amount(applied.credit_redeemed),
            cashback: Amount(applied.cashback),
            points_written_off: applied.points_written_off,
            credit_written_off: Amount(applied.credit_written_off),
            balances: applied.balances.as_ref().map(|b| {
                let (credit, held) = (Amount(b.credit), Amount(b.credit_held));
                (b.points, b.available, b.pending, b.held, credit, held)
            }),
            tier: applied
                .tier
                .as_ref()
                .map(|t| (t.before.clone(), t.after.clone())),
            tick: applied.tick.clone(),
        }
    }

    /// `Packed::pack(&Summary::of(command, applied))`, written field by field from the
    /// result: a result leaves the recent window with every command past the first 65,536,
    /// and building the summary and writing it through `serde` cost about 300 instructions
    /// more.
    pub fn pack_of(command: CommandKind, applied: &Applied) -> Packed<Summary> {
        Packed::written_by(|out| {
            let e = &mut Encoder { out };
            // A unit variant is its index, which for a fieldless enum is its discriminant.
            e.varint(command as u64);
            e.varint(applied.program_version.into());
            e.optional(applied.member.as_ref(), |e, member| {
                e.varint(member.id);
                e.flag(member.enrolled);
            });
            e.signed(applied.points_earned);
            e.signed(applied.points_redeemed);
            amount(e, applied.credit_redeemed);
            amount(e, applied.cashback);
            e.signed(applied.points_written_off);
            amount(e, applied.credit_written_off);
            e.optional(applied.balances.as_ref(), |e, b| {
                for points in [b.points, b.available, b.pending, b.held] {
                    e.signed(points);
                }
                amount(e, b.credit);
                amount(e, b.credit_held);
            });
            e.optional(applied.tier.as_ref(), |e, tier| {
                for name in [&tier.before, &tier.after] {
                    e.optional(name.as_ref(), |e, name| e.text(name));
                }
            });
            e.optional(applied.tick.as_ref(), |e, tick| {
                e.varint(tick.members);
                e.signed(tick.points_expired);
                e.signed(tick.points_released);
                e.varint(tick.holds_lapsed);
                e.varint(tick.birthday_bonuses);
                e.varint(tick.tier_changes);
            });
        })
    }

    /// The summary as a result: equal to `Applied::clone_summary` of the result it came from.
    pub fn applied(&self) -> Applied {
        Applied {
            program_version: self.program_version,
            member: self
                .member
                .map(|(id, enrolled)| MemberView { id, enrolled }),
            points_earned: self.points_earned,
            points_redeemed: self.points_redeemed,
            credit_redeemed: self.credit_redeemed.0,
            cashback: self.cashback.0,
            points_written_off: self.points_written_off,
            credit_written_off: self.credit_written_off.0,
            balances: self.balances.map(
                |(points, available, pending, held, credit, credit_held)| Balances {
                    points,
                    available,
                    pending,
                    held,
                    credit: credit.0,
                    credit_held: credit_held.0,
                },
            ),
            tier: self
                .tier
                .clone()
                .map(|(before, after)| TierChange { before, after }),
            tick: self.tick.clone(),
            ..Applied::default()
        }
    }
}

/// A remembered result in an image. Whole results go as their JSON (the result types are
/// shaped for JSON, with optional fields left out); summaries, the bulk of the receipts, as
/// they are kept: packed.
#[derive(Debug, Deserialize)]
enum StoredImage {
    Whole(String),
    Summary(Packed<Summary>),
}

fn whole<E: serde::de::Error>(json: &str) -> Result<Stored, E> {
    let result: CommandResult = serde_json::from_str(json).map_err(E::custom)?;
    Ok(Stored::Whole(Arc::new(result)))
}

/// A receipt as version 1 of the checkpoint wrote it: summaries and order records field by
/// field, before they were kept packed.
#[derive(Debug, Deserialize)]
struct ReceiptV1 {
    fingerprint: u128,
    result: StoredV1,
    record: RecordV1,
}

#[derive(Debug, Deserialize)]
enum StoredV1 {
    Whole(String),
    Summary(Box<SummaryV2>),
}

#[derive(Debug, Deserialize)]
enum RecordV1 {
    None,
    Order(Box<OrderRecord>),
    Hold(Box<HoldRecord>),
}

impl ReceiptV1 {
    fn upgrade<E: serde::de::Error>(self) -> Result<ReceiptImage, E> {
        Ok(ReceiptImage {
            fingerprint: self.fingerprint,
            result: match self.result {
                StoredV1::Whole(json) => whole(&json)?,
                StoredV1::Summary(summary) => {
                    Stored::Summary(Packed::pack(&Summary::from(*summary)))
                }
            },
            record: match self.record {
                RecordV1::None => Record::None,
                RecordV1::Order(order) => {
                    Record::Order(PackedOrder::with_names_written_out(&order))
                }
                RecordV1::Hold(hold) => Record::Hold(hold),
            },
        })
    }
}

impl<'de> Deserialize<'de> for Stored {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Ok(match StoredImage::deserialize(deserializer)? {
            StoredImage::Whole(json) => whole(&json)?,
            StoredImage::Summary(summary) => Stored::Summary(summary),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{Workload, WorkloadConfig, DEMO_PROGRAM};

    fn key(txn: u128) -> ReceiptKey {
        ReceiptKey::from(&tally_protocol::IdemKey::Id(txn))
    }

    fn receipt(result: Stored) -> ReceiptImage {
        ReceiptImage {
            fingerprint: 7,
            result,
            record: Record::None,
        }
    }

    fn whole() -> Stored {
        Stored::Whole(Arc::new(CommandResult::rejected(
            "m",
            "k".into(),
            CommandKind::Purchase,
            tally_protocol::Reason::Invalid,
            "no".into(),
        )))
    }

    /// Results restored into slots: the recent keys' in the window, in their order, after
    /// every other; an image whose recent keys do not match its receipts is refused.
    #[test]
    fn receipts_restore_into_slots_and_mismatched_recent_keys_are_refused() {
        let summary =
            || Stored::Summary(Summary::pack_of(CommandKind::Purchase, &Applied::default()));
        let image = vec![
            (key(1), receipt(whole())),
            (key(2), receipt(summary())),
            (key(3), receipt(whole())),
        ];
        let (receipts, results) = receipts_map(image, vec![key(3), key(1)]).unwrap();
        let slot = |k: u128| receipts.get(&key(k)).unwrap().slot;
        assert_eq!((slot(2), slot(3), slot(1)), (0, 1, 2));
        assert!(matches!(results.get(0), StoredRef::Summary(_)));
        let recent = RecentKeys {
            receipts: &receipts,
            results: &results,
            listed: std::cell::OnceCell::new(),
        };
        assert_eq!(recent.keys(), [&key(3), &key(1)]);

        let missing = receipts_map(vec![(key(1), receipt(whole()))], vec![key(2)]);
        assert!(missing.is_err());
        let twice = receipts_map(
            vec![(key(1), receipt(whole())), (key(2), receipt(whole()))],
            vec![key(1), key(1)],
        );
        assert!(twice.is_err());
        let summarised = receipts_map(vec![(key(2), receipt(summary()))], vec![key(2)]);
        assert!(summarised.is_err());
    }

    /// Summaries written by hand, byte for byte as `serde` writes them, for every result of
    /// the demo traffic (every kind of command it sends), a tick a year later, and the
    /// amounts and names that traffic leaves out.
    #[test]
    fn summaries_pack_as_serde_would() {
        let mut ledger = Ledger::new();
        let mut results = Vec::new();
        let mut last_at = None;
        for (index, command) in Workload::new(WorkloadConfig::demo(40))
            .take(3000)
            .enumerate()
        {
            if index == 0 {
                ledger.install_program(DEMO_PROGRAM, command.at).unwrap();
            }
            results.push(ledger.apply_shared(&command, command.at));
            last_at = Some(command.at);
        }
        // A year on: lots expire, tiers fall, birthdays pass.
        let merchant = ledger.merchants().next().unwrap().name.clone();
        let later = last_at.unwrap() + chrono::Duration::days(400);
        let tick = crate::replay::tick_command(&merchant, later);
        results.push(ledger.apply_shared(&tick, later));
        let mut kinds = std::collections::BTreeSet::new();
        let mut applied: Vec<(CommandKind, Applied)> = results
            .iter()
            .filter_map(|result| match &result.status {
                tally_protocol::Status::Applied(applied) => {
                    Some((result.command, (**applied).clone()))
                }
                _ => None,
            })
            .collect();
        let mut odd = applied[0].1.clone();
        odd.credit_redeemed = Decimal::MIN;
        odd.cashback = "-0.00".parse().unwrap();
        odd.tier = Some(TierChange {
            before: None,
            after: Some(Name::new(&"t".repeat(300))),
        });
        applied.push((CommandKind::Snapshot, odd));
        for (kind, applied) in &applied {
            kinds.insert(*kind);
            let ours = Summary::pack_of(*kind, applied);
            let theirs = Packed::pack(&Summary::of(*kind, applied));
            assert_eq!(ours.bytes(), theirs.bytes(), "{kind:?}");
        }
        assert!(kinds.len() >= 6, "{kinds:?}");
        assert!(applied.iter().any(|(_, a)| a.tick.is_some()));
        assert!(applied
            .iter()
            .any(|(_, a)| a.tier.is_some() && a.balances.is_some()));
    }

    #[test]
    fn amounts_come_back_exactly_in_a_few_bytes() {
        use bincode::Options;
        let mut values: Vec<Decimal> = ["0", "0.00", "12.34", "-5.50", "1234567.891"]
            .iter()
            .map(|text| text.parse().unwrap())
            .collect();
        let mut negative_zero = Decimal::new(0, 2);
        negative_zero.set_sign_negative(true);
        values.extend([
            negative_zero,
            Decimal::MAX,
            Decimal::MIN,
            Decimal::new(1, 28),
        ]);
        for value in values {
            let mut bytes = Vec::new();
            super::super::encode::encode_into(&mut bytes, &Amount(value));
            let back: Amount = state_bincode().deserialize(&bytes).unwrap();
            // Sign, scale and mantissa: the fixed form, which keeps all three.
            assert_eq!(back.0.serialize(), value.serialize(), "{value}");
            if value.mantissa().unsigned_abs() < 128 {
                assert_eq!(bytes.len(), 2, "{value}");
            }
        }
    }

    #[test]
    fn a_summary_answers_as_the_summary_of_the_whole_result() {
        let mut summarised = 0;
        crate::core::tests::each_demo_result(50, 1500, |ledger, command, result| {
            ledger.clear_outbox();
            if let Some(applied) = result.applied() {
                let summary = Summary::of(result.command, applied);
                assert_eq!(summary.applied(), applied.clone_summary(), "{command:?}");
                summarised += 1;
            }
        });
        assert!(summarised > 1000, "most commands apply: {summarised}");
    }
}

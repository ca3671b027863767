//! Synthetic POS traffic for the demo program: members drawn Zipf-distributed from a
//! population, baskets from a small catalog, returns of earlier purchases, redemptions that
//! sometimes exceed the balance, member events. Deterministic for a seed.
//!
//! Floats appear here only to shape random draws, never in money.
#![allow(clippy::float_arithmetic)]

use rust_decimal::Decimal;
use tally_protocol::{
    AssignPromotion, Body, Command, Event, IdemKey, IssueCodes, Line, MemberRef, Origin, Payment,
    Purchase, Return, TxnRef,
};

use crate::Timestamp;

/// The demo program's text, built in.
pub const DEMO_PROGRAM: &str = include_str!("../../docs/demo-program.toml");

/// The demo program for another merchant.
pub fn demo_program_of(merchant: &str) -> String {
    let text = DEMO_PROGRAM.replacen(
        "merchant = \"demo\"",
        &format!("merchant = \"{merchant}\""),
        1,
    );
    assert!(
        merchant == "demo" || text != DEMO_PROGRAM,
        "the demo program names its merchant"
    );
    text
}

/// The demo traffic of several merchants, interleaved one command each in turn; `config` is
/// each merchant's, but for its name.
pub fn interleaved(
    merchants: &[impl AsRef<str>],
    config: &WorkloadConfig,
) -> impl Iterator<Item = Command> {
    let mut workloads: Vec<Workload> = merchants
        .iter()
        .map(|merchant| {
            Workload::new(WorkloadConfig {
                merchant: merchant.as_ref().to_string(),
                ..config.clone()
            })
        })
        .collect();
    (0..workloads.len())
        .cycle()
        .map(move |turn| workloads[turn].next().expect("a workload never ends"))
}

/// (sku, category, unit price in cents): the articles the load generator's fleet sells too.
const CATALOG: &[(&str, &str, i64)] = tally_loadgen::fleet::DEMO_ARTICLES;

const STORES: &[&str] = &["downtown", "airport", "campus", "harbor"];

#[derive(Debug, Clone)]
pub struct WorkloadConfig {
    pub merchant: String,
    pub members: u64,
    pub seed: u64,
    pub start: Timestamp,
    /// Seconds between consecutive commands (event time).
    pub interval_ms: i64,
    pub zipf_exponent: f64,
    /// Lines per basket: exactly this many if `fixed_lines`, else 1..=this.
    pub max_lines: usize,
    pub fixed_lines: bool,
    /// Percent of commands that are returns, redemptions, events and quotes; the rest are
    /// plain purchases.
    pub return_percent: u32,
    pub redeem_percent: u32,
    pub event_percent: u32,
    pub quote_percent: u32,
    /// Percent of purchases that present a promotion code (the demo program's `SPRING10` or
    /// one of the scratch codes the workload issues first). With any, the workload starts
    /// with two operator commands: `issue_codes` and `assign_promotion` to a tier.
    pub code_percent: u32,
}

impl WorkloadConfig {
    pub fn demo(members: u64) -> WorkloadConfig {
        WorkloadConfig {
            merchant: "demo".into(),
            members,
            seed: 42,
            start: "2026-01-05T12:00:00Z".parse().expect("valid time"),
            interval_ms: 250,
            zipf_exponent: 1.1,
            max_lines: 5,
            fixed_lines: false,
            return_percent: 3,
            redeem_percent: 4,
            event_percent: 3,
            quote_percent: 2,
            code_percent: 4,
        }
    }

    /// Plain 5-line purchases only: the core benchmark.
    pub fn purchases_only(members: u64) -> WorkloadConfig {
        WorkloadConfig {
            fixed_lines: true,
            return_percent: 0,
            redeem_percent: 0,
            event_percent: 0,
            quote_percent: 0,
            code_percent: 0,
            ..WorkloadConfig::demo(members)
        }
    }
}

/// A small, fast, deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound
    }
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf ranks 1..=n by inverse CDF over a table: the first ranks are the busiest members.
#[derive(Debug, Clone)]
pub struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    pub fn new(n: u64, exponent: f64) -> Zipf {
        let mut cdf = Vec::with_capacity(n as usize);
        let mut sum = 0.0;
        for rank in 1..=n {
            sum += 1.0 / (rank as f64).powf(exponent);
            cdf.push(sum);
        }
        for value in &mut cdf {
            *value /= sum;
        }
        Zipf { cdf }
    }

    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        self.cdf.partition_point(|p| *p < u) as u64 + 1
    }
}

/// The card number (1..=members) of the member with Zipf rank `rank`.
pub fn card_of_rank(rank: u64, members: u64) -> u64 {
    // 2654435761 is prime, so multiplying by it permutes 0..members unless members is a
    // multiple of it.
    ((rank - 1) as u128 * 2_654_435_761 % members as u128) as u64 + 1
}

pub struct Workload {
    config: WorkloadConfig,
    rng: Rng,
    zipf: Zipf,
    sequence: u64,
    /// Recent purchases (key, member) that a return can name.
    recent: Vec<(String, String)>,
    /// Operator commands sent before the traffic, and the scratch codes they issue.
    prelude: std::collections::VecDeque<Command>,
    scratch_codes: Vec<String>,
}

/// The demo's scratch cards: promotion, how many, and the seed they are drawn from.
const SCRATCH_PROMOTION: &str = "summer_scratch";
const SCRATCH_CODES: u32 = 2_000;
const SCRATCH_SEED: [u8; 32] = [0x5c; 32];

impl Workload {
    pub fn new(config: WorkloadConfig) -> Workload {
        let zipf = Zipf::new(config.members, config.zipf_exponent);
        let mut workload = Workload {
            rng: Rng::new(config.seed),
            zipf,
            sequence: 0,
            recent: Vec::new(),
            prelude: std::collections::VecDeque::new(),
            scratch_codes: Vec::new(),
            config,
        };
        if workload.config.code_percent > 0 {
            workload.scratch_codes =
                crate::core::scratch_codes(SCRATCH_SEED, SCRATCH_CODES as usize);
            workload.prelude = workload.promotion_set_up().into();
        }
        workload
    }

    /// Scratch codes to present and a regular promotion for silver members.
    fn promotion_set_up(&mut self) -> Vec<Command> {
        let seed: String = SCRATCH_SEED.iter().map(|b| format!("{b:02x}")).collect();
        let issue = Body::IssueCodes(IssueCodes {
            promotion: SCRATCH_PROMOTION.into(),
            count: SCRATCH_CODES,
            seed,
        });
        let assign = Body::AssignPromotion(AssignPromotion {
            promotion: "welcome_back".into(),
            members: Vec::new(),
            tier: Some("silver".into()),
        });
        [("codes-1", issue), ("assign-1", assign)]
            .into_iter()
            .map(|(txn, body)| Command {
                merchant: self.config.merchant.clone(),
                origin: Origin::Admin("ops".into()),
                key: IdemKey::Admin {
                    admin: "ops".into(),
                    txn: txn.into(),
                },
                at: self.config.start,
                program_version: None,
                body,
            })
            .collect()
    }

    fn codes(&mut self) -> Vec<String> {
        if self.rng.below(100) as u32 >= self.config.code_percent {
            return Vec::new();
        }
        if self.rng.below(2) == 0 {
            return vec!["SPRING10".into()];
        }
        let at = self.rng.below(self.scratch_codes.len() as u64) as usize;
        vec![self.scratch_codes[at].clone()]
    }

    fn card(&mut self) -> String {
        // Scramble ranks (a bijection of 1..=members) so the busiest members are not simply
        // cards 1, 2, 3. Card numbers match `issue_cards` with prefix "C".
        let rank = self.zipf.sample(&mut self.rng);
        format!("C{:010}", card_of_rank(rank, self.config.members))
    }

    fn basket(&mut self) -> (Vec<Line>, Decimal) {
        let count = if self.config.fixed_lines {
            self.config.max_lines
        } else {
            1 + self.rng.below(self.config.max_lines as u64) as usize
        };
        let mut lines = Vec::with_capacity(count);
        let mut total = 0i64;
        for _ in 0..count {
            let (sku, category, price) = CATALOG[self.rng.below(CATALOG.len() as u64) as usize];
            let qty = 1 + self.rng.below(3) as i64;
            total += price * qty;
            lines.push(Line {
                sku: sku.into(),
                category: Some(category.into()),
                qty,
                unit_price: Decimal::new(price, 2),
                discount: Decimal::ZERO,
            });
        }
        (lines, Decimal::new(total, 2))
    }

    fn command(&mut self, body: Body) -> Command {
        self.sequence += 1;
        let terminal = format!("pos-{}", self.sequence % 64);
        let at = self.config.start
            + chrono::TimeDelta::milliseconds(self.config.interval_ms * self.sequence as i64);
        Command {
            merchant: self.config.merchant.clone(),
            origin: Origin::Terminal(terminal.clone()),
            key: IdemKey::Terminal {
                terminal,
                txn: self.sequence.to_string(),
            },
            at,
            program_version: None,
            body,
        }
    }

    fn purchase(&mut self, redeem: bool) -> Command {
        let card = self.card();
        let (lines, total) = self.basket();
        let store = STORES[self.rng.below(STORES.len() as u64) as usize];
        let channel =
            ["in_store", "in_store", "in_store", "web", "delivery"][self.rng.below(5) as usize];
        let pay = if redeem {
            Payment {
                points: 100 + 50 * self.rng.below(8) as i64,
                credit: Decimal::ZERO,
            }
        } else {
            Payment::default()
        };
        let codes = if self.config.code_percent > 0 {
            self.codes()
        } else {
            Vec::new()
        };
        let order = Purchase {
            member: MemberRef::Card(card),
            store: Some(store.into()),
            channel: Some(channel.into()),
            lines,
            total,
            shipping: None,
            pay,
            hold: None,
            rewards: Vec::new(),
            codes,
        };
        let command = self.command(Body::Purchase(order));
        if let IdemKey::Terminal { terminal, txn } = &command.key {
            if self.recent.len() == 1024 {
                let slot = self.rng.below(1024) as usize;
                self.recent[slot] = (terminal.clone(), txn.clone());
            } else {
                self.recent.push((terminal.clone(), txn.clone()));
            }
        }
        command
    }

    fn ret(&mut self) -> Command {
        let (terminal, txn) =
            self.recent[self.rng.below(self.recent.len() as u64) as usize].clone();
        let order = TxnRef {
            terminal: Some(terminal),
            txn: Some(txn),
            ..TxnRef::default()
        };
        self.command(Body::Return(Return { order, lines: None }))
    }

    fn event(&mut self) -> Command {
        let name = ["social_share", "review", "newsletter"][self.rng.below(3) as usize];
        let card = self.card();
        self.command(Body::Event(Event {
            member: MemberRef::Card(card),
            name: name.into(),
        }))
    }
}

impl Iterator for Workload {
    type Item = Command;

    fn next(&mut self) -> Option<Command> {
        if let Some(command) = self.prelude.pop_front() {
            return Some(command);
        }
        let c = &self.config;
        let roll = self.rng.below(100) as u32;
        let returns = c.return_percent;
        let redeems = returns + c.redeem_percent;
        let events = redeems + c.event_percent;
        let quotes = events + c.quote_percent;
        Some(if roll < returns && !self.recent.is_empty() {
            self.ret()
        } else if roll < redeems {
            self.purchase(true)
        } else if roll < events {
            self.event()
        } else if roll < quotes {
            let mut command = self.purchase(false);
            let Body::Purchase(order) = command.body else {
                unreachable!()
            };
            command.body = Body::Quote(order);
            command
        } else {
            self.purchase(false)
        })
    }
}

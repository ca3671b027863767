//! The simulated POS fleet: merchants × stores × terminals, members drawn Zipf-distributed
//! from a population of any size, a SKU catalog, baskets, and the command mix.
//!
//! Each terminal is a [`Sim`]: it makes its own commands (keys of its own, returns of its own
//! acknowledged purchases, releases of its own holds) and learns from their results. Floats
//! appear here only to shape random draws, never in money.
#![allow(clippy::float_arithmetic)]

use std::collections::VecDeque;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_decimal::Decimal;
use tally_protocol::{
    Adjust, AdjustReason, BalanceQuery, Body, Command, CommandKind, CommandResult, Event, Hold,
    IdemKey, Line, MemberRef, Name, Origin, Payment, Purchase, Release, Return, ReturnLine, Status,
    TxnRef,
};

use crate::mix::{Kind, Mix};
use crate::LoadError;

/// The demo program, the one every simulated merchant runs (renamed for each).
pub const DEMO_PROGRAM: &str = include_str!("../../docs/demo-program.toml");

/// Open holds a terminal keeps before it releases one: bounded, so no hold lives long enough
/// to lapse (the demo program's hold timeout is 15 minutes) and change a balance unseen.
const MAX_OPEN_HOLDS: usize = 4;
/// Acknowledged purchases a terminal remembers for returns.
const RETURNABLE_PURCHASES: usize = 256;
/// Acknowledged commands waiting to be sent again on purpose.
const MAX_PENDING_RETRIES: usize = 64;

/// Who and what the fleet is.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Merchant names; the first is usually `demo`, the engine's built-in program.
    pub merchants: Vec<String>,
    pub stores_per_merchant: usize,
    pub terminals_per_store: usize,
    /// Members per merchant; each draw is Zipf-distributed over them.
    pub members: u64,
    pub zipf_exponent: f64,
    /// SKUs in the catalog (at least the demo program's 15 named ones).
    pub skus: usize,
    /// Lines per basket: 1 to this many.
    pub max_lines: usize,
    pub mix: Mix,
    /// Percent of purchases that pay part of the bill with points (some exceed the balance).
    pub redeem_percent: u32,
    /// Percent of purchases that present the demo program's promo code `SPRING10`.
    pub code_percent: u32,
    /// Percent of acknowledged commands sent again later with the same key and content; each
    /// must come back `duplicate`.
    pub retry_percent: u32,
    pub seed: u64,
    /// Makes this run's keys and member cards its own, so runs against one server never
    /// collide and every member starts at zero.
    pub run_tag: String,
}

impl FleetConfig {
    /// One merchant (`demo`), 4 stores of 4 terminals, the default mix.
    pub fn demo(members: u64) -> FleetConfig {
        FleetConfig {
            merchants: vec!["demo".to_string()],
            stores_per_merchant: 4,
            terminals_per_store: 4,
            members,
            zipf_exponent: 1.1,
            skus: 200,
            max_lines: 5,
            mix: Mix::default(),
            redeem_percent: 4,
            code_percent: 2,
            retry_percent: 1,
            seed: 42,
            run_tag: run_tag(),
        }
    }

    pub fn check(&self) -> Result<(), LoadError> {
        let problem = if self.merchants.is_empty() {
            "at least one merchant"
        } else if self.stores_per_merchant == 0 || self.terminals_per_store == 0 {
            "at least one store and one terminal per store"
        } else if self.members == 0 {
            "at least one member"
        } else if self.max_lines == 0 {
            "at least one line per basket"
        } else if self.zipf_exponent <= 0.0 {
            "a positive Zipf exponent"
        } else {
            return Ok(());
        };
        Err(LoadError::Config(format!("the fleet needs {problem}")))
    }

    /// The terminals' names: (merchant, store, terminal).
    pub fn terminals(&self) -> Vec<(String, String, String)> {
        let mut names = Vec::new();
        for merchant in &self.merchants {
            for store in 0..self.stores_per_merchant {
                for terminal in 0..self.terminals_per_store {
                    names.push((
                        merchant.clone(),
                        format!("store-{store:03}"),
                        format!("lg-s{store:03}-t{terminal:03}"),
                    ));
                }
            }
        }
        names
    }

    /// The demo program for another merchant: the same rules under its name.
    pub fn program_for(merchant: &str) -> String {
        DEMO_PROGRAM.replacen(
            "merchant = \"demo\"",
            &format!("merchant = {merchant:?}"),
            1,
        )
    }
}

/// A tag unique to this run (the wall clock in base 36), for keys and cards.
pub fn run_tag() -> String {
    let mut micros = chrono::Utc::now().timestamp_micros().unsigned_abs();
    let mut tag = Vec::new();
    while micros > 0 {
        tag.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(micros % 36) as usize]);
        micros /= 36;
    }
    tag.reverse();
    String::from_utf8(tag).expect("ASCII")
}

/// One article a store sells.
#[derive(Debug, Clone)]
pub struct Sku {
    pub sku: Name,
    pub category: Name,
    pub price_cents: i64,
}

/// The demo program's named articles (its rules and promotions name them): (sku, category,
/// unit price in cents).
pub const DEMO_ARTICLES: &[(&str, &str, i64)] = &[
    ("LATTE", "coffee", 450),
    ("ESPRESSO", "coffee", 300),
    ("CAPPUCCINO", "coffee", 420),
    ("COLD-BREW", "coffee", 500),
    ("CROISSANT", "pastry", 350),
    ("MUFFIN", "pastry", 325),
    ("DAY-OLD-MUFFIN", "pastry", 150),
    ("BAGEL", "food", 400),
    ("SANDWICH", "food", 895),
    ("SALAD", "food", 1095),
    ("BEANS-1KG", "beans", 2400),
    ("BEANS-250G", "beans", 899),
    ("MUG", "merch", 1500),
    ("TUMBLER", "merch", 2500),
    ("TOTE", "merch", 1800),
];

/// The demo program's named articles first, then generated ones in the same categories.
pub fn catalog(skus: usize, seed: u64) -> Vec<Sku> {
    // (category, lowest and highest price in cents)
    const CATEGORIES: &[(&str, i64, i64)] = &[
        ("coffee", 250, 650),
        ("pastry", 150, 500),
        ("food", 350, 1500),
        ("beans", 700, 3000),
        ("merch", 800, 4000),
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut catalog: Vec<Sku> = DEMO_ARTICLES
        .iter()
        .map(|&(sku, category, price_cents)| Sku {
            sku: sku.into(),
            category: category.into(),
            price_cents,
        })
        .collect();
    for index in catalog.len()..skus {
        let (category, low, high) = CATEGORIES[index % CATEGORIES.len()];
        catalog.push(Sku {
            sku: format!("{}-{index:05}", category.to_uppercase()).into(),
            category: category.into(),
            price_cents: rng.gen_range(low..=high) / 5 * 5,
        });
    }
    catalog
}

/// What the load generator needs to know about a command it sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub kind: CommandKind,
    /// The member's card (returns and releases: the member of the order or hold).
    pub card: Option<String>,
    /// Sent again on purpose with a key already acknowledged: must come back `duplicate`.
    pub deliberate_retry: bool,
}

/// A purchase the terminal may return: its key, member and lines.
#[derive(Debug, Clone)]
struct Returnable {
    txn: String,
    card: String,
    lines: Vec<(Name, i64)>,
}

/// One simulated terminal (or a merchant's operator, which sends only adjustments).
#[derive(Debug)]
pub struct Sim {
    pub merchant: String,
    pub store: Option<String>,
    /// The terminal's id, or the operator's name.
    pub name: String,
    pub operator: bool,
    config: Arc<FleetConfig>,
    catalog: Arc<Vec<Sku>>,
    zipf: rand_distr::Zipf<f64>,
    rng: ChaCha8Rng,
    sequence: u64,
    returnable: VecDeque<Returnable>,
    open_holds: VecDeque<(String, String)>,
    retries: VecDeque<(Command, Sent)>,
}

impl Sim {
    pub fn new(
        config: Arc<FleetConfig>,
        catalog: Arc<Vec<Sku>>,
        (merchant, store, name): (String, Option<String>, String),
        operator: bool,
        index: u64,
    ) -> Sim {
        let zipf = rand_distr::Zipf::new(config.members, config.zipf_exponent)
            .expect("members and exponent checked");
        Sim {
            merchant,
            store,
            name,
            operator,
            rng: ChaCha8Rng::seed_from_u64(config.seed ^ index.wrapping_mul(0x9E37_79B9)),
            config,
            catalog,
            zipf,
            sequence: 0,
            returnable: VecDeque::new(),
            open_holds: VecDeque::new(),
            retries: VecDeque::new(),
        }
    }

    /// The next `count` commands: deliberate retries first when some are due, then new ones.
    pub fn next_batch(&mut self, count: usize) -> Vec<(Command, Sent)> {
        let mut batch = Vec::with_capacity(count);
        while batch.len() < count {
            match self.retries.pop_front() {
                Some(retry) => batch.push(retry),
                None => batch.push(self.next_command()),
            }
        }
        batch
    }

    /// Commands that end the run cleanly: the release of every open hold, so none lapses
    /// later and changes a balance the load generator never saw.
    pub fn release_all(&mut self) -> Vec<(Command, Sent)> {
        let holds: Vec<_> = self.open_holds.drain(..).collect();
        holds
            .into_iter()
            .map(|(txn, card)| self.release(txn, card))
            .collect()
    }

    fn next_command(&mut self) -> (Command, Sent) {
        if self.operator {
            return self.adjust();
        }
        match self.config.mix.draw(&mut self.rng) {
            Kind::Return if !self.returnable.is_empty() => self.ret(),
            Kind::Quote => self.purchase(true),
            Kind::Hold => self.hold_or_release(),
            Kind::Event => self.event(),
            _ => self.purchase(false),
        }
    }

    fn card(&mut self) -> String {
        let rank = self.rng.sample(self.zipf) as u64;
        card_of_rank(&self.config.run_tag, rank, self.config.members)
    }

    fn command(&mut self, body: Body) -> Command {
        self.sequence += 1;
        let txn = format!("{}-{}", self.config.run_tag, self.sequence);
        let (origin, key) = if self.operator {
            let key = IdemKey::Admin {
                admin: self.name.clone(),
                txn,
            };
            (Origin::Admin(self.name.clone()), key)
        } else {
            let key = IdemKey::Terminal {
                terminal: self.name.clone(),
                txn,
            };
            (Origin::Terminal(self.name.clone()), key)
        };
        Command {
            merchant: self.merchant.clone(),
            origin,
            key,
            at: chrono::Utc::now(),
            program_version: None,
            body,
        }
    }

    fn basket(&mut self) -> (Vec<Line>, Decimal) {
        let count = self.rng.gen_range(1..=self.config.max_lines);
        let mut lines = Vec::with_capacity(count);
        let mut total_cents = 0;
        for _ in 0..count {
            let sku = &self.catalog[self.rng.gen_range(0..self.catalog.len())];
            let qty = self.rng.gen_range(1..=3);
            total_cents += sku.price_cents * qty;
            lines.push(Line {
                sku: sku.sku.clone(),
                category: Some(sku.category.clone()),
                qty,
                unit_price: Decimal::new(sku.price_cents, 2),
                discount: Decimal::ZERO,
            });
        }
        (lines, Decimal::new(total_cents, 2))
    }

    fn purchase(&mut self, quote: bool) -> (Command, Sent) {
        let card = self.card();
        let (lines, total) = self.basket();
        let channel =
            ["in_store", "in_store", "in_store", "web", "delivery"][self.rng.gen_range(0..5)];
        let mut pay = Payment::default();
        if self.rng.gen_range(0..100) < self.config.redeem_percent {
            pay.points = 100 * self.rng.gen_range(1..=8);
        }
        let mut codes = Vec::new();
        if self.rng.gen_range(0..100) < self.config.code_percent {
            codes.push("SPRING10".to_string());
        }
        let order = Purchase {
            member: MemberRef::Card(card.clone()),
            store: self.store.clone(),
            channel: Some(channel.to_string()),
            lines,
            total,
            shipping: None,
            pay,
            hold: None,
            rewards: Vec::new(),
            codes,
        };
        let (body, kind) = if quote {
            (Body::Quote(order), CommandKind::Quote)
        } else {
            (Body::Purchase(order), CommandKind::Purchase)
        };
        (self.command(body), sent(kind, card))
    }

    fn ret(&mut self) -> (Command, Sent) {
        let at = self.rng.gen_range(0..self.returnable.len());
        // Half the returns are of the whole order (which then cannot be returned again), half
        // of one unit of one line.
        let whole = self.rng.gen_bool(0.5);
        let order = if whole {
            self.returnable.remove(at).expect("in range")
        } else {
            self.returnable[at].clone()
        };
        let lines = (!whole).then(|| {
            let (sku, _) = &order.lines[self.rng.gen_range(0..order.lines.len())];
            vec![ReturnLine {
                sku: sku.to_string(),
                qty: 1,
            }]
        });
        let body = Body::Return(Return {
            order: TxnRef {
                terminal: Some(self.name.clone()),
                txn: Some(order.txn),
                ..TxnRef::default()
            },
            lines,
        });
        (self.command(body), sent(CommandKind::Return, order.card))
    }

    fn hold_or_release(&mut self) -> (Command, Sent) {
        if self.open_holds.len() >= MAX_OPEN_HOLDS
            || (!self.open_holds.is_empty() && self.rng.gen_bool(0.5))
        {
            let (txn, card) = self.open_holds.pop_front().expect("not empty");
            return self.release(txn, card);
        }
        let card = self.card();
        let body = Body::Hold(Hold {
            member: MemberRef::Card(card.clone()),
            points: 50 * self.rng.gen_range(1..=10),
            credit: Decimal::ZERO,
        });
        (self.command(body), sent(CommandKind::Hold, card))
    }

    fn release(&mut self, txn: String, card: String) -> (Command, Sent) {
        let body = Body::Release(Release {
            hold: TxnRef {
                terminal: Some(self.name.clone()),
                txn: Some(txn),
                ..TxnRef::default()
            },
        });
        (self.command(body), sent(CommandKind::Release, card))
    }

    /// A `balance` query from this terminal, with a key of its own.
    pub fn balance_query(&mut self, card: &str) -> Command {
        self.command(Body::Balance(BalanceQuery {
            member: MemberRef::Card(card.to_string()),
        }))
    }

    fn event(&mut self) -> (Command, Sent) {
        let card = self.card();
        let name = ["social_share", "review", "newsletter"][self.rng.gen_range(0..3)];
        let body = Body::Event(Event {
            member: MemberRef::Card(card.clone()),
            name: name.to_string(),
        });
        (self.command(body), sent(CommandKind::Event, card))
    }

    fn adjust(&mut self) -> (Command, Sent) {
        let card = self.card();
        let body = Body::Adjust(Adjust {
            member: MemberRef::Card(card.clone()),
            points: 25 * self.rng.gen_range(1..=8),
            credit: Decimal::ZERO,
            reason: AdjustReason::Goodwill,
            note: None,
        });
        (self.command(body), sent(CommandKind::Adjust, card))
    }

    /// Learns from a result: purchases to return, holds to release, commands to send again.
    pub fn observe(&mut self, command: &Command, sent: &Sent, result: &CommandResult) {
        if sent.deliberate_retry || !matches!(result.status, Status::Applied(_)) {
            return;
        }
        let (IdemKey::Terminal { txn, .. } | IdemKey::Admin { txn, .. }) = &command.key else {
            return;
        };
        let card = sent.card.clone().unwrap_or_default();
        match &command.body {
            Body::Purchase(order) => {
                if self.returnable.len() == RETURNABLE_PURCHASES {
                    self.returnable.pop_front();
                }
                let lines = order.lines.iter().map(|l| (l.sku.clone(), l.qty)).collect();
                self.returnable.push_back(Returnable {
                    txn: txn.clone(),
                    card,
                    lines,
                });
            }
            Body::Hold(_) => self.open_holds.push_back((txn.clone(), card)),
            _ => {}
        }
        let changes_state = !matches!(sent.kind, CommandKind::Quote | CommandKind::Balance);
        if changes_state
            && self.retries.len() < MAX_PENDING_RETRIES
            && self.rng.gen_range(0..100) < self.config.retry_percent
        {
            let again = Sent {
                deliberate_retry: true,
                ..sent.clone()
            };
            self.retries.push_back((command.clone(), again));
        }
    }
}

fn sent(kind: CommandKind, card: String) -> Sent {
    Sent {
        kind,
        card: Some(card),
        deliberate_retry: false,
    }
}

/// The card number of the member with Zipf rank `rank` (1 = busiest). Ranks are scrambled
/// (a bijection of 1..=members) so the busiest members are not simply cards 1, 2, 3.
pub fn card_of_rank(run_tag: &str, rank: u64, members: u64) -> String {
    // 2654435761 is prime, so multiplying by it permutes 0..members unless members is a
    // multiple of it.
    let card = (u128::from(rank.clamp(1, members) - 1) * 2_654_435_761 % u128::from(members)) + 1;
    format!("{run_tag}-{card:09}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sim(operator: bool) -> Sim {
        let config = Arc::new(FleetConfig {
            retry_percent: 100,
            ..FleetConfig::demo(1_000)
        });
        let catalog = Arc::new(catalog(config.skus, 1));
        let who = (
            "demo".to_string(),
            Some("store-000".to_string()),
            "t".to_string(),
        );
        Sim::new(config, catalog, who, operator, 0)
    }

    #[test]
    fn cards_are_a_bijection_of_the_members() {
        let cards: std::collections::HashSet<_> = (1..=1_000)
            .map(|rank| card_of_rank("x", rank, 1_000))
            .collect();
        assert_eq!(cards.len(), 1_000);
    }

    #[test]
    fn the_catalog_has_the_named_articles_and_prices_in_cents() {
        let skus = catalog(200, 7);
        assert_eq!(skus.len(), 200);
        assert_eq!(&*skus[0].sku, "LATTE");
        assert!(skus.iter().all(|s| s.price_cents > 0));
        assert!(skus[15..].iter().all(|s| s.price_cents % 5 == 0));
    }

    #[test]
    fn returns_name_acknowledged_purchases_and_retries_repeat_the_command() {
        let mut terminal = sim(false);
        let (purchase, sent) = terminal.purchase(false);
        let applied = CommandResult {
            merchant: "demo".into(),
            key: "k".into(),
            command: CommandKind::Purchase,
            status: Status::Applied(Box::default()),
        };
        terminal.observe(&purchase, &sent, &applied);
        let (ret, ret_sent) = terminal.ret();
        let Body::Return(Return { order, .. }) = &ret.body else {
            panic!("a return");
        };
        let IdemKey::Terminal { txn, .. } = &purchase.key else {
            panic!("a terminal key");
        };
        assert_eq!(order.txn.as_ref(), Some(txn));
        assert_eq!(ret_sent.card, sent.card);
        // retry_percent = 100: the purchase comes back first, unchanged.
        let batch = terminal.next_batch(2);
        assert_eq!(batch[0].0, purchase);
        assert!(batch[0].1.deliberate_retry);
        assert!(!batch[1].1.deliberate_retry);
    }

    #[test]
    fn operators_send_only_adjustments_with_their_own_keys() {
        let mut operator = sim(true);
        for (command, sent) in operator.next_batch(20) {
            assert_eq!(sent.kind, CommandKind::Adjust);
            assert!(matches!(command.key, IdemKey::Admin { .. }));
        }
    }
}

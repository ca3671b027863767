//! Workload set-up shared by the benchmarks: a ledger with the demo program and a population
//! of members holding cards, and streams of synthetic commands.

use chrono::TimeDelta;
use tally_engine::replay::Replayer;
use tally_engine::workload::{Workload, WorkloadConfig, DEMO_PROGRAM};
use tally_protocol::{Body, Command, IdemKey, IssueCards, Origin};

/// Cards issued per `issue_cards` command while populating.
const CARDS_PER_COMMAND: u64 = 100_000;

/// A replayer with the demo program and `members` issued cards `C0000000001…`.
pub fn populated(members: u64, config: &WorkloadConfig) -> Replayer {
    populated_with(DEMO_PROGRAM, members, config)
}

/// A replayer with `program` and `members` issued cards `C0000000001…`.
pub fn populated_with(program: &str, members: u64, config: &WorkloadConfig) -> Replayer {
    let mut replayer = Replayer::new(vec![program.to_string()]).expect("the program is valid");
    let at = config.start - TimeDelta::hours(1);
    let mut issued = 0;
    let mut batch = 0;
    while issued < members {
        let count = CARDS_PER_COMMAND.min(members - issued);
        batch += 1;
        let command = issue_cards(&config.merchant, batch, count as u32, at);
        replayer.apply(&command, &mut |result| {
            assert!(result.applied().is_some(), "{result:?}")
        });
        issued += count;
    }
    replayer
}

/// An operator's `issue_cards` of `count` cards numbered on from the merchant's last
/// (`C0000000001…`), the `batch`-th of a run.
pub fn issue_cards(merchant: &str, batch: u64, count: u32, at: tally_engine::Timestamp) -> Command {
    Command {
        merchant: merchant.to_string(),
        origin: Origin::Admin("bench".into()),
        key: IdemKey::Admin {
            admin: "bench".into(),
            txn: format!("cards-{batch}"),
        },
        at,
        program_version: None,
        body: Body::IssueCards(IssueCards {
            count,
            prefix: Some("C".into()),
            cards: Vec::new(),
        }),
    }
}

/// The benchmark workload: 5-line purchases by `members` Zipf-distributed members.
pub fn purchases(members: u64) -> WorkloadConfig {
    WorkloadConfig::purchases_only(members)
}

pub fn commands(workload: &mut Workload, count: u64) -> Vec<Command> {
    workload.take(count as usize).collect()
}

/// The demo program without its own promotions and with `count` generated ones, active all
/// the time, of every kind. Three can be met by the benchmark's orders, whatever the count (a
/// punch card on pastries, a benefit on two lattes, a benefit for web orders of 30.00 or
/// more); the others are triggered by codes, assignments, or SKUs and categories the workload
/// never sells, as in a real catalog of promotions. So 20 against 1,000 measures how the cost
/// of an order grows with promotions it cannot meet, and 0 against 20 what meeting a few
/// costs.
pub fn demo_program_with_promotions(count: usize) -> String {
    let marker = "# ---- promotions";
    let end = DEMO_PROGRAM
        .find(marker)
        .expect("the demo program has promotions");
    let mut text = DEMO_PROGRAM[..end].to_string();
    for i in 0..count {
        let promotion = match i % 10 {
            _ if i == 7 => catalog_benefit("LATTE"),
            _ if i == 9 => catalog_punch_card("pastry"),
            _ if i == 19 => "kind = \"benefit\"\nchannels = [\"web\"]\n[[promotions.cases]]\n\
                             conditions = { min_total = \"30.00\" }\n\
                             actions = [{ kind = \"award_points\", points = 20 }]\n"
                .to_string(),
            0..=3 => format!(
                "kind = \"code\"\ncode = \"BENCH{i}\"\n[[promotions.cases]]\n\
                 actions = [{{ kind = \"percent_discount\", percent = 10 }}]\n"
            ),
            4 | 5 => "kind = \"regular\"\n[[promotions.cases]]\n\
                      actions = [{ kind = \"fixed_discount\", amount = \"2.00\" }]\n"
                .to_string(),
            6 => "kind = \"scratch\"\n[[promotions.cases]]\n\
                  actions = [{ kind = \"award_points\", points = 50 }]\n"
                .to_string(),
            7 | 8 => catalog_benefit(&format!("SKU-{i}")),
            _ => catalog_punch_card(&format!("category-{i}")),
        };
        text.push_str(&format!(
            "\n[[promotions]]\nid = \"bench_{i}\"\ntitle = \"Promotion {i}\"\n{promotion}"
        ));
    }
    text
}

/// 5% off a SKU when the order has two of it.
fn catalog_benefit(sku: &str) -> String {
    format!(
        "kind = \"benefit\"\nbudget = {{ uses = 1000000000 }}\n[[promotions.cases]]\n\
         conditions = {{ contains = [{{ sku = \"{sku}\", qty = 2 }}] }}\n\
         actions = [{{ kind = \"percent_discount\", percent = 5, skus = [\"{sku}\"] }}]\n"
    )
}

/// Eight orders with something of the category: 100 points.
fn catalog_punch_card(category: &str) -> String {
    format!(
        "kind = \"punch_card\"\npunches = 8\n[[promotions.cases]]\n\
         conditions = {{ contains = [{{ category = \"{category}\" }}] }}\n\
         actions = [{{ kind = \"punch\" }}]\n\
         [[promotions.reward]]\nkind = \"award_points\"\npoints = 100\n"
    )
}

/// `merchants` names (`shop-N`), half of them on each of two shards: a benchmark of shards
/// measures them, not how evenly a hash happens to split a handful of names.
pub fn balanced_names(merchants: usize) -> Vec<String> {
    let two = tally_engine::shards::Shards::new(2);
    let mut on = [Vec::new(), Vec::new()];
    for name in (1..).map(|m| format!("shop-{m}")) {
        let shard = two.shard_of(&name);
        if on[shard].len() < merchants.div_ceil(2) {
            on[shard].push(name);
        }
        if on[0].len() + on[1].len() >= merchants {
            break;
        }
    }
    let [first, second] = on;
    first.into_iter().chain(second).collect()
}

/// The program's arguments as numbers, in order (a benchmark's sizes).
pub fn number_args<T: std::str::FromStr>() -> impl Iterator<Item = T> {
    std::env::args().skip(1).map(|arg| {
        arg.parse()
            .unwrap_or_else(|_| panic!("{arg:?} is not a number"))
    })
}

/// CPU time of the calling thread so far, in seconds of user and of system time (Linux;
/// zeros elsewhere). System time is mostly the kernel handing out fresh memory.
#[allow(clippy::float_arithmetic)] // seconds for display only
pub fn thread_cpu_s() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime and stime are the 12th
    // and 13th, in clock ticks of 1/100 s.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let mut ticks = after_name
        .split_whitespace()
        .skip(11)
        .map(|field| field.parse::<u64>().unwrap_or(0) as f64 / 100.0);
    (ticks.next().unwrap_or(0.0), ticks.next().unwrap_or(0.0))
}

/// A line of the process's memory status (Linux), in MB: `VmRSS` (resident now) or `VmHWM`
/// (peak).
pub fn memory_mb(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb >> 10)
}

#[cfg(test)]
mod tests {
    #[test]
    fn generated_programs_are_valid() {
        for count in [0, 20, 1_000] {
            let text = super::demo_program_with_promotions(count);
            let program = tally_engine::program::parse_and_compile(&text)
                .unwrap_or_else(|errors| panic!("{count} promotions: {errors}"));
            assert_eq!(program.promotions.list.len(), count);
        }
    }
}

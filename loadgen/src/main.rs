//! `tally-loadgen` will drive a running engine over QUIC at a constant rate. The network front
//! door does not exist yet, so there is nothing to drive: say so plainly instead of pretending.

fn main() {
    eprintln!(
        "tally-loadgen is not built yet: it needs the QUIC front door (`tally serve`).\n\
         To measure the ledger core today, run `cargo bench -p tally-benches`."
    );
    std::process::exit(2);
}

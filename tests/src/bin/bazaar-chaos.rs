//! `bazaar-chaos --runs R --seed S [--load-secs L] [--heal-secs H] [--keep-dir DIR] [--keep-all]`:
//! the randomized fault campaign (see `bazaar_e2e::chaos`). Run i uses seed S+i, so any
//! run is reproduced with `--runs 1 --seed S+i`. Prints one line per run and the table;
//! exits 1 when any run lost, duplicated, diverged, parked or did not heal.
//! Needs `cargo build -p bazaar-hub -p bazaar-agent --bins` beside it, MariaDB on 3306,
//! `tansu` and `redis-server` on PATH.

use std::time::Duration;

use bazaar_e2e::chaos::{campaign, table, Options};

fn usage() -> ! {
    eprintln!(
        "usage: bazaar-chaos [--runs R] [--seed S] [--load-secs L] [--heal-secs H] [--keep-dir DIR] [--keep-all]"
    );
    std::process::exit(2)
}

fn main() {
    let mut options = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = || -> u64 {
            args.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| usage())
        };
        match arg.as_str() {
            "--runs" => options.runs = number(),
            "--seed" => options.seed = number(),
            "--load-secs" => options.load = Duration::from_secs(number()),
            "--heal-secs" => options.heal = Duration::from_secs(number()),
            "--keep-dir" => options.keep_dir = Some(args.next().unwrap_or_else(|| usage()).into()),
            "--keep-all" => options.keep_all = true,
            _ => usage(),
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bazaar-chaos: no tokio runtime: {e}");
            std::process::exit(2)
        }
    };
    let outcomes = runtime.block_on(campaign(&options));
    print!("{}", table(&options, &outcomes));
    if outcomes.iter().any(|o| o.failed()) {
        std::process::exit(1);
    }
}

//! `read_daily_series` (the `series,date,qty` CSV of DESIGN §8) on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = bazaar_intelligence::csv_io::read_daily_series(data);
});

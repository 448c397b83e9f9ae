//! The load generator tested by running it: `bazaar-loadgen smoke` (50 simulated stores, 2
//! of them real agents, 20 s of traffic through the shared producer, a hub killed -9 and
//! restarted, HQ movements followed on the stores' command partitions) must end with its
//! exactness checks passing (exit status 0) and print its closing table. A generator that
//! lost track of a movement, or a chain that lost or duplicated one, fails this test.

use std::process::Command;

use bazaar_e2e::binary;

#[test]
fn loadgen_smoke_run_is_exact_and_prints_its_figures() {
    let loadgen = binary("bazaar-loadgen");
    let output = Command::new(&loadgen)
        .arg("smoke")
        .args(["--progress", "2"])
        .output()
        .expect("bazaar-loadgen runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bazaar-loadgen smoke exited with {:?}\nstdout:\n{stdout}\nstderr (tail):\n{}",
        output.status.code(),
        stderr
            .lines()
            .rev()
            .take(40)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for expected in [
        "exactness: PASS",
        "| lost / duplicated / other id / voids / parked | 0 / 0 / 0 / 0 / 0 |",
        "| stores exact (every seq once, the generator's id) | 50 of 50 |",
        "hub #2 killed -9 / restarted",
        "| hub-origin movements |",
        "sync lag, occurred_at",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from the table:\n{stdout}"
        );
    }
    // Progress lines every 2 s while the traffic ran.
    let progress = stderr
        .lines()
        .filter(|l| l.contains(" produced ") && l.contains(" applied "))
        .count();
    assert!(
        progress >= 5,
        "expected progress lines every 2 s, saw {progress}:\n{stderr}"
    );
    // Movements flowed through both kinds of store.
    let produced_line = stdout
        .lines()
        .find(|l| l.starts_with("| movements produced"))
        .expect("the produced row");
    let produced: u64 = produced_line
        .split('|')
        .nth(2)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a produced figure");
    assert!(
        produced >= 500,
        "50 stores at 1/s for 20 s make ~1,000 movements, not {produced}"
    );
}

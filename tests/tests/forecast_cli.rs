//! `bazaar-hub forecast`: the CSV interface of DESIGN §8, driven as a user would.

use std::process::Command;

use bazaar_e2e::binary;

#[test]
fn forecasts_every_series_with_the_documented_columns() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sales.csv");
    let mut csv = String::from("series,date,qty\n");
    for day in 0..120u32 {
        let date =
            chrono::NaiveDate::from_ymd_opt(2026, 1, 1).unwrap() + chrono::Days::new(day.into());
        csv.push_str(&format!("S1/MILK,{date},{}\n", 10 + (day % 7)));
        if day % 9 == 0 {
            csv.push_str(&format!("S2/CAVIAR,{date},1\n"));
        }
    }
    std::fs::write(&input, csv).unwrap();
    let output = dir.path().join("forecast.csv");
    let run = Command::new(binary("bazaar-hub"))
        .args(["forecast", "--input"])
        .arg(&input)
        .args(["--horizon", "28", "--output"])
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let text = std::fs::read_to_string(&output).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("series,date,forecast,lo,hi,model"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2 * 28);
    for row in &rows {
        let (forecast, lo, hi): (f64, f64, f64) = (
            row[2].parse().unwrap(),
            row[3].parse().unwrap(),
            row[4].parse().unwrap(),
        );
        assert!(lo <= forecast && forecast <= hi && lo >= 0.0, "{row:?}");
    }
    let milk: Vec<f64> = rows
        .iter()
        .filter(|r| r[0] == "S1/MILK")
        .map(|r| r[2].parse().unwrap())
        .collect();
    let mean = milk.iter().sum::<f64>() / milk.len() as f64;
    assert!(
        (mean - 13.0).abs() < 1.0,
        "a weekly 10..16 pattern forecasts around 13, got {mean}"
    );
    assert_eq!(
        rows.iter().find(|r| r[0] == "S1/MILK").unwrap()[1],
        "2026-05-01",
        "starts the day after the last date"
    );
}

#[test]
fn a_bad_row_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("sales.csv");
    std::fs::write(
        &input,
        "series,date,qty\nA,2026-01-01,3\nA,2026-01-02,lots\n",
    )
    .unwrap();
    let output = dir.path().join("forecast.csv");
    let run = Command::new(binary("bazaar-hub"))
        .args(["forecast", "--input"])
        .arg(&input)
        .args(["--horizon", "7", "--output"])
        .arg(&output)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("line 3") && stderr.contains("lots"),
        "{stderr}"
    );
    assert!(!output.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temporary file left behind"
    );
}

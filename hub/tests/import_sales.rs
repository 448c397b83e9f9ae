//! Issue 11: `bazaar-hub import-sales` fills `daily_sales` from another system's history:
//! bad rows refused with their line and nothing of them written, idempotent on re-import.

mod common;

use bazaar_hub::import_sales::import;

#[tokio::test]
async fn a_history_is_imported_row_by_row_and_a_second_import_changes_nothing() {
    let (hub, database) = common::spawn_hub("import", |_| {}).await;
    common::register(&hub, "S1").await;
    common::register(&hub, "s1").await;
    let csv = "store,sku,date,qty
S1,MILK,2025-01-01,4
S1,MILK,2025-01-02,0
s1,MILK,2025-01-01,9
S1,milk,2025-01-01,2
S9,MILK,2025-01-01,3
S1,MILK,2025-13-01,3
S1,MILK,2025-01-03,-2
S1,BAD SKU,2025-01-03,1
S1,MILK,2025-01-03,5
";
    let mut calls = 0;
    let summary = import(&hub.pool, csv.as_bytes(), |_, _, _| calls += 1)
        .await
        .unwrap();
    assert!(calls >= 1, "progress is shown");
    assert_eq!((summary.imported, summary.bad), (5, 4), "{summary:?}");
    let lines: Vec<u64> = summary.reported.iter().map(|b| b.line).collect();
    assert_eq!(lines, [6, 7, 8, 9], "{summary:?}");
    assert!(
        summary.reported[0].why.contains("not registered"),
        "{summary:?}"
    );
    let total = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT COUNT(*), CAST(COALESCE(SUM(qty), 0) AS SIGNED) FROM daily_sales",
        )
        .fetch_one(&hub.pool)
        .await
        .unwrap()
    };
    assert_eq!(total().await, (5, 20));
    let again = import(&hub.pool, csv.as_bytes(), |_, _, _| {})
        .await
        .unwrap();
    assert_eq!(again.imported, 5);
    assert_eq!(
        total().await,
        (5, 20),
        "idempotent: a day's figure is set, not added"
    );
    let err = import(&hub.pool, "sku,store,date,qty\n".as_bytes(), |_, _, _| {})
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("store,sku,date,qty"), "{err:#}");
    common::drop_database(&hub, &database).await;
}

//! The closing checks and table: every (store, seq) once in MySQL with the generator's id,
//! every (store, sku) on-hand equal to the model, every hub_seq applied once by its store,
//! sync lag from `occurred_at` to the hub's `received_at` (stamped in the applying
//! transaction), consumer lag, agent outbox depth, CPU per process and the load average.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use sqlx::Row;

use crate::chain::{agent_db, load_average, say, BacklogResult, FanoutResult, Run};
use crate::sim::Runner;
use crate::Scenario;

pub struct Report {
    pub scenario: Scenario,
    pub kill: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub traffic: Option<(DateTime<Utc>, DateTime<Utc>)>,
    pub drained_after: Option<Duration>,
    pub commands_converged_after: Option<Duration>,
    pub backlog: Option<BacklogResult>,
    pub fanout: Option<FanoutResult>,
}

/// Nearest-rank percentile of sorted figures.
pub fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn lag_row(name: &str, mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "| {name} | {} | {:.0} | {:.0} | {:.0} | {:.0} |",
        v.len(),
        pct(&v, 0.50),
        pct(&v, 0.95),
        pct(&v, 0.99),
        v.last().copied().unwrap_or(f64::NAN)
    )
}

/// hub_seqs the hub numbered that their stores have not applied yet.
pub fn command_shortfall(run: &Run, last: &HashMap<String, (u64, u64)>) -> u64 {
    let stores = run.chain.lock();
    let mut short = 0;
    for s in stores.iter() {
        let hub_last = last.get(s.id.as_str()).map(|x| x.1).unwrap_or(0);
        let applied = match s.runner {
            Runner::Light => s.last_hub_seq,
            Runner::Agent(a) => agent_watermark(run, a).unwrap_or(0),
        };
        short += hub_last.saturating_sub(applied);
    }
    short
}

fn agent_watermark(run: &Run, a: usize) -> Option<u64> {
    let conn = agent_db(run.agents.get(a)?.data_dir()).ok()?;
    conn.query_row(
        "SELECT value FROM meta WHERE key = 'hub_watermark'",
        [],
        |r| r.get::<_, String>(0),
    )
    .ok()
    .and_then(|v| v.parse().ok())
}

impl Report {
    pub fn new(_run: &Run, scenario: &Scenario) -> Report {
        Report {
            scenario: scenario.clone(),
            kill: None,
            traffic: None,
            drained_after: None,
            commands_converged_after: None,
            backlog: None,
            fanout: None,
        }
    }

    pub async fn finish(&self, run: &Run) -> anyhow::Result<bool> {
        say("checking exactness against MySQL…");
        let c = &run.cli.common;
        // ---- store-origin: every (store, seq) once, with the generator's id ----
        let (expected, ids, agent_flags): (u64, Vec<Vec<uuid::Uuid>>, Vec<bool>) = {
            let stores = run.chain.lock();
            (
                stores.iter().map(|s| s.ids.len() as u64).sum(),
                stores.iter().map(|s| s.ids.clone()).collect(),
                stores
                    .iter()
                    .map(|s| matches!(s.runner, Runner::Agent(_)))
                    .collect(),
            )
        };
        let mut seen: Vec<Vec<u8>> = ids.iter().map(|v| vec![0u8; v.len()]).collect();
        let (mut rows, mut extra, mut wrong_id, mut voids) = (0u64, 0u64, 0u64, 0u64);
        let mut lags_light = Vec::new();
        let mut lags_agent = Vec::new();
        let (mut before, mut during, mut after) = (Vec::new(), Vec::new(), Vec::new());
        let kill_us = self.kill.map(|(k, r)| {
            (
                k.timestamp_micros(),
                (r + chrono::Duration::seconds(15)).timestamp_micros(),
            )
        });
        let mut stream = sqlx::query(
            "SELECT store, seq, id, kind,
                    TIMESTAMPDIFF(MICROSECOND, occurred_at, received_at) AS lag,
                    TIMESTAMPDIFF(MICROSECOND, '1970-01-01', occurred_at) AS at
             FROM movements WHERE origin = 'store'",
        )
        .fetch(&run.pool);
        while let Some(row) = stream.try_next().await? {
            rows += 1;
            let store: String = row.try_get("store")?;
            let seq: u64 = row.try_get("seq")?;
            let id: String = row.try_get("id")?;
            let kind: String = row.try_get("kind")?;
            let lag: i64 = row.try_get("lag")?;
            let at: i64 = row.try_get("at")?;
            if kind == "void" {
                voids += 1;
            }
            let Some(&i) = run.chain.by_name.get(&store) else {
                extra += 1;
                continue;
            };
            let n = seq as usize;
            if n == 0 || n > ids[i].len() {
                extra += 1;
                continue;
            }
            if uuid::Uuid::parse_str(&id).ok() != Some(ids[i][n - 1]) {
                wrong_id += 1;
                continue;
            }
            seen[i][n - 1] = seen[i][n - 1].saturating_add(1);
            let ms = lag as f64 / 1000.0;
            if agent_flags[i] {
                lags_agent.push(ms);
            } else {
                lags_light.push(ms);
            }
            if let Some((k, r)) = kill_us {
                if at < k {
                    before.push(ms);
                } else if at < r {
                    during.push(ms);
                } else {
                    after.push(ms);
                }
            }
        }
        drop(stream);
        let lost: u64 = seen.iter().flatten().filter(|&&x| x == 0).count() as u64;
        let duplicated: u64 = seen.iter().flatten().filter(|&&x| x > 1).count() as u64 + extra;
        let stores_exact = seen
            .iter()
            .enumerate()
            .filter(|(i, v)| v.iter().all(|&x| x == 1) && ids[*i].len() == v.len())
            .count();
        let parked: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM parked_events")
            .fetch_one(&run.pool)
            .await?;

        // ---- stock: each (store, sku) equal to the model ----
        let mut hub_stock: HashMap<(String, String), i64> = HashMap::new();
        let mut s = sqlx::query("SELECT store, sku, on_hand FROM stock").fetch(&run.pool);
        while let Some(row) = s.try_next().await? {
            hub_stock.insert(
                (row.try_get("store")?, row.try_get("sku")?),
                row.try_get("on_hand")?,
            );
        }
        drop(s);
        let (mut stock_keys, mut stock_wrong) = (0u64, 0u64);
        let stores_wrong = {
            let stores = run.chain.lock();
            let mut model: HashMap<(String, String), i64> = HashMap::new();
            for st in stores.iter() {
                for (sku, v) in st.on_hand.iter().chain(st.hq_deltas.iter()) {
                    *model.entry((st.id.to_string(), sku.clone())).or_insert(0) += v;
                }
            }
            let mut wrong_stores = std::collections::HashSet::new();
            for (k, v) in &model {
                stock_keys += 1;
                if hub_stock.get(k).copied().unwrap_or(0) != *v {
                    stock_wrong += 1;
                    if stock_wrong <= 3 {
                        say(format!(
                            "stock {}/{}: hub {:?}, model {v}",
                            k.0,
                            k.1,
                            hub_stock.get(k)
                        ));
                    }
                    wrong_stores.insert(k.0.clone());
                }
            }
            for (k, v) in &hub_stock {
                if !model.contains_key(k) && *v != 0 {
                    stock_wrong += 1;
                    wrong_stores.insert(k.0.clone());
                }
            }
            wrong_stores.len() as u64
        };
        // The real agents' own figures against the hub's.
        let mut agent_diverged = 0u64;
        for a in &run.agents {
            let local = bazaar_e2e::agent_stock(&run.http, &a.url()).await;
            for (sku, v) in &local {
                if hub_stock
                    .get(&(a.store.clone(), sku.clone()))
                    .copied()
                    .unwrap_or(0)
                    != *v
                {
                    agent_diverged += 1;
                }
            }
        }

        // ---- hub-origin: every hub_seq applied once by its store ----
        let mut outbox: Vec<(String, u64, String, String, i64)> = Vec::new();
        let mut s = sqlx::query(
            "SELECT store, hub_seq, id, kind, TIMESTAMPDIFF(MICROSECOND, '1970-01-01', created_at) AS at FROM outbox",
        )
        .fetch(&run.pool);
        while let Some(row) = s.try_next().await? {
            outbox.push((
                row.try_get("store")?,
                row.try_get("hub_seq")?,
                row.try_get("id")?,
                row.try_get("kind")?,
                row.try_get("at")?,
            ));
        }
        drop(s);
        let (mut cmd_applied, mut cmd_missing, mut cmd_wrong) = (0u64, 0u64, 0u64);
        let mut apply_all = Vec::new();
        let mut apply_movements = Vec::new();
        let mut agent_rows: HashMap<String, HashMap<String, (u64, i64)>> = HashMap::new();
        for a in &run.agents {
            let mut m = HashMap::new();
            if let Ok(conn) = agent_db(a.data_dir()) {
                if let Ok(mut st) = conn
                    .prepare("SELECT hub_seq, id, recorded_at FROM movements WHERE origin = 'hub'")
                {
                    let rows = st.query_map([], |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                        ))
                    });
                    if let Ok(rows) = rows {
                        for (seq, id, at) in rows.flatten() {
                            let at = DateTime::parse_from_rfc3339(&at)
                                .map(|t| t.timestamp_micros())
                                .unwrap_or(0);
                            m.insert(id, (seq as u64, at));
                        }
                    }
                }
            }
            agent_rows.insert(a.store.clone(), m);
        }
        let (redelivered, gaps, forged, misrouted) = {
            let stores = run.chain.lock();
            for (store, hub_seq, id, kind, at) in &outbox {
                let Some(&i) = run.chain.by_name.get(store) else {
                    continue;
                };
                let st = &stores[i];
                match st.runner {
                    Runner::Light => match st.hub.get(hub_seq) {
                        Some(applied) if applied.id.to_string() == *id => {
                            cmd_applied += 1;
                            let ms = (applied.at.timestamp_micros() - at) as f64 / 1000.0;
                            apply_all.push(ms);
                            if applied.is_movement {
                                apply_movements.push(ms);
                            }
                        }
                        Some(_) => cmd_wrong += 1,
                        None => cmd_missing += 1,
                    },
                    Runner::Agent(a) => {
                        // The agent records hub-origin movements in its ledger; its other
                        // commands are covered by its watermark.
                        if kind == "movement" {
                            match agent_rows.get(store).and_then(|m| m.get(id)) {
                                Some((seq, rec)) if seq == hub_seq => {
                                    cmd_applied += 1;
                                    let ms = (rec - at) as f64 / 1000.0;
                                    apply_all.push(ms);
                                    apply_movements.push(ms);
                                }
                                Some(_) => cmd_wrong += 1,
                                None => cmd_missing += 1,
                            }
                        } else if agent_watermark(run, a).unwrap_or(0) >= *hub_seq {
                            cmd_applied += 1;
                        } else {
                            cmd_missing += 1;
                        }
                    }
                }
            }
            (
                stores.iter().map(|s| s.hub_redelivered).sum::<u64>(),
                stores.iter().map(|s| s.hub_gaps).sum::<u64>(),
                stores.iter().map(|s| s.hub_forged).sum::<u64>(),
                stores.iter().map(|s| s.hub_misrouted).sum::<u64>(),
            )
        };

        // ---- the table ----
        let m = run.meters.lock().unwrap_or_else(|p| p.into_inner());
        let wall = m.since.map(|s| s.elapsed().as_secs_f64()).unwrap_or(1.0);
        let pctcpu = |s: f64| format!("{:.0}% ({:.0} s)", 100.0 * s / wall, s);
        let name = match &self.scenario {
            Scenario::Steady { duration, rate, .. } => format!("steady: {} stores x {rate}/s for {duration} s, {} hubs, {} real agents", c.stores, run.hub_urls.len(), run.agents.len()),
            Scenario::Backlog { queued } => format!("backlog: {} stores x {queued} queued, {} hubs", c.stores, run.hub_urls.len()),
            Scenario::Fanout { targets, clients, rate, duration } => format!("fanout: {} stores trading at {rate}/s for {duration} s; HQ: thresholds for every store + receipts to {targets} stores, {clients} clients; {} hubs, {} real agents", c.stores, run.hub_urls.len(), run.agents.len()),
            Scenario::Smoke => format!("smoke: {} stores x 1/s for 20 s, {} hubs, {} real agents", c.stores, run.hub_urls.len(), run.agents.len()),
        };
        let ok = lost == 0
            && duplicated == 0
            && wrong_id == 0
            && voids == 0
            && parked == 0
            && stock_wrong == 0
            && agent_diverged == 0
            && cmd_missing == 0
            && cmd_wrong == 0
            && gaps == 0
            && forged == 0
            && misrouted == 0;
        let mut out = Vec::new();
        out.push(String::new());
        out.push(format!("## bazaar-loadgen {name}"));
        out.push(String::new());
        out.push("| figure | value |".into());
        out.push("|---|---|".into());
        let produced = run
            .chain
            .produced
            .load(std::sync::atomic::Ordering::Relaxed);
        out.push(format!("| movements produced (lightweight delivered to the broker + real agents' 201s) | {expected} (intents {produced}, producer retries {}, agent request retries {}) |", run.chain.delivery_failures.load(std::sync::atomic::Ordering::Relaxed), run.chain.agent_failures.load(std::sync::atomic::Ordering::Relaxed)));
        out.push(format!(
            "| movements applied (store-origin ledger rows) | {rows} |"
        ));
        out.push(format!(
            "| stores exact (every seq once, the generator's id) | {stores_exact} of {} |",
            c.stores
        ));
        out.push(format!("| lost / duplicated / other id / voids / parked | {lost} / {duplicated} / {wrong_id} / {voids} / {parked} |"));
        out.push(format!("| (store, sku) on-hand equal to the model | {} of {stock_keys} ({stores_wrong} stores differ) |", stock_keys.saturating_sub(stock_wrong)));
        if !run.agents.is_empty() {
            out.push(format!(
                "| real agents' on-hand equal to the hub's | {} of {} agents' skus differ |",
                agent_diverged,
                run.agents.len()
            ));
        }
        out.push(format!("| hub_seqs applied once by their stores (of {} in the outbox) | {cmd_applied} (missing {cmd_missing}, other id {cmd_wrong}, gaps {gaps}, forged {forged}, misrouted {misrouted}; repeats skipped {redelivered}) |", outbox.len()));
        if let Some(d) = self.drained_after {
            out.push(format!(
                "| drained after the traffic stopped | {:.1} s |",
                d.as_secs_f64()
            ));
        }
        if let Some(d) = self.commands_converged_after {
            out.push(format!(
                "| commands converged after that | {:.1} s |",
                d.as_secs_f64()
            ));
        }
        out.push(format!(
            "| consumer lag (hubs' /metrics), max seen | {} messages |",
            m.consumer_lag_max
        ));
        out.push(format!(
            "| behind (made - applied), max seen | {} movements |",
            m.behind_max
        ));
        if !run.agents.is_empty() {
            out.push(format!(
                "| agent outbox depth (sum of pending), max seen | {} |",
                m.outbox_max
            ));
        }
        for (i, h) in m.hubs.iter().enumerate() {
            out.push(format!("| CPU hub #{} | {} |", i + 1, pctcpu(h.seconds())));
        }
        out.push(format!(
            "| CPU mariadbd | {} |",
            pctcpu(m.mariadb.seconds())
        ));
        out.push(format!("| CPU tansu | {} |", pctcpu(m.broker.seconds())));
        if !run.agents.is_empty() {
            out.push(format!(
                "| CPU {} agents together | {} |",
                run.agents.len(),
                pctcpu(m.agents_last - m.agents_start)
            ));
        }
        out.push(format!(
            "| CPU bazaar-loadgen | {} |",
            pctcpu(m.this.seconds())
        ));
        out.push(format!(
            "| load average (1 min): start / max / end | {:.1} / {:.1} / {:.1} (2 cores) |",
            m.load_start,
            m.load_max,
            load_average()
        ));
        out.push(format!("| measured over | {wall:.0} s wall |"));
        if let Some((k, r)) = self.kill {
            out.push(format!(
                "| hub #2 killed -9 / restarted | {} / {} |",
                k.format("%H:%M:%S"),
                r.format("%H:%M:%S")
            ));
        }
        if let Some(b) = &self.backlog {
            out.push(format!(
                "| backlog produced (all delivered to the broker) | {:.1} s |",
                b.produce_secs
            ));
            out.push(format!(
                "| backlog drained (every store's {} applied) | {} |",
                b.queued,
                b.last_done_secs
                    .map(|s| format!("{s:.1} s"))
                    .unwrap_or_else(|| format!("NOT drained in {:.0} s", b.drain_secs))
            ));
            if let (Some(f), Some((slow, median))) = (b.first_done_secs, b.slowest_at_first) {
                out.push(format!("| fairness: first store done at | {f:.1} s; then the slowest had {slow} of {} applied, the median {median} |", b.queued));
            }
            if let (Some(f), Some(l)) = (b.first_done_secs, b.last_done_secs) {
                out.push(format!(
                    "| fairness: last store done after the first | {:.1} s |",
                    l - f
                ));
            }
        }
        out.push(String::new());
        out.push("sync lag, occurred_at → the hub's received_at (ms):".into());
        out.push(String::new());
        out.push("| movements | n | p50 | p95 | p99 | max |".into());
        out.push("|---|---|---|---|---|---|".into());
        let mut all = lags_light.clone();
        all.extend(lags_agent.iter().copied());
        out.push(lag_row("all", all));
        if !lags_agent.is_empty() {
            out.push(lag_row("lightweight stores", lags_light));
            out.push(lag_row("real agents (incl. their outbox pump)", lags_agent));
        }
        if self.kill.is_some() {
            out.push(lag_row("before the kill", before));
            out.push(lag_row("kill → restart + 15 s", during));
            out.push(lag_row("after that", after));
        }
        if let Some(f) = &self.fanout {
            out.push(String::new());
            out.push(format!("HQ fan-out: {} requests ({} threshold changes, hub-origin movements to {} stores) with {} concurrent clients in {:.1} s; {} deadlock/lock-wait errors", f.statuses.values().sum::<u64>(), f.threshold_puts, f.targets, f.clients, f.wall_secs, f.lock_errors));
            out.push(String::new());
            out.push("| request | status | count |".into());
            out.push("|---|---|---|".into());
            for ((what, status), n) in &f.statuses {
                out.push(format!("| {what} | {status} | {n} |"));
            }
            out.push(String::new());
            out.push("| request latency (ms) | n | p50 | p95 | p99 | max |".into());
            out.push("|---|---|---|---|---|---|".into());
            for (what, v) in &f.latencies_ms {
                out.push(lag_row(what, v.clone()));
            }
            for e in &f.failures {
                out.push(format!("failure: {e}"));
            }
            out.push(String::new());
            out.push(
                "| hub commit (outbox row) → store applied (ms) | n | p50 | p95 | p99 | max |"
                    .into(),
            );
            out.push("|---|---|---|---|---|---|".into());
            out.push(lag_row("hub-origin movements", apply_movements));
            out.push(lag_row(
                "every command (movements and notices; lightweight stores)",
                apply_all,
            ));
        }
        out.push(String::new());
        out.push(format!(
            "exactness: {}",
            if ok {
                "PASS (0 lost, 0 duplicated, every figure equal)"
            } else {
                "FAIL"
            }
        ));
        println!("{}", out.join("\n"));
        Ok(ok)
    }
}

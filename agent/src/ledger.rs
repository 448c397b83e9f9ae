//! The store's ledger in SQLite: stock is derived from immutable movements, and the
//! movements table doubles as the outbox (DESIGN §6).
//!
//! Invariants:
//! - Recording a movement writes its ledger row, its stock change and its idempotency key
//!   in one transaction; the caller commits before it answers (see `writer`).
//! - Store-origin `seq` is gapless from 1. Before the hub has told us its `last_seq` for
//!   this store (first contact), rows are numbered provisionally and `rebase` shifts them,
//!   all still `pending`, past the hub's figure — so no seq is ever reused. A new seq is
//!   past both the ledger's highest and the hub's applied seq, so neither compaction nor
//!   a bootstrap onto an empty ledger brings a number round again.
//! - A row moves `pending → sent` only on a successful delivery report, `sent → acked`
//!   only when the hub reports it applied that seq, and `sent → pending` only when the hub
//!   has not acknowledged it in time (re-sent from the lowest; the hub deduplicates).
//! - Nothing here reads a whole table: outbox reads are bounded batches on a partial index.
//! - Every accepted movement can be put on the wire: `|delta| ≤ MAX_QUANTITY` and the
//!   on-hand it leaves within `±MAX_QUANTITY` (`check_bounds`); anything else is refused
//!   and nothing is written.
//! - A row that still cannot be sent, or that the hub refused and voided, never stalls the
//!   rows after it: `void_row` moves it to `parked`, a `void` (delta 0) takes its seq, and
//!   its stock change is reversed, all in one transaction.
//! - `pending → acked` never happens on the hub's word alone (`mark_acked` moves `sent`
//!   rows only): a seq the hub applied that this ledger did not deliver belongs to another
//!   copy of it, which `check_copy` finds and `mark_diverged` stops sending for.

use std::path::Path;

use bazaar_shared::envelope::MAX_QUANTITY;
use bazaar_shared::{Envelope, Kind, Origin, Reason, Sku, StoreId};
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use uuid::Uuid;

const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/agent/0001_init.sql"),
    include_str!("../../migrations/agent/0002_outbox_indexes.sql"),
    include_str!("../../migrations/agent/0003_commands.sql"),
    include_str!("../../migrations/agent/0004_parked.sql"),
];

pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    migrate(&conn)?;
    Ok(conn)
}

/// WAL with `synchronous=FULL`: a committed transaction is on disk (its WAL frames
/// fsynced) before `COMMIT` returns, which is what lets the API answer 2xx.
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    Ok(())
}

pub fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let applied: usize = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(applied) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index + 1)?;
        tx.commit()?;
    }
    Ok(())
}

pub fn now_rfc3339() -> String {
    rfc3339(Utc::now())
}

pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn get_meta(conn: &Connection, key: &str) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")?
        .query_row([key], |r| r.get(0))
        .optional()
}

pub fn set_meta(conn: &Connection, key: &str, value: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![key, value])?;
    Ok(())
}

fn meta_u64(conn: &Connection, key: &str) -> rusqlite::Result<u64> {
    Ok(get_meta(conn, key)?
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

pub const META_STORE: &str = "store";
/// The hub's `last_seq` for this store was learnt and local numbering rebased on it.
pub const META_HUB_CONFIRMED: &str = "hub_confirmed";
pub const META_HUB_APPLIED_SEQ: &str = "hub_applied_seq";
pub const META_HUB_WATERMARK: &str = "hub_watermark";
pub const META_LAST_DELIVERY_AT: &str = "last_delivery_at";
pub const META_LAST_ACK_AT: &str = "last_ack_at";

/// What a till or scanner asks for, already checked: the quantity and its sign agree
/// with the kind, identifiers are valid, bounds hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NewMovement {
    pub kind: Kind,
    pub sku: Sku,
    pub quantity: Quantity,
    pub reason: Option<Reason>,
    pub reference: Option<String>,
    pub to_store: Option<StoreId>,
    pub from_store: Option<StoreId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Quantity {
    /// The signed change in stock.
    Delta(i64),
    /// A physical count; its delta is worked out against the local on-hand (DESIGN §4).
    Counted(i64),
}

/// The movement as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MovementView {
    pub seq: Option<u64>,
    pub hub_seq: Option<u64>,
    pub origin: String,
    pub id: String,
    pub kind: String,
    pub sku: String,
    pub delta: i64,
    pub counted: Option<i64>,
    pub reason: Option<String>,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub to_store: Option<String>,
    pub from_store: Option<String>,
    pub occurred_at: String,
}

const MOVEMENT_COLUMNS: &str = "seq, hub_seq, origin, id, kind, sku, delta, counted, reason, ref, \
     to_store, from_store, occurred_at";

fn movement_view(row: &Row<'_>) -> rusqlite::Result<MovementView> {
    Ok(MovementView {
        seq: row.get(0)?,
        hub_seq: row.get(1)?,
        origin: row.get(2)?,
        id: row.get(3)?,
        kind: row.get(4)?,
        sku: row.get(5)?,
        delta: row.get(6)?,
        counted: row.get(7)?,
        reason: row.get(8)?,
        reference: row.get(9)?,
        to_store: row.get(10)?,
        from_store: row.get(11)?,
        occurred_at: row.get(12)?,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("Idempotency-Key {0:?} was already used with a different request")]
    IdempotencyMismatch(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

#[derive(Debug, Clone)]
pub struct Recorded {
    pub movement: MovementView,
    /// False when an earlier request with the same Idempotency-Key already recorded it.
    pub created: bool,
}

pub struct IdempotencyKey<'a> {
    pub key: &'a str,
    pub request_hash: &'a str,
}

/// Records one movement: ledger row, stock change and idempotency key, on `conn`, which the
/// caller has put inside a transaction.
pub fn record(
    conn: &Connection,
    new: &NewMovement,
    idempotency: Option<IdempotencyKey<'_>>,
) -> Result<Recorded, RecordError> {
    if let Some(idem) = &idempotency {
        let existing: Option<(String, String)> = conn
            .prepare_cached("SELECT request_hash, movement_id FROM idempotency WHERE key = ?1")?
            .query_row([idem.key], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        if let Some((hash, movement_id)) = existing {
            if hash != idem.request_hash {
                return Err(RecordError::IdempotencyMismatch(idem.key.to_owned()));
            }
            let movement = movement_by_id(conn, &movement_id)?;
            return Ok(Recorded {
                movement,
                created: false,
            });
        }
    }

    let on_hand: i64 = conn
        .prepare_cached("SELECT on_hand FROM stock WHERE sku = ?1")?
        .query_row([new.sku.as_str()], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let (delta, counted) = match new.quantity {
        Quantity::Delta(d) => (d, None),
        Quantity::Counted(c) => (c.saturating_sub(on_hand), Some(c)),
    };
    check_bounds(new, on_hand, delta)?;
    let new_on_hand = on_hand + delta;

    // Past both the ledger's own last seq and the hub's applied seq: compaction may have
    // deleted every acknowledged row, and a bootstrapped ledger starts empty after the
    // hub's `last_seq`; neither may make a seq come round again.
    // The hub watermark comes in the same statement: one step fewer per movement.
    let (seq, watermark): (u64, u64) = conn
        .prepare_cached(
            "SELECT max(
                 ifnull((SELECT max(seq) FROM movements WHERE origin = 'store'), 0),
                 ifnull((SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?1), 0)) + 1,
                 ifnull((SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?2), 0)",
        )?
        .query_row([META_HUB_APPLIED_SEQ, META_HUB_WATERMARK], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let id = Uuid::now_v7().to_string();
    let now = now_rfc3339();
    conn.prepare_cached(
        "INSERT INTO movements (origin, seq, id, kind, sku, delta, counted, hub_watermark, reason,
             ref, to_store, from_store, occurred_at, recorded_at, state)
         VALUES ('store', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12, 'pending')",
    )?
    .execute(params![
        seq,
        id,
        new.kind.as_str(),
        new.sku.as_str(),
        delta,
        counted,
        watermark,
        new.reason.map(Reason::as_str),
        new.reference,
        new.to_store.as_ref().map(StoreId::as_str),
        new.from_store.as_ref().map(StoreId::as_str),
        now,
    ])?;
    conn.prepare_cached(
        "INSERT INTO stock (sku, on_hand, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, updated_at = excluded.updated_at",
    )?
    .execute(params![new.sku.as_str(), new_on_hand, now])?;
    crate::stock_alerts::refresh(conn, new.sku.as_str(), new_on_hand, &now)?;
    if let Some(idem) = idempotency {
        conn.prepare_cached(
            "INSERT INTO idempotency (key, request_hash, movement_id, created_at) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![idem.key, idem.request_hash, id, now])?;
    }
    // The row as a retry will read it back: same fields, same formatting.
    let movement = MovementView {
        seq: Some(seq),
        hub_seq: None,
        origin: Origin::Store.as_str().to_owned(),
        id,
        kind: new.kind.as_str().to_owned(),
        sku: new.sku.to_string(),
        delta,
        counted,
        reason: new.reason.map(|r| r.as_str().to_owned()),
        reference: new.reference.clone(),
        to_store: new.to_store.as_ref().map(ToString::to_string),
        from_store: new.from_store.as_ref().map(ToString::to_string),
        occurred_at: now,
    };
    Ok(Recorded {
        movement,
        created: true,
    })
}

/// Every accepted movement is one the wire can carry (DESIGN §5): `|delta| ≤ MAX_QUANTITY`
/// and the on-hand it leaves within `±MAX_QUANTITY` (the hub parks a movement that would
/// take its own on-hand past the same bound). Anything else is refused before a row is
/// written, with the figures that break the bound, so the outbox never holds a row it
/// cannot send.
fn check_bounds(new: &NewMovement, on_hand: i64, delta: i64) -> Result<(), RecordError> {
    let kind = new.kind.as_str();
    let sku = new.sku.as_str();
    if delta.unsigned_abs() > MAX_QUANTITY.unsigned_abs() {
        let why = match new.quantity {
            Quantity::Counted(c) => format!(
                "counting {c} against the local on-hand of {on_hand} would move {delta} units"
            ),
            Quantity::Delta(_) => format!("this {kind} would move {delta} units"),
        };
        return Err(RecordError::Invalid(format!(
            "{why} of {sku}, beyond the ±{MAX_QUANTITY} one movement can carry; nothing was \
             recorded: correct the on-hand with adjustments first"
        )));
    }
    match on_hand.checked_add(delta) {
        Some(after) if after.unsigned_abs() <= MAX_QUANTITY.unsigned_abs() => Ok(()),
        after => Err(RecordError::Invalid(format!(
            "this {kind} would take the on-hand of {sku} from {on_hand} to {}, beyond the \
             ±{MAX_QUANTITY} an on-hand may hold; nothing was recorded",
            after.map_or_else(|| "out of range".to_owned(), |a| a.to_string())
        ))),
    }
}

pub fn movement_by_id(conn: &Connection, id: &str) -> rusqlite::Result<MovementView> {
    conn.prepare_cached(&format!(
        "SELECT {MOVEMENT_COLUMNS} FROM movements WHERE id = ?1"
    ))?
    .query_row([id], movement_view)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StockView {
    pub sku: String,
    pub on_hand: i64,
    /// Movements of this sku the hub has not acknowledged yet.
    pub pending: u64,
}

/// A stock row with the count of its movements the hub has not acknowledged yet.
const STOCK_VIEW: &str = "SELECT s.sku, s.on_hand,
        (SELECT count(*) FROM movements m WHERE m.sku = s.sku AND m.state IN ('pending', 'sent'))
     FROM stock s";

fn stock_view(r: &Row<'_>) -> rusqlite::Result<StockView> {
    Ok(StockView {
        sku: r.get(0)?,
        on_hand: r.get(1)?,
        pending: r.get(2)?,
    })
}

pub fn stock_of(conn: &Connection, sku: &Sku) -> rusqlite::Result<Option<StockView>> {
    conn.prepare_cached(&format!("{STOCK_VIEW} WHERE s.sku = ?1"))?
        .query_row([sku.as_str()], stock_view)
        .optional()
}

/// One page of stock, in sku order, after `after` (keyset pagination: no full-table load).
pub fn stock_page(conn: &Connection, after: &str, limit: u32) -> rusqlite::Result<Vec<StockView>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{STOCK_VIEW} WHERE s.sku > ?1 ORDER BY s.sku LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![after, limit], stock_view)?;
    rows.collect()
}

/// A row of the outbox, enough to build its envelope.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub seq: u64,
    pub id: Uuid,
    pub kind: Kind,
    pub sku: Sku,
    pub delta: i64,
    pub counted: Option<i64>,
    pub hub_watermark: u64,
    pub reason: Option<Reason>,
    pub reference: Option<String>,
    pub to_store: Option<StoreId>,
    pub from_store: Option<StoreId>,
    pub occurred_at: DateTime<Utc>,
    /// On a void: the id of the parked movement whose seq it took over.
    pub voids: Option<Uuid>,
}

impl OutboxRow {
    pub fn envelope(&self, store: &StoreId) -> Envelope {
        Envelope {
            v: bazaar_shared::envelope::WIRE_VERSION,
            store: store.clone(),
            origin: Origin::Store,
            seq: self.seq,
            id: self.id,
            kind: self.kind,
            sku: self.sku.clone(),
            delta: self.delta,
            counted: self.counted,
            hub_watermark: self.hub_watermark,
            occurred_at: self.occurred_at,
            reference: self.reference.clone(),
            reason: self.reason,
            to_store: self.to_store.clone(),
            from_store: self.from_store.clone(),
            voids: self.voids,
        }
    }
}

fn conversion_error(what: &str, raw: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("stored {what} {raw:?} is not valid").into(),
    )
}

fn outbox_row(row: &Row<'_>) -> rusqlite::Result<OutboxRow> {
    let text = |i: usize| row.get::<_, String>(i);
    let opt = |i: usize| row.get::<_, Option<String>>(i);
    let id = text(1)?;
    let kind = text(2)?;
    let sku = text(3)?;
    let occurred_at = text(11)?;
    let store_opt = |raw: Option<String>| -> rusqlite::Result<Option<StoreId>> {
        raw.map(|s| StoreId::parse(s.clone()).map_err(|_| conversion_error("store", &s)))
            .transpose()
    };
    Ok(OutboxRow {
        seq: row.get(0)?,
        id: Uuid::parse_str(&id).map_err(|_| conversion_error("id", &id))?,
        kind: stored_kind(&kind).ok_or_else(|| conversion_error("kind", &kind))?,
        sku: Sku::parse(sku.clone()).map_err(|_| conversion_error("sku", &sku))?,
        delta: row.get(4)?,
        counted: row.get(5)?,
        hub_watermark: row.get(6)?,
        reason: opt(7)?
            .map(|r| Reason::parse(&r).ok_or_else(|| conversion_error("reason", &r)))
            .transpose()?,
        reference: opt(8)?,
        to_store: store_opt(opt(9)?)?,
        from_store: store_opt(opt(10)?)?,
        occurred_at: DateTime::parse_from_rfc3339(&occurred_at)
            .map_err(|_| conversion_error("occurred_at", &occurred_at))?
            .with_timezone(&Utc),
        voids: opt(12)?
            .map(|v| Uuid::parse_str(&v).map_err(|_| conversion_error("voids", &v)))
            .transpose()?,
    })
}

/// A kind as the ledger stores it: a recordable kind, or `void`, which only the outbox
/// writes (`Kind::parse` refuses it, so no till can post one).
fn stored_kind(raw: &str) -> Option<Kind> {
    if raw == Kind::Void.as_str() {
        return Some(Kind::Void);
    }
    Kind::parse(raw)
}

const OUTBOX_COLUMNS: &str = "seq, id, kind, sku, delta, counted, hub_watermark, reason, ref, \
     to_store, from_store, occurred_at, voids";

/// The next `limit` pending rows in seq order, each read on its own: a row that cannot be
/// read back into an envelope is `Err((seq, why))` instead of failing the whole batch, so
/// the pump can park it and go on (promise 5).
pub fn pending_batch_checked(
    conn: &Connection,
    limit: u32,
) -> rusqlite::Result<Vec<Result<OutboxRow, (u64, String)>>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM movements WHERE state = 'pending' ORDER BY seq LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit], |row| {
        let seq: u64 = row.get(0)?;
        Ok(outbox_row(row).map_err(|e| (seq, e.to_string())))
    })?;
    rows.collect()
}

/// The next `limit` pending rows in seq order.
pub fn pending_batch(conn: &Connection, limit: u32) -> rusqlite::Result<Vec<OutboxRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {OUTBOX_COLUMNS} FROM movements WHERE state = 'pending' ORDER BY seq LIMIT ?1"
    ))?;
    let rows = stmt.query_map([limit], outbox_row)?;
    rows.collect()
}

/// Marks delivered rows `sent`. Only rows still `pending` move: a late report never
/// undoes an acknowledgement.
pub fn mark_sent(conn: &Connection, seqs: &[u64], at: &str) -> rusqlite::Result<usize> {
    let mut stmt = conn.prepare_cached(
        "UPDATE movements SET state = 'sent', sent_at = ?2, attempts = attempts + 1, last_error = NULL
         WHERE seq = ?1 AND state = 'pending' AND origin = 'store'",
    )?;
    let mut changed = 0;
    for seq in seqs {
        changed += stmt.execute(params![seq, at])?;
    }
    if changed > 0 {
        set_meta(conn, META_LAST_DELIVERY_AT, at)?;
    }
    Ok(changed)
}

pub fn record_send_failure(conn: &Connection, seq: u64, error: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE movements SET attempts = attempts + 1, last_error = ?2
         WHERE seq = ?1 AND state = 'pending' AND origin = 'store'",
        params![seq, error],
    )?;
    Ok(())
}

/// The hub applied every seq up to `hub_last_seq`: the rows this agent delivered up to
/// there are acknowledged. Only `sent` rows move: a `pending` row was never delivered by
/// this agent, so the hub's figure cannot be about it (a clone or an older copy of this
/// data directory numbered the same seq; see `check_copy`). Bootstrap, which knows the
/// snapshot holds them, acknowledges with [`acknowledge_through`].
pub fn mark_acked(conn: &Connection, hub_last_seq: u64, at: &str) -> rusqlite::Result<usize> {
    let changed = conn.execute(
        "UPDATE movements SET state = 'acked' WHERE state = 'sent' AND seq <= ?1",
        [hub_last_seq],
    )?;
    let previous = meta_u64(conn, META_HUB_APPLIED_SEQ)?;
    if hub_last_seq >= previous {
        set_meta(conn, META_HUB_APPLIED_SEQ, &hub_last_seq.to_string())?;
    }
    set_meta(conn, META_LAST_ACK_AT, at)?;
    Ok(changed)
}

/// Whether any row delivered at or below `hub_last_seq` still waits for its
/// acknowledgement.
pub fn has_unacknowledged_up_to(conn: &Connection, hub_last_seq: u64) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM movements WHERE state = 'sent' AND seq <= ?1)",
    )?
    .query_row([hub_last_seq], |r| r.get(0))
}

/// Sent rows the hub has not acknowledged go back to `pending`, to be produced again from
/// the lowest. Re-sending is safe: the hub skips a (store, origin, seq) it already has.
pub fn requeue_unacknowledged(conn: &Connection, hub_last_seq: u64) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE movements SET state = 'pending' WHERE state = 'sent' AND seq > ?1",
        [hub_last_seq],
    )
}

/// The oldest `sent_at` among rows sent but not acknowledged.
pub fn oldest_unacknowledged_sent_at(conn: &Connection) -> rusqlite::Result<Option<String>> {
    conn.query_row(
        "SELECT min(sent_at) FROM movements WHERE state = 'sent'",
        [],
        |r| r.get(0),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum RebaseError {
    #[error(
        "this agent has sent movements up to seq {local} but the hub knows the store only up to \
         {hub}: the hub's database may have been restored from an old backup; refusing to renumber"
    )]
    HubBehind { local: u64, hub: u64 },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
}

/// First contact with the hub. A new agent for a store with history (re-installed, wiped)
/// must continue after the hub's `last_seq`: every provisional row, still pending, is
/// shifted past it in one statement. Returns the shift applied.
pub fn rebase_on_first_contact(conn: &Connection, hub_last_seq: u64) -> Result<u64, RebaseError> {
    if get_meta(conn, META_HUB_CONFIRMED)?.is_some() {
        return Ok(0);
    }
    let ever_sent: Option<u64> = conn.query_row(
        "SELECT max(seq) FROM movements WHERE origin = 'store' AND state <> 'pending'",
        [],
        |r| r.get(0),
    )?;
    if let Some(local) = ever_sent {
        if local > hub_last_seq {
            return Err(RebaseError::HubBehind {
                local,
                hub: hub_last_seq,
            });
        }
    }
    let shift = if ever_sent.is_some() { 0 } else { hub_last_seq };
    if shift > 0 {
        // Two steps so the unique index on seq never sees a transient duplicate.
        conn.execute("UPDATE movements SET seq = -seq WHERE origin = 'store'", [])?;
        conn.execute(
            "UPDATE movements SET seq = -seq + ?1 WHERE origin = 'store'",
            [shift],
        )?;
    }
    set_meta(conn, META_HUB_CONFIRMED, &hub_last_seq.to_string())?;
    Ok(shift)
}

/// Bootstrap only: the snapshot holds every seq up to `last_seq`, so the rows there are
/// acknowledged whether or not this agent saw their delivery report.
pub fn acknowledge_through(conn: &Connection, last_seq: u64, at: &str) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE movements SET state = 'sent' WHERE state = 'pending' AND origin = 'store' AND seq <= ?1",
        [last_seq],
    )?;
    mark_acked(conn, last_seq, at)
}

// --- parked movements and voids (promise 5) -------------------------------------------

/// The local alert raised when a movement is parked.
pub const PARKED_ALERT: &str = "movement_parked";

/// How the void that takes a parked movement's seq over starts out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoidState {
    /// The hub has not seen the seq: the void is sent in the original's place.
    Pending,
    /// The hub already consumed the seq with a void of its own.
    Acked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Voided {
    pub seq: u64,
    pub original_id: String,
    pub void_id: String,
    pub sku: String,
    /// The stock change reversed.
    pub reversed: i64,
}

/// Parks store movement `seq`, in the caller's transaction: the original row moves to
/// `parked`, a void (fresh id, delta 0, `voids` = the original's id) takes its seq in
/// `movements`, the original's stock effect is reversed, an idempotency key that named it
/// names the void, and a critical `movement_parked` alert says what happened. `None` when
/// there is no such row or it is a void already (parking twice changes nothing).
pub fn void_row(
    conn: &Connection,
    seq: u64,
    reason: &str,
    detail: &str,
    state: VoidState,
) -> rusqlite::Result<Option<Voided>> {
    type Original = (String, String, String, i64, Option<i64>, Option<String>);
    let original: Option<Original> = conn
        .query_row(
            "SELECT id, kind, sku, delta, counted, ref FROM movements
             WHERE origin = 'store' AND seq = ?1 AND kind <> 'void'",
            [seq],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .optional()?;
    let Some((id, kind, sku, delta, counted, reference)) = original else {
        return Ok(None);
    };
    let now = now_rfc3339();
    let void_id = Uuid::now_v7().to_string();
    conn.execute(
        "INSERT INTO parked (seq, id, kind, sku, delta, counted, hub_watermark, movement_reason,
             ref, to_store, from_store, occurred_at, recorded_at, reason, detail, void_id, parked_at)
         SELECT seq, id, kind, sku, delta, counted, hub_watermark, reason, ref, to_store,
             from_store, occurred_at, recorded_at, ?2, ?3, ?4, ?5
         FROM movements WHERE origin = 'store' AND seq = ?1",
        params![seq, reason, detail, void_id, now],
    )?;
    // The key is re-pointed through a delete and an insert: the foreign key on
    // idempotency.movement_id would refuse the row's id changing under it.
    let keys: Vec<(String, String, String)> = conn
        .prepare_cached(
            "SELECT key, request_hash, created_at FROM idempotency WHERE movement_id = ?1",
        )?
        .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<_>>()?;
    conn.execute("DELETE FROM idempotency WHERE movement_id = ?1", [&id])?;
    conn.execute(
        "UPDATE movements SET id = ?2, kind = 'void', delta = 0, counted = NULL, reason = NULL,
             ref = NULL, to_store = NULL, from_store = NULL, voids = ?3, state = ?4,
             attempts = 0, last_error = NULL
         WHERE origin = 'store' AND seq = ?1",
        params![
            seq,
            void_id,
            id,
            match state {
                VoidState::Pending => "pending",
                VoidState::Acked => "acked",
            }
        ],
    )?;
    for (key, hash, created_at) in keys {
        conn.execute(
            "INSERT INTO idempotency (key, request_hash, movement_id, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![key, hash, void_id, created_at],
        )?;
    }
    let on_hand: i64 = conn
        .query_row("SELECT on_hand FROM stock WHERE sku = ?1", [&sku], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0);
    let after = on_hand.saturating_sub(delta);
    conn.execute(
        "INSERT INTO stock (sku, on_hand, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (sku) DO UPDATE SET on_hand = excluded.on_hand, updated_at = excluded.updated_at",
        params![sku, after, now],
    )?;
    crate::stock_alerts::refresh(conn, &sku, after, &now)?;
    let what = match counted {
        Some(c) => format!("count of {c} (delta {delta})"),
        None => format!("{kind} of {delta}"),
    };
    let by_ref = reference
        .map(|r| format!(", ref {r:?}"))
        .unwrap_or_default();
    crate::housekeeping::raise_alert(
        conn,
        PARKED_ALERT,
        Some(&sku),
        "critical",
        &format!(
            "movement seq {seq} ({what} {sku}{by_ref}, id {id}) was parked: {detail}. Its stock \
             change was reversed here and a void took its seq, so later movements still reach \
             the hub and both sides agree without it. See GET /v1/parked; if the movement \
             really happened, record it again correctly."
        ),
        &now,
    )?;
    tracing::warn!(seq, id = %id, reason, detail, "movement parked; a void takes its seq");
    Ok(Some(Voided {
        seq,
        original_id: id,
        void_id,
        sku,
        reversed: delta,
    }))
}

/// A parked movement as `GET /v1/parked` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParkedView {
    /// Keyset position for paging.
    pub parked_id: i64,
    pub seq: u64,
    pub id: String,
    pub kind: String,
    pub sku: String,
    pub delta: i64,
    pub counted: Option<i64>,
    /// An adjustment's reason (damage, theft, ...).
    pub movement_reason: Option<String>,
    #[serde(rename = "ref")]
    pub reference: Option<String>,
    pub to_store: Option<String>,
    pub from_store: Option<String>,
    pub occurred_at: String,
    /// Why it was parked: `unencodable`, or `hub:<reason>`.
    pub reason: String,
    pub detail: String,
    pub void_id: String,
    pub parked_at: String,
}

/// One page of parked movements, oldest first, after `after` (a `parked_id`).
pub fn parked_page(conn: &Connection, after: i64, limit: u32) -> rusqlite::Result<Vec<ParkedView>> {
    conn.prepare_cached(
        "SELECT parked_id, seq, id, kind, sku, delta, counted, movement_reason, ref, to_store,
                from_store, occurred_at, reason, detail, void_id, parked_at
         FROM parked WHERE parked_id > ?1 ORDER BY parked_id LIMIT ?2",
    )?
    .query_map(params![after, limit], |r| {
        Ok(ParkedView {
            parked_id: r.get(0)?,
            seq: r.get(1)?,
            id: r.get(2)?,
            kind: r.get(3)?,
            sku: r.get(4)?,
            delta: r.get(5)?,
            counted: r.get(6)?,
            movement_reason: r.get(7)?,
            reference: r.get(8)?,
            to_store: r.get(9)?,
            from_store: r.get(10)?,
            occurred_at: r.get(11)?,
            reason: r.get(12)?,
            detail: r.get(13)?,
            void_id: r.get(14)?,
            parked_at: r.get(15)?,
        })
    })?
    .collect()
}

/// The id and kind of store row `seq`, if this ledger still has it.
pub fn store_row(conn: &Connection, seq: u64) -> rusqlite::Result<Option<(String, String)>> {
    conn.prepare_cached("SELECT id, kind FROM movements WHERE origin = 'store' AND seq = ?1")?
        .query_row([seq], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()
}

// --- copies of the data directory (restored or cloned) ----------------------------------

/// Set when this ledger is found to be a restored older copy or a clone: nothing is sent
/// until `run --resnapshot` (kept across restarts). The value says what was found.
pub const META_DIVERGED: &str = "diverged_copy";
pub const DIVERGED_ALERT: &str = "diverged_copy";

/// What the hub's store state says about this ledger being the one that numbers the
/// store's seqs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyCheck {
    /// Nothing new at the hub, or its newest movement is this ledger's own.
    Ours,
    /// Another copy of this data directory numbered seqs the hub applied.
    Diverged(String),
}

/// The hub applied up to `hub_last_seq`, the movement there having id `hub_last_id`. When
/// that is past what this ledger had seen acknowledged, the row at that seq must be ours:
/// it exists and carries that id (or is a void: the hub consumed the seq with one of its
/// own). Otherwise another copy sent it.
pub fn check_copy(
    conn: &Connection,
    hub_last_seq: u64,
    hub_last_id: Option<&str>,
) -> rusqlite::Result<CopyCheck> {
    let acknowledged = meta_u64(conn, META_HUB_APPLIED_SEQ)?;
    let Some(hub_id) = hub_last_id else {
        // A hub that does not name its last id cannot be checked against.
        return Ok(CopyCheck::Ours);
    };
    if hub_last_seq <= acknowledged {
        return Ok(CopyCheck::Ours);
    }
    Ok(match store_row(conn, hub_last_seq)? {
        Some((id, _)) if id == hub_id => CopyCheck::Ours,
        Some((_, kind)) if kind == Kind::Void.as_str() => CopyCheck::Ours,
        Some((id, _)) => CopyCheck::Diverged(format!(
            "the hub applied seq {hub_last_seq} with id {hub_id}, but this agent's seq \
             {hub_last_seq} is {id}: another server runs a copy of this data directory"
        )),
        None => CopyCheck::Diverged(format!(
            "the hub applied this store up to seq {hub_last_seq} (id {hub_id}), but this agent \
             had seen seq {acknowledged} acknowledged and never numbered seq {hub_last_seq}: \
             this data directory was restored from an older copy, or another server runs one"
        )),
    })
}

/// Stops sending (kept in `meta` across restarts) and raises the critical alert.
pub fn mark_diverged(conn: &Connection, finding: &str) -> rusqlite::Result<()> {
    let now = now_rfc3339();
    set_meta(conn, META_DIVERGED, finding)?;
    crate::housekeeping::raise_alert(
        conn,
        DIVERGED_ALERT,
        None,
        "critical",
        &format!(
            "{finding}. Sending is stopped so no seq is used twice; tills are still served. \
             Make sure only one agent runs for this store, then run `bazaar-agent run --resnapshot` \
             on the one that stays: it takes the hub's stock and sends this agent's unsent \
             movements after the hub's last seq."
        ),
        &now,
    )
}

pub fn diverged(conn: &Connection) -> rusqlite::Result<Option<String>> {
    get_meta(conn, META_DIVERGED)
}

/// A re-snapshot after divergence: every store row past what this ledger saw
/// acknowledged is treated as unsent and renumbered, in order and gapless, after the
/// hub's `last_seq`; the flag and its alert go. Returns how far rows moved.
pub fn renumber_after_divergence(
    conn: &Connection,
    hub_last_seq: u64,
    now: &str,
) -> rusqlite::Result<u64> {
    if diverged(conn)?.is_none() {
        return Ok(0);
    }
    let acknowledged = meta_u64(conn, META_HUB_APPLIED_SEQ)?;
    let shift = hub_last_seq.saturating_sub(acknowledged);
    conn.execute(
        "UPDATE movements SET state = 'pending' WHERE origin = 'store' AND seq > ?1 AND state <> 'pending'",
        [acknowledged],
    )?;
    if shift > 0 {
        // Two steps so the unique index on seq never sees a transient duplicate.
        conn.execute(
            "UPDATE movements SET seq = -seq WHERE origin = 'store' AND seq > ?1",
            [acknowledged],
        )?;
        conn.execute(
            "UPDATE movements SET seq = -seq + ?1 WHERE origin = 'store' AND seq < 0",
            [shift],
        )?;
    }
    conn.execute("DELETE FROM meta WHERE key = ?1", [META_DIVERGED])?;
    conn.execute(
        "UPDATE alerts SET resolved_at = ?2 WHERE kind = ?1 AND resolved_at IS NULL",
        params![DIVERGED_ALERT, now],
    )?;
    Ok(shift)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OutboxCounts {
    pub pending: u64,
    pub sent: u64,
    /// Acknowledged rows still kept locally (older ones are compacted away).
    pub acked: u64,
    pub parked: u64,
    pub oldest_pending_at: Option<String>,
    pub last_seq: u64,
}

pub fn outbox_counts(conn: &Connection) -> rusqlite::Result<OutboxCounts> {
    // Literal states, so each count walks its own partial index (see migration 0002).
    let count = |sql: &str| -> rusqlite::Result<u64> {
        conn.prepare_cached(sql)?.query_row([], |r| r.get(0))
    };
    Ok(OutboxCounts {
        pending: count("SELECT count(*) FROM movements WHERE state = 'pending'")?,
        sent: count("SELECT count(*) FROM movements WHERE state = 'sent'")?,
        // Every store row at or below the hub's applied seq is acknowledged (mark_acked),
        // so this walks the store-seq index instead of the whole table.
        acked: conn
            .prepare_cached(
                "SELECT count(*) FROM movements WHERE origin = 'store' AND seq <= ifnull(
                     (SELECT CAST(value AS INTEGER) FROM meta WHERE key = ?1), 0)",
            )?
            .query_row([META_HUB_APPLIED_SEQ], |r| r.get(0))?,
        parked: count("SELECT count(*) FROM parked")?,
        oldest_pending_at: conn
            .query_row(
                "SELECT recorded_at FROM movements WHERE state = 'pending' ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?,
        last_seq: conn.query_row(
            "SELECT ifnull(max(seq), 0) FROM movements WHERE origin = 'store'",
            [],
            |r| r.get(0),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        migrate(&conn).unwrap();
        conn
    }

    fn store() -> StoreId {
        StoreId::parse("S1").unwrap()
    }

    fn movement(kind: Kind, sku: &str, quantity: Quantity) -> NewMovement {
        NewMovement {
            kind,
            sku: Sku::parse(sku).unwrap(),
            quantity,
            reason: None,
            reference: None,
            to_store: None,
            from_store: None,
        }
    }

    #[test]
    fn recording_updates_stock_and_numbers_gaplessly() {
        let conn = db();
        record(
            &conn,
            &movement(Kind::Receipt, "A", Quantity::Delta(10)),
            None,
        )
        .unwrap();
        let sale = record(&conn, &movement(Kind::Sale, "A", Quantity::Delta(-3)), None).unwrap();
        assert_eq!(sale.movement.seq, Some(2));
        let sku = Sku::parse("A").unwrap();
        assert_eq!(stock_of(&conn, &sku).unwrap().unwrap().on_hand, 7);
        // Negative stock is recorded, not refused (promise 3).
        record(&conn, &movement(Kind::Sale, "A", Quantity::Delta(-9)), None).unwrap();
        assert_eq!(stock_of(&conn, &sku).unwrap().unwrap().on_hand, -2);
    }

    #[test]
    fn a_count_becomes_a_delta_against_local_on_hand() {
        let conn = db();
        record(
            &conn,
            &movement(Kind::Receipt, "A", Quantity::Delta(10)),
            None,
        )
        .unwrap();
        let count = record(
            &conn,
            &movement(Kind::Count, "A", Quantity::Counted(8)),
            None,
        )
        .unwrap();
        assert_eq!(
            (count.movement.delta, count.movement.counted),
            (-2, Some(8))
        );
        assert_eq!(
            stock_of(&conn, &Sku::parse("A").unwrap())
                .unwrap()
                .unwrap()
                .on_hand,
            8
        );
    }

    #[test]
    fn idempotency_key_returns_the_original_or_refuses_another_body() {
        let conn = db();
        let m = movement(Kind::Sale, "A", Quantity::Delta(-1));
        let key = || {
            Some(IdempotencyKey {
                key: "k1",
                request_hash: "h1",
            })
        };
        let first = record(&conn, &m, key()).unwrap();
        let again = record(&conn, &m, key()).unwrap();
        assert!(first.created && !again.created);
        assert_eq!(first.movement, again.movement);
        let other = record(
            &conn,
            &m,
            Some(IdempotencyKey {
                key: "k1",
                request_hash: "h2",
            }),
        );
        assert!(matches!(other, Err(RecordError::IdempotencyMismatch(_))));
        assert_eq!(outbox_counts(&conn).unwrap().pending, 1);
    }

    #[test]
    fn outbox_moves_pending_sent_acked_and_requeues_from_the_lowest() {
        let conn = db();
        for _ in 0..5 {
            record(&conn, &movement(Kind::Sale, "A", Quantity::Delta(-1)), None).unwrap();
        }
        let batch = pending_batch(&conn, 3).unwrap();
        assert_eq!(batch.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        mark_sent(&conn, &[1, 2, 3], "2026-11-26T10:00:00.000Z").unwrap();
        assert_eq!(pending_batch(&conn, 10).unwrap()[0].seq, 4);
        assert!(has_unacknowledged_up_to(&conn, 1).unwrap());
        mark_acked(&conn, 1, "2026-11-26T10:00:01.000Z").unwrap();
        assert!(!has_unacknowledged_up_to(&conn, 1).unwrap());
        assert!(has_unacknowledged_up_to(&conn, 2).unwrap());
        assert_eq!(requeue_unacknowledged(&conn, 1).unwrap(), 2);
        assert_eq!(pending_batch(&conn, 10).unwrap()[0].seq, 2);
        let counts = outbox_counts(&conn).unwrap();
        assert_eq!((counts.pending, counts.sent), (4, 0));
        // A late delivery report for an acknowledged row changes nothing.
        assert_eq!(mark_sent(&conn, &[1], "x").unwrap(), 0);
    }

    #[test]
    fn first_contact_rebases_provisional_rows_past_the_hub() {
        let conn = db();
        for _ in 0..3 {
            record(&conn, &movement(Kind::Sale, "A", Quantity::Delta(-1)), None).unwrap();
        }
        assert_eq!(rebase_on_first_contact(&conn, 100).unwrap(), 100);
        assert_eq!(
            pending_batch(&conn, 10)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [101, 102, 103]
        );
        let next = record(&conn, &movement(Kind::Sale, "A", Quantity::Delta(-1)), None).unwrap();
        assert_eq!(next.movement.seq, Some(104));
        // Only once.
        assert_eq!(rebase_on_first_contact(&conn, 500).unwrap(), 0);
    }

    #[test]
    fn no_seq_comes_round_again_after_compaction_or_the_hubs_figure() {
        let conn = db();
        mark_acked(&conn, 100, "t").unwrap();
        let first = record(&conn, &movement(Kind::Sale, "A", Quantity::Delta(-1)), None).unwrap();
        assert_eq!(
            first.movement.seq,
            Some(101),
            "continues after the hub's applied seq"
        );
        mark_sent(&conn, &[101], "t").unwrap();
        mark_acked(&conn, 101, "t").unwrap();
        // Compaction may delete every acknowledged row.
        conn.execute("DELETE FROM movements", []).unwrap();
        let next = record(&conn, &movement(Kind::Sale, "A", Quantity::Delta(-1)), None).unwrap();
        assert_eq!(next.movement.seq, Some(102));
        assert_eq!(
            outbox_counts(&conn).unwrap().acked,
            0,
            "acknowledged rows kept here"
        );
    }

    #[test]
    fn rebase_refuses_when_the_hub_is_behind_what_was_sent() {
        let conn = db();
        for _ in 0..3 {
            record(&conn, &movement(Kind::Sale, "A", Quantity::Delta(-1)), None).unwrap();
        }
        mark_sent(&conn, &[1, 2, 3], "t").unwrap();
        assert!(matches!(
            rebase_on_first_contact(&conn, 1),
            Err(RebaseError::HubBehind { .. })
        ));
        assert_eq!(rebase_on_first_contact(&conn, 3).unwrap(), 0);
    }

    #[test]
    fn envelope_from_outbox_row_validates_and_signs() {
        let conn = db();
        record(&conn, &movement(Kind::Sale, "A", Quantity::Delta(-2)), None).unwrap();
        let row = pending_batch(&conn, 1).unwrap().remove(0);
        let key = bazaar_shared::SigningKey::generate();
        let bytes = row.envelope(&store()).to_signed_bytes(&key).unwrap();
        assert!(Envelope::decode(&bytes).unwrap().verify(&key));
    }

    #[test]
    fn the_hubs_figure_acknowledges_only_rows_this_agent_delivered() {
        let conn = db();
        for _ in 0..3 {
            record(&conn, &movement(Kind::Sale, "A", Quantity::Delta(-1)), None).unwrap();
        }
        mark_sent(&conn, &[1], "t").unwrap();
        assert_eq!(
            mark_acked(&conn, 3, "t").unwrap(),
            1,
            "seq 2 and 3 were never delivered"
        );
        let counts = outbox_counts(&conn).unwrap();
        assert_eq!((counts.pending, counts.sent), (2, 0));
        assert_eq!(
            pending_batch(&conn, 10)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [2, 3]
        );
        assert!(!has_unacknowledged_up_to(&conn, 3).unwrap());
    }

    #[test]
    fn a_copy_is_told_apart_by_the_id_at_the_hubs_last_seq() {
        let conn = db();
        let ids: Vec<String> = (0..3)
            .map(|_| {
                record(&conn, &movement(Kind::Sale, "A", Quantity::Delta(-1)), None)
                    .unwrap()
                    .movement
                    .id
            })
            .collect();
        mark_sent(&conn, &[1, 2], "t").unwrap();
        mark_acked(&conn, 1, "t").unwrap();
        assert_eq!(
            check_copy(&conn, 1, Some("anything")).unwrap(),
            CopyCheck::Ours,
            "nothing new"
        );
        assert_eq!(
            check_copy(&conn, 2, Some(&ids[1])).unwrap(),
            CopyCheck::Ours
        );
        assert_eq!(
            check_copy(&conn, 3, Some(&ids[2])).unwrap(),
            CopyCheck::Ours,
            "delivered, report lost"
        );
        assert_eq!(
            check_copy(&conn, 5, None).unwrap(),
            CopyCheck::Ours,
            "a hub that names no id"
        );
        let CopyCheck::Diverged(clone) = check_copy(&conn, 2, Some(&ids[0])).unwrap() else {
            panic!("another id at seq 2 is a clone's");
        };
        assert!(clone.contains("another server"), "{clone}");
        let CopyCheck::Diverged(older) = check_copy(&conn, 9, Some(&ids[0])).unwrap() else {
            panic!("a seq never numbered here is an older copy's");
        };
        assert!(older.contains("older copy"), "{older}");
        // A void of the hub's own at that seq is fine.
        void_row(&conn, 3, "hub:refused", "x", VoidState::Acked).unwrap();
        assert_eq!(
            check_copy(&conn, 3, Some("hub-void-id")).unwrap(),
            CopyCheck::Ours
        );
    }

    #[test]
    fn a_parked_movement_keeps_its_idempotency_key_pointing_at_the_void() {
        let conn = db();
        let key = || {
            Some(IdempotencyKey {
                key: "k1",
                request_hash: "h1",
            })
        };
        record(
            &conn,
            &movement(Kind::Receipt, "A", Quantity::Delta(7)),
            None,
        )
        .unwrap();
        let m = movement(Kind::Count, "A", Quantity::Counted(3));
        let counted = record(&conn, &m, key()).unwrap();
        let voided = void_row(&conn, 2, "unencodable", "test", VoidState::Pending)
            .unwrap()
            .unwrap();
        assert_eq!(
            (voided.original_id.as_str(), voided.reversed),
            (counted.movement.id.as_str(), -4)
        );
        assert_eq!(
            stock_of(&conn, &Sku::parse("A").unwrap())
                .unwrap()
                .unwrap()
                .on_hand,
            7
        );
        let retry = record(&conn, &m, key()).unwrap();
        assert!(!retry.created, "a retry never records it again");
        assert_eq!(
            (retry.movement.kind.as_str(), retry.movement.delta),
            ("void", 0)
        );
        assert_eq!(outbox_counts(&conn).unwrap().parked, 1);
    }
}

//! The hub's outbox: every message for one store's agent, written in the same MySQL
//! transaction as the change it carries (DESIGN §5).
//!
//! Invariants:
//! - Each store has ONE gapless counter, `store_sync.last_hub_seq`. Hub-origin movements,
//!   expected-transfer notices, bulk-state notices and re-snapshot requests all take their
//!   `hub_seq` from it, so an agent that applies `last + 1` only sees one total order.
//! - The counter row is locked `FOR UPDATE` before a number is taken, and the number is
//!   used by exactly one outbox row in the same transaction: a rollback returns it, a
//!   commit publishes both. Nothing else ever writes `last_hub_seq`.
//! - Lock order is ingest's: `store_sync` rows first, in ascending store order, before
//!   any `stock` row of those stores. A transaction that needs several stores' counters
//!   locks them with [`Counter::lock_many`] (sorted) or calls [`Counter::lock`] in
//!   ascending store order; a deadlock anyway is retried whole by the caller.
//! - Rows are signed with the store's key at write time (RFC 8785 canonical bytes,
//!   HMAC-SHA256), so the relay and the range fetch hand out exactly the bytes written.

use bazaar_shared::{Command, CommandBody, Document, Envelope, Origin, SigningKey, StoreId};
use chrono::Utc;
use sqlx::{MySqlConnection, Row};

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("store {0} is not registered at this hub")]
    UnknownStore(String),
    #[error("the hub's record of store {0}'s key is damaged")]
    DamagedKey(String),
    #[error("message for store {store} is invalid: {detail}")]
    Invalid { store: String, detail: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// One store's hub_seq counter, locked by the current transaction.
#[derive(Debug)]
pub struct Counter {
    store: StoreId,
    last_hub_seq: u64,
    key: SigningKey,
}

impl Counter {
    /// Locks `store`'s counter row for the rest of the transaction.
    pub async fn lock(conn: &mut MySqlConnection, store: &StoreId) -> Result<Counter, OutboxError> {
        // Only the counter row is locked; the key is a plain read (it never changes).
        let last_hub_seq: Option<u64> =
            sqlx::query_scalar("SELECT last_hub_seq FROM store_sync WHERE store = ? FOR UPDATE")
                .bind(store.as_str())
                .fetch_optional(&mut *conn)
                .await?;
        let key: Option<String> = sqlx::query_scalar("SELECT signing_key FROM stores WHERE id = ?")
            .bind(store.as_str())
            .fetch_optional(&mut *conn)
            .await?;
        let (Some(last_hub_seq), Some(key)) = (last_hub_seq, key) else {
            return Err(OutboxError::UnknownStore(store.to_string()));
        };
        let key = SigningKey::from_base64(&key)
            .map_err(|_| OutboxError::DamagedKey(store.to_string()))?;
        Ok(Counter {
            store: store.clone(),
            last_hub_seq,
            key,
        })
    }

    /// Locks several stores' counters in ascending store order (ingest's order).
    pub async fn lock_many(
        conn: &mut MySqlConnection,
        stores: &[StoreId],
    ) -> Result<Vec<Counter>, OutboxError> {
        let mut sorted: Vec<&StoreId> = stores.iter().collect();
        sorted.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        sorted.dedup();
        if sorted.len() > 1 {
            // One statement, in the index's (the collation's) order: the order ingest locks
            // in, whatever byte order says of `a` and `B`.
            let mut q = sqlx::QueryBuilder::<sqlx::MySql>::new(
                "SELECT store FROM store_sync WHERE store IN (",
            );
            let mut sep = q.separated(", ");
            for s in &sorted {
                sep.push_bind(s.as_str());
            }
            q.push(") ORDER BY store FOR UPDATE");
            q.build().execute(&mut *conn).await?;
        }
        let mut counters = Vec::with_capacity(sorted.len());
        for store in sorted {
            counters.push(Counter::lock(conn, store).await?);
        }
        Ok(counters)
    }

    pub fn store(&self) -> &StoreId {
        &self.store
    }

    /// The hub_seq the next message for this store will carry.
    pub fn next_seq(&self) -> u64 {
        self.last_hub_seq + 1
    }

    /// The last hub_seq used: the hub's own watermark for a hub-origin count.
    pub fn last_seq(&self) -> u64 {
        self.last_hub_seq
    }

    /// Writes a hub-origin movement numbered [`Self::next_seq`]; returns its signed bytes.
    pub async fn push_movement(
        &mut self,
        conn: &mut MySqlConnection,
        envelope: &Envelope,
    ) -> Result<Vec<u8>, OutboxError> {
        let invalid = |detail: String| OutboxError::Invalid {
            store: self.store.to_string(),
            detail,
        };
        if envelope.store != self.store
            || envelope.origin != Origin::Hub
            || envelope.seq != self.next_seq()
        {
            return Err(invalid(format!(
                "a hub-origin movement for {} must carry origin hub and seq {}",
                self.store,
                self.next_seq()
            )));
        }
        let bytes = envelope
            .to_signed_bytes(&self.key)
            .map_err(|e| invalid(e.to_string()))?;
        self.write(conn, "movement", &envelope.id.to_string(), &bytes)
            .await?;
        Ok(bytes)
    }

    /// Writes a command numbered [`Self::next_seq`]; returns the hub_seq used.
    pub async fn push_command(
        &mut self,
        conn: &mut MySqlConnection,
        body: CommandBody,
    ) -> Result<u64, OutboxError> {
        let command = Command::new(self.store.clone(), self.next_seq(), body);
        let bytes = command
            .to_signed_bytes(&self.key)
            .map_err(|e| OutboxError::Invalid {
                store: self.store.to_string(),
                detail: e.to_string(),
            })?;
        self.write(
            conn,
            command.body.type_name(),
            &command.id.to_string(),
            &bytes,
        )
        .await?;
        Ok(command.seq)
    }

    async fn write(
        &mut self,
        conn: &mut MySqlConnection,
        kind: &str,
        id: &str,
        payload: &[u8],
    ) -> Result<(), sqlx::Error> {
        let seq = self.next_seq();
        sqlx::query(
            "INSERT INTO outbox (store, hub_seq, kind, id, payload, created_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(self.store.as_str())
        .bind(seq)
        .bind(kind)
        .bind(id)
        .bind(payload)
        .bind(Utc::now())
        .execute(&mut *conn)
        .await?;
        sqlx::query("UPDATE store_sync SET last_hub_seq = ? WHERE store = ?")
            .bind(seq)
            .bind(self.store.as_str())
            .execute(&mut *conn)
            .await?;
        self.last_hub_seq = seq;
        Ok(())
    }
}

/// Announces that a new version of `document` ("thresholds", "catalogue" or "forecasts")
/// exists for `store`. Call it inside the transaction that changes the document, after
/// locking nothing ingest locks (`stock` rows) and, for several stores, in ascending store
/// order. Returns the hub_seq used.
pub async fn announce_bulk_state(
    conn: &mut MySqlConnection,
    store: &StoreId,
    document: &str,
) -> anyhow::Result<u64> {
    let Some(document) = Document::parse(document) else {
        anyhow::bail!(
            "unknown bulk-state document {document:?}: one of {}",
            Document::ALL.map(|d| d.as_str()).join(", ")
        );
    };
    let mut counter = Counter::lock(conn, store).await?;
    Ok(counter
        .push_command(conn, CommandBody::BulkState { document })
        .await?)
}

/// The notice a transfer_out sends to the receiving store.
pub fn expected_transfer(transfer_out: &Envelope) -> CommandBody {
    CommandBody::ExpectedTransfer {
        transfer_id: transfer_out.id,
        from_store: transfer_out.store.clone(),
        sku: transfer_out.sku.clone(),
        qty: -transfer_out.delta,
        reference: transfer_out.reference.clone(),
        sent_at: transfer_out.occurred_at,
    }
}

/// Tells a transfer_out's receiving store that goods are on their way; `None` (and
/// nothing written) when that store is not registered here. The receiving store's counter
/// should already be locked in the caller's sorted lock order (see the module's notes).
pub async fn announce_transfer(
    conn: &mut MySqlConnection,
    transfer_out: &Envelope,
) -> Result<Option<u64>, OutboxError> {
    let Some(to) = transfer_out.to_store.as_ref() else {
        return Ok(None);
    };
    let mut counter = match Counter::lock(conn, to).await {
        Ok(c) => c,
        Err(OutboxError::UnknownStore(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    counter
        .push_command(conn, expected_transfer(transfer_out))
        .await
        .map(Some)
}

/// Asks `store`'s agent to download its snapshot again; returns the hub_seq used.
pub async fn request_resnapshot(
    conn: &mut MySqlConnection,
    store: &StoreId,
    reason: &str,
) -> Result<u64, OutboxError> {
    let mut counter = Counter::lock(conn, store).await?;
    counter
        .push_command(
            conn,
            CommandBody::Resnapshot {
                reason: reason.to_owned(),
            },
        )
        .await
}

/// One outbox row as the relay and the range fetch see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub store: String,
    pub hub_seq: u64,
    pub payload: Vec<u8>,
}

/// Rows of `store` with hub_seq > `after`, in order, at most `limit`.
pub async fn range(
    pool: &sqlx::MySqlPool,
    store: &StoreId,
    after: u64,
    limit: u32,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT store, hub_seq, payload FROM outbox WHERE store = ? AND hub_seq > ? ORDER BY hub_seq LIMIT ?",
    )
    .bind(store.as_str())
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.into_iter().map(|r| row(&r)).collect()
}

fn row(r: &sqlx::mysql::MySqlRow) -> Result<OutboxRow, sqlx::Error> {
    Ok(OutboxRow {
        store: r.try_get("store")?,
        hub_seq: r.try_get("hub_seq")?,
        payload: r.try_get("payload")?,
    })
}

/// Unpublished rows, per store in hub_seq order, at most `limit` in all, starting with the
/// stores after `after` and wrapping round: a relay that passes the last store of each
/// full batch back as `after` serves every store in turn, so one store's large backlog
/// never holds the others' commands back by more than a batch.
pub async fn unpublished(
    pool: &sqlx::MySqlPool,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<OutboxRow>, sqlx::Error> {
    let Some(after) = after else {
        let rows = sqlx::query(
            "SELECT store, hub_seq, payload FROM outbox WHERE published_at IS NULL
             ORDER BY store, hub_seq LIMIT ?",
        )
        .bind(limit)
        .fetch_all(pool)
        .await?;
        return rows.iter().map(row).collect();
    };
    let mut rows: Vec<OutboxRow> = sqlx::query(
        "SELECT store, hub_seq, payload FROM outbox WHERE published_at IS NULL AND store > ?
         ORDER BY store, hub_seq LIMIT ?",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(row)
    .collect::<Result<_, _>>()?;
    let left = limit.saturating_sub(rows.len() as u32);
    if left > 0 {
        let wrapped = sqlx::query(
            "SELECT store, hub_seq, payload FROM outbox WHERE published_at IS NULL AND store <= ?
             ORDER BY store, hub_seq LIMIT ?",
        )
        .bind(after)
        .bind(left)
        .fetch_all(pool)
        .await?;
        for r in &wrapped {
            rows.push(row(r)?);
        }
    }
    Ok(rows)
}

/// Marks rows published once the broker acknowledged them.
pub async fn mark_published(
    pool: &sqlx::MySqlPool,
    store: &str,
    seqs: &[u64],
) -> Result<(), sqlx::Error> {
    if seqs.is_empty() {
        return Ok(());
    }
    let mut q = sqlx::QueryBuilder::<sqlx::MySql>::new("UPDATE outbox SET published_at = ");
    q.push_bind(Utc::now())
        .push(" WHERE published_at IS NULL AND store = ")
        .push_bind(store)
        .push(" AND hub_seq IN (");
    let mut sep = q.separated(", ");
    for s in seqs {
        sep.push_bind(*s);
    }
    q.push(")");
    q.build().execute(pool).await?;
    Ok(())
}

/// Rows not yet published (an index range, however long the published history).
pub async fn depth(pool: &sqlx::MySqlPool) -> Result<u64, sqlx::Error> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(pool)
        .await?;
    Ok(n.max(0) as u64)
}

-- Parked movements (DESIGN §6, promise 5): a store movement the outbox could not encode, or
-- that the hub refused and consumed its seq for, leaves the ledger for this table. Its seq
-- is taken over in `movements` by a `void` (delta 0) whose `voids` names the original's
-- id, so the rows after it are still sent, and its stock effect is reversed.
ALTER TABLE movements ADD COLUMN voids TEXT;

CREATE TABLE parked (
    parked_id     INTEGER PRIMARY KEY,
    seq           INTEGER NOT NULL,
    id            TEXT NOT NULL,
    kind          TEXT NOT NULL,
    sku           TEXT NOT NULL,
    delta         INTEGER NOT NULL,
    counted       INTEGER,
    hub_watermark INTEGER NOT NULL,
    movement_reason TEXT,
    ref           TEXT,
    to_store      TEXT,
    from_store    TEXT,
    occurred_at   TEXT NOT NULL,
    recorded_at   TEXT NOT NULL,
    -- Why it was parked: `unencodable` (the agent could not put it on the wire) or
    -- `hub:<reason>` (the hub refused it and voided its seq).
    reason        TEXT NOT NULL,
    detail        TEXT NOT NULL,
    -- The void that took its seq over.
    void_id       TEXT NOT NULL,
    parked_at     TEXT NOT NULL
) STRICT;

CREATE INDEX parked_seq ON parked (seq);

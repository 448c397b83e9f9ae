-- SQLite uses a partial index only when the query's WHERE states the index's condition
-- literally; `state = 'pending'` does not let it use an index on `state IN (...)`. One
-- index per outbox state, matching the queries exactly, keeps every outbox read and
-- update bounded by the rows it touches, however long the ledger.
CREATE INDEX movements_pending ON movements (seq) WHERE state = 'pending';
CREATE INDEX movements_sent ON movements (seq) WHERE state = 'sent';
CREATE INDEX movements_parked ON movements (seq) WHERE state = 'parked';

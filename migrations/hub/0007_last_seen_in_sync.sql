-- Issue 10: ingest wrote `stores.last_seen_at` for every store of every batch, a second row
-- per store beside `store_sync`, which it writes anyway (2,000 row updates per batch at
-- chain scale). The time moves to `store_sync`; `stores.last_seen_at` is no longer written
-- and is read only as the value from before this migration.
ALTER TABLE store_sync ADD COLUMN last_seen_at DATETIME(6) NULL;
UPDATE store_sync y JOIN stores s ON s.id = y.store SET y.last_seen_at = s.last_seen_at;

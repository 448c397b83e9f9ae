-- `GET /v1/movements?store=...` pages one store's ledger in the ledger's order
-- (received_at, store, origin, seq): with this index each page is a short range scan
-- instead of a sort of the store's whole history.
CREATE INDEX movements_store_received ON movements (store, received_at);

-- Expected transfers in (DESIGN §5): a notice from the hub that goods left another store
-- for this one. The store records its own `transfer_in` when the goods arrive; a
-- transfer_in whose `ref` is the notice's transfer_id marks it received.
CREATE TABLE expected_transfers (
    transfer_id TEXT PRIMARY KEY,
    hub_seq     INTEGER NOT NULL,
    from_store  TEXT NOT NULL,
    sku         TEXT NOT NULL,
    qty         INTEGER NOT NULL,
    ref         TEXT,
    sent_at     TEXT NOT NULL,
    noticed_at  TEXT NOT NULL
) STRICT;

CREATE INDEX movements_transfer_in_ref ON movements (ref) WHERE kind = 'transfer_in';

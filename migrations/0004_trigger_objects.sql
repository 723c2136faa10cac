-- The trigger's memory of the objects it has seen: the version (ETag) it turned into
-- jobs and the S3 event sequencer, so a repeated or late event and a watcher restart
-- make no second job, and a stale event (an older upload's, arriving late) is skipped.
CREATE TABLE trigger_objects (
    bucket     TEXT NOT NULL,
    key        TEXT NOT NULL,
    etag       TEXT NOT NULL,
    -- The S3 event sequencer of the last event taken, if it came from an event.
    sequencer  TEXT,
    -- The route that matched, or NULL when none did.
    route      TEXT,
    seen_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (bucket, key)
);

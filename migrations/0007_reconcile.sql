-- How many times a cell's tick re-published a queued job whose message was in no queue
-- (lost, or purged); past a bound, the job is marked dead instead.
ALTER TABLE jobs ADD COLUMN republished INTEGER NOT NULL DEFAULT 0;

-- Who publishes a committed result, and until when: the committing cell first, then,
-- once that claim runs out, whichever cell's tick claims it from the outbox. One sender
-- at a time, so a publish held up by a broker outage and a re-send from the outbox
-- never both go out.
ALTER TABLE jobs ADD COLUMN result_claimed_until TIMESTAMPTZ;

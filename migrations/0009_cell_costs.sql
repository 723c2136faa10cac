-- Jobs stopped by hand (`cellfarm cancel`) end as `cancelled`, a final state; their open
-- attempt ends as `cancelled` too. The pool_load summary (0008) counts only queued and
-- running jobs, so a cancelled job leaves it by the same trigger as any other end.
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'dead', 'cancelled'));
COMMENT ON COLUMN job_attempts.outcome IS
    'succeeded | failed | retry | handed_back | interrupted (spot notice) | lost (lease expired) | superseded | fault | cancelled (by hand)';

-- Cell events that can be costed: the machine behind the event, what it is, where, how
-- it is bought and what it costs, where known (the pool's configured prices). A row from before this migration, or from a cloud that does not say,
-- leaves them NULL and is not costed.
ALTER TABLE cell_events
    ADD COLUMN instance_id TEXT,
    ADD COLUMN instance_type TEXT,
    ADD COLUMN az TEXT,
    ADD COLUMN lifecycle TEXT CHECK (lifecycle IN ('spot', 'on-demand')),
    -- Dollars an hour this machine costs.
    ADD COLUMN price_per_hour FLOAT8,
    -- Dollars an hour the same type costs on demand: what the farm would have paid.
    ADD COLUMN on_demand_per_hour FLOAT8;
COMMENT ON COLUMN cell_events.kind IS
    'launch | alive (its cell first beat) | death | interruption (spot notice) | rebalance (rebalance recommendation) | reap';
CREATE INDEX cell_events_instance ON cell_events (instance_id) WHERE instance_id IS NOT NULL;

-- Spot interruptions end an attempt as `interrupted` (handed back without spending an
-- attempt), and a rebalance recommendation is a cell event of its own.
COMMENT ON COLUMN job_attempts.outcome IS
    'succeeded | failed | retry | handed_back | interrupted (spot notice) | lost (lease expired) | superseded';
COMMENT ON COLUMN cell_events.kind IS
    'launch | death | interruption (spot notice) | rebalance (rebalance recommendation)';

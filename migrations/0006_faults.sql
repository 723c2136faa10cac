-- The farm's own faults (S3, the broker, the ledger, no room on a cell) end an attempt
-- as `fault`: handed back without spending an attempt, bounded per job by time.
COMMENT ON COLUMN job_attempts.outcome IS
    'succeeded | failed | retry | handed_back | interrupted (spot notice) | fault (the farm''s systems) | lost (lease expired) | superseded';
CREATE INDEX job_attempts_faults ON job_attempts (job_id) WHERE outcome = 'fault';

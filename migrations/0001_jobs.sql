-- The ledger: one row per job, one row per attempt.
-- States: queued -> running -> succeeded | failed | dead. A running row always has a
-- lease; a row whose lease ran out is put back to queued by any live cell.

CREATE TABLE jobs (
    id             TEXT PRIMARY KEY,
    pipeline       TEXT NOT NULL,
    pool           TEXT NOT NULL,
    source_bucket  TEXT NOT NULL,
    source_key     TEXT NOT NULL,
    source_etag    TEXT NOT NULL,
    state          TEXT NOT NULL DEFAULT 'queued'
                   CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'dead')),
    -- Attempts that counted against max_attempts (hand-backs do not count).
    attempts       INTEGER NOT NULL DEFAULT 0,
    cell_id        TEXT,
    lease_expires  TIMESTAMPTZ,
    -- The job message as published, so an expired lease can be re-published.
    message        JSONB NOT NULL,
    probe          JSONB,
    outputs        JSONB,
    -- The result message; an outbox: published after commit, re-sent by any cell's tick
    -- until result_sent, so a broker outage between commit and publish loses nothing.
    result         JSONB,
    result_sent    BOOLEAN NOT NULL DEFAULT false,
    error          TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at     TIMESTAMPTZ,
    finished_at    TIMESTAMPTZ,
    CHECK (state <> 'running' OR lease_expires IS NOT NULL)
);

CREATE INDEX jobs_running_lease ON jobs (lease_expires) WHERE state = 'running';
CREATE INDEX jobs_pool_state ON jobs (pool, state);
CREATE INDEX jobs_unsent ON jobs (finished_at) WHERE state = 'succeeded' AND NOT result_sent;

CREATE TABLE job_attempts (
    id           BIGSERIAL PRIMARY KEY,
    job_id       TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    cell_id      TEXT NOT NULL,
    started_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at  TIMESTAMPTZ,
    -- succeeded | failed | retry | handed_back | lost (lease expired) | superseded
    outcome      TEXT,
    error        TEXT
);

CREATE INDEX job_attempts_job ON job_attempts (job_id);

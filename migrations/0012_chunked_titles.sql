-- Chunked titles (src/chunk): a title's job splits into child jobs, one per chunk and
-- one for its audio, each its own row with `parent` naming the title. The title waits
-- (`waiting`, no lease, no message queued) until its last child commits; that commit,
-- holding the title's row, sets it `queued` with `assemble` and the cell that claims it
-- joins the parts. `plan` is what the split decided (chunks, frames, length).
ALTER TABLE jobs DROP CONSTRAINT jobs_state_check;
ALTER TABLE jobs ADD CONSTRAINT jobs_state_check
    CHECK (state IN ('queued', 'running', 'waiting', 'succeeded', 'failed', 'dead',
                     'cancelled'));
ALTER TABLE jobs
    ADD COLUMN parent   TEXT REFERENCES jobs (id) ON DELETE CASCADE,
    ADD COLUMN plan     JSONB,
    ADD COLUMN assemble BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX jobs_parent ON jobs (parent) WHERE parent IS NOT NULL;
COMMENT ON COLUMN job_attempts.outcome IS
    'succeeded | failed | retry | handed_back | interrupted (spot notice) | lost (lease expired) | superseded | fault | cancelled (by hand) | split (into child jobs) | redo (assembly sent chunks back)';

-- The pool summary also counts the jobs that ended, by how they ended, so that
-- `cellfarm status` reads a farm's jobs by state from the summary (a few rows a pool)
-- instead of counting a million ledger rows.
ALTER TABLE pool_load
    ADD COLUMN succeeded BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN failed    BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN dead      BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN cancelled BIGINT NOT NULL DEFAULT 0;

-- As in 0008, and every state now has its count; work is still only that of the jobs
-- queued or running.
CREATE OR REPLACE FUNCTION pool_load_apply(js jobs[], sign INTEGER) RETURNS void
LANGUAGE sql SET search_path FROM CURRENT AS $$
    INSERT INTO pool_load AS l
        (pool, pipeline, shard, running, queued, estimated_ms, probed_ms, unknown,
         succeeded, failed, dead, cancelled)
    SELECT pool, pipeline, shard,
           sign * count(*) FILTER (WHERE state = 'running'),
           sign * count(*) FILTER (WHERE state = 'queued'),
           sign * coalesce(sum(work_ms), 0),
           sign * coalesce(sum(probe_ms) FILTER (WHERE work_ms IS NULL), 0),
           sign * count(*) FILTER (WHERE unfinished AND work_ms IS NULL AND probe_ms IS NULL),
           sign * count(*) FILTER (WHERE state = 'succeeded'),
           sign * count(*) FILTER (WHERE state = 'failed'),
           sign * count(*) FILTER (WHERE state = 'dead'),
           sign * count(*) FILTER (WHERE state = 'cancelled')
    FROM (
        SELECT j.pool, j.pipeline, hashtext(j.id) & 15 AS shard, j.state,
               j.state IN ('queued', 'running') AS unfinished,
               CASE WHEN j.state IN ('queued', 'running')
                    THEN round(((j.message->>'work_secs')::float8) * 1000)::int8 END AS work_ms,
               CASE WHEN j.state IN ('queued', 'running')
                    THEN round(((j.probe->>'duration')::float8) * 1000)::int8 END AS probe_ms
        FROM unnest(js) AS j
    ) AS shares
    GROUP BY pool, pipeline, shard
    ON CONFLICT (pool, pipeline, shard) DO UPDATE SET
        running = l.running + EXCLUDED.running,
        queued = l.queued + EXCLUDED.queued,
        estimated_ms = l.estimated_ms + EXCLUDED.estimated_ms,
        probed_ms = l.probed_ms + EXCLUDED.probed_ms,
        unknown = l.unknown + EXCLUDED.unknown,
        succeeded = l.succeeded + EXCLUDED.succeeded,
        failed = l.failed + EXCLUDED.failed,
        dead = l.dead + EXCLUDED.dead,
        cancelled = l.cancelled + EXCLUDED.cancelled;
$$;

-- The finished jobs already here, a shard at a time (the unfinished were counted by 0008;
-- the function counts no work for a finished job).
SELECT pool_load_apply(array_agg(j), 1)
FROM jobs AS j
WHERE state IN ('succeeded', 'failed', 'dead', 'cancelled')
GROUP BY pool, hashtext(id) & 15;

-- What each pool's unfinished jobs weigh, kept as the jobs change and in the same
-- transactions, so that a mitosis tick and `cellfarm status` read a pool's load in the
-- same time with a million queued jobs as with a thousand.
--
-- One (pool, pipeline) is spread over 16 shards by job id, so cells changing jobs at
-- once do not all wait on one row; a reader sums the shards. Seconds of work are kept
-- as whole milliseconds: an integer sum returns to exactly zero when the jobs are done,
-- where a float's rounding would leave a phantom crumb of work that wants a cell.
CREATE TABLE pool_load (
    pool         TEXT NOT NULL,
    pipeline     TEXT NOT NULL,
    shard        SMALLINT NOT NULL,
    running      BIGINT NOT NULL DEFAULT 0,
    queued       BIGINT NOT NULL DEFAULT 0,
    -- The messages' `work_secs`, of the jobs that have one.
    estimated_ms BIGINT NOT NULL DEFAULT 0,
    -- The probed source seconds of the jobs with no `work_secs`.
    probed_ms    BIGINT NOT NULL DEFAULT 0,
    -- Jobs with neither.
    unknown      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (pool, pipeline, shard)
);

-- Adds (sign 1) or takes away (sign -1) the shares of `js`: nothing for a job that is
-- neither queued nor running. The one place a job's share is defined. It keeps the
-- schema it was made in, whatever the caller's search_path.
CREATE FUNCTION pool_load_apply(js jobs[], sign INTEGER) RETURNS void
LANGUAGE sql SET search_path FROM CURRENT AS $$
    INSERT INTO pool_load AS l
        (pool, pipeline, shard, running, queued, estimated_ms, probed_ms, unknown)
    SELECT pool, pipeline, shard,
           sign * count(*) FILTER (WHERE state = 'running'),
           sign * count(*) FILTER (WHERE state = 'queued'),
           sign * coalesce(sum(work_ms), 0),
           sign * coalesce(sum(probe_ms) FILTER (WHERE work_ms IS NULL), 0),
           sign * count(*) FILTER (WHERE work_ms IS NULL AND probe_ms IS NULL)
    FROM (
        SELECT j.pool, j.pipeline, hashtext(j.id) & 15 AS shard, j.state,
               round(((j.message->>'work_secs')::float8) * 1000)::int8 AS work_ms,
               round(((j.probe->>'duration')::float8) * 1000)::int8 AS probe_ms
        FROM unnest(js) AS j
        WHERE j.state IN ('queued', 'running')
    ) AS shares
    GROUP BY pool, pipeline, shard
    ON CONFLICT (pool, pipeline, shard) DO UPDATE SET
        running = l.running + EXCLUDED.running,
        queued = l.queued + EXCLUDED.queued,
        estimated_ms = l.estimated_ms + EXCLUDED.estimated_ms,
        probed_ms = l.probed_ms + EXCLUDED.probed_ms,
        unknown = l.unknown + EXCLUDED.unknown;
$$;

-- Inserts and deletes are taken a statement at a time, so that a batch of jobs costs
-- one upsert a shard, not one a job.
CREATE FUNCTION pool_load_added() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pool_load_apply((SELECT array_agg(ROW(a.*)::jobs) FROM added AS a), 1);
    RETURN NULL;
END
$$;

CREATE FUNCTION pool_load_removed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pool_load_apply((SELECT array_agg(ROW(r.*)::jobs) FROM removed AS r), -1);
    RETURN NULL;
END
$$;

CREATE FUNCTION pool_load_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    PERFORM pool_load_apply(ARRAY[OLD], -1);
    PERFORM pool_load_apply(ARRAY[NEW], 1);
    RETURN NULL;
END
$$;

CREATE TRIGGER pool_load_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION pool_load_added();

CREATE TRIGGER pool_load_delete AFTER DELETE ON jobs
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION pool_load_removed();

-- A row at a time, so that lease renewals, the most frequent update, fire nothing.
CREATE TRIGGER pool_load_update AFTER UPDATE ON jobs
    FOR EACH ROW
    WHEN (OLD.state IS DISTINCT FROM NEW.state
          OR OLD.pool IS DISTINCT FROM NEW.pool
          OR OLD.pipeline IS DISTINCT FROM NEW.pipeline
          OR OLD.message IS DISTINCT FROM NEW.message
          OR OLD.probe IS DISTINCT FROM NEW.probe)
    EXECUTE FUNCTION pool_load_changed();

-- The load of the jobs already here, a shard at a time.
SELECT pool_load_apply(array_agg(j), 1)
FROM jobs AS j
WHERE state IN ('queued', 'running')
GROUP BY pool, hashtext(id) & 15;

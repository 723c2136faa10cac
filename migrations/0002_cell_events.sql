-- What happened to the farm's cells: launches, deaths, interruptions, with the reason.
CREATE TABLE cell_events (
    id       BIGSERIAL PRIMARY KEY,
    at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    pool     TEXT NOT NULL,
    -- launch | death | interruption
    kind     TEXT NOT NULL,
    -- The launching or dying cell, or 'submit' for a launch made by a submission.
    cell_id  TEXT NOT NULL,
    -- Cells launched (launch), else 1.
    cells    INTEGER NOT NULL DEFAULT 1,
    reason   TEXT NOT NULL
);

CREATE INDEX cell_events_at ON cell_events (at);

-- Templates to retire: each row commits with the transition that ended its
-- attempt, so a crash cannot forget one. The sweeper works them off: keep
-- the customization log, cancel and confirm a run still going, delete, and
-- confirm the deletion; failures are retried with backoff.
CREATE TABLE template_cleanup (
    template    TEXT PRIMARY KEY,
    build_id    TEXT NOT NULL,
    -- The template's errorHandling asks to keep build resources on failure.
    keep        INTEGER NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_at     TEXT NOT NULL,
    last_error  TEXT,
    created_at  TEXT NOT NULL
);
CREATE INDEX template_cleanup_due ON template_cleanup (next_at);

-- Customization logs copied from the provider before its copy goes with the
-- template (in Azure, with the staging resource group).
CREATE TABLE build_logs (
    template    TEXT PRIMARY KEY,
    build_id    TEXT NOT NULL,
    body        BLOB NOT NULL,
    fetched_at  TEXT NOT NULL
);

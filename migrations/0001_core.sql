-- Core tables: builds and their history, admission keys, pipeline runtime
-- state, the local durable queue, dead letters, events outbox, retention audit.

CREATE TABLE builds (
    id            TEXT PRIMARY KEY,
    pipeline      TEXT NOT NULL,
    state         TEXT NOT NULL,          -- API spelling: queued, running, succeeded…
    terminal      INTEGER NOT NULL DEFAULT 0,
    automatic     INTEGER NOT NULL DEFAULT 0,
    row_version   INTEGER NOT NULL,       -- every write is conditional on it
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    next_poll_at  TEXT,                   -- when the sweeper should step it if no poll came
    body          TEXT NOT NULL           -- the whole Build as JSON
);
CREATE INDEX builds_active ON builds (pipeline, terminal, created_at);
CREATE INDEX builds_due ON builds (terminal, next_poll_at);

CREATE TABLE build_history (
    build_id   TEXT NOT NULL REFERENCES builds(id),
    seq        INTEGER NOT NULL,
    at         TEXT NOT NULL,
    from_state TEXT,
    to_state   TEXT NOT NULL,
    cause      TEXT NOT NULL,
    PRIMARY KEY (build_id, seq)
);

-- Idempotency keys of admitted requests: a repeated key finds its build.
CREATE TABLE request_keys (
    key        TEXT PRIMARY KEY,
    build_id   TEXT NOT NULL REFERENCES builds(id),
    created_at TEXT NOT NULL
);

CREATE TABLE pipeline_state (
    pipeline              TEXT PRIMARY KEY,
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    breaker_open_since    TEXT,
    body                  TEXT NOT NULL DEFAULT '{}'   -- watcher memory, warnings (JSON)
);

-- The local host's durable queue (Service Bus semantics on one machine).
CREATE TABLE queue_messages (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue          TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    body           TEXT NOT NULL,
    enqueued_at    TEXT NOT NULL,
    visible_at     TEXT NOT NULL,          -- scheduled enqueue time / lock expiry
    delivery_count INTEGER NOT NULL DEFAULT 0,
    lock_token     TEXT
);
CREATE INDEX queue_ready ON queue_messages (queue, visible_at);

CREATE TABLE dead_letters (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    queue          TEXT NOT NULL,
    message_id     TEXT NOT NULL,
    body           TEXT NOT NULL,
    reason         TEXT NOT NULL,
    delivery_count INTEGER NOT NULL,
    dead_at        TEXT NOT NULL
);

-- CloudEvents waiting for (or retrying) webhook delivery.
CREATE TABLE event_outbox (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT NOT NULL UNIQUE,
    body          TEXT NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    next_attempt  TEXT NOT NULL,
    delivered_at  TEXT,
    last_error    TEXT
);

CREATE TABLE retention_audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL,
    at          TEXT NOT NULL,
    definition  TEXT NOT NULL,
    version     TEXT NOT NULL,
    action      TEXT NOT NULL,     -- keep / deprecate / delete
    status      TEXT NOT NULL,     -- planned / done / failed / dry-run
    reason      TEXT NOT NULL,
    policy      TEXT NOT NULL
);
CREATE UNIQUE INDEX retention_audit_step ON retention_audit (run_id, definition, version, action);

-- The local host's timers: last firing per function, to catch up a missed one once.
CREATE TABLE timer_state (
    function  TEXT PRIMARY KEY,
    last_fire TEXT NOT NULL
);

-- When a dead letter was put back on its queue (`POST /api/deadletters/{seq}/replay`).
-- Marked before the message is sent, so a second replay finds it marked.
ALTER TABLE dead_letters ADD COLUMN replayed_at TEXT;

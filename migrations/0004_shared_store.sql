-- What several hosts sharing one store need: the pipeline of each cleanup
-- job (the Table store keeps it in the pipeline's partition, the API of the
-- port names it) and leases for work one host at a time must do.
ALTER TABLE template_cleanup ADD COLUMN pipeline TEXT NOT NULL DEFAULT '';

CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);

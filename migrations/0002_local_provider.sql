-- Local provider tables (templates, runs, base catalog, gallery, VMs).
-- Everything the local provider must remember across restarts lives here;
-- the files these rows point at live under the provider's data folder.

-- AIB image templates as submitted (the body is kept verbatim).
CREATE TABLE local_templates (
    name        TEXT PRIMARY KEY,
    body        TEXT NOT NULL,
    body_sha256 TEXT NOT NULL,            -- of the canonical JSON (sorted keys)
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

-- The run of a template (AIB keeps only the last run; kiln runs a template once).
CREATE TABLE local_runs (
    template       TEXT PRIMARY KEY,
    body_sha256    TEXT NOT NULL,
    instance_id    TEXT NOT NULL,         -- the provider instance (process start) running it
    pid            INTEGER NOT NULL,
    pid_start      TEXT NOT NULL,         -- start time of that pid (/proc/PID/stat), against pid reuse
    run_state      TEXT NOT NULL,         -- AIB runState spelling
    run_sub_state  TEXT,                  -- AIB runSubState spelling
    message        TEXT NOT NULL DEFAULT '',
    start_time     TEXT NOT NULL,
    end_time       TEXT,
    source_version TEXT,                  -- exact source version (or gallery version id) used
    staging        TEXT,                  -- staging folder kept after an `abort`
    manifest       TEXT                   -- provenance manifest JSON, once captured
);

-- AIB run outputs: one per distributor.
CREATE TABLE local_run_outputs (
    template           TEXT NOT NULL,
    name               TEXT NOT NULL,
    artifact_id        TEXT,
    artifact_uri       TEXT,
    provisioning_state TEXT NOT NULL,
    PRIMARY KEY (template, name)
);

-- Base root filesystems, marketplace style: publisher:offer:sku + version.
CREATE TABLE local_bases (
    urn         TEXT NOT NULL COLLATE NOCASE,
    version     TEXT NOT NULL COLLATE NOCASE,
    path        TEXT NOT NULL,            -- the root folder
    origin      TEXT NOT NULL,            -- how it was made (JSON)
    size_bytes  INTEGER NOT NULL,
    imported_at TEXT NOT NULL,
    deprecated  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (urn, version)
);

-- Local Compute Gallery: image definitions are created on first publish.
CREATE TABLE local_gallery_images (
    id         TEXT PRIMARY KEY COLLATE NOCASE,   -- image definition resource id
    gallery    TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE local_gallery_versions (
    definition_id       TEXT NOT NULL COLLATE NOCASE REFERENCES local_gallery_images(id),
    version             TEXT NOT NULL,
    major               INTEGER NOT NULL,
    minor               INTEGER NOT NULL,
    patch               INTEGER NOT NULL,
    template            TEXT NOT NULL,     -- the template run that published it
    path                TEXT NOT NULL,     -- the version folder
    published_at        TEXT,
    exclude_from_latest INTEGER NOT NULL DEFAULT 0,
    end_of_life         TEXT,
    tags                TEXT NOT NULL DEFAULT '{}',
    replication         TEXT NOT NULL DEFAULT '[]',
    provisioning_state  TEXT NOT NULL,     -- Creating | Succeeded | Failed
    PRIMARY KEY (definition_id, version)
);
CREATE INDEX local_gallery_versions_order ON local_gallery_versions (definition_id, major, minor, patch);

-- Managed images written by ManagedImage distributors (usable as sources).
CREATE TABLE local_managed_images (
    id         TEXT PRIMARY KEY COLLATE NOCASE,
    template   TEXT NOT NULL,
    path       TEXT NOT NULL,
    location   TEXT NOT NULL,
    tags       TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL
);

-- Consumers of images ("VMs"): what retention must never break.
CREATE TABLE local_vms (
    name            TEXT PRIMARY KEY,
    image_reference TEXT NOT NULL,
    created_at      TEXT NOT NULL
);

-- Test hooks: how many times each configured fault was injected.
CREATE TABLE local_fault_uses (
    fault_key TEXT PRIMARY KEY,
    uses      INTEGER NOT NULL
);

-- 002_record_sources.sql: several folders per source name, and every folder and file a record came from.
--
-- Rationale, in brief:
-- * One submodule name may be found in several MEMORY-CONTEXT folders (an older copy of the same repo with more
--   transcripts, or a submodule checked out alone). Each folder is a row of `source_folders` under the name's
--   `submodule_registry` row; a folder met again is never re-pointed to another path, a second folder is added.
--   The registry's own repo_path/memory_context_path stay those of the first folder seen under that name.
-- * `record_sources` says which files of which folders each record was read from (paths relative to the repo folder,
--   '' when a reader gives no file). Migrate reads, besides the folders it is given, every folder that shares a
--   record with them, so a record is always the merge of all its folders whatever the order of the runs; validate
--   compares these rows with what the folders hold now.
-- * Folders are kept as submodule_registry keeps paths (~/... under the home, elsewhere redacted like text), and
--   file names are redacted like the records' source_path.
-- * Rows are keyed by (record_type, record_identity), like privacy_audit: no foreign key to the four record
--   tables, so one table serves all kinds; a folder owns its rows (CASCADE).

CREATE TABLE source_folders (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    submodule_id        uuid        NOT NULL REFERENCES submodule_registry (id) ON DELETE CASCADE,
    repo_path           text,
    memory_context_path text        NOT NULL UNIQUE,
    last_migrated_at    timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX source_folders_submodule_idx ON source_folders (submodule_id);
CREATE TRIGGER source_folders_set_updated_at BEFORE UPDATE ON source_folders
    FOR EACH ROW EXECUTE FUNCTION ctx_set_updated_at();

CREATE TABLE record_sources (
    record_type     text NOT NULL CHECK (record_type IN ('session', 'checkpoint', 'pattern', 'message')),
    record_identity text NOT NULL,
    folder_id       uuid NOT NULL REFERENCES source_folders (id) ON DELETE CASCADE,
    source_path     text NOT NULL,  -- relative to the repo folder, redacted like the records' source_path
    PRIMARY KEY (record_type, record_identity, folder_id, source_path)
);
CREATE INDEX record_sources_folder_idx ON record_sources (folder_id);

-- A store migrated before this file: each registered folder, and each record's file in its submodule's folder.
INSERT INTO source_folders (submodule_id, repo_path, memory_context_path, last_migrated_at, created_at)
SELECT id, repo_path, memory_context_path, last_migrated_at, created_at
FROM submodule_registry WHERE memory_context_path IS NOT NULL;

INSERT INTO record_sources (record_type, record_identity, folder_id, source_path)
SELECT x.t, x.identity, f.id, coalesce(x.source_path, '')
FROM (SELECT 'session' AS t, identity, submodule_id, source_path FROM sessions
      UNION ALL SELECT 'checkpoint', identity, submodule_id, source_path FROM checkpoints
      UNION ALL SELECT 'pattern', identity, submodule_id, source_path FROM patterns
      UNION ALL SELECT 'message', identity, submodule_id, source_path FROM messages) x
JOIN source_folders f ON f.submodule_id = x.submodule_id
ON CONFLICT DO NOTHING;

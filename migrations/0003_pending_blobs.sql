-- Originals being stored for uploads not yet committed, and the node storing each. The upload's
-- commit removes its note in the same transaction; a note whose node is no longer alive names
-- a file no record will ever refer to: a node claims it, deletes the file, then the note. A
-- commit that finds its note claimed fails, so a file is never both committed and deleted.
CREATE TABLE pending_blobs (
    key      TEXT PRIMARY KEY,
    node_id  TEXT NOT NULL,
    since_ms BIGINT NOT NULL,
    claimed  BOOLEAN NOT NULL DEFAULT false
);

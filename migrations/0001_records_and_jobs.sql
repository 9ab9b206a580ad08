-- The platform's records and its job queue (or outbox), in one database so that a video and
-- its job are written in one transaction. The invariants are the database's: one account per
-- email whatever its case, one vote per player per video, a job only with its video.

CREATE SEQUENCE user_ids;
CREATE SEQUENCE video_ids;

CREATE TABLE users (
    id            BIGINT PRIMARY KEY,
    first_name    TEXT NOT NULL,
    last_name     TEXT NOT NULL,
    email         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    city          TEXT NOT NULL,
    country       TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));

CREATE TABLE videos (
    id                   BIGINT PRIMARY KEY,
    owner_id             BIGINT NOT NULL,
    title                TEXT NOT NULL,
    status               TEXT NOT NULL
        CHECK (status IN ('uploaded', 'processing', 'processed', 'failed')),
    progress             SMALLINT NOT NULL DEFAULT 0,
    uploaded_at          BIGINT NOT NULL,
    processed_at         BIGINT,
    task_id              TEXT NOT NULL,
    original_key         TEXT NOT NULL,
    original_size_bytes  BIGINT NOT NULL,
    original_duration_s  DOUBLE PRECISION NOT NULL,
    original_width       INTEGER NOT NULL,
    original_height      INTEGER NOT NULL,
    processed_key        TEXT,
    poster_key           TEXT,
    content_hash         TEXT,
    poster_hash          TEXT,
    processed_duration_s DOUBLE PRECISION,
    votes                BIGINT NOT NULL DEFAULT 0,
    error                TEXT,
    -- The owner's city, folded, from the moment the video is published.
    city_folded          TEXT
);
CREATE INDEX videos_by_owner ON videos (owner_id, id DESC);
CREATE INDEX videos_published ON videos (id DESC) WHERE status = 'processed';
CREATE INDEX videos_published_by_city ON videos (city_folded, id DESC)
    WHERE status = 'processed';

CREATE TABLE votes (
    video_id BIGINT NOT NULL REFERENCES videos (id),
    voter_id BIGINT NOT NULL,
    voted_at BIGINT NOT NULL,
    PRIMARY KEY (video_id, voter_id)
);

-- A player's votes over all their videos, from their first publication: the rankings.
CREATE TABLE player_scores (
    user_id     BIGINT PRIMARY KEY,
    city_folded TEXT NOT NULL,
    votes       BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX rankings ON player_scores (votes DESC, user_id);
CREATE INDEX rankings_by_city ON player_scores (city_folded, votes DESC, user_id);

-- Live jobs (dead_at_ms null) and dead letters. A job goes with its video.
CREATE TABLE jobs (
    video_id       BIGINT PRIMARY KEY REFERENCES videos (id) ON DELETE CASCADE,
    task_id        TEXT NOT NULL,
    original_key   TEXT NOT NULL,
    enqueued_at_ms BIGINT NOT NULL,
    receive_count  INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    visible_at_ms  BIGINT NOT NULL,
    lease          TEXT,
    dead_reason    TEXT,
    dead_at_ms     BIGINT
);
CREATE INDEX jobs_by_visibility ON jobs (visible_at_ms) WHERE dead_at_ms IS NULL;

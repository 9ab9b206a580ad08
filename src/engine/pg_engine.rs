//! The store and its job queue on PostgreSQL, for several nodes sharing one platform.
//!
//! Every invariant is the database's, so it holds across nodes: a unique index on the folded
//! email, a primary key on (video, voter), vote counts and rankings moved by `UPDATE ... SET
//! votes = votes + 1` under the video row's lock, and a job that references its video and goes
//! with it (`ON DELETE CASCADE`). A video and its job are inserted in one transaction. Every
//! method returns once its transaction has committed.
//!
//! The queue has the semantics of the embedded one: a receive takes the earliest visible job
//! with `FOR UPDATE SKIP LOCKED`, so nodes never receive the same job at once. With SQS as the
//! queue, this table is the outbox the relay empties.

use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgPool, Postgres, Row, Transaction};

use crate::config::Role;
use crate::domain::{
    fold_name, now_ms, now_ts, MediaInfo, NewUser, NewVideo, Page, ProcessingState, Publication,
    RankedPlayer, User, UserId, Video, VideoId, VideoStatus,
};
use crate::engine::queue::{DeadLetter, Job, JobQueue, Lease, QueueError, QueueStats};
use crate::engine::store::{Membership, Store, StoreError};

/// The schema, embedded in the binary and applied at start (`showcase migrate` alone).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Longest wait for a pooled connection before a call is refused as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PgEngine {
    pool: PgPool,
    max_receives: u32,
}

const VIDEO_COLUMNS: &str = "id, owner_id, title, status, progress, uploaded_at, processed_at, \
     task_id, original_key, original_size_bytes, original_duration_s, original_width, \
     original_height, processed_key, poster_key, content_hash, poster_hash, \
     processed_duration_s, votes, error";

const USER_COLUMNS: &str =
    "id, first_name, last_name, email, password_hash, city, country, created_at";

const JOB_COLUMNS: &str = "video_id, task_id, original_key, enqueued_at_ms, receive_count, \
     last_error, visible_at_ms, lease, dead_reason, dead_at_ms";

/// Whether a database error means the service is away for now (another try later may work):
/// no connection, or the server refusing work while it starts, stops, fails over or is full.
fn away(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08") // connection exceptions
                || matches!(&*code, "57P01" | "57P02" | "57P03" | "53300" | "25006")
        }),
        _ => false,
    }
}

/// What a database error means for a caller: the service is away, or something else failed.
fn store_error(e: sqlx::Error) -> StoreError {
    match away(&e) {
        true => StoreError::Unavailable(e.to_string()),
        false => StoreError::Backend(e.to_string()),
    }
}

fn queue_error(e: sqlx::Error) -> QueueError {
    match away(&e) {
        true => QueueError::Unavailable(e.to_string()),
        false => QueueError::Backend(e.to_string()),
    }
}

/// The database's clock, in milliseconds: nodes' liveness and the queue's leases are judged on
/// one clock, not each node's own. (`clock_timestamp()` is volatile: compared with an indexed
/// column, wrap it in a sub-select so that it is read once and the index can be used.)
const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A commit whose answer was lost may still have happened: it must not be undone.
fn commit_error(e: sqlx::Error) -> StoreError {
    StoreError::Unconfirmed(e.to_string())
}

fn status_of(text: &str) -> VideoStatus {
    match text {
        "processing" => VideoStatus::Processing,
        "processed" => VideoStatus::Processed,
        "failed" => VideoStatus::Failed,
        _ => VideoStatus::Uploaded,
    }
}

fn video_of(row: &PgRow) -> Video {
    Video {
        id: row.get::<i64, _>("id") as u64,
        owner_id: row.get::<i64, _>("owner_id") as u64,
        title: row.get("title"),
        status: status_of(row.get("status")),
        progress: row.get::<i16, _>("progress") as u8,
        uploaded_at: row.get("uploaded_at"),
        processed_at: row.get("processed_at"),
        task_id: row.get("task_id"),
        original_key: row.get("original_key"),
        original: MediaInfo {
            size_bytes: row.get::<i64, _>("original_size_bytes") as u64,
            duration_s: row.get("original_duration_s"),
            width: row.get::<i32, _>("original_width") as u32,
            height: row.get::<i32, _>("original_height") as u32,
        },
        processed_key: row.get("processed_key"),
        poster_key: row.get("poster_key"),
        content_hash: row.get("content_hash"),
        poster_hash: row.get("poster_hash"),
        processed_duration_s: row.get("processed_duration_s"),
        votes: row.get::<i64, _>("votes") as u64,
        error: row.get("error"),
    }
}

/// A user from a row whose user columns carry `prefix` (`""`, or `"u_"` in joins).
fn user_of(row: &PgRow, prefix: &str) -> User {
    let col = |name: &str| format!("{prefix}{name}");
    User {
        id: row.get::<i64, _>(col("id").as_str()) as u64,
        first_name: row.get(col("first_name").as_str()),
        last_name: row.get(col("last_name").as_str()),
        email: row.get(col("email").as_str()),
        password_hash: row.get(col("password_hash").as_str()),
        city: row.get(col("city").as_str()),
        country: row.get(col("country").as_str()),
        created_at: row.get(col("created_at").as_str()),
    }
}

/// The user columns of `users u`, renamed `u_<column>` so that they can sit beside others.
fn prefixed_user_columns() -> String {
    USER_COLUMNS
        .split(", ")
        .map(|c| format!("u.{c} AS u_{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Enters `owner` into the rankings of `city` with no votes, unless there already.
async fn enter_rankings(
    tx: &mut Transaction<'static, Postgres>,
    owner: UserId,
    city: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO player_scores (user_id, city_folded, votes) VALUES ($1, $2, 0) \
         ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(owner as i64)
    .bind(city)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

/// Moves `sequence` up to `id` at least, so that fresh ids stay above an imported one.
async fn raise_sequence(
    tx: &mut Transaction<'static, Postgres>,
    sequence: &'static str,
    id: u64,
) -> Result<(), StoreError> {
    sqlx::query(&format!(
        "SELECT setval('{sequence}', greatest((SELECT last_value FROM {sequence}), $1))"
    ))
    .bind(id as i64)
    .execute(&mut **tx)
    .await
    .map_err(store_error)?;
    Ok(())
}

fn job_of(row: &PgRow) -> Job {
    Job {
        video_id: row.get::<i64, _>("video_id") as u64,
        task_id: row.get("task_id"),
        original_key: row.get("original_key"),
        enqueued_at_ms: row.get::<i64, _>("enqueued_at_ms") as u64,
        receive_count: row.get::<i32, _>("receive_count") as u32,
        last_error: row.get("last_error"),
    }
}

impl PgEngine {
    /// Connects to `url` with at most `max_connections` and applies the migrations.
    pub async fn connect(
        url: &str,
        password: Option<&str>,
        max_connections: u32,
        max_receives: u32,
    ) -> Result<Self, StoreError> {
        let mut options: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::Backend(format!("store.postgres.url: {e}")))?;
        if let Some(password) = password {
            options = options.password(password);
        }
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await
            .map_err(store_error)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| StoreError::Backend(format!("applying the migrations: {e}")))?;
        Ok(Self { pool, max_receives })
    }

    async fn begin(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        self.pool.begin().await.map_err(store_error)
    }

    async fn load_video(&self, id: VideoId) -> Result<Option<Video>, StoreError> {
        let row = sqlx::query(&format!("SELECT {VIDEO_COLUMNS} FROM videos WHERE id = $1"))
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(row.as_ref().map(video_of))
    }

    /// The live job of `id` when `token` is its lease; else why not.
    async fn leased(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        id: VideoId,
        token: &str,
    ) -> Result<(), QueueError> {
        let row = sqlx::query(
            "SELECT lease FROM jobs WHERE video_id = $1 AND dead_at_ms IS NULL FOR UPDATE",
        )
        .bind(id as i64)
        .fetch_optional(&mut **tx)
        .await
        .map_err(queue_error)?;
        match row {
            None => Err(QueueError::NotFound),
            Some(row) if row.get::<Option<String>, _>("lease").as_deref() == Some(token) => Ok(()),
            Some(_) => Err(QueueError::InvalidToken),
        }
    }

    async fn commit_queue(tx: Transaction<'static, Postgres>) -> Result<(), QueueError> {
        tx.commit()
            .await
            .map_err(|e| QueueError::Unconfirmed(e.to_string()))
    }
}

#[async_trait]
impl Store for PgEngine {
    async fn create_user(&self, user: NewUser) -> Result<User, StoreError> {
        let email = user.email.trim().to_lowercase();
        let created_at = now_ts();
        let row = sqlx::query(
            "INSERT INTO users (id, first_name, last_name, email, password_hash, city, country, created_at) \
             VALUES (nextval('user_ids'), $1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(&user.first_name)
        .bind(&user.last_name)
        .bind(&email)
        .bind(&user.password_hash)
        .bind(&user.city)
        .bind(&user.country)
        .bind(created_at)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        let Some(row) = row else {
            return Err(StoreError::EmailTaken);
        };
        Ok(User {
            id: row.get::<i64, _>("id") as u64,
            first_name: user.first_name,
            last_name: user.last_name,
            email,
            password_hash: user.password_hash,
            city: user.city,
            country: user.country,
            created_at,
        })
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id as i64)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(row.map(|r| user_of(&r, "")))
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE lower(email) = $1"
        ))
        .bind(email.trim().to_lowercase())
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(row.map(|r| user_of(&r, "")))
    }

    async fn allocate_video_id(&self) -> Result<VideoId, StoreError> {
        let id: i64 = sqlx::query_scalar("SELECT nextval('video_ids')")
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(id as u64)
    }

    async fn commit_upload(
        &self,
        new: NewVideo,
        task_id: String,
    ) -> Result<(Video, Job), StoreError> {
        let now = now_ms();
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO videos (id, owner_id, title, status, progress, uploaded_at, task_id, \
             original_key, original_size_bytes, original_duration_s, original_width, original_height) \
             VALUES ($1, $2, $3, 'uploaded', 0, $4, $5, $6, $7, $8, $9, $10) RETURNING {VIDEO_COLUMNS}"
        ))
        .bind(new.id as i64)
        .bind(new.owner_id as i64)
        .bind(&new.title)
        .bind((now / 1000) as i64)
        .bind(&task_id)
        .bind(&new.original_key)
        .bind(new.original.size_bytes as i64)
        .bind(new.original.duration_s)
        .bind(new.original.width as i32)
        .bind(new.original.height as i32)
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
        let job = Job {
            video_id: new.id,
            task_id,
            original_key: new.original_key,
            enqueued_at_ms: now,
            receive_count: 0,
            last_error: None,
        };
        sqlx::query(&format!(
            "INSERT INTO jobs (video_id, task_id, original_key, enqueued_at_ms, visible_at_ms) \
             VALUES ($1, $2, $3, $4, {DB_NOW_MS})"
        ))
        .bind(job.video_id as i64)
        .bind(&job.task_id)
        .bind(&job.original_key)
        .bind(now as i64)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        // The original is referred to now: no longer an upload in progress. Its note claimed
        // means another node took this one for dead and is deleting the file.
        let claimed: Option<bool> =
            sqlx::query_scalar("DELETE FROM pending_blobs WHERE key = $1 RETURNING claimed")
                .bind(&job.original_key)
                .fetch_optional(&mut *tx)
                .await
                .map_err(store_error)?;
        if claimed == Some(true) {
            return Err(StoreError::Unavailable(
                "this node was taken for dead while the upload was stored; its file is gone".into(),
            ));
        }
        tx.commit().await.map_err(commit_error)?;
        Ok((video_of(&row), job))
    }

    async fn video(&self, id: VideoId) -> Result<Option<Video>, StoreError> {
        self.load_video(id).await
    }

    async fn videos_of(&self, owner: UserId) -> Result<Vec<Video>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {VIDEO_COLUMNS} FROM videos WHERE owner_id = $1 ORDER BY id DESC"
        ))
        .bind(owner as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(rows.iter().map(video_of).collect())
    }

    async fn delete_video(&self, id: VideoId, owner: UserId) -> Result<Video, StoreError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query("SELECT owner_id, status FROM videos WHERE id = $1 FOR UPDATE")
            .bind(id as i64)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?
            .ok_or(StoreError::VideoNotFound)?;
        if row.get::<i64, _>("owner_id") as u64 != owner {
            return Err(StoreError::NotOwner);
        }
        if row.get::<&str, _>("status") == "processed" {
            return Err(StoreError::AlreadyPublished);
        }
        // Its job, live or dead, goes with it (ON DELETE CASCADE).
        let row = sqlx::query(&format!(
            "DELETE FROM videos WHERE id = $1 RETURNING {VIDEO_COLUMNS}"
        ))
        .bind(id as i64)
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(commit_error)?;
        Ok(video_of(&row))
    }

    async fn video_exists(&self, id: VideoId) -> Result<bool, StoreError> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM videos WHERE id = $1)")
            .bind(id as i64)
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)
    }

    async fn publish_video(
        &self,
        id: VideoId,
        publication: Publication,
    ) -> Result<Video, StoreError> {
        let mut tx = self.begin().await?;
        let row = sqlx::query(&format!(
            "SELECT {VIDEO_COLUMNS} FROM videos WHERE id = $1 FOR UPDATE"
        ))
        .bind(id as i64)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?
        .ok_or(StoreError::VideoNotFound)?;
        let video = video_of(&row);
        if video.status == VideoStatus::Processed {
            return Ok(video);
        }
        let city: String = sqlx::query_scalar("SELECT city FROM users WHERE id = $1")
            .bind(video.owner_id as i64)
            .fetch_optional(&mut *tx)
            .await
            .map_err(store_error)?
            .ok_or(StoreError::UserNotFound)?;
        let city = fold_name(&city);
        let row = sqlx::query(&format!(
            "UPDATE videos SET status = 'processed', progress = 100, processed_at = $2, \
             processed_key = $3, poster_key = $4, content_hash = $5, poster_hash = $6, \
             processed_duration_s = $7, error = NULL, city_folded = $8 \
             WHERE id = $1 RETURNING {VIDEO_COLUMNS}"
        ))
        .bind(id as i64)
        .bind(now_ts())
        .bind(&publication.processed_key)
        .bind(&publication.poster_key)
        .bind(&publication.content_hash)
        .bind(&publication.poster_hash)
        .bind(publication.duration_s)
        .bind(&city)
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
        enter_rankings(&mut tx, video.owner_id, &city).await?;
        tx.commit().await.map_err(commit_error)?;
        Ok(video_of(&row))
    }

    async fn set_processing_state(
        &self,
        id: VideoId,
        state: ProcessingState,
    ) -> Result<bool, StoreError> {
        let (status, progress, error) = match state {
            ProcessingState::Queued => ("uploaded", 0, None),
            ProcessingState::Processing { progress } => ("processing", progress.min(99), None),
            ProcessingState::Failed { reason } => ("failed", 0, Some(reason)),
        };
        let done = sqlx::query(
            "UPDATE videos SET status = $2, progress = $3, error = $4 \
             WHERE id = $1 AND status <> 'processed'",
        )
        .bind(id as i64)
        .bind(status)
        .bind(progress as i16)
        .bind(error)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn vote(&self, video_id: VideoId, voter: UserId) -> Result<u64, StoreError> {
        let mut tx = self.begin().await?;
        // The video's row lock orders concurrent votes on it, from any node.
        let counted = sqlx::query(
            "UPDATE videos SET votes = votes + 1 WHERE id = $1 AND status = 'processed' \
             RETURNING votes, owner_id",
        )
        .bind(video_id as i64)
        .fetch_optional(&mut *tx)
        .await
        .map_err(store_error)?;
        let Some(counted) = counted else {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM videos WHERE id = $1)")
                    .bind(video_id as i64)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(store_error)?;
            return Err(match exists {
                true => StoreError::NotPublished,
                false => StoreError::VideoNotFound,
            });
        };
        let recorded = sqlx::query(
            "INSERT INTO votes (video_id, voter_id, voted_at) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(video_id as i64)
        .bind(voter as i64)
        .bind(now_ts())
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if recorded.rows_affected() == 0 {
            return Err(StoreError::AlreadyVoted);
        }
        let scored = sqlx::query("UPDATE player_scores SET votes = votes + 1 WHERE user_id = $1")
            .bind(counted.get::<i64, _>("owner_id"))
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        if scored.rows_affected() == 0 {
            return Err(StoreError::UserNotFound);
        }
        tx.commit().await.map_err(commit_error)?;
        Ok(counted.get::<i64, _>("votes") as u64)
    }

    async fn public_videos(
        &self,
        city: Option<&str>,
        page: Page,
    ) -> Result<Vec<(Video, User)>, StoreError> {
        let columns = VIDEO_COLUMNS
            .split(", ")
            .map(|c| format!("v.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        let rows = sqlx::query(&format!(
            "SELECT {columns}, {} FROM videos v JOIN users u ON u.id = v.owner_id \
             WHERE v.status = 'processed' AND ($1::TEXT IS NULL OR v.city_folded = $1) \
             ORDER BY v.id DESC OFFSET $2 LIMIT $3",
            prefixed_user_columns()
        ))
        .bind(city.map(fold_name))
        .bind(page.offset as i64)
        .bind(page.limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| (video_of(r), user_of(r, "u_")))
            .collect())
    }

    async fn rankings(
        &self,
        city: Option<&str>,
        page: Page,
    ) -> Result<Vec<RankedPlayer>, StoreError> {
        // Two statements rather than one with an OR, so that each uses its own index.
        let query = match city {
            None => format!(
                "SELECT s.votes, {} FROM player_scores s JOIN users u ON u.id = s.user_id \
                 ORDER BY s.votes DESC, s.user_id OFFSET $1 LIMIT $2",
                prefixed_user_columns()
            ),
            Some(_) => format!(
                "SELECT s.votes, {} FROM player_scores s JOIN users u ON u.id = s.user_id \
                 WHERE s.city_folded = $3 \
                 ORDER BY s.votes DESC, s.user_id OFFSET $1 LIMIT $2",
                prefixed_user_columns()
            ),
        };
        let mut statement = sqlx::query(&query)
            .bind(page.offset as i64)
            .bind(page.limit as i64);
        if let Some(city) = city {
            statement = statement.bind(fold_name(city));
        }
        let rows = statement.fetch_all(&self.pool).await.map_err(store_error)?;
        Ok(rows
            .iter()
            .enumerate()
            .map(|(index, row)| RankedPlayer {
                position: page.offset + index as u64 + 1,
                user: user_of(row, "u_"),
                votes: row.get::<i64, _>("votes") as u64,
            })
            .collect())
    }

    /// Every change is committed before its method returns: nothing is left to flush.
    fn flush_blocking(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn export_users(&self, after: UserId, limit: usize) -> Result<Vec<User>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(rows.iter().map(|r| user_of(r, "")).collect())
    }

    async fn export_videos(&self, after: VideoId, limit: usize) -> Result<Vec<Video>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {VIDEO_COLUMNS} FROM videos WHERE id > $1 ORDER BY id LIMIT $2"
        ))
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(rows.iter().map(video_of).collect())
    }

    async fn export_votes(
        &self,
        after: (VideoId, UserId),
        limit: usize,
    ) -> Result<Vec<(VideoId, UserId)>, StoreError> {
        let rows = sqlx::query(
            "SELECT video_id, voter_id FROM votes WHERE (video_id, voter_id) > ($1, $2) \
             ORDER BY video_id, voter_id LIMIT $3",
        )
        .bind(after.0 as i64)
        .bind(after.1 as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get::<i64, _>("video_id") as u64,
                    r.get::<i64, _>("voter_id") as u64,
                )
            })
            .collect())
    }

    async fn import_user(&self, user: &User) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
            .bind(user.id as i64)
            .fetch_one(&mut *tx)
            .await
            .map_err(store_error)?;
        if exists {
            return Ok(false);
        }
        let inserted = sqlx::query(
            "INSERT INTO users (id, first_name, last_name, email, password_hash, city, country, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
        )
        .bind(user.id as i64)
        .bind(&user.first_name)
        .bind(&user.last_name)
        .bind(user.email.trim().to_lowercase())
        .bind(&user.password_hash)
        .bind(&user.city)
        .bind(&user.country)
        .bind(user.created_at)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if inserted.rows_affected() == 0 {
            return Err(StoreError::EmailTaken);
        }
        raise_sequence(&mut tx, "user_ids", user.id).await?;
        tx.commit().await.map_err(commit_error)?;
        Ok(true)
    }

    async fn import_video(&self, video: &Video) -> Result<bool, StoreError> {
        let mut tx = self.begin().await?;
        let published = video.status == VideoStatus::Processed;
        let city = match published {
            true => Some(fold_name(
                &sqlx::query_scalar::<_, String>("SELECT city FROM users WHERE id = $1")
                    .bind(video.owner_id as i64)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(store_error)?
                    .ok_or(StoreError::UserNotFound)?,
            )),
            false => None,
        };
        let inserted = sqlx::query(
            "INSERT INTO videos (id, owner_id, title, status, progress, uploaded_at, processed_at, \
             task_id, original_key, original_size_bytes, original_duration_s, original_width, \
             original_height, processed_key, poster_key, content_hash, poster_hash, \
             processed_duration_s, votes, error, city_folded) VALUES ($1, $2, $3, $4, $5, $6, $7, \
             $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, 0, $19, $20) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(video.id as i64)
        .bind(video.owner_id as i64)
        .bind(&video.title)
        .bind(video.status.as_str())
        .bind(video.progress as i16)
        .bind(video.uploaded_at)
        .bind(video.processed_at)
        .bind(&video.task_id)
        .bind(&video.original_key)
        .bind(video.original.size_bytes as i64)
        .bind(video.original.duration_s)
        .bind(video.original.width as i32)
        .bind(video.original.height as i32)
        .bind(&video.processed_key)
        .bind(&video.poster_key)
        .bind(&video.content_hash)
        .bind(&video.poster_hash)
        .bind(video.processed_duration_s)
        .bind(&video.error)
        .bind(&city)
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        if inserted.rows_affected() == 0 {
            return Ok(false);
        }
        if let Some(city) = city {
            enter_rankings(&mut tx, video.owner_id, &city).await?;
        }
        raise_sequence(&mut tx, "video_ids", video.id).await?;
        tx.commit().await.map_err(commit_error)?;
        Ok(true)
    }

    async fn check(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn intend_blob(&self, key: &str, node: &str) -> Result<(), StoreError> {
        sqlx::query(&format!(
            "INSERT INTO pending_blobs (key, node_id, since_ms) VALUES ($1, $2, {DB_NOW_MS}) \
                 ON CONFLICT (key) DO UPDATE SET node_id = EXCLUDED.node_id, \
                 since_ms = EXCLUDED.since_ms, claimed = false"
        ))
        .bind(key)
        .bind(node)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn settle_blob(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM pending_blobs WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }

    async fn abandoned_blobs(&self, fresh: Duration) -> Result<Vec<String>, StoreError> {
        // Claimed in the statement that finds them: a commit in progress holds its note's row
        // and is skipped; one that comes later finds its note claimed and fails.
        sqlx::query_scalar(&format!(
            "UPDATE pending_blobs SET claimed = true WHERE key IN ( \
               SELECT p.key FROM pending_blobs p \
               WHERE p.since_ms < {DB_NOW_MS} - 3600000 OR (p.since_ms < {DB_NOW_MS} - $1 AND \
                 NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = p.node_id \
                             AND n.seen_at_ms >= {DB_NOW_MS} - $1)) \
               ORDER BY p.key LIMIT 100 FOR UPDATE SKIP LOCKED) \
             RETURNING key"
        ))
        .bind(fresh.as_millis() as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)
    }

    async fn node_alive(
        &self,
        id: &str,
        role: Role,
        fresh: Duration,
    ) -> Result<Membership, StoreError> {
        sqlx::query(&format!(
            "INSERT INTO nodes (id, role, seen_at_ms) VALUES ($1, $2, {DB_NOW_MS}) \
             ON CONFLICT (id) DO UPDATE SET role = EXCLUDED.role, seen_at_ms = EXCLUDED.seen_at_ms"
        ))
        .bind(id)
        .bind(role.as_str())
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        // Nodes gone for a day are forgotten.
        sqlx::query(&format!(
            "DELETE FROM nodes WHERE seen_at_ms < {DB_NOW_MS} - 86400000"
        ))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        let row = sqlx::query(&format!(
            "SELECT count(*) FILTER (WHERE role IN ('api', 'all')) AS api, \
                    count(*) FILTER (WHERE role IN ('worker', 'all')) AS worker \
             FROM nodes WHERE seen_at_ms >= {DB_NOW_MS} - $1"
        ))
        .bind(fresh.as_millis() as i64)
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(Membership {
            api: row.get::<i64, _>("api") as u64,
            worker: row.get::<i64, _>("worker") as u64,
        })
    }
}

#[async_trait]
impl JobQueue for PgEngine {
    async fn enqueue(&self, job: Job) -> Result<(), QueueError> {
        // One job per video: a video that has one (live or dead) keeps it.
        sqlx::query(&format!(
            "INSERT INTO jobs (video_id, task_id, original_key, enqueued_at_ms, receive_count, \
             last_error, visible_at_ms) VALUES ($1, $2, $3, $4, $5, $6, {DB_NOW_MS}) \
             ON CONFLICT (video_id) DO NOTHING"
        ))
        .bind(job.video_id as i64)
        .bind(&job.task_id)
        .bind(&job.original_key)
        .bind(job.enqueued_at_ms as i64)
        .bind(job.receive_count as i32)
        .bind(&job.last_error)
        .execute(&self.pool)
        .await
        .map_err(queue_error)?;
        Ok(())
    }

    async fn receive(&self, visibility: Duration) -> Result<Option<Lease>, QueueError> {
        loop {
            let mut tx = self.pool.begin().await.map_err(queue_error)?;
            let Some(row) = sqlx::query(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE dead_at_ms IS NULL \
                 AND visible_at_ms <= (SELECT {DB_NOW_MS}) \
                 ORDER BY visible_at_ms, video_id LIMIT 1 FOR UPDATE SKIP LOCKED"
            ))
            .fetch_optional(&mut *tx)
            .await
            .map_err(queue_error)?
            else {
                return Ok(None);
            };
            let mut job = job_of(&row);
            if job.receive_count >= self.max_receives {
                let reason = format!(
                    "received {} times without success; last error: {}",
                    job.receive_count,
                    job.last_error.as_deref().unwrap_or("none recorded")
                );
                sqlx::query(&format!(
                    "UPDATE jobs SET dead_reason = $2, dead_at_ms = {DB_NOW_MS}, last_error = $2, \
                     lease = NULL WHERE video_id = $1"
                ))
                .bind(job.video_id as i64)
                .bind(&reason)
                .execute(&mut *tx)
                .await
                .map_err(queue_error)?;
                Self::commit_queue(tx).await?;
                continue;
            }
            job.receive_count += 1;
            let token = uuid::Uuid::new_v4().simple().to_string();
            let visible_again_at_ms: i64 = sqlx::query_scalar(&format!(
                "UPDATE jobs SET receive_count = $2, visible_at_ms = {DB_NOW_MS} + $3, lease = $4 \
                 WHERE video_id = $1 RETURNING visible_at_ms"
            ))
            .bind(job.video_id as i64)
            .bind(job.receive_count as i32)
            .bind(visibility.as_millis() as i64)
            .bind(&token)
            .fetch_one(&mut *tx)
            .await
            .map_err(queue_error)?;
            let visible_again_at_ms = visible_again_at_ms as u64;
            Self::commit_queue(tx).await?;
            return Ok(Some(Lease {
                job,
                token,
                visible_again_at_ms,
            }));
        }
    }

    async fn extend(
        &self,
        video_id: VideoId,
        token: &str,
        visibility: Duration,
    ) -> Result<u64, QueueError> {
        let mut tx = self.pool.begin().await.map_err(queue_error)?;
        self.leased(&mut tx, video_id, token).await?;
        let until: i64 = sqlx::query_scalar(&format!(
            "UPDATE jobs SET visible_at_ms = {DB_NOW_MS} + $2 WHERE video_id = $1 \
             RETURNING visible_at_ms"
        ))
        .bind(video_id as i64)
        .bind(visibility.as_millis() as i64)
        .fetch_one(&mut *tx)
        .await
        .map_err(queue_error)?;
        Self::commit_queue(tx).await?;
        Ok(until as u64)
    }

    async fn ack(&self, video_id: VideoId, token: &str) -> Result<(), QueueError> {
        let mut tx = self.pool.begin().await.map_err(queue_error)?;
        self.leased(&mut tx, video_id, token).await?;
        sqlx::query("DELETE FROM jobs WHERE video_id = $1")
            .bind(video_id as i64)
            .execute(&mut *tx)
            .await
            .map_err(queue_error)?;
        Self::commit_queue(tx).await
    }

    async fn nack(
        &self,
        video_id: VideoId,
        token: &str,
        delay: Duration,
        reason: &str,
    ) -> Result<(), QueueError> {
        let mut tx = self.pool.begin().await.map_err(queue_error)?;
        self.leased(&mut tx, video_id, token).await?;
        sqlx::query(&format!(
            "UPDATE jobs SET visible_at_ms = {DB_NOW_MS} + $2, lease = NULL, last_error = $3 \
             WHERE video_id = $1"
        ))
        .bind(video_id as i64)
        .bind(delay.as_millis() as i64)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(queue_error)?;
        Self::commit_queue(tx).await
    }

    async fn dead_letter(
        &self,
        video_id: VideoId,
        token: &str,
        reason: &str,
    ) -> Result<(), QueueError> {
        let mut tx = self.pool.begin().await.map_err(queue_error)?;
        self.leased(&mut tx, video_id, token).await?;
        sqlx::query(&format!(
            "UPDATE jobs SET dead_reason = $2, dead_at_ms = {DB_NOW_MS}, last_error = $2, \
             lease = NULL WHERE video_id = $1"
        ))
        .bind(video_id as i64)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(queue_error)?;
        Self::commit_queue(tx).await
    }

    async fn cancel(&self, video_id: VideoId) -> Result<bool, QueueError> {
        let done = sqlx::query("DELETE FROM jobs WHERE video_id = $1")
            .bind(video_id as i64)
            .execute(&self.pool)
            .await
            .map_err(queue_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn dead_letters(&self) -> Result<Vec<DeadLetter>, QueueError> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE dead_at_ms IS NOT NULL ORDER BY video_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(queue_error)?;
        Ok(rows
            .iter()
            .map(|row| DeadLetter {
                job: job_of(row),
                reason: row
                    .get::<Option<String>, _>("dead_reason")
                    .unwrap_or_default(),
                dead_at_ms: row.get::<Option<i64>, _>("dead_at_ms").unwrap_or(0) as u64,
            })
            .collect())
    }

    async fn redrive(&self, video_id: VideoId) -> Result<(), QueueError> {
        let done = sqlx::query(&format!(
            "UPDATE jobs SET dead_reason = NULL, dead_at_ms = NULL, receive_count = 0, \
             lease = NULL, visible_at_ms = {DB_NOW_MS} \
             WHERE video_id = $1 AND dead_at_ms IS NOT NULL"
        ))
        .bind(video_id as i64)
        .execute(&self.pool)
        .await
        .map_err(queue_error)?;
        match done.rows_affected() {
            0 => Err(QueueError::NotFound),
            _ => Ok(()),
        }
    }

    async fn redrive_all(&self) -> Result<u64, QueueError> {
        let done = sqlx::query(&format!(
            "UPDATE jobs SET dead_reason = NULL, dead_at_ms = NULL, receive_count = 0, \
             lease = NULL, visible_at_ms = {DB_NOW_MS} WHERE dead_at_ms IS NOT NULL"
        ))
        .execute(&self.pool)
        .await
        .map_err(queue_error)?;
        Ok(done.rows_affected())
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let row = sqlx::query(&format!(
            "SELECT \
               count(*) FILTER (WHERE dead_at_ms IS NULL \
                 AND (lease IS NULL OR visible_at_ms <= now_ms)) AS depth, \
               count(*) FILTER (WHERE dead_at_ms IS NULL \
                 AND lease IS NOT NULL AND visible_at_ms > now_ms) AS in_flight, \
               count(*) FILTER (WHERE dead_at_ms IS NOT NULL) AS dead \
             FROM jobs, (SELECT {DB_NOW_MS} AS now_ms) AS clock"
        ))
        .fetch_one(&self.pool)
        .await
        .map_err(queue_error)?;
        Ok(QueueStats {
            depth: row.get::<i64, _>("depth") as u64,
            in_flight: row.get::<i64, _>("in_flight") as u64,
            dead: row.get::<i64, _>("dead") as u64,
        })
    }

    async fn import_dead(&self, letter: DeadLetter) -> Result<(), QueueError> {
        let job = &letter.job;
        sqlx::query(
            "INSERT INTO jobs (video_id, task_id, original_key, enqueued_at_ms, receive_count, \
             last_error, visible_at_ms, dead_reason, dead_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (video_id) DO NOTHING",
        )
        .bind(job.video_id as i64)
        .bind(&job.task_id)
        .bind(&job.original_key)
        .bind(job.enqueued_at_ms as i64)
        .bind(job.receive_count as i32)
        .bind(&job.last_error)
        .bind(letter.dead_at_ms as i64)
        .bind(&letter.reason)
        .bind(letter.dead_at_ms as i64)
        .execute(&self.pool)
        .await
        .map_err(queue_error)?;
        Ok(())
    }

    async fn job(&self, video_id: VideoId) -> Result<Option<Job>, QueueError> {
        let row = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE video_id = $1"
        ))
        .bind(video_id as i64)
        .fetch_optional(&self.pool)
        .await
        .map_err(queue_error)?;
        Ok(row.as_ref().map(job_of))
    }
}

//! The [`Node`] itself: what it is made of, and the verbs on accounts, videos, votes and
//! media. Uploads and the operators' verbs are in `uploads.rs` and `operations.rs`.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::actors::ingest::Ingest;
use crate::actors::queue_consumer::QueueConsumer;
use crate::actors::streamer::{OpenMedia, Streamer};
use crate::actors::transcoder::{CancelTranscode, Transcoder};
use crate::actors::ActorRef;
use crate::auth::{AccessToken, Auth, AuthError};
use crate::config::Config;
use crate::domain::{NewUser, Page, RankedPlayer, User, UserId, Video, VideoId};
use crate::engine::{Engine, StoreError};
use crate::faults::Faults;
use crate::health::HealthRegistry;
use crate::media::{MediaGrant, MediaKey, MediaKind, StreamPermits};
use crate::rate_limit::{ClientAddressing, Limited, RateLimits};
use crate::resumable::Resumable;
use crate::signed_url::{SignatureError, UrlSigner};

use super::admission::UploadAdmission;
use super::error::Error;

/// A heartbeat older than this makes an actor count as unhealthy.
pub const HEARTBEAT_STALE_MS: u64 = 5_000;

/// The actors a node runs; `None` for one its role leaves out.
#[derive(Default)]
pub struct NodeActors {
    pub ingest: Option<ActorRef<Ingest>>,
    pub streamer: Option<ActorRef<Streamer>>,
    pub transcoder: Option<ActorRef<Transcoder>>,
    pub consumer: Option<ActorRef<QueueConsumer>>,
}

/// Everything a node is made of, assembled by the application's builder.
pub struct NodeParts {
    pub config: Config,
    pub engine: Engine,
    /// This node's name among the platform's ([`super::Platform::new_id`]).
    pub node_id: std::sync::Arc<str>,
    pub auth: Auth,
    pub signer: UrlSigner,
    pub actors: NodeActors,
    pub uploads: UploadAdmission,
    pub streams: Arc<StreamPermits>,
    pub registry: Arc<HealthRegistry>,
    pub faults: Arc<Faults>,
    pub rate_limits: Arc<RateLimits>,
    pub addressing: ClientAddressing,
    pub resumable: Arc<Resumable>,
}

pub struct Node {
    pub(super) config: Config,
    pub(super) engine: Engine,
    pub(super) auth: Auth,
    pub(super) signer: UrlSigner,
    pub(super) actors: NodeActors,
    pub(super) uploads: UploadAdmission,
    pub(super) streams: Arc<StreamPermits>,
    pub(super) registry: Arc<HealthRegistry>,
    pub(super) faults: Arc<Faults>,
    pub(super) rate_limits: Arc<RateLimits>,
    pub(super) addressing: ClientAddressing,
    pub(super) resumable: Arc<Resumable>,
    pub(super) shutting_down: AtomicBool,
    /// This node among the platform's.
    pub(super) platform: super::backends::Platform,
}

/// The fields of a new account, checked by the caller for form; the node hashes the password.
pub struct SignUp {
    pub first_name: String,
    pub last_name: String,
    pub email: String,
    pub password: String,
    pub city: String,
    pub country: String,
}

/// The actor behind `actor`, or [`Error::Absent`] when this node does not run it.
pub(super) fn present<A: actix::Actor>(actor: &Option<ActorRef<A>>) -> Result<&ActorRef<A>, Error> {
    actor.as_ref().ok_or(Error::Absent)
}

impl Node {
    pub fn new(parts: NodeParts) -> Self {
        let NodeParts {
            config,
            engine,
            node_id,
            auth,
            signer,
            actors,
            uploads,
            streams,
            registry,
            faults,
            rate_limits,
            addressing,
            resumable,
        } = parts;
        let platform = super::backends::Platform::new(node_id, config.node.role);
        Self {
            config,
            engine,
            auth,
            signer,
            actors,
            uploads,
            streams,
            registry,
            faults,
            rate_limits,
            addressing,
            resumable,
            shutting_down: AtomicBool::new(false),
            platform,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    pub fn signer(&self) -> &UrlSigner {
        &self.signer
    }

    /// The fault-injection switches (inert unless `faults.enabled`).
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    pub fn rate_limits(&self) -> &Arc<RateLimits> {
        &self.rate_limits
    }

    pub fn resumable(&self) -> &Arc<Resumable> {
        &self.resumable
    }

    pub fn registry(&self) -> &Arc<HealthRegistry> {
        &self.registry
    }

    pub fn streams(&self) -> &StreamPermits {
        &self.streams
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// From now on the node is draining: readiness says so.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// Takes a token from the client's budget for `route` (signup, login, vote).
    pub fn within_budget(
        &self,
        route: Limited,
        peer: IpAddr,
        headers: &http::HeaderMap,
    ) -> Result<(), Error> {
        let client = self.addressing.client(peer, headers);
        Ok(self.rate_limits.check(route, client)?)
    }

    /// The player a bearer `Authorization` header names. A token is not enough: the player
    /// must still exist (a token outlives a deleted account or a restored backup).
    pub async fn player(&self, authorization: Option<&str>) -> Result<UserId, Error> {
        let user = self.auth.verify_header(authorization)?;
        match self.engine.store.user(user).await? {
            Some(_) => Ok(user),
            None => Err(AuthError::InvalidToken.into()),
        }
    }

    pub async fn sign_up(&self, account: SignUp) -> Result<User, Error> {
        // Cheap check first, so a taken email costs no hashing; the store checks again atomically.
        if self
            .engine
            .store
            .user_by_email(&account.email)
            .await?
            .is_some()
        {
            return Err(StoreError::EmailTaken.into());
        }
        let password_hash = self.auth.hash_password(account.password).await?;
        let user = self
            .engine
            .store
            .create_user(NewUser {
                first_name: account.first_name,
                last_name: account.last_name,
                email: account.email,
                password_hash,
                city: account.city,
                country: account.country,
            })
            .await?;
        tracing::info!(user_id = user.id, "user signed up");
        Ok(user)
    }

    pub async fn log_in(&self, email: &str, password: String) -> Result<AccessToken, Error> {
        let user = self.engine.store.user_by_email(email).await?;
        let (id, hash) = match user {
            Some(user) => (Some(user.id), Some(user.password_hash)),
            None => (None, None),
        };
        // Verified even for an unknown email, so the answer takes as long either way.
        let valid = self.auth.verify_password(password, hash).await?;
        match (valid, id) {
            (true, Some(id)) => Ok(self.auth.issue(id)),
            _ => Err(Error::BadCredentials),
        }
    }

    pub async fn videos_of(&self, owner: UserId) -> Result<Vec<Video>, Error> {
        Ok(self.engine.store.videos_of(owner).await?)
    }

    /// The video, if it exists and belongs to `owner`.
    pub async fn video_of(&self, owner: UserId, id: VideoId) -> Result<Video, Error> {
        let video = self
            .engine
            .store
            .video(id)
            .await?
            .ok_or(StoreError::VideoNotFound)?;
        if video.owner_id != owner {
            return Err(StoreError::NotOwner.into());
        }
        Ok(video)
    }

    /// `path` with a signature that lets whoever holds it read the file until the configured
    /// time to live has passed (originals, for their owner's browser).
    pub fn signed_path(&self, path: &str) -> String {
        let expires = crate::domain::now_ts() as u64 + self.config.media.signed_url_ttl_s;
        self.signer.sign(path, expires)
    }

    /// Deletes an unpublished video of `owner`: the record and its job in one durable step,
    /// then a transcode in progress is stopped, then the files go. A crash in between leaves
    /// only files without a record, which startup removes.
    pub async fn delete_video(&self, owner: UserId, id: VideoId) -> Result<Video, Error> {
        let video = self.engine.store.delete_video(id, owner).await?;
        if let Some(transcoder) = &self.actors.transcoder {
            // Stopped now rather than at its next lease heartbeat.
            let _ = transcoder
                .call(|reply| CancelTranscode {
                    video_id: id,
                    reply,
                })
                .await;
        }
        let keys = [
            Some(video.original_key.clone()),
            video.processed_key.clone(),
            video.poster_key.clone(),
        ];
        for key in keys.into_iter().flatten() {
            if let Err(error) = self.engine.blobs.delete(&key).await {
                tracing::warn!(video_id = id, key, %error, "could not remove a deleted video's file");
            }
        }
        tracing::info!(video_id = id, "video deleted");
        Ok(video)
    }

    pub async fn public_videos(
        &self,
        city: Option<&str>,
        page: Page,
    ) -> Result<Vec<(Video, User)>, Error> {
        Ok(self.engine.store.public_videos(city, page).await?)
    }

    pub async fn vote(&self, voter: UserId, id: VideoId) -> Result<u64, Error> {
        Ok(self.engine.store.vote(id, voter).await?)
    }

    pub async fn rankings(
        &self,
        city: Option<&str>,
        page: Page,
    ) -> Result<Vec<RankedPlayer>, Error> {
        Ok(self.engine.store.rankings(city, page).await?)
    }

    /// The media `key` names and a permit to send it. An original needs the signature of the
    /// URL it was requested with (`path` and its `query`).
    pub async fn open_media(
        &self,
        key: MediaKey,
        path: &str,
        query: &[(String, String)],
    ) -> Result<MediaGrant, Error> {
        if key.kind == MediaKind::Original {
            let now = crate::domain::now_ts() as u64;
            self.signer
                .verify_query(path, query, now)
                .map_err(|e| match e {
                    SignatureError::Expired => Error::LinkExpired,
                    SignatureError::Invalid => Error::LinkInvalid,
                })?;
        }
        let streamer = present(&self.actors.streamer)?;
        Ok(streamer.call(|reply| OpenMedia { key, reply }).await??)
    }
}

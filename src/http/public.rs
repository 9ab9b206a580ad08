//! Public routes: published videos, votes, rankings.

use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::components::{ErrorBody, Invalid, RateLimited, Unauthorized, VideoNotFound};
use super::endpoint::media_path;
use super::error::ApiError;
use super::pagination::parse_list_query;
use super::pagination::ListParams;
use super::request::{known, public_url, signed_in, Request};
use super::response::{json, Response};
use crate::domain::{format_ts, VideoId};
use crate::media::{MediaKey, MediaKind};
use crate::node::Node;
use crate::rate_limit::Limited;

const VIDEOS_DEFAULT_LIMIT: u64 = 20;
const RANKINGS_DEFAULT_LIMIT: u64 = 10;
const MAX_LIMIT: u64 = 100;

/// A published video.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({
    "id": 42, "video_id": 42, "title": "Crossover y triple",
    "uploaded_at": "2026-11-22T14:10:43Z", "processed_url": "/media/42.mp4",
    "poster_url": "/media/42.jpg", "owner_name": "Camila Ríos", "owner_city": "Bogotá",
    "votes": 12
}))]
struct PublicVideo {
    /// The same as `video_id`, for clients that expect an `id` on every item.
    id: u64,
    video_id: u64,
    title: String,
    #[schema(format = DateTime)]
    uploaded_at: String,
    processed_url: String,
    poster_url: String,
    /// The player's "First Last".
    owner_name: String,
    owner_city: String,
    votes: u64,
}

/// Published videos, newest first.
#[utoipa::path(
    get,
    path = "/api/public/videos",
    operation_id = "listPublicVideos",
    tag = "public",
    params(ListParams),
    responses(
        (status = 200, description = "A page of published videos (20 by default).",
            body = Vec<PublicVideo>),
        (status = 400, response = Invalid),
    )
)]
pub async fn videos(node: &Node, request: Request) -> Result<Response, ApiError> {
    let query = parse_list_query(&request.query, VIDEOS_DEFAULT_LIMIT, MAX_LIMIT)?;
    let listed = node
        .public_videos(query.city.as_deref(), query.page)
        .await?;
    let url = |kind, video_id| public_url(node, &media_path(MediaKey { kind, video_id }));
    let items: Vec<PublicVideo> = listed
        .into_iter()
        .map(|(video, owner)| PublicVideo {
            id: video.id,
            video_id: video.id,
            uploaded_at: format_ts(video.uploaded_at),
            processed_url: url(MediaKind::Processed, video.id),
            poster_url: url(MediaKind::Poster, video.id),
            owner_name: owner.display_name(),
            owner_city: owner.city,
            votes: video.votes,
            title: video.title,
        })
        .collect();
    Ok(json(StatusCode::OK, &items))
}

/// The vote is counted.
#[derive(Serialize, ToSchema)]
struct Voted {
    #[schema(example = "Voto registrado exitosamente.")]
    message: &'static str,
}

/// Votes for a published video: one vote per player and video.
#[utoipa::path(
    post,
    path = "/api/public/videos/{video_id}/vote",
    operation_id = "vote",
    tag = "public",
    security(("player" = [])),
    params(("video_id" = u64, Path, description = "The video's id.")),
    responses(
        (status = 200, description = "The vote is counted.", body = Voted),
        (status = 400, description = "The player already voted for it, or it is not published.",
            body = ErrorBody, examples(
            ("twice" = (value = json!({"detail": "Ya has votado por este video."}))),
            ("unpublished" = (value = json!({"detail": "El video aún no está publicado para votación."}))),
        )),
        (status = 401, response = Unauthorized),
        (status = 404, response = VideoNotFound),
        (status = 429, response = RateLimited),
    )
)]
pub async fn vote(
    node: &Node,
    request: Request,
    id: Option<VideoId>,
) -> Result<Response, ApiError> {
    node.within_budget(Limited::Vote, request.peer, &request.headers)?;
    let voter = signed_in(node, &request.headers).await?;
    node.vote(voter, known(id)?).await?;
    Ok(json(
        StatusCode::OK,
        &Voted {
            message: "Voto registrado exitosamente.",
        },
    ))
}

/// A player's place in the ranking.
#[derive(Serialize, ToSchema)]
#[schema(example = json!({"position": 1, "username": "Camila Ríos", "city": "Bogotá", "votes": 12}))]
struct Ranked {
    /// Continuous across pages: offset + index + 1.
    #[schema(minimum = 1)]
    position: u64,
    /// "First Last".
    username: String,
    city: String,
    votes: u64,
}

/// Players by votes of their published videos, most first (ties broken by id).
#[utoipa::path(
    get,
    path = "/api/public/rankings",
    operation_id = "rankings",
    tag = "public",
    params(ListParams),
    responses(
        (status = 200, description = "A page of the ranking (10 by default).", body = Vec<Ranked>),
        (status = 400, description = "A query parameter is invalid.", body = ErrorBody,
            example = json!({"detail": "Parámetro inválido en la consulta: limit"})),
    )
)]
pub async fn rankings(node: &Node, request: Request) -> Result<Response, ApiError> {
    let query = parse_list_query(&request.query, RANKINGS_DEFAULT_LIMIT, MAX_LIMIT)?;
    let ranked = node.rankings(query.city.as_deref(), query.page).await?;
    let items: Vec<Ranked> = ranked
        .into_iter()
        .map(|r| Ranked {
            position: r.position,
            username: r.user.display_name(),
            city: r.user.city,
            votes: r.votes,
        })
        .collect();
    Ok(json(StatusCode::OK, &items))
}

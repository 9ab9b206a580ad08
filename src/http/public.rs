//! Public routes: published videos, votes, rankings.

use http::StatusCode;
use serde::Serialize;

use super::endpoint::media_path;
use super::error::ApiError;
use super::pagination::parse_list_query;
use super::request::{known, public_url, signed_in, Request};
use super::response::{json, Response};
use crate::domain::{format_ts, VideoId};
use crate::media::{MediaKey, MediaKind};
use crate::node::Node;
use crate::rate_limit::Limited;

const VIDEOS_DEFAULT_LIMIT: u64 = 20;
const RANKINGS_DEFAULT_LIMIT: u64 = 10;
const MAX_LIMIT: u64 = 100;

#[derive(Serialize)]
struct PublicVideo {
    /// The same as `video_id`, for clients that expect an `id` on every item.
    id: u64,
    video_id: u64,
    title: String,
    uploaded_at: String,
    processed_url: String,
    poster_url: String,
    owner_name: String,
    owner_city: String,
    votes: u64,
}

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

#[derive(Serialize)]
struct Voted {
    message: &'static str,
}

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

#[derive(Serialize)]
struct Ranked {
    position: u64,
    username: String,
    city: String,
    votes: u64,
}

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

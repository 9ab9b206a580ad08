//! Public routes: published videos, votes, rankings.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, StatusCode};
use serde::Serialize;
use warp::reply::Response;

use super::error::ApiError;
use super::pagination::parse_list_query;
use super::videos::{poster_path, processed_path};
use super::{json, signed_in, video_id, within_budget};
use crate::app::AppState;
use crate::domain::format_ts;
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

pub async fn videos(
    state: Arc<AppState>,
    query: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let query = parse_list_query(&query, VIDEOS_DEFAULT_LIMIT, MAX_LIMIT)?;
    let listed = state
        .engine
        .store
        .public_videos(query.city.as_deref(), query.page)
        .await?;
    let items: Vec<PublicVideo> = listed
        .into_iter()
        .map(|(video, owner)| PublicVideo {
            id: video.id,
            video_id: video.id,
            uploaded_at: format_ts(video.uploaded_at),
            processed_url: state.public_url(&processed_path(video.id)),
            poster_url: state.public_url(&poster_path(video.id)),
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
    state: Arc<AppState>,
    peer: IpAddr,
    headers: HeaderMap,
    raw_id: String,
) -> Result<Response, ApiError> {
    within_budget(&state, Limited::Vote, peer, &headers)?;
    let voter = signed_in(&state, &headers).await?;
    let id = video_id(&raw_id)?;
    state.engine.store.vote(id, voter).await?;
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

pub async fn rankings(
    state: Arc<AppState>,
    query: Vec<(String, String)>,
) -> Result<Response, ApiError> {
    let query = parse_list_query(&query, RANKINGS_DEFAULT_LIMIT, MAX_LIMIT)?;
    let ranked = state
        .engine
        .store
        .rankings(query.city.as_deref(), query.page)
        .await?;
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

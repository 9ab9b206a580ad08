//! The HTTP layer: the routes of the public contract (`shared/contract.md`) on warp, the
//! handlers, and the server loop under them.
//!
//! Handlers return `Result<Response, ApiError>`; errors become `{"detail": ...}` responses in
//! one place ([`error`]). Rejections are used only for routing (unknown path, wrong method).

pub mod body;
pub mod error;
pub mod pagination;
pub mod range;
pub mod server;
pub mod shaped_io;

mod accounts;
mod admin;
mod form;
mod media;
mod multipart;
mod ops;
mod public;
mod videos;
mod web;

use std::sync::Arc;

use http::StatusCode;
use serde::Serialize;
use warp::filters::BoxedFilter;
use warp::reply::Response;
use warp::{Filter, Reply};

use std::net::{IpAddr, Ipv4Addr};

use crate::app::AppState;
use crate::domain::{UserId, VideoId};
use crate::rate_limit::{Limited, PeerAddr};

use body::BodyStream;
use error::ApiError;

/// Serialises `value` as the JSON body of a response with `status`.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(ApiError::into_response)
}

/// A path id: anything but plain decimal digits (no sign, no spaces) names no video.
fn video_id(raw: &str) -> Result<VideoId, ApiError> {
    let digits = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    digits
        .then(|| raw.parse().ok())
        .flatten()
        .ok_or_else(|| ApiError::NotFound(error::VIDEO_NOT_FOUND.into()))
}

fn with_state(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || state.clone())
}

fn body_stream() -> BoxedFilter<(BodyStream,)> {
    warp::body::stream().map(body::boxed).boxed()
}

type Query = Vec<(String, String)>;

/// The connection's peer address (set by the server loop for every request).
fn peer() -> impl Filter<Extract = (IpAddr,), Error = std::convert::Infallible> + Clone {
    warp::ext::optional::<PeerAddr>()
        .map(|peer: Option<PeerAddr>| peer.map_or(IpAddr::from(Ipv4Addr::UNSPECIFIED), |p| p.0))
}

/// The player a request's bearer token names. A token is not enough: the player must still
/// exist (a token outlives a deleted account or a restored backup), or the request is 401
/// before any of its body is read.
async fn signed_in(state: &AppState, headers: &http::HeaderMap) -> Result<UserId, ApiError> {
    let header = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let user = state.auth.verify_header(header)?;
    match state.engine.store.user(user).await? {
        Some(_) => Ok(user),
        None => Err(ApiError::from(crate::auth::AuthError::InvalidToken)),
    }
}

/// Takes a token from the client's budget for `route`; rate-limited handlers call it first.
fn within_budget(
    state: &AppState,
    route: Limited,
    peer: IpAddr,
    headers: &http::HeaderMap,
) -> Result<(), ApiError> {
    let client = state.addressing.client(peer, headers);
    Ok(state.rate_limits.check(route, client)?)
}

/// The operations routes (health, readiness, actors, metrics): what load balancers and
/// monitoring call, served on the main listener and on the operations listener.
fn operations(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let st = || with_state(state.clone());
    let health = warp::path!("api" / "health")
        .and(warp::get())
        .map(ops::health)
        .boxed();
    let ready = warp::path!("api" / "health" / "ready")
        .and(warp::get())
        .and(st())
        .then(ops::ready)
        .boxed();
    let actors = warp::path!("api" / "health" / "actors")
        .and(warp::get())
        .and(st())
        .then(ops::actors)
        .boxed();
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(st())
        .then(ops::metrics)
        .boxed();
    health
        .or(ready)
        .unify()
        .or(actors)
        .unify()
        .or(metrics)
        .unify()
        .boxed()
}

/// The routes of the operations listener (`server.ops_addr`): the operations routes alone.
pub fn operations_routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    operations(state).recover(error::recover).unify().boxed()
}

/// Every route of the node.
pub fn routes(state: Arc<AppState>) -> BoxedFilter<(Response,)> {
    let st = || with_state(state.clone());
    let headers = warp::header::headers_cloned;

    let signup = warp::path!("api" / "auth" / "signup")
        .and(warp::post())
        .and(st())
        .and(peer())
        .and(headers())
        .and(body_stream())
        .then(|s, p, h, b| async move { respond(accounts::signup(s, p, h, b).await) })
        .boxed();
    let login = warp::path!("api" / "auth" / "login")
        .and(warp::post())
        .and(st())
        .and(peer())
        .and(headers())
        .and(body_stream())
        .then(|s, p, h, b| async move { respond(accounts::login(s, p, h, b).await) })
        .boxed();

    let upload = warp::path!("api" / "videos" / "upload")
        .and(warp::post())
        .and(st())
        .and(headers())
        .and(body_stream())
        .then(|s, h, b| async move { respond(videos::upload(s, h, b).await) })
        .boxed();
    let my_videos = warp::path!("api" / "videos")
        .and(warp::get())
        .and(st())
        .and(headers())
        .then(|s, h| async move { respond(videos::list(s, h).await) })
        .boxed();
    let detail = warp::path!("api" / "videos" / String)
        .and(warp::get())
        .and(st())
        .and(headers())
        .then(|id: String, s, h| async move { respond(videos::detail(s, h, id).await) })
        .boxed();
    let delete = warp::path!("api" / "videos" / String)
        .and(warp::delete())
        .and(st())
        .and(headers())
        .then(|id: String, s, h| async move { respond(videos::delete(s, h, id).await) })
        .boxed();

    let public_videos = warp::path!("api" / "public" / "videos")
        .and(warp::get())
        .and(st())
        .and(warp::query::<Query>())
        .then(|s, q: Query| async move { respond(public::videos(s, q).await) })
        .boxed();
    let vote = warp::path!("api" / "public" / "videos" / String / "vote")
        .and(warp::post())
        .and(st())
        .and(peer())
        .and(headers())
        .then(|id: String, s, p, h| async move { respond(public::vote(s, p, h, id).await) })
        .boxed();
    let rankings = warp::path!("api" / "public" / "rankings")
        .and(warp::get())
        .and(st())
        .and(warp::query::<Query>())
        .then(|s, q: Query| async move { respond(public::rankings(s, q).await) })
        .boxed();

    let dead_letters = warp::path!("api" / "admin" / "dead-letters")
        .and(warp::get())
        .and(st())
        .and(headers())
        .then(|s, h| async move { respond(admin::dead_letters(s, h).await) })
        .boxed();
    let redrive_all = warp::path!("api" / "admin" / "dead-letters" / "redrive")
        .and(warp::post())
        .and(st())
        .and(headers())
        .then(|s, h| async move { respond(admin::redrive_all(s, h).await) })
        .boxed();
    let redrive_one = warp::path!("api" / "admin" / "dead-letters" / String / "redrive")
        .and(warp::post())
        .and(st())
        .and(headers())
        .then(|id: String, s, h| async move { respond(admin::redrive_one(s, h, id).await) })
        .boxed();
    let faults = warp::path!("api" / "admin" / "faults")
        .and(warp::get())
        .and(st())
        .and(headers())
        .then(|s, h| async move { respond(admin::faults(s, h).await) })
        .boxed();
    let set_faults = warp::path!("api" / "admin" / "faults")
        .and(warp::post())
        .and(st())
        .and(headers())
        .and(body_stream())
        .then(|s, h, b| async move { respond(admin::set_faults(s, h, b).await) })
        .boxed();

    let media = warp::path("media")
        .and(warp::path::tail())
        .and(warp::method())
        .and(st())
        .and(warp::query::<Query>())
        .and(headers())
        .and_then(
            |tail: warp::path::Tail, method: http::Method, s, q: Query, h| async move {
                if method != http::Method::GET && method != http::Method::HEAD {
                    return Ok::<_, warp::Rejection>(respond(Err(ApiError::MethodNotAllowed {
                        allow: "GET, HEAD",
                    })));
                }
                Ok(respond(
                    media::serve(s, method, tail.as_str().to_string(), q, h).await,
                ))
            },
        )
        .boxed();

    let actor_fault = warp::path!("api" / "admin" / "faults" / "actors" / String / String)
        .and(warp::post())
        .and(st())
        .and(headers())
        .and(warp::query::<Query>())
        .then(|actor: String, kind: String, s, h, q: Query| async move {
            respond(admin::actor_fault(s, h, actor, kind, q).await)
        })
        .boxed();
    let index = warp::path::end()
        .and(warp::get())
        .and(st())
        .map(|s: Arc<AppState>| web::index(&s.config.server.public_url))
        .boxed();

    signup
        .or(login)
        .unify()
        .or(upload)
        .unify()
        .or(my_videos)
        .unify()
        .or(detail)
        .unify()
        .or(delete)
        .unify()
        .or(public_videos)
        .unify()
        .or(vote)
        .unify()
        .or(rankings)
        .unify()
        .or(operations(state.clone()))
        .unify()
        .or(dead_letters)
        .unify()
        .or(redrive_all)
        .unify()
        .or(redrive_one)
        .unify()
        .or(faults)
        .unify()
        .or(set_faults)
        .unify()
        .or(actor_fault)
        .unify()
        .or(media)
        .unify()
        .or(index)
        .unify()
        .recover(error::recover)
        .unify()
        .boxed()
}

//! Public routes: published videos, votes and rankings, through HTTP.

use crate::common;

use crate::common::Checked;
use common::{detail_of, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn vote(t: &TestApp, id: &str, token: Option<&str>) -> (StatusCode, Value) {
    let mut request = t.http.post(t.url(&format!("/api/public/videos/{id}/vote")));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    common::read(request.checked().await.unwrap()).await
}

#[tokio::test]
async fn only_published_videos_are_public_newest_first_and_filterable_by_city() {
    let t = TestApp::start();
    let (_, luis) = t.player("Luis", "Díaz", "luis@example.com", "Bogotá").await;
    let (_, ana) = t.player("Ana", "Mora", "ana@example.com", "Cali").await;
    let a = t.uploaded_video(&luis, "Uno").await;
    let b = t.uploaded_video(&ana, "Dos").await;
    let hidden = t.uploaded_video(&luis, "Sin publicar").await;
    let c = t.uploaded_video(&luis, "Tres").await;
    for id in [a, b, c] {
        t.publish(id).await;
    }

    let (status, list) = t.get("/api/public/videos/", None).await;
    assert_eq!(status, StatusCode::OK);
    let ids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["video_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![c, b, a]);
    assert!(!ids.contains(&hidden));
    let first = &list[0];
    assert_eq!(first["title"], "Tres");
    assert_eq!(first["owner_name"], "Luis Díaz");
    assert_eq!(first["owner_city"], "Bogotá");
    assert_eq!(first["votes"], 0);
    assert_eq!(first["processed_url"], format!("/media/{c}.mp4"));
    assert_eq!(first["poster_url"], format!("/media/{c}.jpg"));
    assert!(first["uploaded_at"].as_str().unwrap().ends_with('Z'));

    let (_, bogota) = t.get("/api/public/videos?city=BOGOTA", None).await;
    let ids: Vec<u64> = bogota
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["video_id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![c, a]);
    let (_, paged) = t.get("/api/public/videos?page=2&limit=2", None).await;
    assert_eq!(paged.as_array().unwrap().len(), 1);
    assert_eq!(paged[0]["video_id"], a);
    let (_, offset) = t.get("/api/public/videos?offset=1&limit=1", None).await;
    assert_eq!(offset[0]["video_id"], b);
    let (status, body) = t.get("/api/public/videos?limit=abc", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(detail_of(&body), "Parámetro inválido en la consulta: limit");
}

#[tokio::test]
async fn votes_are_one_per_user_per_published_video() {
    let t = TestApp::start();
    let (_, luis) = t.player("Luis", "Díaz", "luis@example.com", "Bogotá").await;
    let (_, ana) = t.player("Ana", "Mora", "ana@example.com", "Cali").await;
    let published = t.uploaded_video(&luis, "Publicado").await;
    let pending = t.uploaded_video(&luis, "Pendiente").await;
    t.publish(published).await;
    let id = published.to_string();

    let (status, body) = vote(&t, &id, Some(&ana)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"message": "Voto registrado exitosamente."}));
    let (status, body) = vote(&t, &id, Some(&ana)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(detail_of(&body), "Ya has votado por este video.");
    assert_eq!(vote(&t, &id, Some(&luis)).await.0, StatusCode::OK);

    let (status, body) = vote(&t, &pending.to_string(), Some(&ana)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(detail_of(&body).contains("publicado"), "{body}");
    for missing in ["987654", "abc"] {
        let (status, body) = vote(&t, missing, Some(&ana)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(detail_of(&body), "Video no encontrado.");
    }
    assert_eq!(vote(&t, &id, None).await.0, StatusCode::UNAUTHORIZED);

    let (_, detail) = t.get(&format!("/api/videos/{id}"), Some(&luis)).await;
    assert_eq!(detail["votes"], 2);
    let (_, public) = t.get("/api/public/videos", None).await;
    assert_eq!(public[0]["votes"], 2);
}

#[tokio::test]
async fn rankings_order_players_by_votes_with_continuous_positions() {
    let t = TestApp::start();
    // Five players with published videos, two in "Bogotá" spelled differently.
    let mut players = Vec::new();
    for (first, city) in [
        ("Ana", "Bogotá"),
        ("Beto", "Cali"),
        ("Caro", "bogota"),
        ("Dani", "Medellín"),
        ("Eva", "Cali"),
    ] {
        let (id, token) = t.quick_player(first, "Pérez", city).await;
        let video = t.uploaded_video(&token, &format!("Video de {first}")).await;
        t.publish(video).await;
        players.push((id, video));
    }
    // A user with no published video is not a player of the rankings.
    let (_, idle) = t.quick_player("Nadie", "Sinvideo", "Cali").await;
    t.uploaded_video(&idle, "Pendiente").await;
    // Votes: Caro 4, Ana 3, Eva 3, Beto 1, Dani 0 (Ana and Eva tie: the earlier player first).
    let wanted = [3, 1, 4, 0, 3];
    let voters: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..4 {
            v.push(t.quick_player("Votante", &i.to_string(), "Tunja").await.1);
        }
        v
    };
    for ((_, video), votes) in players.iter().zip(wanted) {
        for voter in voters.iter().take(votes) {
            assert_eq!(
                vote(&t, &video.to_string(), Some(voter)).await.0,
                StatusCode::OK
            );
        }
    }

    let (status, all) = t.get("/api/public/rankings", None).await;
    assert_eq!(status, StatusCode::OK);
    let rows: Vec<(u64, String, String, u64)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["position"].as_u64().unwrap(),
                r["username"].as_str().unwrap().to_string(),
                r["city"].as_str().unwrap().to_string(),
                r["votes"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(u64, String, String, u64)> = [
        ("Caro Pérez", "bogota", 4),
        ("Ana Pérez", "Bogotá", 3),
        ("Eva Pérez", "Cali", 3),
        ("Beto Pérez", "Cali", 1),
        ("Dani Pérez", "Medellín", 0),
    ]
    .iter()
    .enumerate()
    .map(|(i, (n, c, v))| (i as u64 + 1, n.to_string(), c.to_string(), *v))
    .collect();
    assert_eq!(rows, expected);

    // Both pagination styles give the same continuous positions.
    for query in ["page=2&limit=2", "offset=2&limit=2"] {
        let (_, page) = t.get(&format!("/api/public/rankings?{query}"), None).await;
        assert_eq!(page.as_array().unwrap().len(), 2, "{query}");
        assert_eq!(page[0]["position"], 3, "{query}");
        assert_eq!(page[0]["username"], "Eva Pérez");
        assert_eq!(page[1]["position"], 4);
    }
    let (_, last) = t.get("/api/public/rankings?page=3&limit=2", None).await;
    assert_eq!(last.as_array().unwrap().len(), 1);
    assert_eq!(last[0]["position"], 5);
    let (_, beyond) = t.get("/api/public/rankings?page=9&limit=2", None).await;
    assert_eq!(beyond, json!([]));

    // City filter ignores accents and case; positions are within the city.
    for city in ["bogota", "BOGOTÁ", "Bogotá", "%20bogotá%20"] {
        let (_, rows) = t
            .get(&format!("/api/public/rankings?city={city}"), None)
            .await;
        let names: Vec<&str> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["username"].as_str().unwrap())
            .collect();
        assert_eq!(names, vec!["Caro Pérez", "Ana Pérez"], "{city}");
        assert_eq!(rows[1]["position"], 2);
    }
    let (_, none) = t.get("/api/public/rankings?city=Lima", None).await;
    assert_eq!(none, json!([]));
}

#[tokio::test]
async fn invalid_ranking_parameters_are_400_naming_the_parameter() {
    let t = TestApp::start();
    for (query, which) in [
        ("page=0", "page"),
        ("page=x", "page"),
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("offset=-1", "offset"),
        ("limit=-5", "limit"),
        ("page=1&offset=3", "offset"),
    ] {
        let (status, body) = t.get(&format!("/api/public/rankings?{query}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        let detail = detail_of(&body);
        assert!(
            detail.starts_with("Parámetro inválido en la consulta: "),
            "{detail}"
        );
        assert!(detail.contains(which), "{query}: {detail}");
    }
    assert_eq!(
        t.get("/api/public/rankings?limit=100", None).await.0,
        StatusCode::OK
    );
}

/// Guards the ranking index against lost updates under concurrent votes.
#[tokio::test]
async fn two_hundred_concurrent_voters_count_exactly_two_hundred() {
    let t = TestApp::start();
    let (_, owner) = t.quick_player("Estrella", "Central", "Bogotá").await;
    let video = t.uploaded_video(&owner, "El video más votado").await;
    t.publish(video).await;
    let mut tokens = Vec::new();
    for i in 0..200 {
        tokens.push(t.quick_player("Fan", &i.to_string(), "Cali").await.1);
    }
    let path = format!("/api/public/videos/{video}/vote");
    let votes = tokens.iter().map(|token| {
        let request = t.http.post(t.url(&path)).bearer_auth(token);
        async move { request.checked().await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(votes).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );

    let (_, detail) = t.get(&format!("/api/videos/{video}"), Some(&owner)).await;
    assert_eq!(detail["votes"], 200);
    let (_, rankings) = t.get("/api/public/rankings", None).await;
    assert_eq!(rankings[0]["username"], "Estrella Central");
    assert_eq!(rankings[0]["votes"], 200);
}

/// Guards the one-vote rule against a user racing themselves.
#[tokio::test]
async fn one_user_voting_fifty_times_at_once_counts_once() {
    let t = TestApp::start();
    let (_, owner) = t.quick_player("Estrella", "Central", "Bogotá").await;
    let video = t.uploaded_video(&owner, "Video").await;
    t.publish(video).await;
    let (_, fan) = t.quick_player("Fan", "Insistente", "Cali").await;
    let path = format!("/api/public/videos/{video}/vote");
    let votes = (0..50).map(|_| {
        let request = t.http.post(t.url(&path)).bearer_auth(&fan);
        async move { request.checked().await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(votes).await;
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == StatusCode::BAD_REQUEST)
            .count(),
        49
    );
    let (_, rankings) = t.get("/api/public/rankings", None).await;
    assert_eq!(rankings[0]["votes"], 1);
}

//! The signed-in player's videos: upload, list, detail, delete, through HTTP.

use crate::common;

use crate::common::Checked;
use common::{clip, detail_of, Clip, TestApp};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_valid_upload_is_stored_with_its_record_and_its_job() {
    let t = TestApp::start();
    let (owner, token) = t
        .player("Luis", "Díaz", "luis@example.com", "Barranquilla")
        .await;
    let (status, body) = t
        .upload(&token, &clip(Clip::Valid), "Mi mejor clavada")
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        body["message"],
        "Video subido exitosamente. Procesamiento en curso."
    );
    let id = body["video_id"].as_u64().unwrap();
    let task_id = body["task_id"].as_str().unwrap();
    assert!(!task_id.is_empty());

    let engine = t.app.engine();
    let video = engine
        .store
        .video(id)
        .await
        .unwrap()
        .expect("the record exists");
    assert_eq!(video.owner_id, owner);
    assert_eq!(video.title, "Mi mejor clavada");
    assert_eq!((video.original.width, video.original.height), (1920, 1080));
    assert!(
        (video.original.duration_s - 25.0).abs() < 0.5,
        "{}",
        video.original.duration_s
    );
    if crate::common::aws::on_aws() {
        // SQS cannot look a job up by id: it is counted, and its task is the record's.
        assert_eq!(video.task_id, task_id);
    } else {
        let job = engine
            .queue
            .job(id)
            .await
            .unwrap()
            .expect("the job is queued");
        assert_eq!(job.task_id, task_id);
    }
    // With SQS the relay may be moving it as it is counted (twice, for a moment): it settles.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.queue_stats().await.unwrap().depth != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the queue never counted one job"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    assert!(
        t.blob(&format!("originals/{id}.mp4")).unwrap()
            == std::fs::read(clip(Clip::Valid)).unwrap(),
        "the original is stored as uploaded"
    );
    assert!(t.files_under("tmp").is_empty());

    // Portrait clips meet the policy too: the shorter side is what counts.
    let (status, body) = t.upload(&token, &clip(Clip::Portrait), "Vertical").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

#[tokio::test]
async fn bad_uploads_are_refused_and_leave_nothing_behind() {
    let t = TestApp::start();
    let (_, token) = t
        .player("Luis", "Díaz", "luis@example.com", "Barranquilla")
        .await;
    let empty = t.dir.path().join("empty.mp4");
    std::fs::write(&empty, b"").unwrap();
    let cases = [
        (clip(Clip::Text), "video_file", "texto renombrado"),
        (clip(Clip::Truncated), "video_file", "truncado"),
        (
            clip(Clip::ZeroTimescale),
            "video_file",
            "escala de tiempo 0",
        ),
        (empty, "video_file", "vacío"),
        (clip(Clip::Short), "dura", "12 s"),
        (clip(Clip::LowRes), "640x360", "640x360"),
    ];
    for (file, expected, what) in cases {
        let (status, body) = t.upload(&token, &file, "Intento").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert!(detail_of(&body).contains(expected), "{what}: {body}");
    }

    // Missing or invalid title, missing file, not multipart at all.
    let part = || {
        reqwest::multipart::Part::bytes(std::fs::read(clip(Clip::Valid)).unwrap())
            .file_name("a.mp4")
    };
    let forms = [
        (
            reqwest::multipart::Form::new().part("video_file", part()),
            "title",
        ),
        (
            reqwest::multipart::Form::new()
                .text("title", "  ")
                .part("video_file", part()),
            "title",
        ),
        (
            reqwest::multipart::Form::new()
                .text("title", "x".repeat(256))
                .part("video_file", part()),
            "title",
        ),
        (
            reqwest::multipart::Form::new().text("title", "Sin archivo"),
            "video_file",
        ),
    ];
    for (form, field) in forms {
        let (status, body) = t.upload_form(&token, form).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        assert!(detail_of(&body).contains(field), "{field}: {body}");
    }
    let response = t
        .http
        .post(t.url("/api/videos/upload"))
        .bearer_auth(&token)
        .json(&json!({"title": "x"}))
        .checked()
        .await
        .unwrap();
    let (status, body) = common::read(response).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(detail_of(&body).contains("multipart"));

    assert_eq!(t.get("/api/videos", Some(&token)).await.1, json!([]));
    assert!(
        t.files_under("tmp").is_empty(),
        "{:?}",
        t.files_under("tmp")
    );
    assert!(
        t.files_under("media").is_empty(),
        "{:?}",
        t.files_under("media")
    );
    assert_eq!(t.app.engine().queue.stats().await.unwrap().depth, 0);
}

#[tokio::test]
async fn my_videos_are_listed_newest_first_with_their_status() {
    let t = TestApp::start();
    let (_, token) = t
        .player("Luis", "Díaz", "luis@example.com", "Barranquilla")
        .await;
    let (_, other) = t.player("Ana", "Mora", "ana@example.com", "Cali").await;
    let first = t.uploaded_video(&token, "Primero").await;
    let second = t.uploaded_video(&token, "Segundo").await;
    t.uploaded_video(&other, "De otra jugadora").await;
    t.publish(first).await;

    let (status, list) = t.get("/api/videos/", Some(&token)).await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["video_id"], second);
    assert_eq!(list[0]["title"], "Segundo");
    assert_eq!(list[0]["status"], "uploaded");
    assert_eq!(list[0]["processed_at"], json!(null));
    assert_eq!(list[0]["processed_url"], json!(null));
    assert!(list[0]["uploaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(list[1]["video_id"], first);
    assert_eq!(list[1]["status"], "processed");
    assert_eq!(list[1]["processed_url"], format!("/media/{first}.mp4"));
    assert!(list[1]["processed_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn detail_is_for_the_owner_only() {
    let t = TestApp::start();
    let (_, token) = t
        .player("Luis", "Díaz", "luis@example.com", "Barranquilla")
        .await;
    let (_, other) = t.player("Ana", "Mora", "ana@example.com", "Cali").await;
    let id = t.uploaded_video(&token, "Triple").await;

    let (status, body) = t.get(&format!("/api/videos/{id}"), Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["video_id"], id);
    assert_eq!(body["title"], "Triple");
    assert_eq!(body["status"], "uploaded");
    assert_eq!(body["progress"], 0);
    assert_eq!(body["votes"], 0);
    assert_eq!(body["processed_url"], json!(null));
    assert_eq!(body["poster_url"], json!(null));
    let original = body["original_url"].as_str().unwrap();
    assert!(
        original.starts_with(&format!("/media/originals/{id}.mp4?expires=")),
        "{original}"
    );
    assert!(original.contains("&signature="));

    t.publish(id).await;
    let (_, body) = t.get(&format!("/api/videos/{id}/"), Some(&token)).await;
    assert_eq!(body["status"], "processed");
    assert_eq!(body["progress"], 100);
    assert_eq!(body["processed_url"], format!("/media/{id}.mp4"));
    assert_eq!(body["poster_url"], format!("/media/{id}.jpg"));

    let (status, body) = t.get(&format!("/api/videos/{id}"), Some(&other)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(detail_of(&body), "No tiene permiso sobre este video.");
    for missing in [
        "999",
        "abc",
        "-1",
        "+1",
        "%201",
        "1.5",
        "18446744073709551616",
    ] {
        let (status, body) = t.get(&format!("/api/videos/{missing}"), Some(&token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(detail_of(&body), "Video no encontrado.");
    }
}

#[tokio::test]
async fn delete_removes_record_job_and_files_unless_published() {
    let t = TestApp::start();
    let (_, token) = t
        .player("Luis", "Díaz", "luis@example.com", "Barranquilla")
        .await;
    let (_, other) = t.player("Ana", "Mora", "ana@example.com", "Cali").await;
    let kept = t.uploaded_video(&token, "Publicado").await;
    let gone = t.uploaded_video(&token, "Borrador").await;
    t.publish(kept).await;
    let delete = |id: u64, token: String| {
        let request = t
            .http
            .delete(t.url(&format!("/api/videos/{id}")))
            .bearer_auth(token);
        async move { common::read(request.checked().await.unwrap()).await }
    };

    let (status, body) = delete(gone, other.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(detail_of(&body), "No tiene permiso sobre este video.");

    let (status, body) = delete(gone, token.clone()).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"message": "El video ha sido eliminado exitosamente.", "video_id": gone})
    );
    let engine = t.app.engine();
    assert!(engine.store.video(gone).await.unwrap().is_none());
    assert!(engine.queue.job(gone).await.unwrap().is_none());
    assert!(t.blob(&format!("originals/{gone}.mp4")).is_none());
    assert_eq!(
        t.get(&format!("/api/videos/{gone}"), Some(&token)).await.0,
        StatusCode::NOT_FOUND
    );

    let (status, body) = delete(gone, token.clone()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(detail_of(&body), "Video no encontrado.");

    let (status, body) = delete(kept, token.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        detail_of(&body),
        "El video ya fue publicado para votación y no puede eliminarse."
    );
    assert!(engine.store.video(kept).await.unwrap().is_some());

    let response = t
        .http
        .delete(t.url("/api/videos/abc"))
        .bearer_auth(&token)
        .checked()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let t = TestApp::start();
    let (status, body) = t.get("/api/nothing-here", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    detail_of(&body);
    let response = t.http.put(t.url("/api/videos")).checked().await.unwrap();
    let (status, body) = common::read(response).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    detail_of(&body);
}

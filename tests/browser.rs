//! The web application in a real browser: headless Chromium (Debian's) driven by
//! `playwright-core`, axe-core and Lighthouse, all from the npm registry at the versions of
//! `tests/browser/package-lock.json`.
//!
//! - `tests/browser/app.mjs` uses the application as players, fans and an operator do, checks
//!   every view with axe-core and photographs it at 1280 and 375 px;
//! - `tests/browser/lighthouse.mjs` scores the home page holding 24 published videos.
//!
//! The screenshots, the axe findings and the Lighthouse reports are written under
//! `target/tmp/web-app/` (the path is printed).

mod common;

use std::path::PathBuf;

use common::gate::Gate;
use common::npm::{driver, node, output};
use common::{clip, generate_mp4, padded_mp4, poster_jpeg, Clip, TestApp};
use serde_json::{json, Value};

const ADMIN_TOKEN: &str = "token-de-operaciones-de-prueba";

/// The browser tests share two cores: one at a time, so that Lighthouse measures the page and
/// not the other test.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn players_fans_and_an_operator_use_the_web_application() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = driver();
    let out = output("views");
    let t = TestApp::start_with(|c| {
        c.transcode.workers = 1;
        c.transcode.encoding.main_max_s = 12.0;
        c.transcode.encoding.bumper_s = 0.5;
        c.transcode.encoding.preset = "ultrafast".into();
        c.transcode.retry_base_s = 1;
        c.faults.enabled = true;
        c.admin.token = ADMIN_TOKEN.into();
        // A crashed transcode is dead-lettered at once, for the operator to re-drive.
        c.queue.max_receives = 1;
    });

    // The server's own words for the two refusals the page must show.
    let valid = clip(Clip::Valid);
    let short = generate_mp4("short-1920x1080-10s.mp4", 1920, 1080, 10);
    let text = clip(Clip::Text);
    let (_, token) = t.quick_player("Referencia", "Apellido", "Lima").await;
    let refusal = |(status, body): (reqwest::StatusCode, Value)| {
        assert_eq!(status, 400, "{body}");
        body["detail"].as_str().unwrap().to_string()
    };
    let short_refusal = refusal(t.upload(&token, &short, "corto").await);
    let text_refusal = refusal(t.upload(&token, &text, "texto").await);

    // A slow uplink to the same node, for a reload that lands in the middle of an upload.
    let slow = Gate::to(t.app.addr).await;
    slow.pace(2 * 1024 * 1024);
    let scenario = json!({
        "admin_token": ADMIN_TOKEN,
        "players": [
            {"first": "Camila", "last": "Ríos", "email": "camila@example.com",
             "password": common::PASSWORD, "city": "Bogotá"},
            {"first": "Andrés", "last": "Peña", "email": "andres@example.com",
             "password": common::PASSWORD, "city": "Medellín"},
        ],
        "title": "Triple desde la esquina",
        "failing_title": "Crossover en la zona",
        "deleted_title": "Video para borrar",
        "resumed_title": "Tras recargar la página",
        "slow_base": slow.url(),
        // Neither accents nor case: the rankings must still find Bogotá.
        "city_query": "BOGOTA",
        "clips": {"valid": valid, "short": short, "text": text, "large": padded_mp4(24 << 20)},
        "refusals": {"short": short_refusal, "text": text_refusal},
    });
    let scenario_path = out.join("scenario.json");
    std::fs::write(&scenario_path, scenario.to_string()).unwrap();

    let report = node(
        &dir,
        "app.mjs",
        vec![
            t.url(""),
            out.display().to_string(),
            scenario_path.display().to_string(),
        ],
    )
    .await;
    eprintln!("screenshots and findings: {}", out.display());

    // axe-core: no violation on any view, at either width (the goal is none serious or
    // critical; none at all is what the views have).
    let views = report["views"].as_object().unwrap();
    for view in [
        "registro",
        "entrar",
        "mis-videos",
        "inicio",
        "clasificacion",
        "operaciones-acceso",
        "operaciones",
        "inicio-sin-sesion",
    ] {
        let found = views[view].as_array().expect(view);
        assert!(found.is_empty(), "{view}: {found:#?}");
        for width in [1280, 375] {
            let shot = out.join(format!("{view}-{width}.png"));
            assert!(std::fs::metadata(&shot).unwrap().len() > 1000, "{shot:?}");
        }
    }
    // The page ran under its Content-Security-Policy without a refusal or a script error
    // (the 4xx answers the scenario provokes are logged by the browser, and are all).
    for line in report["console"].as_array().unwrap() {
        let line = line.as_str().unwrap();
        assert!(
            line.starts_with("Failed to load resource: the server responded with a status of 4"),
            "{line}"
        );
    }
    // What the browser showed is what the node holds: the player's videos, each once (the
    // deleted one gone, the refused ones never made, the resumed one made once).
    let (_, login) = t.login("camila@example.com", common::PASSWORD).await;
    let token = login["access_token"].as_str().unwrap().to_string();
    let (_, mine) = t.get("/api/videos", Some(&token)).await;
    let mut titles: Vec<&str> = mine
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["title"].as_str().unwrap())
        .collect();
    titles.sort();
    assert_eq!(
        titles,
        [
            "Crossover en la zona",
            "Tras recargar la página",
            "Triple desde la esquina"
        ]
    );
    let (_, published) = t.get("/api/public/videos", None).await;
    let voted = published
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["title"] == "Triple desde la esquina")
        .unwrap();
    assert_eq!(voted["votes"], 1, "one vote, counted once");
    assert!(report["played"]["currentTime"].as_f64().unwrap() >= 10.0);
    // The application uploads with tus, never with the form.
    assert!(
        !report["requests"]["tus"].as_array().unwrap().is_empty(),
        "{report}"
    );
    assert_eq!(report["requests"]["form"], 0, "{report}");
}

#[test]
fn the_vendored_uploader_is_the_registrys_file_byte_for_byte() {
    let dir = driver();
    let registry = std::fs::read(dir.join("node_modules/tus-js-client/dist/tus.min.js")).unwrap();
    let vendored = std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("static/vendor/tus-js-client/tus.min.js"),
    )
    .unwrap();
    assert!(
        registry == vendored,
        "static/vendor/tus-js-client/tus.min.js is not the version pinned in \
         tests/browser/package.json"
    );
}

#[tokio::test]
async fn lighthouse_scores_the_home_page_with_24_published_videos() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let dir = driver();
    let out = output("lighthouse");
    let t = TestApp::start();
    let (video, poster) = (clip(Clip::Valid), poster_jpeg());
    let cities = ["Bogotá", "Medellín", "Cali", "Barranquilla"];
    for (n, city) in cities.iter().enumerate() {
        let (_, token) = t
            .quick_player("Jugador", &format!("Número {n}"), city)
            .await;
        for k in 0..6 {
            let id = t
                .uploaded_video(&token, &format!("Jugada {k} desde {city}"))
                .await;
            t.publish_with_files(id, &video, &poster).await;
        }
    }
    let (_, listed) = t.get("/api/public/videos?limit=24", None).await;
    assert_eq!(listed.as_array().unwrap().len(), 24);

    let runs = node(
        &dir,
        "lighthouse.mjs",
        vec![t.url("/"), "3".into(), out.display().to_string()],
    )
    .await;
    let runs = runs.as_array().unwrap();
    let median = |category: &str| {
        let mut scores: Vec<u64> = runs
            .iter()
            .map(|r| r["scores"][category].as_u64().unwrap())
            .collect();
        scores.sort();
        scores[scores.len() / 2]
    };
    for run in runs {
        eprintln!(
            "lighthouse run {}: {} {} first load {} bytes ({} without media)",
            run["run"],
            run["scores"],
            run["metrics"],
            run["bytes"]["total"],
            run["bytes"]["without_media"]
        );
        assert!(run["runtime_error"].is_null(), "{run}");
    }
    eprintln!("reports: {}", out.display());
    let (performance, accessibility, practices) = (
        median("performance"),
        median("accessibility"),
        median("best-practices"),
    );
    eprintln!(
        "median of {} runs: performance {performance}, accessibility {accessibility}, \
         best practices {practices}",
        runs.len()
    );
    assert!(accessibility >= 95, "accessibility {accessibility}");
    assert!(practices >= 95, "best practices {practices}");
    assert!(performance >= 90, "performance {performance}");
    // The first load stays small before media (posters and videos).
    for run in runs {
        let bytes = run["bytes"]["without_media"].as_u64().unwrap();
        assert!(
            bytes > 0 && bytes < 150 * 1024,
            "{bytes} bytes before media"
        );
    }
}

//! The platform's documents, held to the code: the OpenAPI document passes Redocly's linter,
//! its reference page works in Chromium under its Content-Security-Policy, and the Postman
//! collection (`collections/`) covers every operation of the document and runs green with
//! newman against a node. The npm tools are pinned by `tests/browser/package-lock.json`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::npm::{driver, node, output};
use common::{clip, Clip, TestApp};
use serde_json::Value;

const COLLECTION: &str = "collections/showcase.postman_collection.json";
const ENVIRONMENT: &str = "collections/postman_environment.json";
const ADMIN_TOKEN: &str = "token-de-administracion-de-prueba";

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn document() -> Value {
    serde_json::to_value(showcase::http::openapi::document()).unwrap()
}

/// (METHOD, template) of every operation of the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            found.insert((method.to_uppercase(), path.clone()));
        }
    }
    found
}

/// Every request of the collection: (folder path and name, METHOD, path with its variables
/// replaced by a value, test script).
fn requests(items: &Value, under: &str, out: &mut Vec<(String, String, String, String)>) {
    for item in items.as_array().unwrap() {
        let name = format!("{under}/{}", item["name"].as_str().unwrap());
        if let Some(children) = item.get("item") {
            requests(children, &name, out);
            continue;
        }
        let request = &item["request"];
        let raw = request["url"]["raw"].as_str().unwrap();
        let path = raw
            .strip_prefix("{{base_url}}")
            .unwrap_or_else(|| panic!("{name}: {raw} does not start with {{{{base_url}}}}"));
        let path = path.split('?').next().unwrap();
        // Variables stand for one path segment (or the part of one): any word will do.
        let mut concrete = String::new();
        let mut rest = path;
        while let Some((before, after)) = rest.split_once("{{") {
            concrete.push_str(before);
            concrete.push_str("x1");
            rest = after.split_once("}}").map_or("", |(_, a)| a);
        }
        concrete.push_str(rest);
        let tests = item["event"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["listen"] == "test")
            .flat_map(|e| e["script"]["exec"].as_array().unwrap())
            .map(|l| l.as_str().unwrap())
            .collect::<Vec<_>>()
            .join("\n");
        out.push((
            name,
            request["method"].as_str().unwrap().to_string(),
            concrete,
            tests,
        ));
    }
}

fn collection() -> Value {
    let text = std::fs::read_to_string(repo(COLLECTION)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_collection_covers_every_operation_of_the_document_and_nothing_else() {
    let doc = document();
    let documented = operations(&doc);
    let collection = collection();
    let folders: Vec<&str> = collection["item"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        folders,
        [
            "Cuentas",
            "Videos",
            "Público",
            "Operaciones",
            "Administración"
        ]
    );
    let mut all = Vec::new();
    requests(&collection["item"], "", &mut all);
    let mut covered = BTreeSet::new();
    for (name, method, path, tests) in &all {
        let method_of: reqwest::Method = method.parse().unwrap();
        let (template, _) = common::openapi::operation(&method_of, path).unwrap_or_else(|| {
            panic!("{name}: {method} {path} is not an operation of the document")
        });
        let template = (method.clone(), template.to_string());
        covered.insert(template);
        assert!(
            tests.matches("pm.test(").count() >= 1,
            "{name} asserts nothing"
        );
        assert!(
            tests.contains("pm.response.to.have.status("),
            "{name} does not check the status"
        );
    }
    let missing: Vec<_> = documented.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "operations of the document without a request in collections/: {missing:?}"
    );
    let environment: Value =
        serde_json::from_str(&std::fs::read_to_string(repo(ENVIRONMENT)).unwrap()).unwrap();
    let keys: Vec<&str> = environment["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["base_url", "clip_bytes", "admin_token"]);
    eprintln!(
        "{} requests in the collection cover the document's {} operations",
        all.len(),
        documented.len()
    );
}

/// Runs an npm tool of the driver's `node_modules/.bin`; returns its exit status and output.
fn tool(dir: &Path, name: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(dir.join("node_modules/.bin").join(name))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn the_served_document_passes_the_linter_with_no_error_or_warning() {
    let dir = driver();
    let t = TestApp::start();
    let (status, served) = t.get("/api/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        served,
        document(),
        "the node serves the document of its code"
    );
    let file = output("openapi").join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&served).unwrap()).unwrap();
    let file = file.to_str().unwrap();
    let (ok, stdout, stderr) = tool(
        &dir,
        "redocly",
        &["lint", file, "--config", "redocly.yaml", "--format", "json"],
    );
    let lint: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("redocly lint: {e}\n{stdout}\n{stderr}"));
    assert!(ok, "redocly lint failed:\n{stdout}\n{stderr}");
    assert_eq!(lint["totals"]["errors"], 0, "{lint}");
    assert_eq!(lint["totals"]["warnings"], 0, "{lint}");
    assert_eq!(lint["totals"]["ignored"], 0, "{lint}");
    let doc = &served;
    assert_eq!(doc["openapi"], "3.1.0");
    eprintln!(
        "redocly {}: {} operations, {} schemas, no error, no warning",
        lint["version"],
        operations(doc).len(),
        doc["components"]["schemas"].as_object().unwrap().len()
    );
}

#[tokio::test]
async fn newman_runs_the_collection_green_against_a_node() {
    let dir = driver();
    let t = TestApp::start_with(|c| {
        c.admin.token = ADMIN_TOKEN.into();
        c.faults.enabled = true;
        c.transcode.workers = 1;
    });
    // The files the collection uploads, in its working directory.
    let work = output("newman");
    let clip_path = work.join("clip.mp4");
    std::fs::copy(clip(Clip::Valid), &clip_path).unwrap();
    std::fs::write(work.join("no-es-video.txt"), "esto no es un video\n").unwrap();
    let clip_bytes = std::fs::metadata(&clip_path).unwrap().len().to_string();
    let report = work.join("report.json");
    let base = t.base.clone();
    let collection_file = repo(COLLECTION);
    let environment = repo(ENVIRONMENT);
    let args: Vec<String> = vec![
        "run".into(),
        collection_file.to_str().unwrap().into(),
        "-e".into(),
        environment.to_str().unwrap().into(),
        "--working-dir".into(),
        work.to_str().unwrap().into(),
        "--env-var".into(),
        format!("base_url={base}"),
        "--env-var".into(),
        format!("clip_bytes={clip_bytes}"),
        "--env-var".into(),
        format!("admin_token={ADMIN_TOKEN}"),
        "--reporters".into(),
        "cli,json".into(),
        "--reporter-json-export".into(),
        report.to_str().unwrap().into(),
        "--timeout".into(),
        "600000".into(),
        "--color".into(),
        "off".into(),
    ];
    let newman = dir.join("node_modules/.bin/newman");
    let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
        let out = Command::new(newman)
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap();
    eprintln!("{stdout}\n{stderr}");
    let run: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let stats = &run["run"]["stats"];
    let failures: Vec<String> = run["run"]["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{}: {}", f["source"]["name"], f["error"]["message"]))
        .collect();
    assert!(
        ok && failures.is_empty(),
        "newman failed:\n{}",
        failures.join("\n")
    );
    let (sent, assertions) = (
        stats["requests"]["total"].as_u64().unwrap(),
        stats["assertions"]["total"].as_u64().unwrap(),
    );
    let mut items = Vec::new();
    requests(&collection()["item"], "", &mut items);
    assert!(assertions >= 140, "{assertions} assertions");
    eprintln!(
        "newman: {} requests of the collection, {sent} sent (polls and retries included), \
         {assertions} assertions, 0 failed",
        items.len()
    );
    // What the collection did is what the node holds: the form upload published and voted
    // once, the resumable one deleted.
    let (status, videos) = t.get("/api/public/videos", None).await;
    assert_eq!(status, 200);
    let videos = videos.as_array().unwrap();
    assert_eq!(videos.len(), 1, "{videos:?}");
    assert_eq!(videos[0]["votes"], 1);
    assert_eq!(videos[0]["owner_name"], "Camila Ríos");
}

#[tokio::test]
async fn the_reference_page_draws_every_operation_under_its_policy() {
    let dir = driver();
    let t = TestApp::start();
    let out = output("docs");
    let screenshot = out.join("docs-1280.png");
    let report = node(
        &dir,
        "docs.mjs",
        vec![t.base.clone(), screenshot.to_str().unwrap().into()],
    )
    .await;
    let documented = operations(&document()).len() as u64;
    assert_eq!(report["operations"], documented, "{report}");
    assert_eq!(report["tried"]["status"], "200", "{report}");
    assert!(report["console"].as_array().unwrap().is_empty(), "{report}");
    assert!(
        report["title"].as_str().unwrap().starts_with("showcase"),
        "{report}"
    );
    eprintln!("/docs: {report}\nscreenshot: {}", screenshot.display());
}

#[test]
fn the_vendored_reference_is_the_registrys_files_byte_for_byte() {
    let dir = driver();
    for file in [
        "swagger-ui-bundle.js",
        "swagger-ui.css",
        "LICENSE",
        "NOTICE",
    ] {
        let registry = std::fs::read(dir.join("node_modules/swagger-ui-dist").join(file)).unwrap();
        let vendored = std::fs::read(repo("static/vendor/swagger-ui").join(file)).unwrap();
        assert!(
            registry == vendored,
            "static/vendor/swagger-ui/{file} is not the version pinned in \
             tests/browser/package.json"
        );
    }
}

//! `/api/v1/openapi.json` describes what the server really answers. The document is
//! generated from the handlers and their types; these tests call every documented path
//! against seeded data and validate each response with a JSON Schema 2020-12 validator
//! (the `jsonschema` crate), and check that no API route is left out of the document.

use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::pages::seed;
use crate::support::TestApp;

/// The document as the server builds it.
pub fn document() -> Value {
    serde_json::to_value(rackwatch::web::openapi::document()).unwrap()
}

/// Every object schema that lists its properties is closed (`additionalProperties:
/// false` unless it says otherwise), so a field the server sends but the document does
/// not name is an error here, not a silent extra. A struct flattened into another is an
/// `allOf` of parts: there the whole is closed (`unevaluatedProperties: false`) and its
/// parts, and the components they name, are left open.
fn close_objects(root: &mut Value) {
    fn parts_of_all_of(v: &Value, names: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::Array(parts)) = m.get("allOf") {
                    for p in parts {
                        if let Some(r) = p["$ref"].as_str() {
                            names.insert(r.trim_start_matches("#/components/schemas/").into());
                        }
                    }
                }
                m.values().for_each(|v| parts_of_all_of(v, names));
            }
            Value::Array(a) => a.iter().for_each(|v| parts_of_all_of(v, names)),
            _ => {}
        }
    }
    fn close(v: &mut Value, open: bool) {
        match v {
            Value::Object(m) => {
                let closed = m.contains_key("additionalProperties")
                    || m.contains_key("unevaluatedProperties");
                if !open && !closed {
                    if m.contains_key("allOf") {
                        m.insert("unevaluatedProperties".into(), Value::Bool(false));
                    } else if m.contains_key("properties") {
                        m.insert("additionalProperties".into(), Value::Bool(false));
                    }
                }
                for (k, v) in m.iter_mut() {
                    if k == "allOf" {
                        if let Value::Array(parts) = v {
                            parts.iter_mut().for_each(|p| close(p, true));
                        }
                    } else {
                        close(v, false);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|v| close(v, false)),
            _ => {}
        }
    }
    // (The root's own `allOf` only wraps the schema under test.)
    let mut parts = BTreeSet::new();
    parts_of_all_of(&root["components"], &mut parts);
    if let Some(Value::Array(top)) = root.get("allOf") {
        top.iter().for_each(|s| parts_of_all_of(s, &mut parts));
    }
    if let Some(Value::Object(schemas)) = root.pointer_mut("/components/schemas") {
        for (name, s) in schemas.iter_mut() {
            close(s, parts.contains(name));
        }
    }
    if let Some(Value::Array(top)) = root.get_mut("allOf") {
        top.iter_mut().for_each(|s| close(s, false));
    }
}

/// Validate `body` against `schema` (a schema inside `doc`, whose `$ref`s point at
/// `#/components/schemas/…`). Returns one line per violation, with where it is.
pub fn violations(doc: &Value, schema: &Value, body: &Value, what: &str) -> Vec<String> {
    validator(doc, schema, what)
        .iter_errors(body)
        .map(|e| format!("{what}: at {}: {e}", e.instance_path()))
        .collect()
}

/// A validator for `schema` with the document's components beside it; panics, naming
/// `what`, when the schema does not compile.
fn validator(doc: &Value, schema: &Value, what: &str) -> jsonschema::Validator {
    let mut root = json!({"components": doc["components"].clone(), "allOf": [schema.clone()]});
    close_objects(&mut root);
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("{what}: the document's schema does not compile: {e}"))
}

/// The schema of `method path`'s `status` JSON answer.
pub fn response_schema<'a>(doc: &'a Value, method: &str, path: &str, status: u16) -> &'a Value {
    let s = &doc["paths"][path][method]["responses"][status.to_string()]["content"]
        ["application/json"]["schema"];
    assert!(s.is_object(), "{method} {path} has no schema for {status}");
    s
}

/// Validate a real answer of `method path` against the document; panics with every
/// violation.
pub fn assert_matches(doc: &Value, method: &str, path: &str, status: u16, body: &Value) {
    let errs = violations(doc, response_schema(doc, method, path, status), body, path);
    assert!(
        errs.is_empty(),
        "{method} {path} ({status}) differs from the OpenAPI document:\n{}",
        errs.join("\n")
    );
}

#[test]
fn the_validator_catches_drift() {
    let doc = json!({"components": {"schemas": {"A": {"type": "object",
        "required": ["x", "t"], "properties": {"x": {"type": ["integer", "null"]}, "t": {"type": "string", "format": "date-time"}}}}}});
    let s = json!({"$ref": "#/components/schemas/A"});
    let ok = violations(
        &doc,
        &s,
        &json!({"x": null, "t": "2026-11-23T12:00:00Z"}),
        "$",
    );
    assert!(ok.is_empty(), "{ok:?}");
    let e = violations(&doc, &s, &json!({"x": 1.5, "t": "noon", "y": 1}), "$");
    assert_eq!(
        e.len(),
        3,
        "x not an integer, t not a time, y undocumented: {e:?}"
    );
    let missing = violations(&doc, &s, &json!({"x": 1}), "$");
    assert_eq!(missing.len(), 1, "t missing: {missing:?}");
}

/// The document is an OpenAPI 3.1 document whose schemas all compile, with the paths the
/// README promises (forecasts, ingest and the capacity API were once missing).
#[test]
fn the_document_is_generated_with_every_api_path() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for p in [
        "/api/v1/ingest",
        "/api/v1/forecasts",
        "/api/v1/capacity",
        "/api/v1/capacity/pools/{pool}",
        "/api/v1/capacity/recommendations",
        "/api/v1/pools/{pool}/demand",
        "/api/v1/audit",
        "/api/v1/openapi.json",
    ] {
        assert!(paths.contains(p), "{p} is not in the document");
    }
    // Every schema compiles as JSON Schema 2020-12 (a dangling $ref would not).
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    assert!(schemas.len() > 30, "{} schemas", schemas.len());
    for (name, schema) in schemas {
        validator(&doc, schema, name);
    }
}

/// What OpenAPI 3.1 requires of operations beyond the schemas, and code generators rely
/// on: every operation has a unique `operationId`, every response a `description`, and
/// every security requirement names a scheme the document defines.
#[test]
fn operations_have_unique_ids_described_responses_and_defined_security() {
    let doc = document();
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    let mut ids = std::collections::BTreeMap::<String, String>::new();
    let mut problems = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let Some(responses) = op.get("responses").and_then(Value::as_object) else {
                continue;
            };
            let at = format!("{} {path}", method.to_uppercase());
            match op["operationId"].as_str() {
                None => problems.push(format!("{at}: no operationId")),
                Some(id) => {
                    if let Some(other) = ids.insert(id.to_string(), at.clone()) {
                        problems.push(format!("{at}: operationId {id:?} is also {other}"));
                    }
                }
            }
            for (code, r) in responses {
                if !r["description"].is_string() {
                    problems.push(format!("{at}: response {code} has no description"));
                }
            }
            for req in op["security"].as_array().into_iter().flatten() {
                for name in req.as_object().unwrap().keys() {
                    if !schemes.contains_key(name) {
                        problems.push(format!("{at}: security scheme {name:?} is not defined"));
                    }
                }
            }
        }
    }
    assert!(ids.len() > 20, "{} operations", ids.len());
    assert!(problems.is_empty(), "{problems:#?}");
    // Remote write takes its own kind of token, not an agent's.
    assert_eq!(
        doc["paths"]["/api/v1/write"]["post"]["security"],
        json!([{"remote_write_token": []}])
    );
    // Its body is bytes (a client generator must not expect a list of numbers).
    let body = &doc["paths"]["/api/v1/write"]["post"]["requestBody"]["content"]
        ["application/x-protobuf"]["schema"];
    let body = match body["$ref"].as_str() {
        Some(r) => &doc["components"]["schemas"][r.rsplit('/').next().unwrap()],
        None => body,
    };
    assert_eq!(
        (&body["type"], &body["format"]),
        (&json!("string"), &json!("binary")),
        "{body}"
    );
}

/// Every `/api/` route the server registers is in the document. API handlers are
/// registered with `routes!(handler)`, which takes the path from the handler's
/// `#[utoipa::path]`, so they are documented by construction; a route added with a plain
/// `.route("/api/…")` or `.nest("/api…")` would bypass that. This reads the sources for
/// such registrations, and probes every documented operation on the live server to see
/// that the router answers it (not the unknown-path fallback).
#[tokio::test]
async fn no_router_route_is_missing_from_the_document() {
    let doc = document();
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let mut undocumented = Vec::new();
    let mut files = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    let mut scanned = 0;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if p.extension().and_then(|e| e.to_str()) != Some("rs") {
            continue;
        }
        scanned += 1;
        let src = std::fs::read_to_string(&p).unwrap();
        for call in [
            ".route(\"",
            ".route_service(\"",
            ".nest(\"",
            ".nest_service(\"",
        ] {
            for (at, _) in src.match_indices(call) {
                let rest = &src[at + call.len()..];
                let path = &rest[..rest.find('"').unwrap()];
                let is_api = path.starts_with("/api");
                if is_api && (call.starts_with(".nest") || !documented.contains(path)) {
                    undocumented.push(format!("{}: {call}{path}\"", p.display()));
                }
            }
        }
    }
    assert!(scanned > 20, "read only {scanned} source files");
    assert!(
        undocumented.is_empty(),
        "API routes registered outside the document (use routes!(handler) with a \
         #[utoipa::path]):\n{}",
        undocumented.join("\n")
    );

    let app = TestApp::spawn().await;
    let mut unrouted = Vec::new();
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let url = path.replace(['{', '}'], "");
        for method in item.as_object().unwrap().keys() {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let r = app
                .http
                .request(m, format!("{}{url}", app.base))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            operations += 1;
            if status == 404 && body.contains("no such page or endpoint") || status == 405 {
                unrouted.push(format!("{method} {path}: {status} {body}"));
            }
        }
    }
    assert!(operations >= documented.len());
    assert!(
        unrouted.is_empty(),
        "documented but not served:\n{}",
        unrouted.join("\n")
    );
    app.stop().await;
}

#[tokio::test]
async fn real_responses_match_the_openapi_document() {
    use crate::capacity::{demand_history, hosts};
    let app = TestApp::spawn().await;
    seed(&app, "api-host").await;
    // A pool with four weeks of demand, so the capacity API answers with a plan.
    hosts(&app, "infer", "fra1", "r1", 2, 8).await;
    demand_history(&app, "infer", 16, |_, h| {
        if (7..22).contains(&h) {
            12.0
        } else {
            4.0
        }
    })
    .await;
    // Minutes of data only: the anomaly job records why the host has no model yet.
    let now = chrono::Utc::now();
    app.store.run_rollups(now).await.unwrap();
    rackwatch::analytics::anomaly::AnomalyJob::default()
        .run(&app.store, &app.cfg.anomaly, now)
        .await
        .unwrap();
    rackwatch::analytics::capacity::run(&app.store, &app.cfg, now)
        .await
        .unwrap();
    let cookie = app.login("ops", "correct horse").await;
    let served: Value = app
        .http
        .get(format!("{}/api/v1/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let doc = document();
    assert_eq!(served, doc, "the server serves the generated document");
    // A firing GPU alert, as the evaluator writes it (the hardware rule is not loaded here).
    sqlx::query(
        r#"INSERT INTO alerts (fingerprint, rule, severity, labels, state, value, summary, description,
                               started_at, fired_at, last_active_at)
           VALUES ('gpu-xid|event=xid|gpu=1|host=api-host|rack=r07|site=fra1|xid=79', 'gpu-xid', 'critical',
                   '{"event": "xid", "gpu": "1", "host": "api-host", "rack": "r07", "site": "fra1", "xid": "79"}',
                   'firing', 79, 'GPU reported an XID error', 'XID 79: GPU has fallen off the bus',
                   now(), now(), now())"#,
    )
    .execute(&app.store.pool)
    .await
    .unwrap();
    let calls = [
        ("/api/v1/fleet", "/api/v1/fleet?metric=temp", 200),
        ("/api/v1/hosts", "/api/v1/hosts", 200),
        (
            "/api/v1/hosts/{name}",
            "/api/v1/hosts/api-host?range=15m",
            200,
        ),
        (
            "/api/v1/hosts/{name}",
            "/api/v1/hosts/api-host?range=7d",
            200,
        ),
        ("/api/v1/hosts/{name}", "/api/v1/hosts/nope", 404),
        (
            "/api/v1/hosts/{name}/gpus/{index}",
            "/api/v1/hosts/api-host/gpus/1?range=1h",
            200,
        ),
        (
            "/api/v1/hosts/{name}/gpus/{index}",
            "/api/v1/hosts/api-host/gpus/1?range=30d",
            200,
        ),
        (
            "/api/v1/hosts/{name}/gpus/{index}",
            "/api/v1/hosts/api-host/gpus/1?range=3w",
            400,
        ),
        (
            "/api/v1/hosts/{name}/samples",
            "/api/v1/hosts/api-host/samples",
            200,
        ),
        (
            "/api/v1/racks/{site}/{rack}",
            "/api/v1/racks/fra1/r07?range=6h&metric=health",
            200,
        ),
        ("/api/v1/inventory", "/api/v1/inventory?q=h100", 200),
        ("/api/v1/events", "/api/v1/events", 200),
        ("/api/v1/alerts", "/api/v1/alerts", 200),
        ("/api/v1/silences", "/api/v1/silences", 200),
        ("/api/v1/admin/users", "/api/v1/admin/users", 200),
        ("/api/v1/admin/tokens", "/api/v1/admin/tokens", 200),
        ("/api/v1/audit", "/api/v1/audit?action=login&limit=5", 200),
        ("/api/v1/energy/weekly", "/api/v1/energy/weekly", 200),
        (
            "/api/v1/energy/weekly",
            "/api/v1/energy/weekly?week=2026-W99",
            400,
        ),
        // Real scores are checked against the document in anomalies.rs.
        (
            "/api/v1/anomalies",
            "/api/v1/anomalies?host=api-host&anomalous=true",
            200,
        ),
        ("/api/v1/anomalies", "/api/v1/anomalies?limit=-3", 400),
        ("/api/v1/anomalies", "/api/v1/anomalies?host=nope", 404),
        // Real forecasts are checked against the document in forecasts.rs.
        ("/api/v1/forecasts", "/api/v1/forecasts?scope=host", 200),
        ("/api/v1/forecasts", "/api/v1/forecasts?metric=cpu", 400),
        ("/api/v1/forecasts", "/api/v1/forecasts?host=api-host", 400),
        ("/api/v1/capacity", "/api/v1/capacity", 200),
        (
            "/api/v1/capacity/pools/{pool}",
            "/api/v1/capacity/pools/infer",
            200,
        ),
        (
            "/api/v1/capacity/pools/{pool}",
            "/api/v1/capacity/pools/nope",
            404,
        ),
        (
            "/api/v1/capacity/recommendations",
            "/api/v1/capacity/recommendations",
            200,
        ),
        ("/api/v1/openapi.json", "/api/v1/openapi.json", 200),
    ];
    let mut covered = BTreeSet::new();
    let mut errs = Vec::new();
    for (template, url, status) in calls {
        let r = app.get(&cookie, url).await;
        assert_eq!(r.status().as_u16(), status, "{url}");
        let body: Value = r.json().await.unwrap();
        errs.extend(violations(
            &doc,
            response_schema(&doc, "get", template, status),
            &body,
            url,
        ));
        covered.insert(("get", template));
        // The data is really there (not an empty but valid answer).
        match template {
            // api-host's 2 GPUs and the pool's 2 hosts of 8.
            "/api/v1/fleet" => assert_eq!(body["gpus"].as_array().unwrap().len(), 2 + 16),
            "/api/v1/hosts/{name}/gpus/{index}" if status == 200 => {
                assert_eq!(body["events"][0]["title"], "XID 79");
                assert!(!body["series"].as_array().unwrap().is_empty() || url.contains("30d"));
            }
            "/api/v1/inventory" => assert_eq!(body["rows"].as_array().unwrap().len(), 2),
            "/api/v1/anomalies" if status == 200 => {
                assert_eq!(body["models"][0]["status"], "insufficient_history")
            }
            "/api/v1/alerts" => assert_eq!(body[0]["labels"]["gpu"], "1"),
            "/api/v1/hosts/{name}" if status == 200 => {
                assert_eq!(body["alerts"][0]["gpu"], 1);
                assert!(!body["gpu_series"].as_array().unwrap().is_empty() || url.contains("7d"));
            }
            "/api/v1/racks/{site}/{rack}" => assert_eq!(body["alerts"][0]["host"], "api-host"),
            "/api/v1/capacity/recommendations" => {
                assert_eq!(body[0]["pool"], "infer", "{body}")
            }
            _ => {}
        }
    }

    // Every GET endpoint refuses a parameter it does not take (a filter it would ignore,
    // answering for everything), with a 400 that names it and matches the document.
    let mut refused = BTreeSet::new();
    for (template, url, status) in calls {
        if status != 200 || !refused.insert(template) {
            continue;
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        let bad = format!("{url}{sep}bogus=1");
        let r = app.get(&cookie, &bad).await;
        assert_eq!(r.status().as_u16(), 400, "{bad}");
        let body: Value = r.json().await.unwrap();
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("unknown parameter `bogus`")),
            "{bad}: {body}"
        );
        errs.extend(violations(
            &doc,
            response_schema(&doc, "get", template, 400),
            &body,
            &bad,
        ));
    }
    let gets = doc["paths"]
        .as_object()
        .unwrap()
        .values()
        .filter(|item| item.get("get").is_some())
        .count();
    assert_eq!(
        refused.len(),
        gets,
        "every GET endpoint is checked: {refused:?}"
    );

    // The writes: facility meter readings (one good, one bad), a scheduler's queue
    // report, and an agent's batch.
    let t0 = chrono::Utc::now() - chrono::Duration::hours(2);
    let readings = json!([
        {"site": "fra1", "start": t0, "end": t0 + chrono::Duration::hours(1), "energy_kwh": 12.5},
        {"site": "fra1", "start": t0, "end": t0, "energy_kwh": 1.0}
    ]);
    let r = app
        .post_json(&cookie, "/api/v1/facility/readings", &readings)
        .await;
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        (body["stored"].as_u64(), body["rejected"].as_u64()),
        (Some(1), Some(1))
    );
    errs.extend(violations(
        &doc,
        response_schema(&doc, "post", "/api/v1/facility/readings", 200),
        &body,
        "facility readings",
    ));
    covered.insert(("post", "/api/v1/facility/readings"));

    let sched = app.store.create_pool_token("infer", "slurm").await.unwrap();
    for (report, status) in [
        (json!({"pending_gpus": 6, "source": "slurm"}), 200),
        (json!({"pending_gpus": -1}), 400),
    ] {
        let r = app
            .http
            .post(format!("{}/api/v1/pools/infer/demand", app.base))
            .bearer_auth(&sched)
            .json(&report)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{report}");
        let body: Value = r.json().await.unwrap();
        errs.extend(violations(
            &doc,
            response_schema(&doc, "post", "/api/v1/pools/{pool}/demand", status),
            &body,
            "pool demand",
        ));
    }
    covered.insert(("post", "/api/v1/pools/{pool}/demand"));

    let token = app.token("api-agent").await;
    let ts = chrono::Utc::now();
    for (batch, status) in [
        (
            json!({"host": {"name": "api-agent"}, "host_samples": [{"ts": ts, "cpu_pct": 12.5}]}),
            200,
        ),
        (
            json!({"host": {"name": "api-agent"}, "host_samples": [{"ts": "noon", "cpu_pct": 12.5}]}),
            200,
        ),
        (json!({"host": 3}), 400),
    ] {
        let r = app.ingest(&token, &batch).await;
        assert_eq!(r.status().as_u16(), status, "{batch}");
        let body: Value = r.json().await.unwrap();
        errs.extend(violations(
            &doc,
            response_schema(&doc, "post", "/api/v1/ingest", status),
            &body,
            "ingest",
        ));
    }
    covered.insert(("post", "/api/v1/ingest"));

    // Remote write: 204 without a body, and an error as an ErrorBody.
    let writer = app
        .store
        .create_write_token(
            &rackwatch::store::auth::WriteScope::Hosts(vec!["api-rw".into()]),
            "api",
        )
        .await
        .unwrap();
    let series = crate::remote_write::series(
        &[("__name__", "node_load1"), ("instance", "api-rw:9100")],
        &[(ts.timestamp_millis(), 0.5)],
    );
    for (body, status) in [
        (crate::remote_write::body(&[series]), 204),
        (b"not snappy".to_vec(), 400),
    ] {
        let r = app
            .http
            .post(format!("{}/api/v1/write", app.base))
            .bearer_auth(&writer)
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "snappy")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status);
        let documented = &doc["paths"]["/api/v1/write"]["post"]["responses"][status.to_string()];
        assert!(documented.is_object(), "{status} is documented");
        if status == 204 {
            assert!(documented.get("content").is_none(), "204 has no body");
            assert!(r.bytes().await.unwrap().is_empty());
        } else {
            let body: Value = r.json().await.unwrap();
            errs.extend(violations(
                &doc,
                response_schema(&doc, "post", "/api/v1/write", status),
                &body,
                "remote write",
            ));
        }
    }
    covered.insert(("post", "/api/v1/write"));

    // Taking a host out of the fleet, then again (404).
    let csrf = rackwatch::web::access::csrf_for_cookie(&cookie);
    for status in [200, 404] {
        let r = app
            .http
            .delete(format!("{}/api/v1/hosts/api-agent", app.base))
            .header("cookie", &cookie)
            .header(rackwatch::web::access::CSRF_HEADER, &csrf)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status);
        let body: Value = r.json().await.unwrap();
        errs.extend(violations(
            &doc,
            response_schema(&doc, "delete", "/api/v1/hosts/{name}", status),
            &body,
            "host removed",
        ));
    }
    covered.insert(("delete", "/api/v1/hosts/{name}"));

    // Acknowledging the firing alert, then an unknown one; a silence made, refused and
    // ended, then ended again (404).
    let alerts = app.json(&cookie, "/api/v1/alerts").await;
    let firing = alerts
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["state"] == "firing")
        .expect("a firing alert");
    let fp = firing["fingerprint"].as_str().unwrap().to_string();
    let write = |method: reqwest::Method, path: String, body: Option<Value>| {
        let mut req = app
            .http
            .request(method, format!("{}{path}", app.base))
            .header("cookie", &cookie)
            .header(rackwatch::web::access::CSRF_HEADER, &csrf);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let ack = "/api/v1/alerts/{fingerprint}/ack";
    let (post, delete) = (reqwest::Method::POST, reqwest::Method::DELETE);
    let bodyless = |id: i64| {
        [
            (post.clone(), ack, format!("/api/v1/alerts/{fp}/ack"), 200),
            (
                post.clone(),
                ack,
                "/api/v1/alerts/nope/ack".to_string(),
                404,
            ),
            (delete.clone(), ack, format!("/api/v1/alerts/{fp}/ack"), 204),
            (delete.clone(), ack, format!("/api/v1/alerts/{fp}/ack"), 404),
            (
                delete.clone(),
                "/api/v1/silences/{id}",
                format!("/api/v1/silences/{id}"),
                200,
            ),
            (
                delete.clone(),
                "/api/v1/silences/{id}",
                format!("/api/v1/silences/{id}"),
                404,
            ),
            (
                delete.clone(),
                "/api/v1/silences/{id}",
                "/api/v1/silences/x".to_string(),
                400,
            ),
        ]
    };
    let mut id = 0;
    for (body, status) in [
        (
            json!({"matchers": {"host": "api-host"}, "hours": 1, "comment": "doc"}),
            201,
        ),
        (json!({"matchers": {"colour": "red"}, "hours": 1}), 400),
    ] {
        let (got, answer) = write(
            reqwest::Method::POST,
            "/api/v1/silences".into(),
            Some(body.clone()),
        )
        .await;
        assert_eq!(got, status, "{body}: {answer}");
        if status == 201 {
            id = answer["id"].as_i64().unwrap();
        }
        errs.extend(violations(
            &doc,
            response_schema(&doc, "post", "/api/v1/silences", status),
            &answer,
            "new silence",
        ));
    }
    covered.insert(("post", "/api/v1/silences"));
    let listed = app.json(&cookie, "/api/v1/silences").await;
    assert_eq!(listed[0]["id"], id, "{listed}");
    errs.extend(violations(
        &doc,
        response_schema(&doc, "get", "/api/v1/silences", 200),
        &listed,
        "silences",
    ));
    for (method, template, path, status) in bodyless(id) {
        let m = method.as_str().to_lowercase();
        let (got, body) = write(method, path.clone(), None).await;
        assert_eq!(got, status, "{path}: {body}");
        if status == 204 {
            // Documented without content, and sent without.
            assert!(body.is_null(), "{path}: {body}");
            assert!(doc["paths"][template][&m]["responses"]["204"]["content"].is_null());
            covered.insert(("delete", template));
            continue;
        }
        errs.extend(violations(
            &doc,
            response_schema(&doc, &m, template, status),
            &body,
            &path,
        ));
        covered.insert((if m == "post" { "post" } else { "delete" }, template));
    }

    assert!(
        errs.is_empty(),
        "responses differ from the OpenAPI document:\n{}",
        errs.join("\n")
    );
    let documented: BTreeSet<(&str, &str)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.as_str(), p.as_str()))
        })
        .collect();
    assert_eq!(
        documented, covered,
        "every documented operation is exercised"
    );
    // Unauthenticated calls get the documented 401 body.
    let r = app
        .http
        .get(format!("{}/api/v1/fleet", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_matches(&doc, "get", "/api/v1/fleet", 401, &body);
    app.stop().await;
}

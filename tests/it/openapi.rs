//! `/api/v1/openapi.json` describes what the server really answers: every documented
//! path is called against seeded data and each response is checked against its schema
//! (a small JSON Schema subset: type, enum, properties, required, additionalProperties,
//! items, $ref, date-time format).

use std::collections::BTreeSet;

use serde_json::Value;

use crate::pages::seed;
use crate::support::TestApp;

fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/components/schemas/").expect("local $ref");
            &doc["components"]["schemas"][name]
        }
        None => schema,
    }
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        other => panic!("schema type {other} not supported by the checker"),
    }
}

/// Every mismatch between `v` and `schema`, with its JSON path.
pub fn check(doc: &Value, schema: &Value, v: &Value, path: &str, errs: &mut Vec<String>) {
    let schema = resolve(doc, schema);
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => panic!("bad type at {path}"),
        };
        if !types.iter().any(|t| type_ok(t, v)) {
            errs.push(format!("{path}: {v} is not of type {types:?}"));
            return;
        }
    }
    if let Some(e) = schema.get("enum").and_then(Value::as_array) {
        if !v.is_null() && !e.contains(v) {
            errs.push(format!("{path}: {v} not in {e:?}"));
        }
    }
    if schema.get("format").and_then(Value::as_str) == Some("date-time") {
        if let Some(s) = v.as_str() {
            if chrono::DateTime::parse_from_rfc3339(s).is_err() {
                errs.push(format!("{path}: {s:?} is not RFC 3339"));
            }
        }
    }
    if let (Some(obj), Some(props)) = (
        v.as_object(),
        schema.get("properties").and_then(Value::as_object),
    ) {
        for r in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = r.as_str().unwrap();
            if !obj.contains_key(r) {
                errs.push(format!("{path}: required field {r} missing"));
            }
        }
        for (k, val) in obj {
            match props.get(k) {
                Some(s) => check(doc, s, val, &format!("{path}.{k}"), errs),
                None if schema.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    errs.push(format!("{path}: field {k} is not documented"))
                }
                None => {}
            }
        }
    }
    if let (Some(items), Some(a)) = (schema.get("items"), v.as_array()) {
        for (i, x) in a.iter().enumerate() {
            check(doc, items, x, &format!("{path}[{i}]"), errs);
        }
    }
}

#[test]
fn the_checker_catches_drift() {
    let doc = serde_json::json!({"components": {"schemas": {"A": {"type": "object", "additionalProperties": false,
        "required": ["x", "t"], "properties": {"x": {"type": ["integer", "null"]}, "t": {"type": "string", "format": "date-time"}}}}}});
    let s = serde_json::json!({"$ref": "#/components/schemas/A"});
    let mut e = Vec::new();
    check(
        &doc,
        &s,
        &serde_json::json!({"x": null, "t": "2026-11-23T12:00:00Z"}),
        "$",
        &mut e,
    );
    assert!(e.is_empty(), "{e:?}");
    check(
        &doc,
        &s,
        &serde_json::json!({"x": 1.5, "t": "noon", "y": 1}),
        "$",
        &mut e,
    );
    assert_eq!(
        e.len(),
        3,
        "x not an integer, t not a time, y undocumented: {e:?}"
    );
}

#[tokio::test]
async fn real_responses_match_the_openapi_document() {
    let app = TestApp::spawn().await;
    seed(&app, "api-host").await;
    // Minutes of data only: the anomaly job records why the host has no model yet.
    let now = chrono::Utc::now();
    app.store.run_rollups(now).await.unwrap();
    rackwatch::analytics::anomaly::AnomalyJob::default()
        .run(&app.store, &app.cfg.anomaly, now)
        .await
        .unwrap();
    let cookie = app.login("ops", "correct horse").await;
    let doc: Value = app
        .http
        .get(format!("{}/api/v1/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
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
        ("/api/v1/admin/users", "/api/v1/admin/users", 200),
        ("/api/v1/admin/tokens", "/api/v1/admin/tokens", 200),
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
    ];
    let mut covered = BTreeSet::new();
    let mut errs = Vec::new();
    for (template, url, status) in calls {
        let r = app
            .http
            .get(format!("{}{url}", app.base))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), status, "{url}");
        let body: Value = r.json().await.unwrap();
        let op = &doc["paths"][template]["get"];
        assert!(op.is_object(), "{template} is not documented");
        let schema = &op["responses"][status.to_string()]["content"]["application/json"]["schema"];
        assert!(schema.is_object(), "{template} has no schema for {status}");
        check(&doc, schema, &body, url, &mut errs);
        covered.insert(template);
        // The data is really there (not an empty but valid answer).
        match template {
            "/api/v1/fleet" => assert_eq!(body["gpus"].as_array().unwrap().len(), 2),
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
            _ => {}
        }
    }
    assert!(
        errs.is_empty(),
        "responses differ from the OpenAPI document:\n{}",
        errs.join("\n")
    );
    // The one write endpoint: facility meter readings, one good and one bad.
    let t0 = chrono::Utc::now() - chrono::Duration::hours(2);
    let readings = serde_json::json!([
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
    check(
        &doc,
        &doc["paths"]["/api/v1/facility/readings"]["post"]["responses"]["200"]["content"]
            ["application/json"]["schema"],
        &body,
        "/api/v1/facility/readings",
        &mut errs,
    );
    covered.insert("/api/v1/facility/readings");
    let documented: BTreeSet<&str> = doc["paths"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(documented, covered, "every documented path is exercised");
    // Unauthenticated calls get the documented 401 body.
    let r = app
        .http
        .get(format!("{}/api/v1/fleet", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    check(
        &doc,
        &doc["paths"]["/api/v1/fleet"]["get"]["responses"]["401"]["content"]["application/json"]
            ["schema"],
        &body,
        "401",
        &mut errs,
    );
    assert!(errs.is_empty(), "{errs:?}");
    app.stop().await;
}

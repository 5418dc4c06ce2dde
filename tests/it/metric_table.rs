//! The metric table (`model::metrics`) against everything that must agree with it: the
//! migrated schema, the OpenAPI document and the chart queries. Each failure names the
//! metric and the place to fix.

use std::collections::{BTreeMap, BTreeSet};

use rackwatch::model::metrics::{Rollup, SqlType, GPU_METRICS, HOST_METRICS};
use rackwatch::store::rollup::{minute_columns, quarter_columns};

use crate::support::TestApp;

/// column name → data type of a table in the migrated database.
async fn columns(app: &TestApp, table: &str) -> BTreeMap<String, String> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns
          WHERE table_schema = 'public' AND table_name = $1",
    )
    .bind(table)
    .fetch_all(&app.store.pool)
    .await
    .unwrap();
    assert!(!rows.is_empty(), "no table {table}");
    rows.into_iter().collect()
}

#[tokio::test]
async fn metric_table_matches_the_migrated_schema() {
    let app = TestApp::spawn().await;
    let mut wrong = Vec::new();
    for (gpu, table, key) in [
        (false, HOST_METRICS, &["host_id", "ts"][..]),
        (true, GPU_METRICS, &["host_id", "gpu_index", "ts"][..]),
    ] {
        let prefix = if gpu { "gpu" } else { "host" };
        // Raw samples: exactly the key and the metrics, each in its type.
        let raw = columns(&app, &format!("{prefix}_samples")).await;
        for m in table {
            match raw.get(m.name) {
                Some(t) if t == m.sql.pg_name() => {}
                Some(t) => wrong.push(format!(
                    "{prefix}_samples.{} is {t}, the table says {}",
                    m.name,
                    m.sql.pg_name()
                )),
                None => wrong.push(format!(
                    "{prefix}_samples has no column {} (add it in a migration)",
                    m.name
                )),
            }
        }
        for c in raw.keys() {
            if !key.contains(&c.as_str()) && !table.iter().any(|m| m.name == c) {
                wrong.push(format!("{prefix}_samples.{c} is not in the metric table"));
            }
        }
        // Rollups: every rollup column in the 1-minute and 15-minute tables, and no
        // column the rollup job does not fill.
        let minute = columns(&app, &format!("{prefix}_samples_1m")).await;
        let quarter = columns(&app, &format!("{prefix}_samples_15m")).await;
        for c in minute_columns(gpu) {
            if !minute.contains_key(&c) {
                wrong.push(format!("{prefix}_samples_1m has no column {c}"));
            }
        }
        for c in quarter_columns(gpu) {
            if !quarter.contains_key(&c) {
                wrong.push(format!("{prefix}_samples_15m has no column {c}"));
            }
        }
        // Rollup columns keep the raw column's type (means of integers are rounded).
        for m in table {
            let cols: &[String] = match m.rollup {
                Rollup::Mean | Rollup::Max | Rollup::Last => &[m.name.to_string()],
                Rollup::MeanMax => &[m.name.to_string(), format!("{}_max", m.name)],
                Rollup::No | Rollup::Custom => &[],
            };
            for c in cols {
                for (t, have) in [("1m", &minute), ("15m", &quarter)] {
                    if have.get(c).is_some_and(|ty| ty != m.sql.pg_name()) {
                        wrong.push(format!(
                            "{prefix}_samples_{t}.{c} is {}, expected {}",
                            have[c],
                            m.sql.pg_name()
                        ));
                    }
                }
            }
        }
        let filled: BTreeSet<String> = minute_columns(gpu).into_iter().collect();
        for c in minute.keys() {
            let keyish = ["host_id", "gpu_index", "bucket", "samples"].contains(&c.as_str());
            if !keyish && !filled.contains(c) {
                wrong.push(format!("{prefix}_samples_1m.{c} is filled by no rollup"));
            }
        }
        // The latest tables hold the `latest` metrics.
        let latest = columns(&app, &format!("{prefix}_latest")).await;
        for m in table.iter().filter(|m| m.latest) {
            if latest.get(m.name).map(String::as_str) != Some(m.sql.pg_name()) {
                wrong.push(format!(
                    "{prefix}_latest.{} missing or of another type",
                    m.name
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "schema and metric table disagree:\n{}",
        wrong.join("\n")
    );
    app.stop().await;
}

/// The API document's sample rows list exactly the table's metrics.
#[test]
fn metric_table_matches_the_openapi_document() {
    let doc = crate::openapi::document();
    for (schema, table, key) in [
        ("HostSampleRow", HOST_METRICS, &["ts"][..]),
        ("GpuSampleRow", GPU_METRICS, &["ts", "index"][..]),
    ] {
        let props: BTreeSet<String> = doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut want: BTreeSet<String> = table.iter().map(|m| m.name.to_string()).collect();
        want.extend(key.iter().map(|k| k.to_string()));
        assert_eq!(props, want, "{schema} in the OpenAPI document");
        for m in table {
            let t = &doc["components"]["schemas"][schema]["properties"][m.name]["type"][0];
            let expect = match m.sql {
                SqlType::Real | SqlType::Double => "number",
                SqlType::BigInt | SqlType::Bits => "integer",
                SqlType::Boolean => "boolean",
            };
            assert_eq!(t, expect, "{schema}.{}", m.name);
        }
    }
}

/// What the GPU chart queries read from rollups is what the table rolls up, and what
/// they leave null on long ranges is what it does not.
#[test]
fn metric_table_matches_the_chart_queries() {
    use rackwatch::store::series::{GPU_RAW_ONLY, GPU_ROLLUP_CHART};
    for m in GPU_METRICS {
        let rolled = !matches!(m.rollup, Rollup::No | Rollup::Custom);
        if GPU_ROLLUP_CHART.contains(&m.name) {
            assert!(
                rolled,
                "{} is charted from rollups but not rolled up",
                m.name
            );
        }
        if GPU_RAW_ONLY.contains(&m.name) {
            assert!(
                !rolled,
                "{} is rolled up now: chart it from rollups (store/series.rs)",
                m.name
            );
        }
    }
}

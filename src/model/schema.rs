//! Pieces of the OpenAPI document (`web::openapi`) that the derived schemas cannot say on
//! their own: the values a string field takes, and the sample schemas made from the
//! metric table (the sample structs are declared by `sample_table!`, so their schemas
//! come from the same lines as their fields, units, bounds and docs).

use chrono::{DateTime, Utc};
use utoipa::openapi::schema::{
    KnownFormat, Object, ObjectBuilder, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::RefOr;

use super::metrics::{Bounds, Metric, SqlType, MAX_BYTES};

/// A string schema that takes one of `values` (for fields whose Rust type is a string).
pub fn one_of(values: &[&str]) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .build()
}

/// The schema of a sample struct's fixed (non-metric) field.
pub trait FieldSchema {
    fn field_schema() -> Object;
}

impl FieldSchema for DateTime<Utc> {
    fn field_schema() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some("RFC 3339 time of the sample."))
            .build()
    }
}

impl FieldSchema for u8 {
    fn field_schema() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(0))
            .maximum(Some(255))
            .description(Some("GPU index on its host."))
            .build()
    }
}

/// What a sample's schema is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleUse {
    /// An agent sends it: metrics it cannot measure are left out, values are bounded as
    /// ingest checks them.
    Ingest,
    /// The samples API returns it: every metric, null when not measured.
    Row,
}

/// A sample's schema from its metric table: the fixed fields, then one property per
/// metric with its JSON type (from the column type), its doc line and unit.
pub fn sample(
    description: &str,
    fixed: Vec<(&'static str, Object)>,
    table: &[Metric],
    used: SampleUse,
) -> RefOr<Schema> {
    let mut o = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description));
    for (name, schema) in fixed {
        o = o.property(name, schema).required(name);
    }
    for m in table {
        o = o.property(m.name, metric(m, used));
        if used == SampleUse::Row {
            o = o.required(m.name);
        }
    }
    RefOr::T(Schema::Object(o.build()))
}

/// One metric's schema.
fn metric(m: &Metric, used: SampleUse) -> Object {
    let (ty, format) = match m.sql {
        SqlType::Real => (Type::Number, Some(KnownFormat::Float)),
        SqlType::Double => (Type::Number, Some(KnownFormat::Double)),
        SqlType::BigInt | SqlType::Bits => (Type::Integer, Some(KnownFormat::Int64)),
        SqlType::Boolean => (Type::Boolean, None),
    };
    let doc = m.doc.trim();
    let description = if m.unit.is_empty() {
        doc.to_string()
    } else {
        format!("{doc} Unit: {}.", m.unit)
    };
    let mut o = ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([ty, Type::Null]))
        .format(format.map(SchemaFormat::KnownFormat))
        .description(Some(description));
    if used == SampleUse::Ingest {
        o = match m.bounds {
            Bounds::Any => o,
            Bounds::Range { lo, hi } => o.minimum(Some(lo)).maximum(Some(hi)),
            Bounds::Count => o.minimum(Some(0)),
            Bounds::Bytes | Bounds::TotalOf(_) => o.minimum(Some(0)).maximum(Some(MAX_BYTES)),
        };
    } else if m.sql == SqlType::BigInt {
        o = o.minimum(Some(0));
    }
    o.build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::metrics::{GPU_METRICS, HOST_METRICS};

    #[test]
    fn sample_schemas_follow_the_metric_table() {
        let s = |used| {
            serde_json::to_value(sample(
                "x",
                vec![("ts", <DateTime<Utc> as FieldSchema>::field_schema())],
                GPU_METRICS,
                used,
            ))
            .unwrap()
        };
        let (ingest, row) = (s(SampleUse::Ingest), s(SampleUse::Row));
        let props = ingest["properties"].as_object().unwrap();
        assert_eq!(props.len(), 1 + GPU_METRICS.len());
        assert_eq!(
            props["power_watts"]["type"],
            serde_json::json!(["number", "null"])
        );
        assert_eq!(props["power_watts"]["maximum"], 5000.0);
        assert_eq!(props["ecc_dbe_total"]["type"][0], "integer");
        assert_eq!(props["mig_enabled"]["type"][0], "boolean");
        assert!(props["power_watts"]["description"]
            .as_str()
            .unwrap()
            .ends_with("Unit: W."));
        // An agent may leave metrics out; the samples API lists every one.
        assert_eq!(ingest["required"], serde_json::json!(["ts"]));
        assert_eq!(
            row["required"].as_array().unwrap().len(),
            1 + GPU_METRICS.len()
        );
        assert!(row["properties"]["power_watts"].get("maximum").is_none());
        let host = serde_json::to_value(sample("x", vec![], HOST_METRICS, SampleUse::Row)).unwrap();
        assert_eq!(host["properties"]["mem_used_bytes"]["minimum"], 0);
    }
}

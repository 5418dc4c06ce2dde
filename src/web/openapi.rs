//! `GET /api/v1/openapi.json`: the API's description.

use super::access::Routes;

/// `GET /api/v1/openapi.json`.
pub fn api_routes() -> Routes {
    Routes::new().get("/api/v1/openapi.json", openapi)
}

/// The OpenAPI 3.1 description of this API (hand-written; a test checks real responses
/// against it).
pub const OPENAPI: &str = include_str!("openapi.json");

pub async fn openapi() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_api_document_lists_every_feature() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).unwrap();
        let names: Vec<&str> = doc["components"]["schemas"]["AnomalyExplanation"]["properties"]
            ["metric"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            crate::analytics::anomaly::FEATURES
                .iter()
                .map(|f| f.name)
                .collect::<Vec<_>>()
        );
    }
}

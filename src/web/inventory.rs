//! The inventory: hosts and GPUs with models, UUIDs, drivers and agent versions, searchable
//! (`/inventory`, `GET /api/v1/inventory`).

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde::Serialize;
use utoipa_axum::routes;

use super::access::Routes;
use super::auth::{ApiUser, Csrf, PageUser};
use super::error::{ApiError, ErrorBody, PageError};
use super::page::*;
use super::params::{ApiQuery, PageQuery};
use super::AppState;
use crate::model::format::bytes;
use crate::store::series::InventoryRow;

/// `/inventory`.
pub fn page_routes() -> Routes {
    Routes::new().get("/inventory", page)
}

/// `GET /api/v1/inventory`.
pub fn api_routes() -> Routes {
    Routes::new().routes(routes!(json))
}

/// Inventory page data.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InventoryData {
    /// The filter it was asked for.
    pub q: String,
    /// The first [`INVENTORY_ROWS`] rows matching it, by site, rack, host and GPU.
    pub rows: Vec<InventoryRow>,
    /// More rows match than are listed: narrow the search (a site, a model, a pool).
    pub truncated: bool,
}

/// Rows one inventory answer lists.
pub const INVENTORY_ROWS: usize = 5000;

/// The inventory, filtered by `q`.
pub async fn load(st: &AppState, q: &str) -> Result<InventoryData, ApiError> {
    let mut rows = st.store.inventory(q.trim()).await?;
    let truncated = rows.len() > INVENTORY_ROWS;
    rows.truncate(INVENTORY_ROWS);
    Ok(InventoryData {
        q: q.to_string(),
        rows,
        truncated,
    })
}

/// A row of the inventory page.
pub struct InventoryView {
    pub host: String,
    pub host_link: String,
    pub site: String,
    pub rack: String,
    pub pool: String,
    pub agent_version: String,
    pub last_seen: String,
    pub gpu: String,
    pub gpu_link: String,
    pub model: String,
    pub uuid: String,
    pub driver: String,
    pub memory: String,
}

#[derive(Template)]
#[template(path = "inventory.html")]
pub struct InventoryPage {
    pub nav: Nav,
    pub q: String,
    pub rows: Vec<InventoryView>,
    pub hosts: usize,
    pub gpus: usize,
    pub truncated: bool,
}

/// The inventory's query: the search text.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventoryParams {
    q: Option<String>,
}

async fn page(
    State(st): State<AppState>,
    PageUser(user): PageUser,
    csrf: Csrf,
    PageQuery(q): PageQuery<InventoryParams>,
) -> Result<Response, PageError> {
    let d = load(&st, q.q.as_deref().unwrap_or("")).await?;
    let mut hosts: Vec<&str> = d.rows.iter().map(|r| r.host_name.as_str()).collect();
    hosts.dedup();
    let rows: Vec<InventoryView> = d
        .rows
        .iter()
        .map(|r| InventoryView {
            host: r.host_name.clone(),
            host_link: format!("/hosts/{}", seg(&r.host_name)),
            site: place_label(&r.site, "no site"),
            rack: place_label(&r.rack, "no rack"),
            pool: place_label(&r.pool, "–"),
            agent_version: r.agent_version.clone(),
            last_seen: r.last_seen.map(super::page::time_attr).unwrap_or_default(),
            gpu: r.index.map(|i| format!("GPU {i}")).unwrap_or_default(),
            gpu_link: r
                .index
                .map(|i| format!("/hosts/{}/gpus/{i}", seg(&r.host_name)))
                .unwrap_or_default(),
            model: r.model.clone().unwrap_or_default(),
            uuid: r.uuid.clone().unwrap_or_default(),
            driver: r.driver_version.clone().unwrap_or_default(),
            memory: r
                .memory_total_bytes
                .map(|b| bytes(Some(b as f64)))
                .unwrap_or_default(),
        })
        .collect();
    let page = InventoryPage {
        nav: Nav::new(&user, csrf, "inventory"),
        q: d.q,
        hosts: hosts.len(),
        gpus: d.rows.iter().filter(|r| r.index.is_some()).count(),
        rows,
        truncated: d.truncated,
    };
    Ok(render(&page))
}

/// Inventory: hosts and GPUs, filtered by a substring.
#[utoipa::path(
    get,
    path = "/api/v1/inventory",
    operation_id = "inventory",
    tag = "inventory",
    params(("q" = Option<String>, Query, description = "Words that must all match (each a case-insensitive substring of host, site, rack, pool, model, UUID, driver or agent version); `GPU 3` selects a GPU index.", example = "h100")),
    responses(
        (status = 200, description = "The matching rows.", body = InventoryData),
        (status = 401, description = "Not logged in.", body = ErrorBody),
    )
)]
async fn json(
    State(st): State<AppState>,
    _u: ApiUser,
    ApiQuery(q): ApiQuery<InventoryParams>,
) -> Result<Json<InventoryData>, ApiError> {
    Ok(Json(load(&st, q.q.as_deref().unwrap_or("")).await?))
}

//! HTTP routes under `/myPages` (read-only).

use kit::Platform;
use kit::http::{ApiError, ApiResult, Response, path_id, query_param, respond, segments};

use crate::model::{VIEWS, View, key};

pub const PREFIX: &str = "/myPages";

/// Answer one request; every failure becomes a JSON error response.
pub fn handle(p: &impl Platform, method: &str, path: &str, query: &str) -> Response {
    respond(route(p, method, path, query))
}

fn route(p: &impl Platform, method: &str, path: &str, query: &str) -> ApiResult {
    let Some(segs) = segments(path, PREFIX) else {
        return Err(ApiError::no_route(method, path));
    };
    match (segs.as_slice(), method) {
        ([], "GET") => list(p, query),
        ([id], "GET") => get(p, path_id("order id", id)?),
        ([] | [_], _) => Err(ApiError::method_not_allowed(method, path, &["GET"])),
        _ => Err(ApiError::no_route(method, path)),
    }
}

/// `GET /myPages[?custNm=]`, sorted by order id.
fn list(p: &impl Platform, query: &str) -> ApiResult {
    let cust_nm = query_param(query, "custNm").filter(|s| !s.is_empty());
    let mut rows: Vec<View> = p
        .list_json::<View>(VIEWS)?
        .into_iter()
        .map(|(_, v)| v)
        .filter(|v| {
            cust_nm
                .as_ref()
                .is_none_or(|c| v.cust_nm.as_ref() == Some(c))
        })
        .collect();
    rows.sort_by_key(|v| v.order_id);
    Ok(Response::ok(&rows))
}

fn get(p: &impl Platform, id: u64) -> ApiResult {
    match p.get_json::<View>(VIEWS, &key(id))? {
        Some(v) => Ok(Response::ok(&v)),
        None => Err(ApiError::not_found(
            "my_page_not_found",
            format!("no progress known for order {id} (yet)"),
        )),
    }
}

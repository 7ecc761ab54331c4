//! HTTP routes under `/productions` (read-only: the board changes by events).

use kit::Platform;
use kit::http::{ApiError, ApiResult, Response, echo_str, path_id, query_param, respond, segments};

use crate::model::{PRODUCTIONS, Production, Status, key};

pub const PREFIX: &str = "/productions";

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
        ([id], "GET") => get(p, path_id("production id", id)?),
        ([] | [_], _) => Err(ApiError::method_not_allowed(method, path, &["GET"])),
        _ => Err(ApiError::no_route(method, path)),
    }
}

/// `GET /productions[?orderId=&cafeId=&status=]`, sorted by id.
fn list(p: &impl Platform, query: &str) -> ApiResult {
    let id_filter = |name: &str| -> Result<Option<u64>, ApiError> {
        match query_param(query, name).filter(|s| !s.is_empty()) {
            Some(raw) => path_id(&format!("{name} filter"), &raw).map(Some),
            None => Ok(None),
        }
    };
    let order_id = id_filter("orderId")?;
    let cafe_id = id_filter("cafeId")?;
    let status = match query_param(query, "status").filter(|s| !s.is_empty()) {
        Some(raw) => Some(Status::parse(&raw).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "status filter must be one of REGISTERED, CANCELED, FORCE_CANCELED, got {}",
                    echo_str(&raw)
                ),
            )
        })?),
        None => None,
    };
    let mut list: Vec<Production> = p
        .list_json::<Production>(PRODUCTIONS)?
        .into_iter()
        .map(|(_, x)| x)
        .filter(|x| order_id.is_none_or(|o| x.order_id == o))
        .filter(|x| cafe_id.is_none_or(|c| x.cafe_id == c))
        .filter(|x| status.is_none_or(|s| x.status == s))
        .collect();
    list.sort_by_key(|x| x.id);
    Ok(Response::ok(&list))
}

fn get(p: &impl Platform, id: u64) -> ApiResult {
    match p.get_json::<Production>(PRODUCTIONS, &key(id))? {
        Some(x) => Ok(Response::ok(&x)),
        None => Err(ApiError::not_found(
            "production_not_found",
            format!("production of order {id} does not exist (yet)"),
        )),
    }
}

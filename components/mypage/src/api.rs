//! HTTP routes under `/myPages` (read-only).

use kit::Platform;
use kit::http::{ApiError, ApiResult, Response, path_id, respond, segments};
use kit::page::{self, PageRequest};

use crate::model::{VIEWS, View, by_cust, key};

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

/// `GET /myPages[?limit=&after=&custNm=]`: one page in order-id order;
/// `custNm` walks `by-cust-{hash}` and re-checks the name on each row.
fn list(p: &impl Platform, query: &str) -> ApiResult {
    let req = PageRequest::parse(query)?;
    let page = match page::text_param(query, "custNm")? {
        None => page::scan(p, VIEWS, req, |id, bytes| {
            kit::platform::decode::<View>(VIEWS, &key(id), bytes).map(Some)
        })?,
        Some(cust) => page::scan(p, &by_cust(&cust), req, |id, _| {
            Ok(p.get_json::<View>(VIEWS, &key(id))?
                .filter(|v| v.cust_nm.as_ref() == Some(&cust)))
        })?,
    };
    Ok(page::respond(PREFIX, query, &page))
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

//! HTTP routes under `/productions` (read-only: the board changes by events).

use kit::Platform;
use kit::http::{ApiError, ApiResult, Response, path_id, respond, segments};
use kit::page::{self, Page, PageRequest};

use crate::model::{PRODUCTIONS, Production, Status, by_cafe, by_status, key};

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

/// `GET /productions[?limit=&after=&orderId=&cafeId=&status=]`: one page in
/// order-id order. `orderId` is a direct get (a page of 0 or 1); else
/// `cafeId` walks `by-cafe-{id}`, else `status` walks `by-status-{STATUS}`,
/// re-checking every filter on the record; unfiltered it walks
/// `productions`. A request examines at most `kit::page::MAX_SCAN` index
/// entries, so a combined filter can answer a short page with a next link.
fn list(p: &impl Platform, query: &str) -> ApiResult {
    let req = PageRequest::parse(query)?;
    let order_id = page::id_param(query, "orderId")?;
    let cafe_id = page::id_param(query, "cafeId")?;
    let status = page::enum_param(
        query,
        "status",
        &Status::ALL.map(Status::as_str),
        Status::parse,
    )?;
    let wanted = |x: &Production| {
        cafe_id.is_none_or(|c| x.cafe_id == c) && status.is_none_or(|s| x.status == s)
    };
    let page = if let Some(id) = order_id {
        let found = p.get_json::<Production>(PRODUCTIONS, &key(id))?;
        Page::single(req, id, found.filter(|x| wanted(x)))
    } else {
        let index = match (cafe_id, status) {
            (Some(c), _) => Some(by_cafe(c)),
            (None, Some(s)) => Some(by_status(s)),
            (None, None) => None,
        };
        match index {
            None => page::scan(p, PRODUCTIONS, req, |id, bytes| {
                kit::platform::decode::<Production>(PRODUCTIONS, &key(id), bytes).map(Some)
            })?,
            Some(index) => page::scan(p, &index, req, |id, _| {
                Ok(p.get_json::<Production>(PRODUCTIONS, &key(id))?
                    .filter(|x| wanted(x)))
            })?,
        }
    };
    Ok(page::respond(PREFIX, query, &page))
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

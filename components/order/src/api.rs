//! HTTP routes under `/orders`.

use kit::Platform;
use kit::fields::{self};
use kit::http::{ApiError, ApiResult, Response, echo_str, path_id, respond, segments};
use kit::page::{self, PageRequest};
use kit::stock::{Stock, StockFailure};

use crate::model::{
    DELETED_CAFES, MAX_QTY, MIN_QTY, ORDER_SEQ, ORDERS, Order, Status, by_cafe, by_cust, by_status,
    change_status, event_key, insert, key,
};

pub const PREFIX: &str = "/orders";

/// Answer one request; every failure becomes a JSON error response.
pub fn handle(
    p: &impl Platform,
    stock: &impl Stock,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> Response {
    respond(route(p, stock, method, path, query, body))
}

fn route(
    p: &impl Platform,
    stock: &impl Stock,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
) -> ApiResult {
    let Some(segs) = segments(path, PREFIX) else {
        return Err(ApiError::no_route(method, path));
    };
    match (segs.as_slice(), method) {
        ([], "GET") => list(p, query),
        ([], "POST") => place(p, stock, body),
        ([], _) => Err(ApiError::method_not_allowed(method, path, &["GET", "POST"])),
        ([id], "GET") => get(p, path_id("order id", id)?),
        ([id], "PUT") => put(p, path_id("order id", id)?, body),
        ([_], _) => Err(ApiError::method_not_allowed(method, path, &["GET", "PUT"])),
        ([id, "cancel"], "POST") => cancel(p, path_id("order id", id)?),
        ([_, "cancel"], _) => Err(ApiError::method_not_allowed(method, path, &["POST"])),
        _ => Err(ApiError::no_route(method, path)),
    }
}

/// `GET /orders[?limit=&after=&custNm=&cafeId=&status=]`: one page in id
/// order. Unfiltered it walks `orders`; filtered it walks ONE index — the
/// most selective given: `custNm` (`by-cust-{hash}`), else `cafeId`
/// (`by-cafe-{id}`), else `status` (`by-status-{STATUS}`) — and re-checks
/// every filter on the order itself. A request examines at most
/// `kit::page::MAX_SCAN` index entries, so a combined filter can answer a
/// short (even empty) page with a `next` link.
fn list(p: &impl Platform, query: &str) -> ApiResult {
    let req = PageRequest::parse(query)?;
    let cust_nm = page::text_param(query, "custNm")?;
    let cafe_id = page::id_param(query, "cafeId")?;
    let status = page::enum_param(
        query,
        "status",
        &Status::ALL.map(Status::as_str),
        Status::parse,
    )?;
    let wanted = |o: &Order| {
        cust_nm.as_ref().is_none_or(|c| &o.cust_nm == c)
            && cafe_id.is_none_or(|c| o.cafe_id == c)
            && status.is_none_or(|s| o.status == s)
    };
    let index = match (&cust_nm, cafe_id, status) {
        (Some(c), _, _) => Some(by_cust(c)),
        (None, Some(c), _) => Some(by_cafe(c)),
        (None, None, Some(s)) => Some(by_status(s)),
        (None, None, None) => None,
    };
    let page = match index {
        None => page::scan(p, ORDERS, req, |id, bytes| {
            kit::platform::decode::<Order>(ORDERS, &key(id), bytes).map(Some)
        })?,
        Some(index) => page::scan(p, &index, req, |id, _| {
            Ok(p.get_json::<Order>(ORDERS, &key(id))?.filter(|o| wanted(o)))
        })?,
    };
    Ok(page::respond(PREFIX, query, &page))
}

fn get(p: &impl Platform, id: u64) -> ApiResult {
    Ok(Response::ok(&existing(p, id)?))
}

/// `POST /orders`: validate, reserve stock synchronously, store REQUESTED.
fn place(p: &impl Platform, stock: &impl Stock, body: &[u8]) -> ApiResult {
    let obj = fields::object(body)?;
    let cust_nm = fields::required(fields::text(&obj, "custNm")?, "custNm")?;
    let cafe_id = fields::required(fields::id(&obj, "cafeId")?, "cafeId")?;
    let cafe_nm = fields::text(&obj, "cafeNm")?;
    let chk_date = fields::date(&obj, "chkDate")?;
    let qty = fields::count(&obj, "qty", MIN_QTY, MAX_QTY)?.unwrap_or(1);

    if p.get(DELETED_CAFES, &key(cafe_id)).is_some() {
        return Err(ApiError::not_found(
            "cafe_not_found",
            format!("cafe {cafe_id} does not exist (it was deleted)"),
        ));
    }

    let id = p.next_id(ORDER_SEQ);
    let reserved = stock
        .reserve(&event_key(id), cafe_id, qty)
        .map_err(|e| match e {
            StockFailure::NotFound(m) => ApiError::not_found("cafe_not_found", m),
            StockFailure::SoldOut(left) => {
                let named = match &cafe_nm {
                    Some(nm) => format!("cafe {cafe_id} ({nm})"),
                    None => format!("cafe {cafe_id}"),
                };
                ApiError::conflict(
                    "sold_out",
                    format!("{named} has {left} left, {qty} requested"),
                )
            }
            StockFailure::Invalid(m) => ApiError::bad_request("invalid_reservation", m),
            StockFailure::Unavailable(m) => ApiError::unavailable(
                "stock_unavailable",
                format!("stock of cafe {cafe_id} cannot be reserved right now; retry later ({m})"),
            ),
        })?;

    let mut mismatches = Vec::new();
    if let Some(nm) = &cafe_nm
        && nm != &reserved.cafe_nm
    {
        mismatches.push(format!(
            "cafeNm {} but the menu says {}",
            echo_str(nm),
            echo_str(&reserved.cafe_nm)
        ));
    }
    if let Some(date) = &chk_date
        && date != &reserved.chk_date
    {
        mismatches.push(format!(
            "chkDate {} but the menu says {}",
            echo_str(date),
            echo_str(&reserved.chk_date)
        ));
    }
    if !mismatches.is_empty() {
        // The error status discards the unit of work, reservation included.
        return Err(ApiError::conflict(
            "menu_mismatch",
            format!(
                "the order does not match menu item {cafe_id}: {}",
                mismatches.join("; ")
            ),
        ));
    }

    let order = Order {
        id,
        cust_nm,
        cafe_id,
        cafe_nm: reserved.cafe_nm,
        chk_date: reserved.chk_date,
        qty,
        status: Status::Requested,
        version: 1,
    };
    insert(p, &order)?;
    p.publish_json(Status::Requested.topic(), &event_key(id), &order)?;
    Ok(Response::created(&order))
}

/// `PUT /orders/{id}`: the seed's cancel, `{"status":"CANCELED"}` (other
/// fields are ignored: clients send the whole order back).
fn put(p: &impl Platform, id: u64, body: &[u8]) -> ApiResult {
    let obj = fields::object(body)?;
    match fields::raw_string(&obj, "status")? {
        Some(s) if Status::parse(s) == Some(Status::Canceled) => cancel(p, id),
        other => Err(ApiError::bad_request(
            "invalid_status",
            format!(
                "only status \"CANCELED\" can be set; got {}",
                other.map_or_else(|| "no status".to_owned(), echo_str)
            ),
        )),
    }
}

/// Cancel an order (idempotent: an already canceled order is returned as is).
///
/// Order is the one authority on an order's final state: a cancel wins only
/// if it is accepted before order applied the deletion of the order's menu
/// item (its `deleted-cafes` tombstone). After that the item's sweep
/// force-cancels every open order of it, so a cancel is refused with 409
/// `already_force_canceled` even while this order is still open; the
/// tombstone is read here, so a cancel racing the sweep's first chunk is
/// re-run by the host. No order ever gets both `order.canceled` and
/// `order.force-canceled`.
fn cancel(p: &impl Platform, id: u64) -> ApiResult {
    let mut order = existing(p, id)?;
    match order.status {
        Status::Requested | Status::Ordered => {
            if p.get(DELETED_CAFES, &key(order.cafe_id)).is_some() {
                return Err(ApiError::conflict(
                    "already_force_canceled",
                    format!(
                        "order {id} cannot be canceled: its menu item (cafe {}) was deleted, the order is being force-canceled",
                        order.cafe_id
                    ),
                ));
            }
            change_status(p, &mut order, Status::Canceled)?;
            Ok(Response::ok(&order))
        }
        Status::Canceled => Ok(Response::ok(&order)),
        Status::ForceCanceled => Err(ApiError::conflict(
            "already_force_canceled",
            format!(
                "order {id} was force-canceled because its menu item (cafe {}) was deleted; it cannot be canceled",
                order.cafe_id
            ),
        )),
    }
}

/// Order `id`, or 404.
fn existing(p: &impl Platform, id: u64) -> Result<Order, ApiError> {
    p.get_json::<Order>(ORDERS, &key(id))?
        .ok_or_else(|| ApiError::not_found("order_not_found", format!("order {id} does not exist")))
}

//! HTTP routes under `/orders`.

use kit::Platform;
use kit::fields::{self};
use kit::http::{ApiError, ApiResult, Response, echo_str, path_id, query_param, respond, segments};
use kit::stock::{Stock, StockFailure};

use crate::model::{
    CafeIndexEntry, DELETED_CAFES, MAX_QTY, MIN_QTY, ORDER_SEQ, ORDERS, Order, Status, by_cafe, key,
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

/// `GET /orders[?custNm=&cafeId=&status=]`, sorted by id.
fn list(p: &impl Platform, query: &str) -> ApiResult {
    let cust_nm = query_param(query, "custNm").filter(|s| !s.is_empty());
    let cafe_id = match query_param(query, "cafeId").filter(|s| !s.is_empty()) {
        Some(raw) => Some(path_id("cafeId filter", &raw)?),
        None => None,
    };
    let status = match query_param(query, "status").filter(|s| !s.is_empty()) {
        Some(raw) => Some(Status::parse(&raw).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "status filter must be one of REQUESTED, ORDERED, CANCELED, FORCE_CANCELED, got {}",
                    echo_str(&raw)
                ),
            )
        })?),
        None => None,
    };
    let mut orders: Vec<Order> = p
        .list_json::<Order>(ORDERS)?
        .into_iter()
        .map(|(_, o)| o)
        .filter(|o| cust_nm.as_ref().is_none_or(|c| &o.cust_nm == c))
        .filter(|o| cafe_id.is_none_or(|c| o.cafe_id == c))
        .filter(|o| status.is_none_or(|s| o.status == s))
        .collect();
    orders.sort_by_key(|o| o.id);
    Ok(Response::ok(&orders))
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
    let reserved = stock.reserve(&key(id), cafe_id, qty).map_err(|e| match e {
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
    p.put_json(ORDERS, &key(id), &order)?;
    p.put_json(&by_cafe(cafe_id), &key(id), &CafeIndexEntry { id })?;
    p.publish_json("order.requested", &key(id), &order)?;
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
fn cancel(p: &impl Platform, id: u64) -> ApiResult {
    let mut order = existing(p, id)?;
    match order.status {
        Status::Requested | Status::Ordered => {
            order.advance(Status::Canceled);
            p.put_json(ORDERS, &key(id), &order)?;
            p.publish_json("order.canceled", &key(id), &order)?;
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

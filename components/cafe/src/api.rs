//! HTTP routes under `/cafes`.

use kit::Platform;
use kit::fields::{self, Object};
use kit::http::{ApiError, ApiResult, Response, path_id, respond, segments};
use kit::page::{self, PageRequest};

use crate::model::{
    self, CAFE_SEQ, CAFES, Cafe, DELETED, Item, MAX_PCNT, Tombstone, event_key, key,
};

pub const PREFIX: &str = "/cafes";

/// Tries [`fresh_id`] makes before giving up (see there).
const FRESH_ID_TRIES: u32 = 24;

/// Highest explicit `cafeId` the id sequence is advanced to (2^62): the
/// host's sequences end at `i64::MAX` (2^63 - 1), and advancing to a
/// client's `9223372036854775807` would make every later id-less POST fail.
const MAX_ADVANCE: u64 = 1 << 62;

/// Answer one request; every failure becomes a JSON error response.
pub fn handle(p: &impl Platform, method: &str, path: &str, query: &str, body: &[u8]) -> Response {
    respond(route(p, method, path, query, body))
}

fn route(p: &impl Platform, method: &str, path: &str, query: &str, body: &[u8]) -> ApiResult {
    let Some(segs) = segments(path, PREFIX) else {
        return Err(ApiError::no_route(method, path));
    };
    match (segs.as_slice(), method) {
        ([], "GET") => list(p, query),
        ([], "POST") => create(p, body),
        ([], _) => Err(ApiError::method_not_allowed(method, path, &["GET", "POST"])),
        ([id], "GET" | "PUT" | "DELETE") => {
            let id = path_id("cafe id", id)?;
            match method {
                "GET" => get(p, id),
                "PUT" => update(p, id, body),
                _ => delete(p, id),
            }
        }
        ([_], _) => Err(ApiError::method_not_allowed(
            method,
            path,
            &["GET", "PUT", "DELETE"],
        )),
        _ => Err(ApiError::no_route(method, path)),
    }
}

/// `GET /cafes[?limit=&after=]`: one page of live items in `cafeId` order.
fn list(p: &impl Platform, query: &str) -> ApiResult {
    let req = PageRequest::parse(query)?;
    let page = page::scan(p, CAFES, req, |id, bytes| {
        model::cafe_of(p, id, bytes).map(Some)
    })?;
    Ok(page::respond(PREFIX, query, &page))
}

fn get(p: &impl Platform, id: u64) -> ApiResult {
    match model::load_cafe(p, id)? {
        Some(cafe) => Ok(Response::ok(&cafe)),
        None => Err(missing(p, id)),
    }
}

/// The fields a request may set; `None` = not given.
struct Changes {
    cafe_nm: Option<String>,
    chk_date: Option<String>,
    pcnt: Option<u32>,
}

impl Changes {
    fn parse(obj: &Object) -> Result<Changes, ApiError> {
        Ok(Changes {
            cafe_nm: fields::text(obj, "cafeNm")?,
            chk_date: fields::date(obj, "chkDate")?,
            pcnt: fields::count(obj, "pcnt", 0, MAX_PCNT)?,
        })
    }

    /// A new item: every field is required.
    fn into_new(self, cafe_id: u64) -> Result<Item, ApiError> {
        Ok(Item {
            cafe: Cafe {
                cafe_id,
                cafe_nm: fields::required(self.cafe_nm, "cafeNm")?,
                chk_date: fields::required(self.chk_date, "chkDate")?,
                pcnt: fields::required(self.pcnt, "pcnt")?,
            },
            held: 0,
        })
    }

    /// `item` with the given fields replaced, or 409 `pcnt_out_of_range` when
    /// the new `pcnt` plus the units held by open orders exceeds `MAX_PCNT`.
    fn apply(self, item: &Item) -> Result<Item, ApiError> {
        if let Some(pcnt) = self.pcnt {
            item.check_pcnt(pcnt)
                .map_err(|why| ApiError::conflict("pcnt_out_of_range", why))?;
        }
        Ok(Item {
            cafe: Cafe {
                cafe_id: item.cafe.cafe_id,
                cafe_nm: self.cafe_nm.unwrap_or_else(|| item.cafe.cafe_nm.clone()),
                chk_date: self.chk_date.unwrap_or_else(|| item.cafe.chk_date.clone()),
                pcnt: self.pcnt.unwrap_or(item.cafe.pcnt),
            },
            held: item.held,
        })
    }
}

/// `POST /cafes`: register a new item (201), or — like the original's JPA
/// `save` — update a live item whose `cafeId` is given (200).
fn create(p: &impl Platform, body: &[u8]) -> ApiResult {
    let obj = fields::object(body)?;
    let id = fields::id(&obj, "cafeId")?;
    let changes = Changes::parse(&obj)?;
    match id {
        Some(id) => {
            if p.get(DELETED, &key(id)).is_some() {
                return Err(ApiError::conflict(
                    "cafe_deleted",
                    format!(
                        "cafe {id} was deleted and its id is never reused; register the item without cafeId to get a new id"
                    ),
                ));
            }
            match model::load(p, id)? {
                Some(existing) => {
                    let new = changes.apply(&existing)?;
                    save_update(p, &existing, new)
                }
                None => {
                    let item = changes.into_new(id)?;
                    // An id-less POST must never be handed this id: one
                    // step, whatever the gap (outside the unit of work).
                    // Not for ids beyond MAX_ADVANCE: the sequence would be
                    // left no room (the host's sequences end at i64::MAX),
                    // and the sequence cannot reach them anyway (`fresh_id`
                    // still checks every candidate).
                    if id <= MAX_ADVANCE {
                        p.advance_sequence(CAFE_SEQ, id);
                    }
                    register(p, item)
                }
            }
        }
        None => {
            // Validate before taking an id from the sequence.
            let item = changes.into_new(0)?;
            let cafe_id = fresh_id(p)?;
            register(
                p,
                Item {
                    cafe: Cafe {
                        cafe_id,
                        ..item.cafe
                    },
                    ..item
                },
            )
        }
    }
}

/// The next id from the sequence that no live or deleted item uses.
///
/// Explicit ids advance the sequence past themselves, so the first id is
/// free unless the id was written before that rule. For such data the
/// search gallops: after a used id `n` it skips `2^k` ids (k = tries so
/// far), so a block of N used ids costs about log2(N) tries, and it gives up
/// after [`FRESH_ID_TRIES`] (sequences may have gaps).
fn fresh_id(p: &impl Platform) -> Result<u64, ApiError> {
    for k in 0..FRESH_ID_TRIES {
        let id = p.next_id(CAFE_SEQ);
        if id >= 1 && p.get(CAFES, &key(id)).is_none() && p.get(DELETED, &key(id)).is_none() {
            return Ok(id);
        }
        p.advance_sequence(CAFE_SEQ, id.saturating_add(1 << k));
    }
    Err(ApiError::unavailable(
        "no_free_id",
        "could not find an unused cafe id; give cafeId explicitly",
    ))
}

fn register(p: &impl Platform, item: Item) -> ApiResult {
    let id = item.cafe.cafe_id;
    model::save(p, &item)?;
    p.publish_json("cafe.registered", &event_key(id), &item.cafe)?;
    Ok(Response::created(&item.cafe))
}

/// Store an update; publishes `cafe.updated` only when something changed.
fn save_update(p: &impl Platform, old: &Item, new: Item) -> ApiResult {
    if &new != old {
        model::save(p, &new)?;
        p.publish_json("cafe.updated", &event_key(new.cafe.cafe_id), &new.cafe)?;
    }
    Ok(Response::ok(&new.cafe))
}

/// `PUT /cafes/{id}`: partial update of cafeNm, chkDate, pcnt.
fn update(p: &impl Platform, id: u64, body: &[u8]) -> ApiResult {
    let obj = fields::object(body)?;
    if let Some(given) = fields::id(&obj, "cafeId")?
        && given != id
    {
        return Err(ApiError::bad_request(
            "id_mismatch",
            format!("cafeId {given} in the body does not match cafe {id} in the path"),
        ));
    }
    let changes = Changes::parse(&obj)?;
    let existing = live(p, id)?;
    let new = changes.apply(&existing)?;
    save_update(p, &existing, new)
}

/// `DELETE /cafes/{id}`: remove the item, keep a tombstone, announce it.
fn delete(p: &impl Platform, id: u64) -> ApiResult {
    let item = live(p, id)?;
    let tomb = Tombstone {
        cafe_id: id,
        cafe_nm: item.cafe.cafe_nm.clone(),
        chk_date: item.cafe.chk_date.clone(),
    };
    model::remove(p, id);
    p.put_json(DELETED, &key(id), &tomb)?;
    p.publish_json("cafe.deleted", &event_key(id), &tomb)?;
    Ok(Response::ok(&item.cafe))
}

/// The live item `id`, or 404.
fn live(p: &impl Platform, id: u64) -> Result<Item, ApiError> {
    model::load(p, id)?.ok_or_else(|| missing(p, id))
}

/// The 404 for an item that is not live.
fn missing(p: &impl Platform, id: u64) -> ApiError {
    if p.get(DELETED, &key(id)).is_some() {
        ApiError::not_found("cafe_not_found", format!("cafe {id} was deleted"))
    } else {
        ApiError::not_found("cafe_not_found", format!("cafe {id} does not exist"))
    }
}

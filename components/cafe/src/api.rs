//! HTTP routes under `/cafes`.

use kit::Platform;
use kit::fields::{self, Object};
use kit::http::{ApiError, ApiResult, Response, path_id, respond, segments};

use crate::model::{CAFE_SEQ, CAFES, Cafe, DELETED, MAX_PCNT, Tombstone, key};

pub const PREFIX: &str = "/cafes";

/// Answer one request; every failure becomes a JSON error response.
pub fn handle(p: &impl Platform, method: &str, path: &str, body: &[u8]) -> Response {
    respond(route(p, method, path, body))
}

fn route(p: &impl Platform, method: &str, path: &str, body: &[u8]) -> ApiResult {
    let Some(segs) = segments(path, PREFIX) else {
        return Err(ApiError::no_route(method, path));
    };
    match (segs.as_slice(), method) {
        ([], "GET") => list(p),
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

fn list(p: &impl Platform) -> ApiResult {
    let mut cafes: Vec<Cafe> = p.list_json(CAFES)?.into_iter().map(|(_, c)| c).collect();
    cafes.sort_by_key(|c| c.cafe_id);
    Ok(Response::ok(&cafes))
}

fn get(p: &impl Platform, id: u64) -> ApiResult {
    Ok(Response::ok(&live(p, id)?))
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
    fn into_new(self, cafe_id: u64) -> Result<Cafe, ApiError> {
        Ok(Cafe {
            cafe_id,
            cafe_nm: fields::required(self.cafe_nm, "cafeNm")?,
            chk_date: fields::required(self.chk_date, "chkDate")?,
            pcnt: fields::required(self.pcnt, "pcnt")?,
        })
    }

    /// `cafe` with the given fields replaced.
    fn apply(self, cafe: &Cafe) -> Cafe {
        Cafe {
            cafe_id: cafe.cafe_id,
            cafe_nm: self.cafe_nm.unwrap_or_else(|| cafe.cafe_nm.clone()),
            chk_date: self.chk_date.unwrap_or_else(|| cafe.chk_date.clone()),
            pcnt: self.pcnt.unwrap_or(cafe.pcnt),
        }
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
            match p.get_json::<Cafe>(CAFES, &key(id))? {
                Some(existing) => save_update(p, &existing, changes.apply(&existing)),
                None => register(p, changes.into_new(id)?),
            }
        }
        None => {
            // Validate before taking an id from the sequence.
            let cafe = changes.into_new(0)?;
            let cafe_id = fresh_id(p)?;
            register(p, Cafe { cafe_id, ..cafe })
        }
    }
}

/// The next id from the sequence that no live or deleted item uses (ids
/// given explicitly by clients can be ahead of the sequence).
fn fresh_id(p: &impl Platform) -> Result<u64, ApiError> {
    for _ in 0..100_000 {
        let id = p.next_id(CAFE_SEQ);
        if id >= 1 && p.get(CAFES, &key(id)).is_none() && p.get(DELETED, &key(id)).is_none() {
            return Ok(id);
        }
    }
    Err(ApiError::internal(
        "could not find an unused cafe id; give cafeId explicitly",
    ))
}

fn register(p: &impl Platform, cafe: Cafe) -> ApiResult {
    p.put_json(CAFES, &key(cafe.cafe_id), &cafe)?;
    p.publish_json("cafe.registered", &key(cafe.cafe_id), &cafe)?;
    Ok(Response::created(&cafe))
}

/// Store an update; publishes `cafe.updated` only when something changed.
fn save_update(p: &impl Platform, old: &Cafe, new: Cafe) -> ApiResult {
    if &new != old {
        p.put_json(CAFES, &key(new.cafe_id), &new)?;
        p.publish_json("cafe.updated", &key(new.cafe_id), &new)?;
    }
    Ok(Response::ok(&new))
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
    let new = changes.apply(&existing);
    save_update(p, &existing, new)
}

/// `DELETE /cafes/{id}`: remove the item, keep a tombstone, announce it.
fn delete(p: &impl Platform, id: u64) -> ApiResult {
    let cafe = live(p, id)?;
    let tomb = Tombstone {
        cafe_id: id,
        cafe_nm: cafe.cafe_nm.clone(),
        chk_date: cafe.chk_date.clone(),
    };
    p.delete(CAFES, &key(id));
    p.put_json(DELETED, &key(id), &tomb)?;
    p.publish_json("cafe.deleted", &key(id), &tomb)?;
    Ok(Response::ok(&cafe))
}

/// The live item `id`, or 404.
fn live(p: &impl Platform, id: u64) -> Result<Cafe, ApiError> {
    match p.get_json::<Cafe>(CAFES, &key(id))? {
        Some(c) => Ok(c),
        None if p.get(DELETED, &key(id)).is_some() => Err(ApiError::not_found(
            "cafe_not_found",
            format!("cafe {id} was deleted"),
        )),
        None => Err(ApiError::not_found(
            "cafe_not_found",
            format!("cafe {id} does not exist"),
        )),
    }
}

//! The read model: one row per order, merged from order and production events.

use kit::EventError;
use kit::fields::MAX_TEXT;
use serde::{Deserialize, Serialize};

/// Rows, key = [`kit::keys::id`] of the order id (so key order = id order).
pub const VIEWS: &str = "views";
/// Prefix of the per-customer index collections, see [`by_cust`].
pub const BY_CUST_PREFIX: &str = "by-cust-";

/// What a customer sees about one order. Every field but the ids is `null`
/// until an event has told it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct View {
    pub id: u64,
    pub order_id: u64,
    pub cust_nm: Option<String>,
    pub cafe_id: Option<u64>,
    pub cafe_nm: Option<String>,
    pub chk_date: Option<String>,
    pub qty: Option<u32>,
    /// The order's status, from the newest order event applied.
    pub status: Option<String>,
    /// Version of the newest order event applied: older ones are ignored.
    pub order_version: Option<u64>,
    pub production_status: Option<String>,
    /// Version of the newest production event applied.
    pub production_version: Option<u64>,
}

impl View {
    pub fn empty(order_id: u64) -> View {
        View {
            id: order_id,
            order_id,
            cust_nm: None,
            cafe_id: None,
            cafe_nm: None,
            chk_date: None,
            qty: None,
            status: None,
            order_version: None,
            production_status: None,
            production_version: None,
        }
    }
}

/// An `order.*` payload (the order record).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderEvent {
    pub id: u64,
    pub cust_nm: String,
    pub cafe_id: u64,
    pub cafe_nm: String,
    pub chk_date: String,
    #[serde(default = "one")]
    pub qty: u32,
    pub status: String,
    pub version: u64,
}

fn one() -> u32 {
    1
}

impl OrderEvent {
    /// `invalid` unless a row can hold it (see [`check`]).
    pub fn check(&self, topic: &str) -> Result<(), EventError> {
        check(
            topic,
            ("id", self.id),
            [
                ("custNm", Some(&self.cust_nm)),
                ("cafeNm", Some(&self.cafe_nm)),
                ("chkDate", Some(&self.chk_date)),
                ("status", Some(&self.status)),
            ],
        )
    }
}

impl ProductionEvent {
    /// `invalid` unless a row can hold it (see [`check`]).
    pub fn check(&self, topic: &str) -> Result<(), EventError> {
        check(
            topic,
            ("orderId", self.order_id),
            [
                ("custNm", self.cust_nm.as_ref()),
                ("cafeNm", self.cafe_nm.as_ref()),
                ("chkDate", self.chk_date.as_ref()),
                ("status", Some(&self.status)),
            ],
        )
    }
}

/// A payload a row can hold: the order id >= 1 (paths and `after` cursors
/// refuse 0) and texts of at most [`MAX_TEXT`] characters (what order and
/// production send; a longer text could push the row past the host's
/// document size, a trap).
fn check(
    topic: &str,
    (id_name, id): (&str, u64),
    texts: [(&str, Option<&String>); 4],
) -> Result<(), EventError> {
    if id == 0 {
        return Err(EventError::Invalid(format!(
            "payload of {topic}: {id_name} must be a positive integer, got 0"
        )));
    }
    for (name, text) in texts {
        let chars = text.map_or(0, |t| t.chars().count());
        if chars > MAX_TEXT {
            return Err(EventError::Invalid(format!(
                "payload of {topic}: {name} must be at most {MAX_TEXT} characters, got {chars}"
            )));
        }
    }
    Ok(())
}

/// A `production.*` payload (the production record); the descriptive
/// fields only fill gaps while the order part has not arrived.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProductionEvent {
    pub order_id: u64,
    pub status: String,
    pub version: u64,
    pub cust_nm: Option<String>,
    pub cafe_id: Option<u64>,
    pub cafe_nm: Option<String>,
    pub chk_date: Option<String>,
    pub qty: Option<u32>,
}

/// The document kept in a [`by_cust`] index, key = padded order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    pub order_id: u64,
}

/// The rows of customer `cust_nm`: collection `by-cust-{hash}` (the
/// 16-hex-digit [`kit::keys::text_hash`] of the name), maintained whenever a
/// row's `custNm` becomes known or changes; readers re-check the name.
pub fn by_cust(cust_nm: &str) -> String {
    format!("{BY_CUST_PREFIX}{}", kit::keys::text_hash(cust_nm))
}

/// Store key of the row of order `id`.
pub fn key(id: u64) -> String {
    kit::keys::id(id)
}

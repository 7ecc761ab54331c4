//! Stored documents of the production context.
//!
//! Every collection is keyed by [`kit::keys::id`] of the order id (20
//! digits, zero-padded), so key order is id order and lists page with a
//! keyset cursor.

use kit::fields::MAX_TEXT;
use kit::{EventError, Platform, StoreError};
use serde::{Deserialize, Serialize};

/// One production per order, key = padded order id.
pub const PRODUCTIONS: &str = "productions";
/// Prefix of the per-item index collections, see [`by_cafe`].
pub const BY_CAFE_PREFIX: &str = "by-cafe-";
/// Prefix of the per-status index collections, see [`by_status`].
pub const BY_STATUS_PREFIX: &str = "by-status-";

/// REGISTERED → CANCELED | FORCE_CANCELED (both final), as order decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Registered,
    Canceled,
    ForceCanceled,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Registered, Status::Canceled, Status::ForceCanceled];

    /// A final status never changes again.
    pub fn is_final(self) -> bool {
        self != Status::Registered
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Registered => "REGISTERED",
            Status::Canceled => "CANCELED",
            Status::ForceCanceled => "FORCE_CANCELED",
        }
    }

    /// Case-insensitive, surrounding spaces ignored.
    pub fn parse(s: &str) -> Option<Status> {
        let s = s.trim();
        Status::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    /// The event announcing a production in this status.
    pub fn topic(self) -> &'static str {
        match self {
            Status::Registered => "production.registered",
            Status::Canceled => "production.canceled",
            Status::ForceCanceled => "production.force-canceled",
        }
    }
}

/// A production-board entry; also the payload of every `production.*` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Production {
    /// Same as `order_id`: one production per order.
    pub id: u64,
    pub order_id: u64,
    pub cust_nm: String,
    pub cafe_id: u64,
    pub cafe_nm: String,
    pub chk_date: String,
    pub qty: u32,
    pub status: Status,
    /// +1 on every change, so read models can drop stale events.
    pub version: u64,
}

/// The fields of an `order.*` payload this context uses (others ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderSnapshot {
    pub id: u64,
    pub cust_nm: String,
    pub cafe_id: u64,
    pub cafe_nm: String,
    pub chk_date: String,
    #[serde(default = "one")]
    pub qty: u32,
}

fn one() -> u32 {
    1
}

impl OrderSnapshot {
    /// `invalid` unless the store and the listing can hold the record:
    /// positive ids (paths and `after` cursors refuse 0) and texts of at
    /// most [`MAX_TEXT`] characters (what order accepts; a longer text
    /// could push the record past the host's document size, a trap).
    pub fn check(&self, topic: &str) -> Result<(), EventError> {
        for (name, id) in [("id", self.id), ("cafeId", self.cafe_id)] {
            if id == 0 {
                return Err(EventError::Invalid(format!(
                    "payload of {topic}: {name} must be a positive integer, got 0"
                )));
            }
        }
        for (name, text) in [
            ("custNm", &self.cust_nm),
            ("cafeNm", &self.cafe_nm),
            ("chkDate", &self.chk_date),
        ] {
            let chars = text.chars().count();
            if chars > MAX_TEXT {
                return Err(EventError::Invalid(format!(
                    "payload of {topic}: {name} must be at most {MAX_TEXT} characters, got {chars}"
                )));
            }
        }
        Ok(())
    }

    /// A first version of the production of this order, in `status`.
    pub fn production(self, status: Status) -> Production {
        Production {
            id: self.id,
            order_id: self.id,
            cust_nm: self.cust_nm,
            cafe_id: self.cafe_id,
            cafe_nm: self.cafe_nm,
            chk_date: self.chk_date,
            qty: self.qty,
            status,
            version: 1,
        }
    }
}

/// The document kept in both indexes, key = padded order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    pub order_id: u64,
}

/// The productions of menu item `cafe_id`: collection `by-cafe-{cafeId}`
/// (at most 28 bytes), written once when the record is created (in whatever
/// status), read by `?cafeId=`.
pub fn by_cafe(cafe_id: u64) -> String {
    format!("{BY_CAFE_PREFIX}{cafe_id}")
}

/// The productions now in `status`: collection `by-status-{STATUS}`,
/// maintained on every change (old entry deleted, new one put), read by
/// `?status=`.
pub fn by_status(status: Status) -> String {
    format!("{BY_STATUS_PREFIX}{}", status.as_str())
}

/// Store key of the production of order `id`.
pub fn key(id: u64) -> String {
    kit::keys::id(id)
}

/// Event key: the order id, plain decimal.
pub fn event_key(id: u64) -> String {
    id.to_string()
}

/// Store a new record with its index entries and announce it.
pub fn insert(p: &impl Platform, x: &Production) -> Result<(), StoreError> {
    let k = key(x.order_id);
    let entry = IndexEntry {
        order_id: x.order_id,
    };
    p.put_json(&by_cafe(x.cafe_id), &k, &entry)?;
    p.put_json(&by_status(x.status), &k, &entry)?;
    p.put_json(PRODUCTIONS, &k, x)?;
    p.publish_json(x.status.topic(), &event_key(x.order_id), x)
}

/// Move `x` to `to` (version + 1), keep the status index in step, store it
/// and announce it.
pub fn change_status(p: &impl Platform, x: &mut Production, to: Status) -> Result<(), StoreError> {
    let k = key(x.order_id);
    p.delete(&by_status(x.status), &k);
    x.status = to;
    x.version += 1;
    p.put_json(
        &by_status(to),
        &k,
        &IndexEntry {
            order_id: x.order_id,
        },
    )?;
    p.put_json(PRODUCTIONS, &k, x)?;
    p.publish_json(to.topic(), &event_key(x.order_id), x)
}

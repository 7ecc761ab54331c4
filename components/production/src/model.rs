//! Stored documents of the production context.

use serde::{Deserialize, Serialize};

/// One production per order, key = order id as a decimal string.
pub const PRODUCTIONS: &str = "productions";
/// Prefix of the per-item index collections, see [`by_cafe`].
pub const BY_CAFE_PREFIX: &str = "by-cafe-";
/// Menu items known to be deleted (from `cafe.deleted`), key = cafe id.
pub const DELETED_CAFES: &str = "deleted-cafes";

/// REGISTERED → CANCELED | FORCE_CANCELED (both final).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Registered,
    Canceled,
    ForceCanceled,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Registered, Status::Canceled, Status::ForceCanceled];

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

/// The document kept in [`DELETED_CAFES`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletedCafe {
    pub cafe_id: u64,
}

/// The document kept in a [`by_cafe`] index, key = order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CafeIndexEntry {
    pub order_id: u64,
}

/// The index of every production of menu item `cafe_id`: collection
/// `by-cafe-{cafeId}` (at most 28 bytes), key = order id. Written once, when
/// the record is created (in whatever status), so `cafe.deleted` reads only
/// that item's productions instead of listing (and version-checking) all.
pub fn by_cafe(cafe_id: u64) -> String {
    format!("{BY_CAFE_PREFIX}{cafe_id}")
}

pub fn key(id: u64) -> String {
    id.to_string()
}

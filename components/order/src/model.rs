//! Stored documents of the order context.

use serde::{Deserialize, Serialize};

/// Orders, key = order id as a decimal string.
pub const ORDERS: &str = "orders";
/// Menu items known to be deleted (from `cafe.deleted`), key = cafe id.
pub const DELETED_CAFES: &str = "deleted-cafes";
/// Prefix of the per-item index collections, see [`by_cafe`].
pub const BY_CAFE_PREFIX: &str = "by-cafe-";
/// Sequence for order ids.
pub const ORDER_SEQ: &str = "orders";

/// Bounds of an order's quantity.
pub const MIN_QTY: u32 = 1;
pub const MAX_QTY: u32 = 1000;

/// Where an order is. REQUESTED → ORDERED; REQUESTED|ORDERED → CANCELED |
/// FORCE_CANCELED, both final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    /// Stock reserved; waiting for production to register it.
    Requested,
    /// Production registered it (asynchronously, step 4).
    Ordered,
    /// Canceled by the customer.
    Canceled,
    /// Canceled because the menu item was deleted.
    ForceCanceled,
}

impl Status {
    pub const ALL: [Status; 4] = [
        Status::Requested,
        Status::Ordered,
        Status::Canceled,
        Status::ForceCanceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Requested => "REQUESTED",
            Status::Ordered => "ORDERED",
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

    /// Still open to cancel / force-cancel.
    pub fn is_open(self) -> bool {
        matches!(self, Status::Requested | Status::Ordered)
    }
}

/// An order; also the payload of every `order.*` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Order {
    pub id: u64,
    pub cust_nm: String,
    pub cafe_id: u64,
    /// The menu item's name and date as cafe reported them when reserving.
    pub cafe_nm: String,
    pub chk_date: String,
    pub qty: u32,
    pub status: Status,
    /// +1 on every change, so read models can drop stale events.
    pub version: u64,
}

impl Order {
    /// Move to `status`, bumping the version.
    pub fn advance(&mut self, status: Status) {
        self.status = status;
        self.version += 1;
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
    pub id: u64,
}

/// The index of every order of menu item `cafe_id`: collection
/// `by-cafe-{cafeId}` (at most 28 bytes), key = order id. Written once, when
/// the order is placed, so `cafe.deleted` reads only that item's orders
/// instead of listing (and version-checking) all of them.
pub fn by_cafe(cafe_id: u64) -> String {
    format!("{BY_CAFE_PREFIX}{cafe_id}")
}

pub fn key(id: u64) -> String {
    id.to_string()
}

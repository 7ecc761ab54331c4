//! Stored documents of the cafe context.

use serde::{Deserialize, Serialize};

/// Menu items, key = cafe id as a decimal string.
pub const CAFES: &str = "cafes";
/// Tombstones of deleted items, key = cafe id: ids are never reused.
pub const DELETED: &str = "deleted";
/// One reservation per order, key = order id.
pub const RESERVATIONS: &str = "reservations";
/// Sequence for server-assigned cafe ids.
pub const CAFE_SEQ: &str = "cafes";

/// Upper bound of `pcnt`.
pub const MAX_PCNT: u32 = 1_000_000;
/// Bounds of one reservation's `qty` (the order context enforces the same).
pub const MAX_QTY: u32 = 1000;

/// A menu item: a drink, the date it can be ordered for, and how many are left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cafe {
    pub cafe_id: u64,
    pub cafe_nm: String,
    pub chk_date: String,
    pub pcnt: u32,
}

/// What remains of a deleted item; also the `cafe.deleted` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tombstone {
    pub cafe_id: u64,
    pub cafe_nm: String,
    pub chk_date: String,
}

/// Units taken for one order. Kept after release (with `released: true`) so
/// a repeated release restores nothing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reservation {
    pub order_id: String,
    pub cafe_id: u64,
    pub qty: u32,
    pub released: bool,
    /// The item's name and date when reserved, so a repeated reserve can
    /// answer even after the item is gone.
    pub cafe_nm: String,
    pub chk_date: String,
}

/// `cafe.stock-released` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StockReleased {
    pub order_id: String,
    pub cafe_id: u64,
    pub qty: u32,
}

pub fn key(id: u64) -> String {
    id.to_string()
}

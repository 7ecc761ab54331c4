//! Stored documents of the order context.
//!
//! Every collection is keyed by [`kit::keys::id`] (20 digits, zero-padded),
//! so key order is id order and lists page with a keyset cursor.

use kit::{Platform, StoreError};
use serde::{Deserialize, Serialize};

/// Orders, key = padded order id.
pub const ORDERS: &str = "orders";
/// Menu items known to be deleted (from `cafe.deleted`), key = padded cafe
/// id; also the state of the item's force-cancel sweep.
pub const DELETED_CAFES: &str = "deleted-cafes";
/// Prefix of the per-item index collections, see [`by_cafe`].
pub const BY_CAFE_PREFIX: &str = "by-cafe-";
/// Prefix of the per-customer index collections, see [`by_cust`].
pub const BY_CUST_PREFIX: &str = "by-cust-";
/// Prefix of the per-status index collections, see [`by_status`].
pub const BY_STATUS_PREFIX: &str = "by-status-";
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

    /// The event announcing an order that moved to this status.
    pub fn topic(self) -> &'static str {
        match self {
            Status::Requested => "order.requested",
            Status::Ordered => "order.ordered",
            Status::Canceled => "order.canceled",
            Status::ForceCanceled => "order.force-canceled",
        }
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

/// The document kept in [`DELETED_CAFES`]: the item is gone, and where its
/// force-cancel sweep stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeletedCafe {
    pub cafe_id: u64,
    /// `Some(after)` while the sweep's one pending `order.cafe-sweep`
    /// continuation starts after that index key; `None` once it is done
    /// (and in tombstones written before sweeps were chunked, which were
    /// swept in one go).
    #[serde(default)]
    pub sweep: Option<String>,
}

/// The document kept in every index ([`by_cafe`], [`by_cust`],
/// [`by_status`]), key = padded order id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IndexEntry {
    pub id: u64,
}

/// The orders of menu item `cafe_id`: collection `by-cafe-{cafeId}` (at most
/// 28 bytes). Written once, when the order is placed: the sweep of a deleted
/// item and `?cafeId=` read only that item's orders.
pub fn by_cafe(cafe_id: u64) -> String {
    format!("{BY_CAFE_PREFIX}{cafe_id}")
}

/// The orders of customer `cust_nm`: collection `by-cust-{hash}`, the
/// 16-hex-digit [`kit::keys::text_hash`] of the name (names are up to 200
/// characters; readers re-check the name, so a collision only costs a
/// skipped entry). Written once, when the order is placed.
pub fn by_cust(cust_nm: &str) -> String {
    format!("{BY_CUST_PREFIX}{}", kit::keys::text_hash(cust_nm))
}

/// The orders now in `status`: collection `by-status-{STATUS}`, maintained
/// on every status change (old entry deleted, new one put, with the order).
pub fn by_status(status: Status) -> String {
    format!("{BY_STATUS_PREFIX}{}", status.as_str())
}

/// Store key of order (or cafe) `id`.
pub fn key(id: u64) -> String {
    kit::keys::id(id)
}

/// Event key, and the order id cafe's reservations know: plain decimal.
pub fn event_key(id: u64) -> String {
    id.to_string()
}

/// Store a new order with its index entries (every index it belongs to).
pub fn insert(p: &impl Platform, order: &Order) -> Result<(), StoreError> {
    let k = key(order.id);
    let entry = IndexEntry { id: order.id };
    p.put_json(ORDERS, &k, order)?;
    p.put_json(&by_cafe(order.cafe_id), &k, &entry)?;
    p.put_json(&by_cust(&order.cust_nm), &k, &entry)?;
    p.put_json(&by_status(order.status), &k, &entry)
}

/// Move `order` to `to` (version + 1), keep the status index in step, store
/// it, and publish the event announcing the new status.
pub fn change_status(p: &impl Platform, order: &mut Order, to: Status) -> Result<(), StoreError> {
    let from = order.status;
    order.advance(to);
    let k = key(order.id);
    p.delete(&by_status(from), &k);
    p.put_json(&by_status(to), &k, &IndexEntry { id: order.id })?;
    p.put_json(ORDERS, &k, order)?;
    p.publish_json(to.topic(), &event_key(order.id), order)
}

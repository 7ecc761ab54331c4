//! Stored documents of the cafe context, and the stock rule.
//!
//! `pcnt` is the number of units still *available* (what the seed shows and
//! what orders take). `held` is the number of units taken by reservations
//! not released yet. Invariant, for every live item:
//!
//! - `pcnt + held <= MAX_PCNT`, so neither can overflow;
//! - `held` = the sum of `qty` over the item's unreleased reservations.
//!
//! Reserve moves `qty` from `pcnt` to `held`, release moves it back, an
//! owner's POST/PUT of `pcnt` is refused when `pcnt + held` would exceed
//! `MAX_PCNT` (409 `pcnt_out_of_range`), so a release can never push `pcnt`
//! out of range. A deleted item takes its held units with it.

use serde::{Deserialize, Serialize};

/// Menu items, key = [`kit::keys::id`] of the cafe id (so key order = id order).
pub const CAFES: &str = "cafes";
/// Tombstones of deleted items, key = [`kit::keys::id`]: ids are never reused.
pub const DELETED: &str = "deleted";
/// One reservation per order, key = the order id as the caller gave it.
pub const RESERVATIONS: &str = "reservations";
/// Sequence for server-assigned cafe ids.
pub const CAFE_SEQ: &str = "cafes";

/// Upper bound of `pcnt + held`.
pub const MAX_PCNT: u32 = 1_000_000;
/// Bounds of one reservation's `qty` (the order context enforces the same).
pub const MAX_QTY: u32 = 1000;

/// A menu item as clients see it: a drink, the date it can be ordered for,
/// and how many are left. Also the `cafe.registered` / `cafe.updated` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cafe {
    pub cafe_id: u64,
    pub cafe_nm: String,
    pub chk_date: String,
    /// Units available to order.
    pub pcnt: u32,
}

/// The stored document: the item plus the units its open reservations hold
/// (absent in documents written before it existed: 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Item {
    #[serde(flatten)]
    pub cafe: Cafe,
    #[serde(default)]
    pub held: u32,
}

impl Item {
    /// `pcnt` that the stock rule allows next to this item's `held` units,
    /// or the sentence saying why not.
    pub fn check_pcnt(&self, pcnt: u32) -> Result<(), String> {
        if u64::from(pcnt) + u64::from(self.held) > u64::from(MAX_PCNT) {
            Err(format!(
                "pcnt {pcnt} plus {} units held by open orders exceeds {MAX_PCNT}",
                self.held
            ))
        } else {
            Ok(())
        }
    }

    /// Give back `qty` held units (a release). Documents written before
    /// `held` existed may hold less than they lent out: `held` stops at 0 and
    /// `pcnt` at what the rule allows, so the invariant holds either way
    /// (for data written since, neither cap ever applies).
    pub fn give_back(&mut self, qty: u32) {
        self.held = self.held.saturating_sub(qty);
        let room = MAX_PCNT.saturating_sub(self.held);
        self.cafe.pcnt = self.cafe.pcnt.saturating_add(qty).min(room);
    }
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

/// Store key of cafe `id` in [`CAFES`] and [`DELETED`].
pub fn key(id: u64) -> String {
    kit::keys::id(id)
}

/// Event key of cafe `id` (plain decimal, as before keys were padded).
pub fn event_key(id: u64) -> String {
    id.to_string()
}

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
//!
//! Storage: the item document ([`CAFES`]) holds the name and date; `pcnt`
//! and `held` are counter documents ([`STOCK`], [`HELD`], same key) that
//! reservations change with the store's `add`, checked at commit, so
//! concurrent orders of one item do not conflict with each other (an
//! owner's update or a deletion still conflicts with them, through the
//! versions of the documents it read). Documents written before the
//! counters existed carry `pcnt`/`held` inline; they are read as they are
//! and moved to counters by the first write that touches the item.

use kit::{Platform, StoreError};
use serde::{Deserialize, Serialize};

/// Menu items, key = [`kit::keys::id`] of the cafe id (so key order = id order).
pub const CAFES: &str = "cafes";
/// Tombstones of deleted items, key = [`kit::keys::id`]: ids are never reused.
pub const DELETED: &str = "deleted";
/// One reservation per order, key = the order id as the caller gave it.
pub const RESERVATIONS: &str = "reservations";
/// Units available per item: counter documents, key = [`key`].
pub const STOCK: &str = "stock";
/// Units held by unreleased reservations per item: counter documents.
pub const HELD: &str = "held";
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

/// The item document as stored. `pcnt`/`held` are present only in documents
/// written before the counters existed (`held` even older: absent = 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Stored {
    cafe_id: u64,
    cafe_nm: String,
    chk_date: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pcnt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    held: Option<u32>,
}

impl Stored {
    /// The client's view, with `pcnt` read from wherever it lives.
    fn into_cafe(self, pcnt: u32) -> Cafe {
        Cafe {
            cafe_id: self.cafe_id,
            cafe_nm: self.cafe_nm,
            chk_date: self.chk_date,
            pcnt,
        }
    }
}

/// An item as stored, before its counts are read.
pub struct Doc(Stored);

impl Doc {
    pub fn cafe_nm(&self) -> &str {
        &self.0.cafe_nm
    }

    pub fn chk_date(&self) -> &str {
        &self.0.chk_date
    }

    /// True for a document that still carries its counts inline.
    pub fn is_legacy(&self) -> bool {
        self.0.pcnt.is_some()
    }

    /// Units available: inline in a legacy document, else the counter.
    pub fn pcnt(&self, p: &impl Platform) -> Result<u32, StoreError> {
        match self.0.pcnt {
            Some(pcnt) => Ok(pcnt),
            None => counter(p, STOCK, self.0.cafe_id),
        }
    }
}

/// The item document of `id`, if live (counts not read).
pub fn load_doc(p: &impl Platform, id: u64) -> Result<Option<Doc>, StoreError> {
    Ok(p.get_json::<Stored>(CAFES, &key(id))?.map(Doc))
}

/// The item document of `id` (counts not read) and the reservation of
/// `order_id`, in one read: what `stock.reserve` needs before it decides.
pub fn load_doc_and_reservation(
    p: &impl Platform,
    id: u64,
    order_id: &str,
) -> Result<(Option<Doc>, Option<Reservation>), StoreError> {
    let k = key(id);
    let mut found = p
        .get_many(&[(CAFES, &k), (RESERVATIONS, order_id)])
        .into_iter();
    let doc = found
        .next()
        .flatten()
        .map(|bytes| kit::platform::decode::<Stored>(CAFES, &k, &bytes))
        .transpose()?
        .map(Doc);
    let reservation = found
        .next()
        .flatten()
        .map(|bytes| kit::platform::decode(RESERVATIONS, order_id, &bytes))
        .transpose()?;
    Ok((doc, reservation))
}

/// The item as clients see it, from its stored bytes (a `range` entry):
/// reads the `pcnt` counter (version-checked, like any read).
pub fn cafe_of(p: &impl Platform, id: u64, bytes: &[u8]) -> Result<Cafe, StoreError> {
    let doc = Doc(kit::platform::decode(CAFES, &key(id), bytes)?);
    let pcnt = doc.pcnt(p)?;
    Ok(doc.0.into_cafe(pcnt))
}

/// The item as clients see it, if live: the document and its `pcnt`
/// counter in one read.
pub fn load_cafe(p: &impl Platform, id: u64) -> Result<Option<Cafe>, StoreError> {
    let k = key(id);
    let mut found = p.get_many(&[(CAFES, &k), (STOCK, &k)]).into_iter();
    let (Some(Some(bytes)), stock) = (found.next(), found.next().flatten()) else {
        return Ok(None);
    };
    let doc: Stored = kit::platform::decode(CAFES, &k, &bytes)?;
    let pcnt = match doc.pcnt {
        Some(pcnt) => pcnt,
        None => count(STOCK, id, stock.as_deref())?,
    };
    Ok(Some(doc.into_cafe(pcnt)))
}

/// The item with both counts, if live (every document read is version-checked).
pub fn load(p: &impl Platform, id: u64) -> Result<Option<Item>, StoreError> {
    let Some(Doc(doc)) = load_doc(p, id)? else {
        return Ok(None);
    };
    let (pcnt, held) = match doc.pcnt {
        Some(pcnt) => (pcnt, doc.held.unwrap_or(0)),
        None => (counter(p, STOCK, id)?, counter(p, HELD, id)?),
    };
    Ok(Some(Item {
        cafe: doc.into_cafe(pcnt),
        held,
    }))
}

/// Store `item`: the document without counts, and both counters.
pub fn save(p: &impl Platform, item: &Item) -> Result<(), StoreError> {
    let id = item.cafe.cafe_id;
    p.put_json(
        CAFES,
        &key(id),
        &Stored {
            cafe_id: id,
            cafe_nm: item.cafe.cafe_nm.clone(),
            chk_date: item.cafe.chk_date.clone(),
            pcnt: None,
            held: None,
        },
    )?;
    p.put(STOCK, &key(id), item.cafe.pcnt.to_string().as_bytes());
    p.put(HELD, &key(id), item.held.to_string().as_bytes());
    Ok(())
}

/// Remove item `id` with its counters.
pub fn remove(p: &impl Platform, id: u64) {
    p.delete(CAFES, &key(id));
    p.delete(STOCK, &key(id));
    p.delete(HELD, &key(id));
}

/// A count of item `id` (absent = 0).
pub fn counter(p: &impl Platform, collection: &str, id: u64) -> Result<u32, StoreError> {
    count(collection, id, p.get(collection, &key(id)).as_deref())
}

/// A count as stored in `collection` for item `id` (absent = 0).
fn count(collection: &str, id: u64, bytes: Option<&[u8]>) -> Result<u32, StoreError> {
    bytes.map_or(Ok(0), |b| {
        kit::platform::decode::<u32>(collection, &key(id), b)
    })
}

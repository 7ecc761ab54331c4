//! Projection of order and production events into [`View`] rows.
//!
//! Order-insensitive and idempotent: each half of a row carries the version
//! of the event it came from, and an event only applies when its version is
//! newer. A production event that beats its order creates a partial row.

use kit::{EventError, Platform};

use crate::model::{IndexEntry, OrderEvent, ProductionEvent, VIEWS, View, by_cust, key};

pub const ORDER_TOPICS: &[&str] = &[
    "order.requested",
    "order.ordered",
    "order.canceled",
    "order.force-canceled",
];
pub const PRODUCTION_TOPICS: &[&str] = &[
    "production.registered",
    "production.canceled",
    "production.force-canceled",
];

pub fn subscriptions() -> Vec<String> {
    ORDER_TOPICS
        .iter()
        .chain(PRODUCTION_TOPICS)
        .map(|t| (*t).to_owned())
        .collect()
}

/// Apply one event; topics not handled are acknowledged and ignored.
pub fn handle(p: &impl Platform, topic: &str, payload: &[u8]) -> Result<(), EventError> {
    if ORDER_TOPICS.contains(&topic) {
        let ev: OrderEvent = kit::platform::payload(topic, payload)?;
        ev.check(topic)?;
        apply_order(p, ev)
    } else if PRODUCTION_TOPICS.contains(&topic) {
        let ev: ProductionEvent = kit::platform::payload(topic, payload)?;
        ev.check(topic)?;
        apply_production(p, ev)
    } else {
        Ok(())
    }
}

fn load(p: &impl Platform, order_id: u64) -> Result<View, EventError> {
    Ok(p.get_json::<View>(VIEWS, &key(order_id))?
        .unwrap_or_else(|| View::empty(order_id)))
}

/// Store `row` (which was `old_cust` before) and keep the customer index in
/// step: an entry under its current `custNm`, none under a previous one.
fn save(p: &impl Platform, row: &View, old_cust: Option<&str>) -> Result<(), EventError> {
    let k = key(row.order_id);
    if old_cust != row.cust_nm.as_deref() {
        if let Some(old) = old_cust {
            p.delete(&by_cust(old), &k);
        }
        if let Some(new) = &row.cust_nm {
            p.put_json(
                &by_cust(new),
                &k,
                &IndexEntry {
                    order_id: row.order_id,
                },
            )?;
        }
    }
    p.put_json(VIEWS, &k, row)?;
    Ok(())
}

fn apply_order(p: &impl Platform, ev: OrderEvent) -> Result<(), EventError> {
    let mut row = load(p, ev.id)?;
    if row.order_version.is_some_and(|v| ev.version <= v) {
        return Ok(());
    }
    let old_cust = row.cust_nm.clone();
    row.cust_nm = Some(ev.cust_nm);
    row.cafe_id = Some(ev.cafe_id);
    row.cafe_nm = Some(ev.cafe_nm);
    row.chk_date = Some(ev.chk_date);
    row.qty = Some(ev.qty);
    row.status = Some(ev.status);
    row.order_version = Some(ev.version);
    save(p, &row, old_cust.as_deref())
}

fn apply_production(p: &impl Platform, ev: ProductionEvent) -> Result<(), EventError> {
    let mut row = load(p, ev.order_id)?;
    if row.production_version.is_some_and(|v| ev.version <= v) {
        return Ok(());
    }
    let old_cust = row.cust_nm.clone();
    row.production_status = Some(ev.status);
    row.production_version = Some(ev.version);
    // Fill gaps only: the order's own events are authoritative.
    row.cust_nm = row.cust_nm.or(ev.cust_nm);
    row.cafe_id = row.cafe_id.or(ev.cafe_id);
    row.cafe_nm = row.cafe_nm.or(ev.cafe_nm);
    row.chk_date = row.chk_date.or(ev.chk_date);
    row.qty = row.qty.or(ev.qty);
    save(p, &row, old_cust.as_deref())
}

//! Events consumed by order. Both handlers are idempotent and
//! order-insensitive: they only move orders forward along the status graph.

use kit::{EventError, Platform, fields};
use serde_json::Value;

use crate::model::{DELETED_CAFES, DeletedCafe, ORDERS, Order, Status, by_cafe, key};

pub const SUBSCRIPTIONS: &[&str] = &["production.registered", "cafe.deleted"];

/// Apply one event; topics not handled are acknowledged and ignored.
pub fn handle(p: &impl Platform, topic: &str, payload: &[u8]) -> Result<(), EventError> {
    match topic {
        "production.registered" => {
            let v: Value = kit::platform::payload(topic, payload)?;
            let id = fields::id_value("orderId", v.get("orderId").unwrap_or(&Value::Null))?;
            production_registered(p, id)
        }
        "cafe.deleted" => {
            let v: Value = kit::platform::payload(topic, payload)?;
            let cafe_id = fields::id_value("cafeId", v.get("cafeId").unwrap_or(&Value::Null))?;
            cafe_deleted(p, cafe_id)
        }
        _ => Ok(()),
    }
}

/// Step 4: REQUESTED → ORDERED. Any other status (canceled meanwhile, or a
/// redelivery) or an unknown order: nothing to do.
fn production_registered(p: &impl Platform, id: u64) -> Result<(), EventError> {
    let Some(mut order) = p.get_json::<Order>(ORDERS, &key(id))? else {
        return Ok(());
    };
    if order.status == Status::Requested {
        order.advance(Status::Ordered);
        p.put_json(ORDERS, &key(id), &order)?;
        p.publish_json("order.ordered", &key(id), &order)?;
    }
    Ok(())
}

/// Step 10: every open order of the deleted item becomes FORCE_CANCELED.
/// Reads only that item's index and orders (the host version-checks every
/// document read: listing all orders would conflict with any order write).
fn cafe_deleted(p: &impl Platform, cafe_id: u64) -> Result<(), EventError> {
    p.put_json(DELETED_CAFES, &key(cafe_id), &DeletedCafe { cafe_id })?;
    for (k, _) in p.list(&by_cafe(cafe_id)) {
        let Some(mut order) = p.get_json::<Order>(ORDERS, &k)? else {
            continue;
        };
        if order.cafe_id == cafe_id && order.status.is_open() {
            order.advance(Status::ForceCanceled);
            p.put_json(ORDERS, &k, &order)?;
            p.publish_json("order.force-canceled", &key(order.id), &order)?;
        }
    }
    Ok(())
}

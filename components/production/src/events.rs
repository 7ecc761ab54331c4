//! Events consumed by production. Idempotent and order-insensitive: a
//! record is only ever created once (by whichever of requested/canceled
//! arrives first) and only moves REGISTERED → CANCELED | FORCE_CANCELED.

use kit::{EventError, Platform, fields};
use serde_json::Value;

use crate::model::{
    CafeIndexEntry, DELETED_CAFES, DeletedCafe, OrderSnapshot, PRODUCTIONS, Production, Status,
    by_cafe, key,
};

pub const SUBSCRIPTIONS: &[&str] = &["order.requested", "order.canceled", "cafe.deleted"];

/// Apply one event; topics not handled are acknowledged and ignored.
pub fn handle(p: &impl Platform, topic: &str, payload: &[u8]) -> Result<(), EventError> {
    match topic {
        "order.requested" => order_requested(p, kit::platform::payload(topic, payload)?),
        "order.canceled" => order_canceled(p, kit::platform::payload(topic, payload)?),
        "cafe.deleted" => {
            let v: Value = kit::platform::payload(topic, payload)?;
            let cafe_id = fields::id_value("cafeId", v.get("cafeId").unwrap_or(&Value::Null))?;
            cafe_deleted(p, cafe_id)
        }
        _ => Ok(()),
    }
}

fn save(p: &impl Platform, x: &Production) -> Result<(), EventError> {
    p.put_json(PRODUCTIONS, &key(x.order_id), x)?;
    p.publish_json(x.status.topic(), &key(x.order_id), x)?;
    Ok(())
}

/// A new record, in whatever status: indexed under its menu item first.
fn create(p: &impl Platform, x: &Production) -> Result<(), EventError> {
    p.put_json(
        &by_cafe(x.cafe_id),
        &key(x.order_id),
        &CafeIndexEntry {
            order_id: x.order_id,
        },
    )?;
    save(p, x)
}

/// Step 5: register the order on the board, unless it is already there
/// (redelivery, or its cancel got here first) or its item is gone.
fn order_requested(p: &impl Platform, order: OrderSnapshot) -> Result<(), EventError> {
    if p.get(PRODUCTIONS, &key(order.id)).is_some() {
        return Ok(());
    }
    let status = if p.get(DELETED_CAFES, &key(order.cafe_id)).is_some() {
        Status::ForceCanceled
    } else {
        Status::Registered
    };
    create(p, &order.production(status))
}

/// Step 8: cancel the production. Seen before the request: record it as
/// CANCELED so the late request cannot resurrect it.
fn order_canceled(p: &impl Platform, order: OrderSnapshot) -> Result<(), EventError> {
    match p.get_json::<Production>(PRODUCTIONS, &key(order.id))? {
        None => create(p, &order.production(Status::Canceled)),
        Some(mut x) if x.status == Status::Registered => {
            x.status = Status::Canceled;
            x.version += 1;
            save(p, &x)
        }
        Some(_) => Ok(()),
    }
}

/// Step 10: every REGISTERED production of the deleted item is force-canceled.
/// Reads only that item's index and records (the host version-checks every
/// document read: listing all productions would conflict with any change).
fn cafe_deleted(p: &impl Platform, cafe_id: u64) -> Result<(), EventError> {
    p.put_json(DELETED_CAFES, &key(cafe_id), &DeletedCafe { cafe_id })?;
    for (k, _) in p.list(&by_cafe(cafe_id)) {
        let Some(mut x) = p.get_json::<Production>(PRODUCTIONS, &k)? else {
            continue;
        };
        if x.cafe_id == cafe_id && x.status == Status::Registered {
            x.status = Status::ForceCanceled;
            x.version += 1;
            save(p, &x)?;
        }
    }
    Ok(())
}

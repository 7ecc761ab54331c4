//! Events consumed by production. Production never decides a final state:
//! order is the one authority (it never publishes both `order.canceled` and
//! `order.force-canceled` for one order), and production follows it.
//!
//! Idempotent and insensitive to delivery order: a record is created once,
//! by whichever of the order's events arrives first, and a record in a final
//! state never changes, so a late `order.requested` cannot resurrect a
//! canceled production.

use kit::{EventError, Platform};

use crate::model::{OrderSnapshot, PRODUCTIONS, Production, Status, change_status, insert, key};

pub const SUBSCRIPTIONS: &[&str] = &["order.requested", "order.canceled", "order.force-canceled"];

/// Apply one event; topics not handled are acknowledged and ignored.
pub fn handle(p: &impl Platform, topic: &str, payload: &[u8]) -> Result<(), EventError> {
    let to = match topic {
        "order.requested" => Status::Registered,
        "order.canceled" => Status::Canceled,
        "order.force-canceled" => Status::ForceCanceled,
        _ => return Ok(()),
    };
    let order: OrderSnapshot = kit::platform::payload(topic, payload)?;
    order.check(topic)?;
    follow(p, order, to)
}

/// Bring the order's production to `to`:
///
/// - no record yet: create it in `to` (REGISTERED for a request; CANCELED or
///   FORCE_CANCELED when the final event overtook the request);
/// - REGISTERED and `to` is final: move to `to`, version + 1;
/// - otherwise (a redelivery, a late request, a final record): nothing.
fn follow(p: &impl Platform, order: OrderSnapshot, to: Status) -> Result<(), EventError> {
    match p.get_json::<Production>(PRODUCTIONS, &key(order.id))? {
        None => insert(p, &order.production(to))?,
        Some(mut x) if !x.status.is_final() && to.is_final() => change_status(p, &mut x, to)?,
        Some(_) => {}
    }
    Ok(())
}

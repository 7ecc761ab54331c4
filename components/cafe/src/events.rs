//! Events consumed by cafe.

use kit::{EventError, Platform, fields};
use serde_json::Value;

use crate::stock::{self, StockFailure};

/// Topics handled. `order.force-canceled` is deliberately absent: it only
/// happens when the item itself was deleted, so there is nothing to give back.
pub const SUBSCRIPTIONS: &[&str] = &["order.canceled"];

/// Apply one event; topics not handled are acknowledged and ignored.
pub fn handle(p: &impl Platform, topic: &str, payload: &[u8]) -> Result<(), EventError> {
    match topic {
        "order.canceled" => {
            let order: Value = kit::platform::payload(topic, payload)?;
            let id = fields::id_value("id", order.get("id").unwrap_or(&Value::Null))?;
            stock::release(p, &id.to_string()).map_err(|e| match e {
                StockFailure::NotFound(m) => EventError::NotFound(m),
                StockFailure::Invalid(m) => EventError::Invalid(m),
                StockFailure::SoldOut(n) => EventError::Conflict(format!("sold out ({n} left)")),
                StockFailure::Unavailable(m) => EventError::Unavailable(m),
            })?;
            Ok(())
        }
        _ => Ok(()),
    }
}

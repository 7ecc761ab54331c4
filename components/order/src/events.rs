//! Events consumed by order. Every handler is idempotent and insensitive to
//! delivery order: statuses only move forward, and the force-cancel sweep of
//! a deleted item is one chain of chunks whose progress is stored with the
//! item's tombstone.

use kit::{EventError, Platform, fields};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{
    DELETED_CAFES, DeletedCafe, ORDERS, Order, Status, by_cafe, change_status, event_key, key,
};

/// The continuation of a deleted item's sweep (published and consumed by order).
pub const CAFE_SWEEP: &str = "order.cafe-sweep";

pub const SUBSCRIPTIONS: &[&str] = &["production.registered", "cafe.deleted", CAFE_SWEEP];

/// Index entries one sweep invocation examines at most: at most 3 writes
/// and 1 event per entry, far below the host's 10,000 per unit of work.
pub const SWEEP_CHUNK: u32 = 200;

/// Payload of [`CAFE_SWEEP`], key = cafe id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepNext {
    pub cafe_id: u64,
    /// The last `by-cafe-{cafeId}` key the previous chunk examined.
    pub after: String,
}

/// Apply one event; topics not handled are acknowledged and ignored.
pub fn handle(p: &impl Platform, topic: &str, payload: &[u8]) -> Result<(), EventError> {
    handle_chunked(p, topic, payload, SWEEP_CHUNK)
}

/// [`handle`] with sweep chunks of `chunk` entries (tests use small ones).
pub fn handle_chunked(
    p: &impl Platform,
    topic: &str,
    payload: &[u8],
    chunk: u32,
) -> Result<(), EventError> {
    match topic {
        "production.registered" => {
            let v: Value = kit::platform::payload(topic, payload)?;
            let id = fields::id_value("orderId", v.get("orderId").unwrap_or(&Value::Null))?;
            production_registered(p, id)
        }
        "cafe.deleted" => {
            let v: Value = kit::platform::payload(topic, payload)?;
            let cafe_id = fields::id_value("cafeId", v.get("cafeId").unwrap_or(&Value::Null))?;
            cafe_deleted(p, cafe_id, chunk)
        }
        CAFE_SWEEP => {
            let v: Value = kit::platform::payload(topic, payload)?;
            let cafe_id = fields::id_value("cafeId", v.get("cafeId").unwrap_or(&Value::Null))?;
            let after = v
                .get("after")
                .and_then(Value::as_str)
                .filter(|a| kit::keys::parse_id(a).is_some())
                .ok_or_else(|| {
                    EventError::Invalid(format!(
                        "payload of {topic} needs \"after\": a 20-digit index key"
                    ))
                })?;
            cafe_sweep(p, cafe_id, after, chunk)
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
        change_status(p, &mut order, Status::Ordered)?;
    }
    Ok(())
}

/// Step 10, first chunk: tombstone the item (from now on a cancel of its
/// open orders is refused and new orders of it are 404) and force-cancel
/// its first open orders. A redelivery finds the tombstone and does nothing:
/// the tombstone, the first chunk and its continuation committed together.
fn cafe_deleted(p: &impl Platform, cafe_id: u64, chunk: u32) -> Result<(), EventError> {
    if p.get(DELETED_CAFES, &key(cafe_id)).is_some() {
        return Ok(());
    }
    let sweep = sweep_chunk(p, cafe_id, None, chunk)?;
    p.put_json(
        DELETED_CAFES,
        &key(cafe_id),
        &DeletedCafe { cafe_id, sweep },
    )?;
    Ok(())
}

/// Step 10, a later chunk. Only the chunk the tombstone waits for runs: a
/// redelivered (older) chunk, or one for a finished sweep, changes nothing
/// and publishes nothing, so there is exactly one chain per item.
fn cafe_sweep(p: &impl Platform, cafe_id: u64, after: &str, chunk: u32) -> Result<(), EventError> {
    let Some(mut tomb) = p.get_json::<DeletedCafe>(DELETED_CAFES, &key(cafe_id))? else {
        return Err(EventError::Invalid(format!(
            "{CAFE_SWEEP} for cafe {cafe_id}, which order does not know as deleted"
        )));
    };
    if tomb.sweep.as_deref() != Some(after) {
        return Ok(());
    }
    tomb.sweep = sweep_chunk(p, cafe_id, Some(after), chunk)?;
    p.put_json(DELETED_CAFES, &key(cafe_id), &tomb)?;
    Ok(())
}

/// Force-cancel the open orders among the next `chunk` entries of the
/// item's index after `after`. When entries may remain, publish the
/// continuation (in this unit of work: it exists iff these changes
/// committed) and return where it starts.
fn sweep_chunk(
    p: &impl Platform,
    cafe_id: u64,
    after: Option<&str>,
    chunk: u32,
) -> Result<Option<String>, EventError> {
    let chunk = chunk.max(1);
    let index = by_cafe(cafe_id);
    let mut cursor = after.map(str::to_owned);
    let mut examined: u32 = 0;
    let mut more = true;
    while more && examined < chunk {
        let page = p.range(&index, cursor.as_deref(), chunk - examined);
        more = page.more;
        if page.entries.is_empty() {
            // Nothing after the cursor (`more` without entries cannot make progress).
            more = false;
            break;
        }
        for (k, _) in page.entries {
            examined += 1;
            if let Some(mut order) = p.get_json::<Order>(ORDERS, &k)?
                && order.cafe_id == cafe_id
                && order.status.is_open()
            {
                change_status(p, &mut order, Status::ForceCanceled)?;
            }
            cursor = Some(k);
        }
    }
    match (more, cursor) {
        (true, Some(last)) => {
            p.publish_json(
                CAFE_SWEEP,
                &event_key(cafe_id),
                &SweepNext {
                    cafe_id,
                    after: last.clone(),
                },
            )?;
            Ok(Some(last))
        }
        _ => Ok(None),
    }
}

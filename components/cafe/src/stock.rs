//! The `stock` interface: reserve and release units for an order.
//!
//! Runs inside the caller's unit of work (order's `POST /orders` for
//! reserve), so the decrement commits together with the order or not at all.
//! Reserve moves `qty` units from the item's `pcnt` to its `held`, release
//! moves them back (see `model` for the invariant), both with the store's
//! `add`, so orders of one item do not conflict with each other.

use kit::Platform;
use kit::platform::MAX_NAME_BYTES;
pub use kit::stock::{Reserved, StockFailure};

use crate::model::{
    DELETED, Doc, HELD, MAX_QTY, RESERVATIONS, Reservation, STOCK, StockReleased, event_key, key,
    load, load_doc, load_doc_and_reservation, save,
};

/// Take `qty` units of `cafe_id` for `order_id`; repeated calls for the same
/// order return the first reservation without taking more.
pub fn reserve(
    p: &impl Platform,
    order_id: &str,
    cafe_id: u64,
    qty: u32,
) -> Result<Reserved, StockFailure> {
    check_order_id(order_id)?;
    if qty == 0 || qty > MAX_QTY {
        return Err(StockFailure::Invalid(format!(
            "qty must be from 1 to {MAX_QTY}, got {qty}"
        )));
    }
    // The item document is version-checked: a concurrent update or
    // deletion re-runs this order. The counts are not: other orders of the
    // item take from them concurrently, checked at commit.
    let (doc, reservation) = load_doc_and_reservation(p, cafe_id, order_id)?;

    if let Some(r) = reservation {
        if r.cafe_id != cafe_id || r.qty != qty {
            return Err(StockFailure::Invalid(format!(
                "order {order_id} already holds a reservation of {} from cafe {}, not {qty} from cafe {cafe_id}",
                r.qty, r.cafe_id
            )));
        }
        if r.released {
            return Err(StockFailure::Invalid(format!(
                "the reservation of order {order_id} was already released"
            )));
        }
        let remaining = match &doc {
            Some(doc) => doc.pcnt(p)?,
            None => 0,
        };
        return Ok(Reserved {
            order_id: r.order_id,
            cafe_id,
            cafe_nm: r.cafe_nm,
            chk_date: r.chk_date,
            qty,
            remaining,
        });
    }

    let Some(doc) = doc else {
        let why = if p.get(DELETED, &key(cafe_id)).is_some() {
            format!("cafe {cafe_id} does not exist (it was deleted)")
        } else {
            format!("cafe {cafe_id} does not exist")
        };
        return Err(StockFailure::NotFound(why));
    };
    to_counters(p, cafe_id, &doc)?;
    let remaining = match p.add(STOCK, &key(cafe_id), -i64::from(qty), 0) {
        Ok(left) => u32::try_from(left).map_err(|_| corrupt(cafe_id, left))?,
        Err(left) => {
            return Err(StockFailure::SoldOut(
                u32::try_from(left.max(0)).map_err(|_| corrupt(cafe_id, left))?,
            ));
        }
    };
    // pcnt + held stays the same, so it stays <= MAX_PCNT.
    p.add(HELD, &key(cafe_id), i64::from(qty), i64::MIN)
        .map_err(|held| corrupt(cafe_id, held))?;
    p.put_json(
        RESERVATIONS,
        order_id,
        &Reservation {
            order_id: order_id.to_owned(),
            cafe_id,
            qty,
            released: false,
            cafe_nm: doc.cafe_nm().to_owned(),
            chk_date: doc.chk_date().to_owned(),
        },
    )?;
    Ok(Reserved {
        order_id: order_id.to_owned(),
        cafe_id,
        cafe_nm: doc.cafe_nm().to_owned(),
        chk_date: doc.chk_date().to_owned(),
        qty,
        remaining,
    })
}

/// Move a document written before the counters existed to them (a
/// version-checked write: concurrent first orders of such an item conflict
/// once, then never again).
fn to_counters(p: &impl Platform, cafe_id: u64, doc: &Doc) -> Result<(), StockFailure> {
    if doc.is_legacy()
        && let Some(item) = load(p, cafe_id)?
    {
        save(p, &item)?;
    }
    Ok(())
}

fn corrupt(cafe_id: u64, count: i64) -> StockFailure {
    StockFailure::Unavailable(format!(
        "cafe {cafe_id} has a count of {count} units; its stored stock is corrupt"
    ))
}

/// Give an order's units back. Only the first call for an order restores
/// stock; returns whether this call restored anything (false when there is
/// no reservation, it was already released, or the item has been deleted).
pub fn release(p: &impl Platform, order_id: &str) -> Result<bool, StockFailure> {
    check_order_id(order_id)?;
    let Some(mut r) = p.get_json::<Reservation>(RESERVATIONS, order_id)? else {
        return Ok(false);
    };
    if r.released {
        return Ok(false);
    }
    r.released = true;
    p.put_json(RESERVATIONS, order_id, &r)?;
    let Some(doc) = load_doc(p, r.cafe_id)? else {
        return Ok(false);
    };
    to_counters(p, r.cafe_id, &doc)?;
    let qty = i64::from(r.qty);
    if p.add(HELD, &key(r.cafe_id), -qty, 0).is_ok() {
        p.add(STOCK, &key(r.cafe_id), qty, i64::MIN)
            .map_err(|pcnt| corrupt(r.cafe_id, pcnt))?;
    } else if let Some(mut item) = load(p, r.cafe_id)? {
        // Held fewer units than it lent out (data written before `held`
        // existed): the capped rule of `give_back`, on the exact counts.
        item.give_back(r.qty);
        save(p, &item)?;
    }
    p.publish_json(
        "cafe.stock-released",
        &event_key(r.cafe_id),
        &StockReleased {
            order_id: r.order_id,
            cafe_id: r.cafe_id,
            qty: r.qty,
        },
    )?;
    Ok(true)
}

/// An order id is a store key (collection `reservations`): not blank and at
/// most [`MAX_NAME_BYTES`] bytes, or the host would trap on it.
fn check_order_id(order_id: &str) -> Result<(), StockFailure> {
    if order_id.trim().is_empty() {
        return Err(StockFailure::Invalid("order id must not be empty".into()));
    }
    if order_id.len() > MAX_NAME_BYTES {
        return Err(StockFailure::Invalid(format!(
            "order id must be at most {MAX_NAME_BYTES} bytes, got {}",
            order_id.len()
        )));
    }
    Ok(())
}

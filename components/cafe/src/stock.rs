//! The `stock` interface: reserve and release units for an order.
//!
//! Runs inside the caller's unit of work (order's `POST /orders` for
//! reserve), so the decrement commits together with the order or not at all.
//! Reserve moves `qty` units from the item's `pcnt` to its `held`, release
//! moves them back (see `model` for the invariant).

use kit::Platform;
use kit::platform::MAX_NAME_BYTES;
pub use kit::stock::{Reserved, StockFailure};

use crate::model::{
    CAFES, DELETED, Item, MAX_QTY, RESERVATIONS, Reservation, StockReleased, event_key, key,
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
    let item: Option<Item> = p.get_json(CAFES, &key(cafe_id))?;

    if let Some(r) = p.get_json::<Reservation>(RESERVATIONS, order_id)? {
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
        return Ok(Reserved {
            order_id: r.order_id,
            cafe_id,
            cafe_nm: r.cafe_nm,
            chk_date: r.chk_date,
            qty,
            remaining: item.map_or(0, |i| i.cafe.pcnt),
        });
    }

    let Some(mut item) = item else {
        let why = if p.get(DELETED, &key(cafe_id)).is_some() {
            format!("cafe {cafe_id} does not exist (it was deleted)")
        } else {
            format!("cafe {cafe_id} does not exist")
        };
        return Err(StockFailure::NotFound(why));
    };
    if item.cafe.pcnt < qty {
        return Err(StockFailure::SoldOut(item.cafe.pcnt));
    }
    // pcnt + held stays the same, so it stays <= MAX_PCNT.
    item.cafe.pcnt -= qty;
    item.held = item.held.checked_add(qty).ok_or_else(|| {
        StockFailure::Unavailable(format!(
            "cafe {cafe_id} holds {} units already; its stored stock is corrupt",
            item.held
        ))
    })?;
    p.put_json(CAFES, &key(cafe_id), &item)?;
    p.put_json(
        RESERVATIONS,
        order_id,
        &Reservation {
            order_id: order_id.to_owned(),
            cafe_id,
            qty,
            released: false,
            cafe_nm: item.cafe.cafe_nm.clone(),
            chk_date: item.cafe.chk_date.clone(),
        },
    )?;
    Ok(Reserved {
        order_id: order_id.to_owned(),
        cafe_id,
        cafe_nm: item.cafe.cafe_nm,
        chk_date: item.cafe.chk_date,
        qty,
        remaining: item.cafe.pcnt,
    })
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
    let Some(mut item) = p.get_json::<Item>(CAFES, &key(r.cafe_id))? else {
        return Ok(false);
    };
    item.give_back(r.qty);
    p.put_json(CAFES, &key(r.cafe_id), &item)?;
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

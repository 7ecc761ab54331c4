//! Property test across cafe and order: from three live items with a few
//! orders, random sequences of owner writes
//! (POST / PUT of `pcnt`, DELETE), orders placed (order's `stock` import
//! served by `cafe::stock_reserve` on cafe's platform, inside order's unit
//! of work, as the host does), cancels (both routes, repeated), production
//! registering orders, and the resulting events delivered to their
//! subscribers in any order, redelivered, or answered by a direct
//! `stock.release`, each step checked against a small model.
//!
//! Invariants, after every step, for every menu item:
//!
//! - `pcnt` in `0..=1_000_000` and `pcnt + held <= 1_000_000`;
//! - `pcnt + held` = the total the owner last set: only an accepted POST or
//!   PUT of `pcnt` changes it (orders, cancels and releases move units
//!   between `pcnt` and `held`);
//! - `held` = the units of the item's orders whose release has not happened
//!   (when every event is delivered: of its orders not canceled);
//! - every order's status and every reservation's `released` flag are what
//!   the model says;
//! - a refused request changes no document and publishes nothing;
//! - cancel is idempotent: cancelling a canceled order answers 200, changes
//!   nothing, publishes nothing; a redelivered event or a second release
//!   changes nothing (`release` twice restores once).
//!
//! At the end every pending event is delivered, and then: a reservation is
//! released iff its order is CANCELED, no order of a deleted item is still
//! open, and order published exactly one final event per finished order.

// A test through and through: its helpers may fail loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use kit::stock::{Reserved, Stock, StockFailure};
use kit::{MemPlatform, Platform, keys};
use proptest::prelude::*;
use serde_json::{Value, json};

const MAX_PCNT: u32 = cafe::MAX_PCNT;
const ITEMS: std::ops::RangeInclusive<u64> = 1..=3;
/// Order's sweep chunk: small, so deleting an item with orders takes
/// several `order.cafe-sweep` continuations.
const CHUNK: u32 = 2;

/// Order's `stock` import, served by cafe inside order's unit of work.
struct CafeStock<'a>(&'a MemPlatform);

impl Stock for CafeStock<'_> {
    fn reserve(&self, order_id: &str, cafe_id: u64, qty: u32) -> Result<Reserved, StockFailure> {
        cafe::stock_reserve(self.0, order_id, cafe_id, qty)
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// `POST /cafes` with this `cafeId` and `pcnt` (create or upsert).
    Post { cafe: u64, pcnt: u32 },
    /// `PUT /cafes/{cafe}` setting `pcnt`.
    Put { cafe: u64, pcnt: u32 },
    /// `DELETE /cafes/{cafe}`.
    Delete { cafe: u64 },
    /// `POST /orders` of `qty` units of `cafe`.
    Place { cafe: u64, qty: u32 },
    /// Cancel the n-th order placed (modulo their number), by
    /// `POST /orders/{id}/cancel` or by the seed's `PUT {"status":"CANCELED"}`.
    Cancel { nth: usize, by_put: bool },
    /// `production.registered` for the n-th order (REQUESTED → ORDERED).
    Register { nth: usize },
    /// Deliver the n-th pending event.
    Deliver { nth: usize },
    /// Deliver the n-th event delivered so far once more.
    Redeliver { nth: usize },
    /// `stock.release` of the n-th order called directly, if it is canceled
    /// (before or after its `order.canceled` reached cafe).
    Release { nth: usize },
}

fn pcnt() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => 0..=30u32,
        1 => (MAX_PCNT - 3000)..=MAX_PCNT,
        1 => Just(MAX_PCNT),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let cafe = ITEMS;
    let nth = any::<usize>();
    prop_oneof![
        2 => (cafe.clone(), pcnt()).prop_map(|(cafe, pcnt)| Op::Post { cafe, pcnt }),
        2 => (cafe.clone(), pcnt()).prop_map(|(cafe, pcnt)| Op::Put { cafe, pcnt }),
        1 => cafe.clone().prop_map(|cafe| Op::Delete { cafe }),
        6 => (cafe, prop_oneof![6 => 1..=6u32, 1 => 999..=1001u32, 1 => Just(0)])
            .prop_map(|(cafe, qty)| Op::Place { cafe, qty }),
        3 => (nth, any::<bool>()).prop_map(|(nth, by_put)| Op::Cancel { nth, by_put }),
        1 => nth.prop_map(|nth| Op::Register { nth }),
        6 => nth.prop_map(|nth| Op::Deliver { nth }),
        2 => nth.prop_map(|nth| Op::Redeliver { nth }),
        1 => nth.prop_map(|nth| Op::Release { nth }),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Absent,
    /// `total` = `pcnt + held` as the owner last set it.
    Live {
        total: u32,
    },
    Deleted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comp {
    Cafe,
    Order,
}

#[derive(Debug, Clone)]
struct Delivery {
    to: Comp,
    topic: String,
    payload: Vec<u8>,
}

#[derive(Debug, Clone)]
struct OrderModel {
    id: u64,
    cafe: u64,
    qty: u32,
    status: &'static str,
    /// Cafe has released its reservation (the units went back, or with the
    /// item when it was gone).
    released: bool,
}

struct World {
    cafe: MemPlatform,
    order: MemPlatform,
    items: BTreeMap<u64, Life>,
    /// Items whose `cafe.deleted` order has applied.
    order_knows_deleted: BTreeSet<u64>,
    orders: Vec<OrderModel>,
    pending: Vec<Delivery>,
    delivered: Vec<Delivery>,
    /// Final events (`order.canceled`, `order.force-canceled`) per order id.
    final_events: BTreeMap<u64, u32>,
}

impl World {
    fn new() -> World {
        World {
            cafe: MemPlatform::new(),
            order: MemPlatform::new(),
            items: BTreeMap::new(),
            order_knows_deleted: BTreeSet::new(),
            orders: Vec::new(),
            pending: Vec::new(),
            delivered: Vec::new(),
            final_events: BTreeMap::new(),
        }
    }

    fn life(&self, cafe: u64) -> Life {
        self.items.get(&cafe).copied().unwrap_or(Life::Absent)
    }

    /// Units the model says the item holds: its orders not released.
    fn held(&self, cafe: u64) -> u32 {
        self.orders
            .iter()
            .filter(|o| o.cafe == cafe && !o.released)
            .map(|o| o.qty)
            .sum()
    }

    fn documents(&self) -> [BTreeMap<(String, String), Vec<u8>>; 2] {
        [
            self.cafe.snapshot().documents,
            self.order.snapshot().documents,
        ]
    }

    /// Hand what `from` committed to its subscribers; returns the topics.
    fn route(&mut self, from: Comp) -> Vec<String> {
        let p = match from {
            Comp::Cafe => &self.cafe,
            Comp::Order => &self.order,
        };
        let mut topics = Vec::new();
        for e in p.take_published() {
            topics.push(e.topic.clone());
            if matches!(e.topic.as_str(), "order.canceled" | "order.force-canceled") {
                *self.final_events.entry(e.key.parse().unwrap()).or_default() += 1;
            }
            for (to, subscribed) in [
                (Comp::Cafe, cafe::SUBSCRIPTIONS.contains(&e.topic.as_str())),
                (
                    Comp::Order,
                    order::SUBSCRIPTIONS.contains(&e.topic.as_str()),
                ),
            ] {
                if subscribed {
                    self.pending.push(Delivery {
                        to,
                        topic: e.topic.clone(),
                        payload: e.payload.clone(),
                    });
                }
            }
        }
        topics
    }

    fn cafe_http(&mut self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let r = cafe::http(&self.cafe, method, path, "", &body);
        self.cafe.finish(r.status < 400);
        (r.status, serde_json::from_slice(&r.body).unwrap())
    }

    fn order_http(&mut self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        let r = order::http(&self.order, &CafeStock(&self.cafe), method, path, "", &body);
        // One unit of work: cafe's reservation commits with the order or not at all.
        let ok = r.status < 400;
        self.order.finish(ok);
        self.cafe.finish(ok);
        (r.status, serde_json::from_slice(&r.body).unwrap())
    }

    fn deliver(&mut self, d: &Delivery) -> Result<(), kit::EventError> {
        let r = match d.to {
            Comp::Cafe => cafe::event(&self.cafe, &d.topic, &d.payload),
            Comp::Order => order::event_with_sweep_chunk(&self.order, &d.topic, &d.payload, CHUNK),
        };
        match d.to {
            Comp::Cafe => self.cafe.finish(r.is_ok()),
            Comp::Order => self.order.finish(r.is_ok()),
        }
        r
    }

    fn nth_order(&self, nth: usize) -> Option<usize> {
        (!self.orders.is_empty()).then(|| nth % self.orders.len())
    }

    /// Apply `op` to the platforms and the model, asserting what it
    /// answers; returns whether it must have changed nothing at all.
    fn step(&mut self, op: &Op) -> Result<bool, TestCaseError> {
        Ok(match *op {
            Op::Post { cafe, pcnt } => {
                let body = json!({"cafeId": cafe, "cafeNm": "Coldbrew", "chkDate": "20210713", "pcnt": pcnt});
                let (status, v) = self.cafe_http("POST", "/cafes", body);
                let held = self.held(cafe);
                let expect = match self.life(cafe) {
                    Life::Absent => 201,
                    Life::Live { .. }
                        if u64::from(pcnt) + u64::from(held) <= u64::from(MAX_PCNT) =>
                    {
                        200
                    }
                    Life::Live { .. } | Life::Deleted => 409,
                };
                prop_assert_eq!(status, expect, "{:?}: {}", op, v);
                if status < 400 {
                    self.items.insert(cafe, Life::Live { total: pcnt + held });
                }
                self.route(Comp::Cafe);
                status >= 400
            }
            Op::Put { cafe, pcnt } => {
                let (status, v) =
                    self.cafe_http("PUT", &format!("/cafes/{cafe}"), json!({"pcnt": pcnt}));
                let held = self.held(cafe);
                let expect = match self.life(cafe) {
                    Life::Live { .. }
                        if u64::from(pcnt) + u64::from(held) <= u64::from(MAX_PCNT) =>
                    {
                        200
                    }
                    Life::Live { .. } => 409,
                    Life::Absent | Life::Deleted => 404,
                };
                prop_assert_eq!(status, expect, "{:?}: {}", op, v);
                if status == 200 {
                    self.items.insert(cafe, Life::Live { total: pcnt + held });
                }
                self.route(Comp::Cafe);
                status >= 400
            }
            Op::Delete { cafe } => {
                let (status, v) = self.cafe_http("DELETE", &format!("/cafes/{cafe}"), Value::Null);
                let live = matches!(self.life(cafe), Life::Live { .. });
                prop_assert_eq!(status, if live { 200 } else { 404 }, "{:?}: {}", op, v);
                if live {
                    self.items.insert(cafe, Life::Deleted);
                }
                self.route(Comp::Cafe);
                !live
            }
            Op::Place { cafe, qty } => {
                let body = json!({"custNm": "Hwang", "cafeId": cafe, "qty": qty});
                let (status, v) = self.order_http("POST", "/orders", body);
                let expect = if !(1..=1000).contains(&qty) {
                    400
                } else if self.order_knows_deleted.contains(&cafe) {
                    404
                } else {
                    match self.life(cafe) {
                        Life::Live { total } if total - self.held(cafe) >= qty => 201,
                        Life::Live { .. } => 409,
                        Life::Absent | Life::Deleted => 404,
                    }
                };
                prop_assert_eq!(status, expect, "{:?}: {}", op, v);
                if status == 201 {
                    self.orders.push(OrderModel {
                        id: v["id"].as_u64().unwrap(),
                        cafe,
                        qty,
                        status: "REQUESTED",
                        released: false,
                    });
                }
                let topics = self.route(Comp::Order);
                let expected: &[&str] = if status == 201 {
                    &["order.requested"]
                } else {
                    &[]
                };
                prop_assert_eq!(topics, expected);
                status != 201
            }
            Op::Cancel { nth, by_put } => {
                let Some(i) = self.nth_order(nth) else {
                    return Ok(true);
                };
                let o = self.orders[i].clone();
                let (status, v) = if by_put {
                    self.order_http(
                        "PUT",
                        &format!("/orders/{}", o.id),
                        json!({"status": "CANCELED"}),
                    )
                } else {
                    self.order_http("POST", &format!("/orders/{}/cancel", o.id), Value::Null)
                };
                let open = matches!(o.status, "REQUESTED" | "ORDERED");
                let accepted = open && !self.order_knows_deleted.contains(&o.cafe);
                let expect = match o.status {
                    "CANCELED" => 200,
                    _ if accepted => 200,
                    _ => 409,
                };
                prop_assert_eq!(status, expect, "{:?} of {:?}: {}", op, o, v);
                let topics = self.route(Comp::Order);
                if accepted {
                    self.orders[i].status = "CANCELED";
                    prop_assert_eq!(topics, vec!["order.canceled".to_owned()]);
                } else {
                    // Refused, or a repeated cancel: nothing changes, nothing is published.
                    prop_assert!(topics.is_empty(), "{:?} published {:?}", op, topics);
                }
                !accepted
            }
            Op::Register { nth } => {
                let Some(i) = self.nth_order(nth) else {
                    return Ok(true);
                };
                let id = self.orders[i].id;
                let d = Delivery {
                    to: Comp::Order,
                    topic: "production.registered".into(),
                    payload: json!({"orderId": id}).to_string().into_bytes(),
                };
                self.deliver(&d).unwrap();
                let topics = self.route(Comp::Order);
                let moves = self.orders[i].status == "REQUESTED";
                if moves {
                    self.orders[i].status = "ORDERED";
                    prop_assert_eq!(topics, vec!["order.ordered".to_owned()]);
                }
                !moves
            }
            Op::Deliver { nth } => {
                if self.pending.is_empty() {
                    return Ok(true);
                }
                let d = self.pending.remove(nth % self.pending.len());
                self.apply_delivery(&d)?;
                self.delivered.push(d);
                false
            }
            Op::Redeliver { nth } => {
                if self.delivered.is_empty() {
                    return Ok(true);
                }
                let d = self.delivered[nth % self.delivered.len()].clone();
                prop_assert!(
                    self.deliver(&d).is_ok(),
                    "redelivery of {:?} failed",
                    d.topic
                );
                let topics = [self.route(Comp::Cafe), self.route(Comp::Order)].concat();
                prop_assert!(
                    topics.is_empty(),
                    "redelivered {} published {:?}",
                    d.topic,
                    topics
                );
                true
            }
            Op::Release { nth } => {
                let Some(i) = self.nth_order(nth) else {
                    return Ok(true);
                };
                let o = self.orders[i].clone();
                if o.status != "CANCELED" {
                    return Ok(true);
                }
                let r = cafe::stock_release(&self.cafe, &o.id.to_string());
                self.cafe.finish(r.is_ok());
                let live = matches!(self.life(o.cafe), Life::Live { .. });
                prop_assert_eq!(r, Ok(!o.released && live), "{:?} of {:?}", op, o);
                let topics = self.route(Comp::Cafe);
                if o.released {
                    prop_assert!(topics.is_empty(), "a second release published {:?}", topics);
                    true
                } else {
                    self.orders[i].released = true;
                    false
                }
            }
        })
    }

    /// Deliver `d` for the first time and follow it in the model.
    fn apply_delivery(&mut self, d: &Delivery) -> Result<(), TestCaseError> {
        let before: Vec<&'static str> = self.orders.iter().map(|o| o.status).collect();
        let r = self.deliver(d);
        prop_assert!(r.is_ok(), "{:?} failed on {}: {:?}", d.to, d.topic, r);
        let payload: Value = serde_json::from_slice(&d.payload).unwrap();
        match (d.to, d.topic.as_str()) {
            (Comp::Cafe, "order.canceled") => {
                let id = payload["id"].as_u64().unwrap();
                let i = self.orders.iter().position(|o| o.id == id).unwrap();
                let first = !self.orders[i].released;
                self.orders[i].released = true;
                let live = matches!(self.life(self.orders[i].cafe), Life::Live { .. });
                let topics = self.route(Comp::Cafe);
                let expected: &[&str] = if first && live {
                    &["cafe.stock-released"]
                } else {
                    &[]
                };
                prop_assert_eq!(topics, expected, "release of order {}", id);
            }
            (Comp::Order, "cafe.deleted" | "order.cafe-sweep") => {
                let cafe = payload["cafeId"].as_u64().unwrap();
                self.order_knows_deleted.insert(cafe);
                // The sweep force-cancels open orders of the item (some of
                // them: one chunk), nothing else.
                let mut changed = 0;
                for (o, was) in self.orders.iter_mut().zip(before) {
                    let stored = self
                        .order
                        .get_json::<Value>("orders", &keys::id(o.id))
                        .unwrap()
                        .unwrap();
                    let now = stored["status"].as_str().unwrap();
                    if now != was {
                        prop_assert_eq!(
                            o.cafe,
                            cafe,
                            "the sweep of {} changed order {}",
                            cafe,
                            o.id
                        );
                        prop_assert!(matches!(was, "REQUESTED" | "ORDERED"), "{} → {}", was, now);
                        prop_assert_eq!(now, "FORCE_CANCELED");
                        o.status = "FORCE_CANCELED";
                        changed += 1;
                    }
                }
                let topics = self.route(Comp::Order);
                let finals = topics
                    .iter()
                    .filter(|t| *t == "order.force-canceled")
                    .count();
                prop_assert_eq!(
                    finals,
                    changed,
                    "one order.force-canceled per order changed"
                );
            }
            (to, topic) => prop_assert!(false, "unexpected delivery of {} to {:?}", topic, to),
        }
        Ok(())
    }

    /// The invariants of the module doc, in every state.
    fn check(&self) -> Result<(), TestCaseError> {
        for cafe in ITEMS {
            let stored: Option<Value> = self.cafe.get_json("cafes", &keys::id(cafe)).unwrap();
            match self.life(cafe) {
                Life::Live { total } => {
                    let doc = stored.expect("a live item is stored");
                    // The counts are counter documents under the item's key.
                    let count = |collection| {
                        self.cafe
                            .get_json::<u64>(collection, &keys::id(cafe))
                            .unwrap()
                            .unwrap_or(0)
                    };
                    let (pcnt, held) = (count("stock"), count("held"));
                    let item = json!({"item": doc, "pcnt": pcnt, "held": held});
                    prop_assert!(pcnt <= u64::from(MAX_PCNT), "pcnt out of range: {}", item);
                    prop_assert!(pcnt + held <= u64::from(MAX_PCNT), "{}", item);
                    prop_assert_eq!(pcnt + held, u64::from(total), "pcnt + held moved: {}", item);
                    prop_assert_eq!(held, u64::from(self.held(cafe)), "held: {}", item);
                    let r = cafe::http(&self.cafe, "GET", &format!("/cafes/{cafe}"), "", b"");
                    self.cafe.finish(true);
                    let shown: Value = serde_json::from_slice(&r.body).unwrap();
                    prop_assert_eq!(&shown["pcnt"], &item["pcnt"]);
                }
                Life::Absent | Life::Deleted => prop_assert!(stored.is_none()),
            }
        }
        for o in &self.orders {
            let stored: Value = self
                .order
                .get_json("orders", &keys::id(o.id))
                .unwrap()
                .unwrap();
            prop_assert_eq!(stored["status"].as_str(), Some(o.status), "order {}", o.id);
            let r: Value = self
                .cafe
                .get_json("reservations", &o.id.to_string())
                .unwrap()
                .unwrap();
            prop_assert_eq!(
                r["released"].as_bool(),
                Some(o.released),
                "reservation {}",
                o.id
            );
            prop_assert_eq!(r["qty"].as_u64(), Some(u64::from(o.qty)));
        }
        Ok(())
    }

    /// Deliver everything pending (and what that leads to), then check the
    /// end state.
    fn settle(&mut self) -> Result<(), TestCaseError> {
        while !self.pending.is_empty() {
            let d = self.pending.remove(0);
            self.apply_delivery(&d)?;
            self.check()?;
        }
        for o in &self.orders {
            prop_assert_eq!(o.released, o.status == "CANCELED", "order {:?}", o);
            if self.order_knows_deleted.contains(&o.cafe) {
                prop_assert!(
                    !matches!(o.status, "REQUESTED" | "ORDERED"),
                    "{:?} still open",
                    o
                );
            }
            let finals = self.final_events.get(&o.id).copied().unwrap_or(0);
            let finished = matches!(o.status, "CANCELED" | "FORCE_CANCELED");
            prop_assert_eq!(finals, u32::from(finished), "final events of {:?}", o);
        }
        for cafe in ITEMS {
            if let Life::Live { total } = self.life(cafe) {
                let open: u32 = self
                    .orders
                    .iter()
                    .filter(|o| o.cafe == cafe && o.status != "CANCELED")
                    .map(|o| o.qty)
                    .sum();
                let count = |collection| {
                    self.cafe
                        .get_json::<u64>(collection, &keys::id(cafe))
                        .unwrap()
                };
                prop_assert_eq!(count("held"), Some(u64::from(open)));
                prop_assert_eq!(count("stock"), Some(u64::from(total - open)));
            }
        }
        Ok(())
    }
}

/// The steps every case starts with: three live items (one at the bound),
/// three orders of item 1 (more than one sweep chunk) and one of item 2.
fn seed() -> Vec<Op> {
    let mut ops = vec![
        Op::Post { cafe: 1, pcnt: 20 },
        Op::Post { cafe: 2, pcnt: 20 },
        Op::Post {
            cafe: 3,
            pcnt: MAX_PCNT,
        },
    ];
    for cafe in [1, 1, 1, 2] {
        ops.push(Op::Place { cafe, qty: 2 });
    }
    ops
}

proptest! {
    #![proptest_config(props::config())]

    #[test]
    fn stock_and_cancels_keep_their_invariants(ops in prop::collection::vec(op(), 1..48)) {
        let mut w = World::new();
        for op in seed().iter().chain(&ops) {
            let before = w.documents();
            let unchanged = w.step(op)?;
            if unchanged {
                prop_assert!(w.documents() == before, "{:?} changed a document", op);
            }
            w.check()?;
        }
        w.settle()?;
    }
}

//! Property tests of the stock rule: random sequences of owner writes
//! (create, re-POST, PUT of `pcnt`), reservations, releases and deletes,
//! checked against a reference model after every step.
//!
//! Invariants: for every live item `pcnt + held <= MAX_PCNT`, `pcnt` in
//! `0..=MAX_PCNT`, `held` = the units of the item's unreleased reservations,
//! and a refused operation changes nothing (no write, no event).

use std::collections::BTreeMap;

use kit::MemPlatform;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::model::{Item, MAX_PCNT, MAX_QTY};
use crate::{api, events, stock};

#[derive(Debug, Clone)]
enum Op {
    /// `POST /cafes` with this `cafeId` and `pcnt` (create or upsert).
    Post { cafe: u64, pcnt: u32 },
    /// `PUT /cafes/{cafe}` setting `pcnt`.
    Put { cafe: u64, pcnt: u32 },
    /// `stock.reserve` for a new order (or, with `again`, the last order).
    Reserve { cafe: u64, qty: u32, again: bool },
    /// Release the n-th reservation made so far (modulo their number),
    /// through `order.canceled` or directly.
    Release { nth: usize, by_event: bool },
    /// `DELETE /cafes/{cafe}`.
    Delete { cafe: u64 },
}

fn pcnt() -> impl Strategy<Value = u32> {
    prop_oneof![
        0..=50u32,
        (MAX_PCNT - 2500)..=MAX_PCNT,
        Just(MAX_PCNT),
        Just(0),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    let cafe = 1..=2u64;
    prop_oneof![
        2 => (cafe.clone(), pcnt()).prop_map(|(cafe, pcnt)| Op::Post { cafe, pcnt }),
        2 => (cafe.clone(), pcnt()).prop_map(|(cafe, pcnt)| Op::Put { cafe, pcnt }),
        4 => (cafe.clone(), prop_oneof![1..=20u32, 900..=MAX_QTY + 1, Just(0)], any::<bool>())
            .prop_map(|(cafe, qty, again)| Op::Reserve { cafe, qty, again }),
        3 => (any::<usize>(), any::<bool>()).prop_map(|(nth, by_event)| Op::Release { nth, by_event }),
        1 => cafe.prop_map(|cafe| Op::Delete { cafe }),
    ]
}

/// What the item should look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Absent,
    Live { pcnt: u32 },
    Deleted,
}

#[derive(Debug, Clone)]
struct Model {
    items: BTreeMap<u64, Life>,
    /// order id → (cafe, qty, released)
    reservations: BTreeMap<String, (u64, u32, bool)>,
    next_order: u64,
}

impl Model {
    fn life(&self, cafe: u64) -> Life {
        self.items.get(&cafe).copied().unwrap_or(Life::Absent)
    }

    fn held(&self, cafe: u64) -> u32 {
        self.reservations
            .values()
            .filter(|(c, _, released)| *c == cafe && !released)
            .map(|(_, q, _)| q)
            .sum()
    }
}

fn http(p: &MemPlatform, method: &str, path: &str, body: Value) -> u16 {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let r = api::handle(p, method, path, "", body.as_bytes());
    p.finish(r.status < 400);
    r.status
}

/// Apply `op` to the platform and the model; returns whether it was refused.
fn step(p: &MemPlatform, m: &mut Model, op: &Op) -> bool {
    match *op {
        Op::Post { cafe, pcnt } => {
            let body =
                json!({"cafeId": cafe, "cafeNm": "Coldbrew", "chkDate": "20210713", "pcnt": pcnt});
            let status = http(p, "POST", "/cafes", body);
            let expect_ok = match m.life(cafe) {
                Life::Absent => true,
                Life::Live { .. } => {
                    u64::from(pcnt) + u64::from(m.held(cafe)) <= u64::from(MAX_PCNT)
                }
                Life::Deleted => false,
            };
            assert_eq!(status < 400, expect_ok, "{op:?} answered {status}");
            if expect_ok {
                m.items.insert(cafe, Life::Live { pcnt });
            } else {
                // cafe_deleted or pcnt_out_of_range
                assert_eq!(status, 409);
            }
            !expect_ok
        }
        Op::Put { cafe, pcnt } => {
            let status = http(p, "PUT", &format!("/cafes/{cafe}"), json!({ "pcnt": pcnt }));
            let expect = match m.life(cafe) {
                Life::Live { .. }
                    if u64::from(pcnt) + u64::from(m.held(cafe)) <= u64::from(MAX_PCNT) =>
                {
                    200
                }
                Life::Live { .. } => 409,
                _ => 404,
            };
            assert_eq!(status, expect, "{op:?}");
            if expect == 200 {
                m.items.insert(cafe, Life::Live { pcnt });
            }
            expect != 200
        }
        Op::Reserve { cafe, qty, again } => {
            let existing = m
                .reservations
                .iter()
                .next_back()
                .filter(|_| again)
                .map(|(id, r)| (id.clone(), *r));
            let order_id = match &existing {
                Some((id, _)) => id.clone(),
                None => {
                    m.next_order += 1;
                    m.next_order.to_string()
                }
            };
            let r = stock::reserve(p, &order_id, cafe, qty);
            p.finish(r.is_ok());
            let expect_ok = if qty == 0 || qty > MAX_QTY {
                false
            } else if let Some((_, (c, q, released))) = existing {
                // a repeat: same reservation again, nothing taken
                c == cafe && q == qty && !released
            } else {
                matches!(m.life(cafe), Life::Live { pcnt } if pcnt >= qty)
            };
            assert_eq!(r.is_ok(), expect_ok, "{op:?}: {r:?}");
            if expect_ok && existing.is_none() {
                let Life::Live { pcnt } = m.life(cafe) else {
                    unreachable!()
                };
                m.items.insert(cafe, Life::Live { pcnt: pcnt - qty });
                m.reservations.insert(order_id, (cafe, qty, false));
            }
            // a repeat that succeeds changes nothing either
            !expect_ok || existing.is_some()
        }
        Op::Release { nth, by_event } => {
            if m.reservations.is_empty() {
                return true;
            }
            let (order_id, (cafe, qty, released)) = m
                .reservations
                .iter()
                .nth(nth % m.reservations.len())
                .map(|(id, r)| (id.clone(), *r))
                .unwrap();
            if by_event {
                let payload = json!({"id": order_id, "cafeId": cafe, "status": "CANCELED"});
                let r = events::handle(p, "order.canceled", payload.to_string().as_bytes());
                p.finish(r.is_ok());
                r.unwrap();
            } else {
                let r = stock::release(p, &order_id);
                p.finish(r.is_ok());
                let live = matches!(m.life(cafe), Life::Live { .. });
                assert_eq!(r, Ok(!released && live), "{op:?}");
            }
            if !released {
                m.reservations.insert(order_id, (cafe, qty, true));
                if let Life::Live { pcnt } = m.life(cafe) {
                    m.items.insert(cafe, Life::Live { pcnt: pcnt + qty });
                }
                false
            } else {
                true
            }
        }
        Op::Delete { cafe } => {
            let status = http(p, "DELETE", &format!("/cafes/{cafe}"), Value::Null);
            let live = matches!(m.life(cafe), Life::Live { .. });
            assert_eq!(status, if live { 200 } else { 404 }, "{op:?}");
            if live {
                m.items.insert(cafe, Life::Deleted);
            }
            !live
        }
    }
}

fn check(p: &MemPlatform, m: &Model) {
    for cafe in 1..=2u64 {
        let stored: Option<Item> = crate::model::load(p, cafe).unwrap();
        match m.life(cafe) {
            Life::Live { pcnt } => {
                let item = stored.expect("live item stored");
                assert!(item.cafe.pcnt <= MAX_PCNT);
                assert!(
                    u64::from(item.cafe.pcnt) + u64::from(item.held) <= u64::from(MAX_PCNT),
                    "{item:?}"
                );
                assert_eq!(item.held, m.held(cafe), "held = unreleased reservations");
                assert_eq!(item.cafe.pcnt, pcnt, "pcnt as the model says");
            }
            Life::Absent | Life::Deleted => assert!(stored.is_none()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn stock_rule_holds_for_any_sequence(ops in prop::collection::vec(op(), 1..60)) {
        let p = MemPlatform::new();
        let mut m = Model { items: BTreeMap::new(), reservations: BTreeMap::new(), next_order: 0 };
        for op in &ops {
            let before = p.snapshot();
            p.take_published();
            let unchanged = step(&p, &mut m, op);
            if unchanged {
                prop_assert_eq!(&p.snapshot(), &before, "{:?} changed the state", op);
                prop_assert!(p.published().is_empty(), "{:?} published", op);
            }
            check(&p, &m);
        }
    }
}

#[test]
fn a_release_at_the_bound_fits_exactly() {
    let p = MemPlatform::new();
    let mut m = Model {
        items: BTreeMap::new(),
        reservations: BTreeMap::new(),
        next_order: 0,
    };
    for op in [
        Op::Post {
            cafe: 1,
            pcnt: MAX_PCNT,
        },
        Op::Reserve {
            cafe: 1,
            qty: 1000,
            again: false,
        },
        Op::Put {
            cafe: 1,
            pcnt: MAX_PCNT,
        },
        Op::Put {
            cafe: 1,
            pcnt: MAX_PCNT - 1000,
        },
        Op::Release {
            nth: 0,
            by_event: true,
        },
    ] {
        step(&p, &mut m, &op);
        check(&p, &m);
    }
    assert_eq!(m.life(1), Life::Live { pcnt: MAX_PCNT });
}

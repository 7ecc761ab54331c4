//! The unit of work: what one HTTP request or one delivered event has read and
//! wants to write. Nothing reaches the backend until `Backend::commit`, which
//! applies it all-or-nothing after checking that nothing read has changed.

use std::collections::{BTreeMap, HashMap};

/// Address of one document: the owning component's namespace, a collection, a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocKey {
    pub ns: String,
    pub collection: String,
    pub key: String,
}

impl DocKey {
    pub fn new(ns: &str, collection: &str, key: &str) -> Self {
        Self {
            ns: ns.to_owned(),
            collection: collection.to_owned(),
            key: key.to_owned(),
        }
    }
}

/// An event to append to the log when the unit commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub topic: String,
    pub key: String,
    pub payload: Vec<u8>,
    /// The component that published it.
    pub source: String,
    /// The request (and span) its chain started with; stored with the event.
    pub trace: crate::trace::TraceContext,
}

/// Buffered effects of one invocation (and of the synchronous calls it made).
///
/// Cloned to fork a nested call (order → cafe's `stock`); the fork replaces
/// the parent only if the nested call succeeds, so a failing callee leaves no
/// trace in the caller's unit.
#[derive(Debug, Clone, Default)]
pub struct UnitOfWork {
    /// Version seen for every document read (0 = absent). Checked at commit.
    reads: HashMap<DocKey, u64>,
    /// Latest buffered value per document; `None` deletes.
    writes: BTreeMap<DocKey, Option<Vec<u8>>>,
    /// Pending counter additions (`store.add`), applied at commit to
    /// whatever the document then holds. Never for a key in `writes`: a
    /// write absorbs additions made after it and replaces earlier ones.
    adds: BTreeMap<DocKey, Add>,
    /// Events in publish order.
    events: Vec<NewEvent>,
}

/// One counter's pending addition: the sum of the unit's deltas, and the
/// value the result must not go below (the highest floor asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Add {
    pub delta: i64,
    pub floor: i64,
}

/// A counter document's value: decimal integer text; absent or deleted is 0.
pub fn counter_value(value: Option<&[u8]>) -> Result<i64, String> {
    let Some(bytes) = value else { return Ok(0) };
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .ok_or_else(|| {
            format!(
                "the document holds {:?}, not an integer",
                String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
            )
        })
}

/// How a counter document stores `value`.
pub fn counter_bytes(value: i64) -> Vec<u8> {
    value.to_string().into_bytes()
}

/// What the backend must apply atomically.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub reads: Vec<(DocKey, u64)>,
    pub writes: Vec<(DocKey, Option<Vec<u8>>)>,
    /// Counter additions, checked against their floor and applied at commit
    /// (no key here is also in `writes`).
    pub adds: Vec<(DocKey, Add)>,
    pub events: Vec<NewEvent>,
}

impl Changes {
    /// True when committing would change nothing but verify reads.
    pub fn is_write_free(&self) -> bool {
        self.writes.is_empty() && self.adds.is_empty() && self.events.is_empty()
    }
}

impl UnitOfWork {
    /// The buffered value if this unit wrote `key` (`Some(None)` = deleted here).
    pub fn buffered(&self, key: &DocKey) -> Option<Option<&[u8]>> {
        self.writes.get(key).map(|v| v.as_deref())
    }

    /// Remember the version a read observed; the first observation wins, so a
    /// change between two reads of one unit is still caught at commit.
    pub fn record_read(&mut self, key: DocKey, version: u64) {
        self.reads.entry(key).or_insert(version);
    }

    pub fn put(&mut self, key: DocKey, value: Vec<u8>) {
        self.adds.remove(&key);
        self.writes.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: DocKey) {
        self.adds.remove(&key);
        self.writes.insert(key, None);
    }

    /// The unit's pending addition to counter `key`, if any.
    pub fn pending_add(&self, key: &DocKey) -> Option<Add> {
        self.adds.get(key).copied()
    }

    /// Add `delta` to counter `key`, whose committed value is `committed`
    /// (ignored when the unit wrote the key itself). Returns the value
    /// after the addition as the unit sees it, or `Err(value now)` when it
    /// would go below `floor` (nothing buffered). A key the unit wrote
    /// becomes a plain write of the new value.
    pub fn add(
        &mut self,
        key: DocKey,
        committed: i64,
        delta: i64,
        floor: i64,
    ) -> Result<Result<i64, i64>, String> {
        if let Some(buffered) = self.writes.get(&key) {
            let now = counter_value(buffered.as_deref())?;
            let next = now
                .checked_add(delta)
                .ok_or_else(|| format!("{now} + {delta} overflows"))?;
            if next < floor {
                return Ok(Err(now));
            }
            self.writes.insert(key, Some(counter_bytes(next)));
            return Ok(Ok(next));
        }
        let pending = self.adds.get(&key).copied();
        let sum = pending.map_or(0, |a| a.delta);
        let now = committed
            .checked_add(sum)
            .ok_or_else(|| format!("{committed} + {sum} overflows"))?;
        let next = now
            .checked_add(delta)
            .ok_or_else(|| format!("{now} + {delta} overflows"))?;
        if next < floor {
            return Ok(Err(now));
        }
        let add = Add {
            delta: sum + delta,
            floor: pending.map_or(floor, |a| a.floor.max(floor)),
        };
        self.adds.insert(key, add);
        Ok(Ok(next))
    }

    /// Pending additions of one collection, to overlay on a backend listing.
    pub fn adds_in<'a>(
        &'a self,
        ns: &'a str,
        collection: &'a str,
    ) -> impl Iterator<Item = (&'a str, Add)> + 'a {
        self.adds
            .iter()
            .filter(move |(k, _)| k.ns == ns && k.collection == collection)
            .map(|(k, a)| (k.key.as_str(), *a))
    }

    pub fn publish(&mut self, event: NewEvent) {
        self.events.push(event);
    }

    /// Buffered writes of one collection, to overlay on a backend listing.
    pub fn writes_in<'a>(
        &'a self,
        ns: &'a str,
        collection: &'a str,
    ) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        self.writes
            .iter()
            .filter(move |(k, _)| k.ns == ns && k.collection == collection)
            .map(|(k, v)| (k.key.as_str(), v.as_deref()))
    }

    /// Consume the unit into what the backend applies.
    pub fn into_changes(self) -> Changes {
        Changes {
            reads: self.reads.into_iter().collect(),
            writes: self.writes.into_iter().collect(),
            adds: self.adds.into_iter().collect(),
            events: self.events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_observed_version_is_the_one_checked() {
        let mut uow = UnitOfWork::default();
        let key = DocKey::new("cafe", "cafes", "1");
        uow.record_read(key.clone(), 3);
        uow.record_read(key.clone(), 4);
        assert_eq!(uow.into_changes().reads, vec![(key, 3)]);
    }

    #[test]
    fn a_later_write_replaces_an_earlier_one() {
        let mut uow = UnitOfWork::default();
        let key = DocKey::new("order", "orders", "1");
        uow.put(key.clone(), b"a".to_vec());
        uow.delete(key.clone());
        assert_eq!(uow.buffered(&key), Some(None));
        uow.put(key.clone(), b"b".to_vec());
        assert_eq!(uow.into_changes().writes, vec![(key, Some(b"b".to_vec()))]);
    }

    #[test]
    fn additions_sum_up_and_refuse_to_pass_the_floor() {
        let mut uow = UnitOfWork::default();
        let key = DocKey::new("cafe", "stock", "1");
        assert_eq!(uow.add(key.clone(), 5, -3, 0), Ok(Ok(2)));
        assert_eq!(uow.add(key.clone(), 5, -3, 0), Ok(Err(2)), "2 - 3 < 0");
        assert_eq!(uow.add(key.clone(), 5, 10, -100), Ok(Ok(12)));
        let changes = uow.into_changes();
        assert!(changes.writes.is_empty());
        assert_eq!(changes.adds, vec![(key, Add { delta: 7, floor: 0 })]);
    }

    #[test]
    fn a_written_counter_takes_additions_as_a_plain_write() {
        let mut uow = UnitOfWork::default();
        let key = DocKey::new("cafe", "stock", "1");
        uow.add(key.clone(), 5, 1, 0)
            .expect("integer")
            .expect("above floor");
        uow.put(key.clone(), b"10".to_vec());
        assert_eq!(
            uow.add(key.clone(), 99, -4, 0),
            Ok(Ok(6)),
            "the write wins over the committed 99"
        );
        uow.delete(key.clone());
        assert_eq!(
            uow.add(key.clone(), 99, -1, 0),
            Ok(Err(0)),
            "deleted counts as 0"
        );
        let changes = uow.into_changes();
        assert!(changes.adds.is_empty());
        assert_eq!(changes.writes, vec![(key, None)]);
    }

    #[test]
    fn a_non_integer_document_is_no_counter() {
        assert_eq!(counter_value(Some(b" 42 ")), Ok(42));
        assert_eq!(counter_value(None), Ok(0));
        assert!(counter_value(Some(b"{\"pcnt\":1}")).is_err());
    }
}

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
    /// Events in publish order.
    events: Vec<NewEvent>,
}

/// What the backend must apply atomically.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub reads: Vec<(DocKey, u64)>,
    pub writes: Vec<(DocKey, Option<Vec<u8>>)>,
    pub events: Vec<NewEvent>,
}

impl Changes {
    /// True when committing would change nothing but verify reads.
    pub fn is_write_free(&self) -> bool {
        self.writes.is_empty() && self.events.is_empty()
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
        self.writes.insert(key, Some(value));
    }

    pub fn delete(&mut self, key: DocKey) {
        self.writes.insert(key, None);
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
}

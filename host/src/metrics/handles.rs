//! Metric handles found by their label values, without building a label
//! set. A family's `get_or_create` takes an owned label set: per request
//! that was seven `String`s, a `format!` and three SipHashes of the whole
//! set (~2 % of a `GET /cafes/{id}`'s CPU). Here a handle is looked up by
//! borrowed `&str`s and the family is asked only the first time a pair of
//! values is seen; the handle shares its series with the family, so the
//! exposition is unchanged.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

/// Handles by first label value, then by second.
type Nested<M> = HashMap<Box<str>, HashMap<Box<str>, M>>;

/// Handles of one metric (or a group of them) by two label values.
pub(super) struct ByPair<M> {
    map: RwLock<Nested<M>>,
}

impl<M> Default for ByPair<M> {
    fn default() -> Self {
        Self {
            map: RwLock::default(),
        }
    }
}

impl<M> ByPair<M> {
    /// Run `f` on the handle of `(a, b)`, made by `make` the first time.
    /// The label values are bounded where they are made (component names,
    /// route templates, fixed outcomes), so the map is too.
    pub(super) fn with<R>(
        &self,
        a: &str,
        b: &str,
        make: impl FnOnce() -> M,
        f: impl FnOnce(&M) -> R,
    ) -> R {
        {
            let map = self.map.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(m) = map.get(a).and_then(|inner| inner.get(b)) {
                return f(m);
            }
        }
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let m = map
            .entry(a.into())
            .or_default()
            .entry(b.into())
            .or_insert_with(make);
        f(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_is_made_once_and_found_after() {
        let handles: ByPair<u32> = ByPair::default();
        let mut made = 0;
        for _ in 0..3 {
            let v = handles.with(
                "cafe",
                "/cafes/:id",
                || {
                    made += 1;
                    7
                },
                |v| *v,
            );
            assert_eq!(v, 7);
        }
        assert_eq!(made, 1);
        let other = handles.with("cafe", "/cafes", || 8, |v| *v);
        assert_eq!(other, 8, "another second value is another handle");
        let other = handles.with("order", "/cafes/:id", || 9, |v| *v);
        assert_eq!(other, 9, "another first value is another handle");
    }
}

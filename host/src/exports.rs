//! The exports already looked up on one instance, kept with it while it is
//! reused.
//!
//! A generated `GuestIndices::load` finds an export on the instance and
//! type-checks each of its functions (`get_typed_func`): ~2 % of the host's
//! CPU for a `GET /cafes/{id}`, paid on every call. The `Guest` it returns
//! is valid for as long as its instance, so an instance from a reuse pool
//! keeps the ones it has loaded and serves its next calls with them. They
//! belong to that instance's store: the cache travels with the store and
//! the instance in [`crate::pool::Pooled`] and is dropped with them.

use std::any::{Any, TypeId};

/// Loaded export handles of one instance, one per type (a bindgen `Guest`
/// per exported interface: `http-handler`, `event-handler`, `stock`, ...).
#[derive(Default)]
pub struct LoadedExports(Vec<(TypeId, Box<dyn Any + Send + Sync>)>);

impl LoadedExports {
    /// The handle of type `G` loaded earlier on this instance.
    pub fn get<G: Clone + 'static>(&self) -> Option<G> {
        self.0
            .iter()
            .find(|(id, _)| *id == TypeId::of::<G>())
            .and_then(|(_, guest)| guest.downcast_ref::<G>())
            .cloned()
    }

    /// Keep `guest`, loaded on this instance, for its next calls.
    pub fn insert<G: Send + Sync + 'static>(&mut self, guest: G) {
        let id = TypeId::of::<G>();
        self.0.retain(|(have, _)| *have != id);
        self.0.push((id, Box::new(guest)));
    }
}

#[cfg(test)]
mod tests {
    use super::LoadedExports;

    #[derive(Clone, Debug, PartialEq)]
    struct Http(u32);
    #[derive(Clone, Debug, PartialEq)]
    struct Events(u32);

    #[test]
    fn each_export_type_is_kept_once_and_found_by_its_type() {
        let mut cache = LoadedExports::default();
        assert_eq!(cache.get::<Http>(), None, "nothing loaded yet");
        cache.insert(Http(1));
        cache.insert(Events(2));
        assert_eq!(cache.get::<Http>(), Some(Http(1)));
        assert_eq!(cache.get::<Events>(), Some(Events(2)));
        cache.insert(Http(3));
        assert_eq!(cache.get::<Http>(), Some(Http(3)), "a reload replaces it");
        assert_eq!(cache.0.len(), 2);
    }
}

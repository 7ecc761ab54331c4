//! Component → component calls: order's `stock` import is satisfied by
//! running the live provider (cafe) in its own `Store`, inside the caller's
//! unit of work. The provider's writes join the caller's unit only when the
//! call succeeds; a refusal, trap or timeout leaves nothing behind.

use std::sync::Arc;
use std::time::Instant;

use wasmtime::Store;

use crate::bindings::sktarbucks::platform::stock;
use crate::bindings::{Reservation, StockError, stock_export};
use crate::invoke::{Failure, bounded, instantiate, new_store};
use crate::registry::Loaded;
use crate::state::HostState;

/// Deepest chain of synchronous calls (guards against link cycles).
const MAX_DEPTH: u8 = 4;

/// A provider instance ready to be called.
struct Provider {
    store: Store<HostState>,
    guest: stock_export::Guest,
    deadline: Instant,
    budget: std::time::Duration,
}

impl HostState {
    async fn open_provider(&mut self, iface: &str) -> Result<Provider, StockError> {
        if self.depth >= MAX_DEPTH {
            return Err(StockError::Unavailable(format!(
                "synchronous call chain deeper than {MAX_DEPTH}"
            )));
        }
        let Some(name) = self.component.config.links.get(iface) else {
            return Err(StockError::Unavailable(format!(
                "component {:?} has no `{iface}` provider linked in the manifest",
                self.component.name
            )));
        };
        let Some(provider) = self.rt.registry.get(name) else {
            return Err(StockError::Unavailable(format!(
                "{iface} provider {name:?} is not loaded"
            )));
        };
        let Some(indices) = &provider.exports.stock else {
            return Err(StockError::Unavailable(format!(
                "component {name:?} does not export `{iface}`"
            )));
        };
        let budget = provider.config.deadline();
        let deadline = self.deadline.min(Instant::now() + budget);
        // The callee works on a fork of the caller's unit: it reads the
        // caller's writes, and its own become the caller's only on success.
        let mut store = new_store(
            &self.rt,
            &provider,
            self.uow.clone(),
            deadline,
            self.depth + 1,
        );
        // The unit's limits span the whole call chain.
        store.data_mut().inherit_budget(self);
        let opened = bounded(deadline, budget, async {
            let instance = instantiate(&mut store, &provider, budget).await?;
            indices
                .load(&mut store, &instance)
                .map_err(|e| Failure::Missing(format!("{iface} ({e})")))
        })
        .await;
        match opened {
            Ok(guest) => Ok(Provider {
                store,
                guest,
                deadline,
                budget,
            }),
            Err(failure) => Err(unavailable(&provider, &failure)),
        }
    }

    /// Keep the provider's effects if it answered `Ok`.
    fn join<T>(
        &mut self,
        provider: Provider,
        result: Result<Result<T, StockError>, Failure>,
        name: &Arc<Loaded>,
    ) -> Result<T, StockError> {
        match result {
            Ok(Ok(value)) => {
                let callee = provider.store.into_data();
                self.inherit_budget(&callee);
                self.uow = callee.uow;
                Ok(value)
            }
            Ok(Err(refusal)) => Err(refusal),
            Err(failure) => Err(unavailable(name, &failure)),
        }
    }
}

fn unavailable(provider: &Loaded, failure: &Failure) -> StockError {
    tracing::warn!(component = %provider.name, reason = %failure, "synchronous call failed");
    StockError::Unavailable(format!("{} {failure}", provider.name))
}

impl stock::Host for HostState {
    async fn reserve(
        &mut self,
        order_id: String,
        cafe_id: u64,
        qty: u32,
    ) -> wasmtime::Result<Result<Reservation, StockError>> {
        let mut provider = match self.open_provider("stock").await {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let loaded = Arc::clone(&provider.store.data().component);
        let (deadline, budget) = (provider.deadline, provider.budget);
        let result = bounded(deadline, budget, async {
            match provider
                .guest
                .call_reserve(&mut provider.store, &order_id, cafe_id, qty)
                .await
            {
                Ok(r) => Ok(r),
                Err(err) => Err(Failure::from_call(err, provider.store.data(), budget)),
            }
        })
        .await;
        Ok(self.join(provider, result, &loaded))
    }

    async fn release(&mut self, order_id: String) -> wasmtime::Result<Result<bool, StockError>> {
        let mut provider = match self.open_provider("stock").await {
            Ok(p) => p,
            Err(e) => return Ok(Err(e)),
        };
        let loaded = Arc::clone(&provider.store.data().component);
        let (deadline, budget) = (provider.deadline, provider.budget);
        let result = bounded(deadline, budget, async {
            match provider
                .guest
                .call_release(&mut provider.store, &order_id)
                .await
            {
                Ok(r) => Ok(r),
                Err(err) => Err(Failure::from_call(err, provider.store.data(), budget)),
            }
        })
        .await;
        Ok(self.join(provider, result, &loaded))
    }
}

//! Component → component calls: order's `stock` import is satisfied by
//! running the live provider (cafe) in its own `Store` (a reused instance
//! from the provider's pool when it opted in), inside the caller's unit of
//! work. The provider's writes join the caller's unit only when the
//! call succeeds; a refusal, trap or timeout leaves nothing behind.

use std::sync::Arc;

use tracing::Instrument;
use wasmtime::Store;

use crate::bindings::{Reservation, StockError, stock_export};
use crate::guard::{Admitted, Refusal};
use crate::invoke::{self, Env, Failure, Invocation, Origin, within};
use crate::pool::Retire;
use crate::state::{HostState, Links};
use crate::trace::{info_or_debug, micros};

/// Deepest chain of synchronous calls (guards against link cycles).
const MAX_DEPTH: u8 = 4;

/// A provider instance ready to be called, admitted by its guards.
struct Provider {
    inv: Invocation,
    guest: stock_export::Guest,
    /// The provider's own concurrency slot and breaker.
    component: Admitted,
    /// The breaker of this link (caller → provider).
    link: Admitted,
}

/// Open the provider `caller` links `iface` to: its live version as of now
/// (a swap mid-call does not change the version this call uses).
async fn open_provider(
    env: &Arc<Env>,
    caller: &mut HostState,
    iface: &str,
) -> Result<Provider, StockError> {
    if caller.depth >= MAX_DEPTH {
        return Err(StockError::Unavailable(format!(
            "synchronous call chain deeper than {MAX_DEPTH}"
        )));
    }
    let Some(name) = caller.identity.links.get(iface) else {
        return Err(StockError::Unavailable(format!(
            "component {:?} has no `{iface}` provider linked in the manifest",
            caller.identity.name
        )));
    };
    let Some(provider) = env.registry.get(name) else {
        return Err(StockError::Unavailable(format!(
            "{iface} provider {name:?} is not loaded"
        )));
    };
    let Some(indices) = &provider.exports.stock else {
        return Err(StockError::Unavailable(format!(
            "component {name:?} does not export `{iface}`"
        )));
    };
    let limits = &provider.config.limits;
    let refused = |what: &str, r: Refusal| {
        StockError::Unavailable(match r {
            Refusal::Open(d) => format!(
                "{name} is not taking calls: the {what} circuit breaker is open (retry in {} ms)",
                d.as_millis()
            ),
            Refusal::Busy(d) => format!(
                "{name} is at its concurrency limit (waited {} ms)",
                d.as_millis()
            ),
        })
    };
    let link = env
        .guards
        .link(&caller.identity.name, name, limits)
        .admit_breaker()
        .map_err(|r| refused("link", r))?;
    let component = env
        .guards
        .component(name, limits)
        .admit()
        .await
        .map_err(|r| refused(name, r))?;
    // The callee works on a fork of the caller's unit: it reads the
    // caller's writes, and its own become the caller's only on success.
    // Its span is a child of the caller's: one trace, one request id.
    let origin = Origin {
        span: invoke::span(&caller.span, &provider, caller.attempt, Some(iface)),
        trace: caller.trace.clone(),
        attempt: caller.attempt,
        depth: caller.depth + 1,
    };
    let mut inv = Invocation::start(
        env,
        &provider,
        caller.uow.clone(),
        Some(caller.deadline),
        origin,
    );
    // The unit's limits span the whole call chain.
    inv.store.data_mut().inherit_budget(caller.budget());
    let span = inv.span();
    match inv
        .open(&provider, iface, |s, i| indices.load(s, i))
        .instrument(span.clone())
        .await
    {
        Ok(guest) => Ok(Provider {
            inv,
            guest,
            component,
            link,
        }),
        Err(failure) => {
            let failure = inv.retire(failure);
            component.finish(false);
            link.finish(false);
            let request_id = caller.trace.request_id_field(&span);
            tracing::info!(parent: &span, outcome = %"failed", ran = invoke::unspanned(&provider.name, &provider.digest), request_id, "linked call finished");
            Err(unavailable(&provider.name, &failure, request_id))
        }
    }
}

impl HostState {
    /// Await a call on `provider` and keep its effects if it answered `Ok`.
    async fn finish<T>(
        &mut self,
        mut provider: Provider,
        call: impl AsyncFnOnce(
            &stock_export::Guest,
            &mut Store<HostState>,
        ) -> wasmtime::Result<Result<T, StockError>>,
    ) -> Result<T, StockError> {
        let deadline = provider.inv.deadline();
        let started = std::time::Instant::now();
        let span = provider.inv.span();
        let outcome = within(deadline, call(&provider.guest, &mut provider.inv.store))
            .instrument(span.clone())
            .await;
        let provider_name = provider.inv.store.data().identity.name.clone();
        let link = format!("{}->{provider_name}", self.identity.name);
        let label = match &outcome {
            Ok(Ok(_)) => "ok",
            Ok(Err(_)) => "refused",
            Err(_) => "failed",
        };
        // An answered call is detail of its request (`debug`); a failed one
        // gets its own line.
        let identity = &provider.inv.store.data().identity;
        info_or_debug!(
            label == "failed",
            parent: &span,
            outcome = %label,
            us = micros(started),
            ran = invoke::unspanned(&identity.name, &identity.digest),
            request_id = self.trace.request_id_field(&span),
            "linked call finished"
        );
        let metrics = &self.metrics;
        metrics
            .link_calls
            .get_or_create(&crate::metrics::LinkLabels {
                link,
                outcome: label.to_owned(),
            })
            .inc();
        metrics
            .link_seconds
            .get_or_create(&crate::metrics::ComponentLabels {
                component: provider_name,
            })
            .observe(started.elapsed().as_secs_f64());
        let failed = matches!(
            &outcome,
            Err(e) if !e.is::<crate::backend::BackendUnavailable>()
        );
        if failed {
            provider.component.finish(false);
            provider.link.finish(false);
        } else {
            provider.component.finish(true);
            provider.link.finish(true);
        }
        match outcome {
            Ok(Ok(value)) => {
                // The provider's instance goes back to its pool (if it opted
                // in) with its host state wiped: the fork of the caller's
                // unit now lives only here.
                let (uow, budget) = provider.inv.end(Ok(()));
                self.inherit_budget(budget);
                self.uow = uow;
                Ok(value)
            }
            Ok(Err(refusal)) => {
                provider.inv.end(Err(Retire::ErrorResponse));
                Err(refusal)
            }
            Err(e) => {
                let name = provider.inv.store.data().identity.name.clone();
                let failure = provider.inv.fail(e);
                Err(unavailable(
                    &name,
                    &failure,
                    self.trace.request_id_field(&span),
                ))
            }
        }
    }
}

/// Log why a linked call failed (`request_id`: when no span carries it)
/// and say so to the caller.
fn unavailable(
    provider: &str,
    failure: &Failure,
    request_id: Option<tracing::field::DisplayValue<&str>>,
) -> StockError {
    tracing::warn!(component = %provider, reason = %failure, request_id, "synchronous call failed");
    StockError::Unavailable(format!("{provider} {failure}"))
}

#[async_trait::async_trait]
impl Links for Env {
    async fn reserve(
        self: Arc<Self>,
        caller: &mut HostState,
        order_id: String,
        cafe_id: u64,
        qty: u32,
    ) -> Result<Reservation, StockError> {
        let provider = open_provider(&self, caller, "stock").await?;
        caller
            .finish(provider, async |guest, store| {
                guest.call_reserve(store, &order_id, cafe_id, qty).await
            })
            .await
    }

    async fn release(
        self: Arc<Self>,
        caller: &mut HostState,
        order_id: String,
    ) -> Result<bool, StockError> {
        let provider = open_provider(&self, caller, "stock").await?;
        caller
            .finish(provider, async |guest, store| {
                guest.call_release(store, &order_id).await
            })
            .await
    }
}

//! Mirrors of the WIT `stock` types, shared by cafe (which implements the
//! interface) and order (which calls it), so both test natively.

/// A successful reservation (WIT `reservation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    pub order_id: String,
    pub cafe_id: u64,
    pub cafe_nm: String,
    pub chk_date: String,
    pub qty: u32,
    /// Units left after this reservation.
    pub remaining: u32,
}

/// Why a stock call was refused (WIT `stock-error`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StockFailure {
    /// No such item (never existed or deleted).
    NotFound(String),
    /// Fewer units left than asked for; carries the units available.
    SoldOut(u32),
    /// Bad arguments.
    Invalid(String),
    /// The provider failed; nothing was reserved.
    Unavailable(String),
}

impl From<crate::StoreError> for StockFailure {
    fn from(e: crate::StoreError) -> StockFailure {
        StockFailure::Unavailable(e.to_string())
    }
}

/// The caller's side of `stock` (order implements it over its import).
pub trait Stock {
    /// Take `qty` units of `cafe_id` for `order_id` (idempotent per order).
    fn reserve(&self, order_id: &str, cafe_id: u64, qty: u32) -> Result<Reserved, StockFailure>;
}

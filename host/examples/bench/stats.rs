//! Percentiles and medians.

use serde::Serialize;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Percentiles {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    pub fn of(mut values: Vec<f64>) -> Self {
        values.sort_by(f64::total_cmp);
        let at = |p: f64| {
            if values.is_empty() {
                return f64::NAN;
            }
            // Nearest rank: the smallest value with at least p of the values at or below it.
            let rank = (p * values.len() as f64).ceil() as usize;
            values[rank.clamp(1, values.len()) - 1]
        };
        Self {
            n: values.len(),
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: values.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Median (mean of the middle two for an even count); NaN when empty.
pub fn median(values: impl IntoIterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.into_iter().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

//! Envoy's fractional percentages as parts per million, and the draw
//! against one.

use legate_api::pb::envoy::r#type::v3::{fractional_percent::DenominatorType, FractionalPercent};

/// A probability in parts per million; `None` (unset) is 100 %.
pub fn per_million(p: Option<&FractionalPercent>) -> u32 {
    let Some(p) = p else { return 1_000_000 };
    let scale = match DenominatorType::try_from(p.denominator).unwrap_or(DenominatorType::Hundred) {
        DenominatorType::Hundred => 10_000,
        DenominatorType::TenThousand => 100,
        DenominatorType::Million => 1,
    };
    p.numerator.saturating_mul(scale).min(1_000_000)
}

/// True with the given probability (no draw at 100 %).
pub fn roll(per_million: u32) -> bool {
    per_million >= 1_000_000 || (per_million > 0 && rand::random_range(0..1_000_000) < per_million)
}

//! Small statistical helpers shared by the other modules.
//!
//! Invariants: every function here is total — it returns a finite number for any finite
//! input (and documents what it does at the edges) and never panics.

/// Inverse of the standard normal CDF, `z` such that `P(Z ≤ z) = p`.
///
/// Peter J. Acklam's rational approximation (relative error below 1.15e-9 over the whole
/// open interval). `p` is clamped to `[1e-12, 1 - 1e-12]`, so the result is always finite
/// (|z| ≤ 7.03); `NaN` is treated as 0.5.
pub fn inverse_normal_cdf(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const P_LOW: f64 = 0.024_25;
    let p = if p.is_nan() {
        0.5
    } else {
        p.clamp(1e-12, 1.0 - 1e-12)
    };
    if p < P_LOW {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - P_LOW {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        let q = (-2.0 * (1.0 - p).ln()).sqrt();
        -(((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    }
}

/// The `z` of a two-sided central prediction interval with coverage `level` (e.g. 0.8 →
/// 1.2816): `inverse_normal_cdf((1 + level) / 2)`. `level` is clamped to `[0, 1)`.
pub fn two_sided_z(level: f64) -> f64 {
    let level = if level.is_nan() {
        0.0
    } else {
        level.clamp(0.0, 1.0 - 1e-12)
    };
    inverse_normal_cdf(0.5 + level / 2.0)
}

/// The RMSSE denominator of the M5 competition: the mean squared one-step naive difference
/// `mean((y[t] - y[t-1])²)` over the in-sample, counted from the first non-zero value (as
/// in M5, so that leading zeros before a product's launch do not shrink the scale).
///
/// Returns `None` when there are fewer than two values from the first non-zero one, or
/// when that mean is zero (a constant in-sample), since RMSSE is then undefined.
pub fn naive_mse_scale(in_sample: &[f64]) -> Option<f64> {
    let first = in_sample.iter().position(|&y| y != 0.0)?;
    let active = &in_sample[first..];
    if active.len() < 2 {
        return None;
    }
    let sum: f64 = active
        .windows(2)
        .map(|w| (w[1] - w[0]) * (w[1] - w[0]))
        .sum();
    let scale = sum / (active.len() - 1) as f64;
    (scale > 0.0 && scale.is_finite()).then_some(scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn inverse_normal_matches_published_quantiles() {
        // Reference quantiles of N(0,1) (any statistics table, 6 decimals).
        let table = [
            (0.5, 0.0),
            (0.8, 0.841_621),
            (0.9, 1.281_552),
            (0.95, 1.644_854),
            (0.975, 1.959_964),
            (0.99, 2.326_348),
            (0.999, 3.090_232),
            (0.01, -2.326_348),
            (0.001, -3.090_232),
            (1e-6, -4.753_424),
        ];
        for (p, z) in table {
            assert!(
                close(inverse_normal_cdf(p), z, 1e-6),
                "z({p}) = {}",
                inverse_normal_cdf(p)
            );
        }
    }

    #[test]
    fn inverse_normal_is_total_and_antisymmetric() {
        for p in [0.0, 1.0, -3.0, 7.0, f64::NAN] {
            assert!(inverse_normal_cdf(p).is_finite());
        }
        for p in [0.001, 0.02, 0.3, 0.49] {
            assert!(close(
                inverse_normal_cdf(p),
                -inverse_normal_cdf(1.0 - p),
                1e-9
            ));
        }
    }

    #[test]
    fn two_sided_z_for_80_and_95_percent() {
        assert!(close(two_sided_z(0.8), 1.281_552, 1e-6));
        assert!(close(two_sided_z(0.95), 1.959_964, 1e-6));
        assert_eq!(two_sided_z(0.0), 0.0);
    }

    #[test]
    fn naive_scale_skips_leading_zeros() {
        // From the first non-zero: [2, 4, 1] → diffs 2, -3 → (4 + 9) / 2 = 6.5.
        assert_eq!(naive_mse_scale(&[0.0, 0.0, 2.0, 4.0, 1.0]), Some(6.5));
        assert_eq!(naive_mse_scale(&[0.0, 0.0]), None);
        assert_eq!(naive_mse_scale(&[3.0, 3.0, 3.0]), None);
        assert_eq!(naive_mse_scale(&[]), None);
    }
}

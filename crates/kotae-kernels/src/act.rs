//! Element-wise functions that candle computes one libm call at a time: written here as
//! branch-free polynomials the compiler vectorizes (errors ≲ 2e-7, far below the 8-bit rounding
//! of the products around them).

use rayon::prelude::*;

/// e^x for x in [-87, 88] (clamped outside): x = n·ln 2 + r, e^r by a degree-6 polynomial,
/// 2^n put into the exponent bits. Relative error < 2e-7.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let x = x.clamp(-87.0, 88.0);
    let n = (x * std::f32::consts::LOG2_E).round();
    // ln 2 in two parts, so that r is exact.
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (0.166_666_67 + r * (0.041_666_4 + r * (0.008_333_6 + r * 0.001_394_3)))));
    // 2^n: n + 127 as an integer via the bits of (n + 127 + 2^23), a bit cast that vectorizes
    // (`as i32` saturates and does not).
    let biased = (n + 127.0 + 8_388_608.0).to_bits() - 0x4B00_0000;
    p * f32::from_bits(biased << 23)
}

/// erf by Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7).
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = t * (0.254_829_6 + t * (-0.284_496_74 + t * (1.421_413_7 + t * (-1.453_152_1 + t * 1.061_405_4))));
    let y = 1.0 - poly * exp(-a * a);
    y.copysign(x)
}

/// GELU with the exact (erf) form, in place: x · (1 + erf(x / √2)) / 2.
pub fn gelu_erf(xs: &mut [f32]) {
    let f = |c: &mut [f32]| {
        for x in c.iter_mut() {
            *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2));
        }
    };
    if xs.len() >= 1 << 15 {
        xs.par_chunks_mut(1 << 13).for_each(f);
    } else {
        f(xs);
    }
}

/// Softmax of each row of `cols` values, in place.
pub fn softmax_rows(xs: &mut [f32], cols: usize) {
    let f = |row: &mut [f32]| {
        // Eight running maxima and sums: a single one would be a serial chain of scalar ops.
        let mut m8 = [f32::NEG_INFINITY; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for i in 0..8 {
                m8[i] = m8[i].max(c[i]);
            }
        }
        let max = chunks.remainder().iter().fold(m8.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)), |a, &b| a.max(b));
        for v in row.iter_mut() {
            *v = exp(*v - max);
        }
        let mut s8 = [0f32; 8];
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            for i in 0..8 {
                s8[i] += c[i];
            }
        }
        let sum = s8.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
        let inv = 1.0 / sum;
        for v in row.iter_mut() {
            *v *= inv;
        }
    };
    if xs.len() >= 1 << 15 {
        xs.par_chunks_mut(cols).for_each(f);
    } else {
        xs.chunks_mut(cols).for_each(f);
    }
}

/// The gated feed-forward's activation of rows `[gate | up]` (`2·n` values each):
/// `silu(gate) · up`, `n` values per row (SiLU(x) = x / (1 + e^-x) on the vectorized `exp`;
/// candle's `silu` calls libm's `expf` one value at a time).
pub fn silu_mul(gu: &[f32], n: usize) -> Vec<f32> {
    assert!(n > 0 && gu.len().is_multiple_of(2 * n), "silu_mul: rows are not [gate | up] of {n} each");
    let mut out = vec![0f32; gu.len() / 2];
    let f = |(o, r): (&mut [f32], &[f32])| {
        let (g, u) = r.split_at(n);
        for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + exp(-g)) * u;
        }
    };
    if out.len() >= 1 << 15 {
        out.par_chunks_mut(n).zip(gu.par_chunks(2 * n)).for_each(f);
    } else {
        out.chunks_mut(n).zip(gu.chunks(2 * n)).for_each(f);
    }
    out
}

/// `y ← LayerNorm(y + x)` for each row of `cols` values (`x` the residual, or none), with
/// weight `w` and bias `b`, in place. Sums kept in eight lanes so that it vectorizes; rows in
/// parallel for large inputs.
pub fn add_layer_norm(y: &mut [f32], x: Option<&[f32]>, w: &[f32], b: &[f32], eps: f32) {
    let cols = w.len();
    assert!(cols > 0 && b.len() == cols && y.len().is_multiple_of(cols), "layer norm: shapes do not match");
    if let Some(x) = x {
        assert_eq!(x.len(), y.len(), "layer norm: the residual is not the input's shape");
    }
    let f = |(r, row): (usize, &mut [f32])| {
        if let Some(x) = x {
            for (v, &a) in row.iter_mut().zip(&x[r * cols..(r + 1) * cols]) {
                *v += a;
            }
        }
        let sum8 = |row: &[f32], f: &dyn Fn(f32) -> f32| -> f32 {
            let mut s8 = [0f32; 8];
            let mut chunks = row.chunks_exact(8);
            for c in &mut chunks {
                for i in 0..8 {
                    s8[i] += f(c[i]);
                }
            }
            s8.iter().sum::<f32>() + chunks.remainder().iter().map(|&v| f(v)).sum::<f32>()
        };
        let mean = sum8(row, &|v| v) / cols as f32;
        let var = sum8(row, &|v| (v - mean) * (v - mean)) / cols as f32;
        let inv = 1.0 / (var + eps).sqrt();
        for ((v, &w), &b) in row.iter_mut().zip(w).zip(b) {
            *v = (*v - mean) * inv * w + b;
        }
    };
    if y.len() >= 1 << 15 {
        y.par_chunks_mut(cols).enumerate().for_each(f);
    } else {
        y.chunks_mut(cols).enumerate().for_each(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_erf_are_accurate() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.04;
            let (e, want) = (exp(x), (x as f64).exp());
            assert!(((e as f64 - want) / want).abs() < 3e-7, "exp({x}) = {e}, want {want}");
        }
        // erf(x) for x = i/100 from the series, f64.
        let erf64 = |x: f64| -> f64 {
            let (mut term, mut sum, mut n) = (x, x, 0.0);
            while term.abs() > 1e-17 {
                n += 1.0;
                term *= -x * x / n;
                sum += term / (2.0 * n + 1.0);
            }
            sum * 2.0 / std::f64::consts::PI.sqrt()
        };
        for i in -500..=500 {
            let x = i as f32 / 100.0;
            let d = (erf(x) as f64 - erf64(x as f64)).abs();
            assert!(d < 5e-7, "erf({x}): off by {d}");
        }
    }

    #[test]
    fn silu_mul_matches_the_definition() {
        let n = 37;
        let gu: Vec<f32> = (0..4 * 2 * n).map(|i| ((i * 7919 % 211) as f32 - 105.0) * 0.15).collect();
        let out = silu_mul(&gu, n);
        for r in 0..4 {
            for j in 0..n {
                let (g, u) = (gu[r * 2 * n + j] as f64, gu[r * 2 * n + n + j] as f64);
                let want = g / (1.0 + (-g).exp()) * u;
                assert!((out[r * n + j] as f64 - want).abs() < 1e-5 * (1.0 + want.abs()), "row {r} col {j}");
            }
        }
        // Far out on both sides.
        assert!(silu_mul(&[-200.0, 3.0], 1)[0].abs() < 1e-30);
        assert!((silu_mul(&[200.0, 2.0], 1)[0] - 400.0).abs() < 1e-3);
    }

    #[test]
    fn add_layer_norm_matches_the_definition() {
        let cols = 45;
        let y0: Vec<f32> = (0..3 * cols).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3).collect();
        let x: Vec<f32> = (0..3 * cols).map(|i| ((i * 13 % 7) as f32 - 3.0) * 0.5).collect();
        let w: Vec<f32> = (0..cols).map(|i| 0.5 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..cols).map(|i| i as f32 * -0.02).collect();
        let mut y = y0.clone();
        add_layer_norm(&mut y, Some(&x), &w, &b, 1e-12);
        for r in 0..3 {
            let s: Vec<f64> = (0..cols).map(|c| (y0[r * cols + c] + x[r * cols + c]) as f64).collect();
            let mean = s.iter().sum::<f64>() / cols as f64;
            let var = s.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
            for c in 0..cols {
                let want = (s[c] - mean) / (var + 1e-12).sqrt() * w[c] as f64 + b[c] as f64;
                assert!((y[r * cols + c] as f64 - want).abs() < 1e-5, "row {r} col {c}");
            }
        }
        let mut z = y0.clone();
        add_layer_norm(&mut z, None, &w, &b, 1e-12);
        let mut zz = y0.clone();
        add_layer_norm(&mut zz, Some(&vec![0.0; 3 * cols]), &w, &b, 1e-12);
        assert_eq!(z, zz);
    }

    #[test]
    fn softmax_rows_sum_to_one() {
        let mut v: Vec<f32> = (0..12).map(|i| i as f32 * 0.7 - 3.0).collect();
        softmax_rows(&mut v, 4);
        for row in v.chunks(4) {
            assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!(row.windows(2).all(|w| w[0] < w[1]));
        }
    }
}

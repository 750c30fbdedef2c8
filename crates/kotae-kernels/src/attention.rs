//! Attention of one new token against a key/value cache: the decoding step. A general matrix
//! product would pack (copy) the whole cache into its own layout at every step; here each
//! head reads the cache in place. And the encoder's attention over a whole sequence
//! ([`encoder_attention`]), its heads read in place from the stacked query/key/value rows.

use rayon::prelude::*;

/// Shape of a cache: `[kv_heads, capacity, head_dim]`, positions `0..len` filled.
#[derive(Debug, Clone, Copy)]
pub struct KvShape {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
    pub len: usize,
}

/// `out[h] = softmax(scale · q[h] · K[g(h)]ᵀ) · V[g(h)]` for every query head `h`, where
/// `g(h) = h / (heads / kv_heads)` (grouped-query attention). `q`, `out`: `[heads, head_dim]`.
///
/// The query heads that share a key/value head are done together: each cached key and value
/// row is read once for the whole group (Qwen2.5 0.5B: 7 query heads per KV head), and the
/// softmax uses the vectorized `act::exp`.
pub fn attend_one(q: &[f32], k: &[f32], v: &[f32], shape: KvShape, scale: f32, out: &mut [f32]) {
    let KvShape { heads, kv_heads, head_dim: hd, capacity, len } = shape;
    assert!(heads % kv_heads == 0 && len <= capacity && len > 0);
    assert_eq!(q.len(), heads * hd);
    assert_eq!(out.len(), heads * hd);
    assert!(k.len() >= kv_heads * capacity * hd && v.len() >= kv_heads * capacity * hd);
    let group = heads / kv_heads;
    let work = |(kv, o): (usize, &mut [f32])| {
        let qg = &q[kv * group * hd..(kv + 1) * group * hd];
        let (keys, values) = (&k[kv * capacity * hd..][..len * hd], &v[kv * capacity * hd..][..len * hd]);
        // scores[g][j] for the group's heads g.
        let mut scores = vec![0f32; group * len];
        for (j, kj) in keys.chunks_exact(hd).enumerate() {
            for (g, qh) in qg.chunks_exact(hd).enumerate() {
                scores[g * len + j] = scale * dot(qh, kj);
            }
        }
        crate::act::softmax_rows(&mut scores, len);
        o.fill(0.0);
        for (j, vj) in values.chunks_exact(hd).enumerate() {
            for (g, oh) in o.chunks_exact_mut(hd).enumerate() {
                axpy(scores[g * len + j], vj, oh);
            }
        }
    };
    // Key/value heads run in parallel once there is enough work to pay for waking the pool.
    if len * heads * hd >= 1 << 15 {
        out.par_chunks_mut(group * hd).enumerate().for_each(work);
    } else {
        out.chunks_mut(group * hd).enumerate().for_each(work);
    }
}

/// Self-attention of one sequence of `n` tokens, no mask (an encoder's): `qkv` holds each
/// token's query, key and value side by side (`[n, 3h]`, `heads` heads of `h / heads` values
/// each), `out` receives `[n, h]`: per head, `softmax(scale · Q Kᵀ) V`. The heads are read in
/// place through strides (no transposed or contiguous copies) and written in place; `scores`
/// is scratch (`n × n`), kept by the caller between calls.
#[allow(unsafe_code)]
pub fn encoder_attention(
    qkv: &[f32],
    n: usize,
    h: usize,
    heads: usize,
    scale: f32,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    assert!(heads > 0 && h.is_multiple_of(heads), "{h} values do not split into {heads} heads");
    assert_eq!(qkv.len(), n * 3 * h, "qkv is not [n, 3h]");
    assert_eq!(out.len(), n * h, "out is not [n, h]");
    if n == 0 {
        return;
    }
    let hd = h / heads;
    scores.clear();
    scores.resize(n * n, 0.0);
    let (row, n_) = ((3 * h) as isize, n as isize);
    for i in 0..heads {
        let (q, k, v) = (i * hd, h + i * hd, 2 * h + i * hd);
        // SAFETY: every index the products touch is in bounds: scores `[n, n]` (row stride n);
        // Q, K and V rows `j < n` at `j·3h + offset + (0..hd)` with offset + hd ≤ 3h, inside
        // `qkv` (`n·3h` values, asserted); out rows `j < n` at `j·h + i·hd + (0..hd)`, inside
        // `out` (`n·h`, asserted). Destinations do not overlap the sources.
        unsafe {
            // scores = scale · Q Kᵀ: lhs Q (n × hd), rhs Kᵀ (hd × n: element (c, j) is K[j][c]).
            product(
                (n, n, hd),
                (scores.as_mut_ptr(), n_),
                (qkv.as_ptr().add(q), row),
                (qkv.as_ptr().add(k), row, 1),
                scale,
            );
        }
        crate::act::softmax_rows(scores, n);
        // SAFETY: as above.
        unsafe {
            // out[:, head i] = scores V: lhs scores (n × n), rhs V (n × hd).
            product(
                (n, hd, n),
                (out.as_mut_ptr().add(i * hd), h as isize),
                (scores.as_ptr(), n_),
                (qkv.as_ptr().add(v), 1, row),
                1.0,
            );
        }
    }
}

/// Causal attention of `t` new tokens (positions `len - t .. len`) against a cache holding
/// `len` keys and values, grouped-query as in [`attend_one`]: `q` is `[heads, t, head_dim]`
/// (rotary applied), the cache `[kv_heads, capacity, head_dim]`, `out` receives
/// `[heads, t, head_dim]`. Token `i` sees keys `..= len - t + i`.
///
/// The prompt's step: heads in parallel, queries in blocks of 64 so that the scores stay a
/// small reused buffer (a whole `[heads, t, len]` score tensor, with its mask and softmax
/// copies, was allocated, page-faulted and freed at every layer), products on `gemm` reading
/// the cache in place, softmax on the vectorized `act::exp`, and no work for masked keys.
#[allow(unsafe_code)]
pub fn causal_attention(q: &[f32], t: usize, k: &[f32], v: &[f32], shape: KvShape, scale: f32, out: &mut [f32]) {
    let KvShape { heads, kv_heads, head_dim: hd, capacity, len } = shape;
    assert!(kv_heads > 0 && heads % kv_heads == 0 && len <= capacity && t <= len);
    assert_eq!(q.len(), heads * t * hd, "q is not [heads, t, head_dim]");
    assert_eq!(out.len(), heads * t * hd, "out is not [heads, t, head_dim]");
    assert!(k.len() >= kv_heads * capacity * hd && v.len() >= kv_heads * capacity * hd);
    if t == 0 {
        return;
    }
    const BLOCK: usize = 64;
    let (group, past) = (heads / kv_heads, len - t);
    out.par_chunks_mut(t * hd).enumerate().for_each_init(Vec::new, |scores, (h, o)| {
        let kv = h / group;
        let (qh, keys, values) = (&q[h * t * hd..(h + 1) * t * hd], &k[kv * capacity * hd..], &v[kv * capacity * hd..]);
        for i0 in (0..t).step_by(BLOCK) {
            let b = BLOCK.min(t - i0);
            // Keys the block's last query sees.
            let s = past + i0 + b;
            scores.clear();
            scores.resize(b * s, 0.0);
            // SAFETY: scores is b × s (row stride s); query rows i0..i0+b of qh (t × hd);
            // keys and values rows j < s ≤ len ≤ capacity of this KV head, inside k and v
            // (asserted above); out rows i0..i0+b of o (t × hd). No operand overlaps dst.
            unsafe {
                // scores = scale · Q Kᵀ: rhs Kᵀ (hd × s), element (c, j) = keys[j·hd + c].
                product(
                    (b, s, hd),
                    (scores.as_mut_ptr(), s as isize),
                    (qh.as_ptr().add(i0 * hd), hd as isize),
                    (keys.as_ptr(), hd as isize, 1),
                    scale,
                );
            }
            for (r, row) in scores.chunks_exact_mut(s).enumerate() {
                let seen = past + i0 + r + 1;
                crate::act::softmax_rows(&mut row[..seen], seen);
                row[seen..].fill(0.0);
            }
            // SAFETY: as above.
            unsafe {
                product(
                    (b, hd, s),
                    (o.as_mut_ptr().add(i0 * hd), hd as isize),
                    (scores.as_ptr(), s as isize),
                    (values.as_ptr(), 1, hd as isize),
                    1.0,
                );
            }
        }
    });
}

/// `dst = beta · lhs · rhs` for row-major `dst` (`m × n`, row stride `dst.1`) and `lhs`
/// (`m × k`, row stride `lhs.1`), and `rhs` (`k × n`) with any column and row strides
/// (`rhs.1`, `rhs.2`): `gemm`'s f32 product on this thread, without reading `dst`.
///
/// # Safety
/// Every element the strides address must be inside its allocation, and `dst` must not
/// overlap `lhs` or `rhs`.
#[allow(unsafe_code, clippy::type_complexity)]
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, isize),
    lhs: (*const f32, isize),
    rhs: (*const f32, isize, isize),
    beta: f32,
) {
    // SAFETY: the caller's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            1,
            dst.1,
            false,
            lhs.0,
            1,
            lhs.1,
            rhs.0,
            rhs.1,
            rhs.2,
            0.0,
            beta,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Dot product with 8 independent sums (vectorizes; a single running sum would not).
#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[inline]
fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = alpha.mul_add(x, *y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_direct_softmax() {
        // Small (serial), and Qwen2.5's grouping (7 query heads per KV head) large enough to
        // run the KV heads in parallel.
        for shape in [(4, 2, 12, 9, 7), (14, 2, 64, 50, 41), (3, 3, 8, 4, 1)] {
            check(shape);
        }
    }

    #[test]
    fn causal_attention_matches_a_direct_softmax() {
        let f = |i: usize| ((i * 7919 % 101) as f32 / 50.0) - 1.0;
        // (heads, kv_heads, hd, capacity, len, t): a prompt, a prompt after a cached past, a
        // block boundary crossed, one token.
        for (heads, kv_heads, hd, capacity, len, t) in
            [(4, 2, 8, 16, 9, 9), (14, 2, 16, 200, 150, 70), (3, 3, 8, 8, 5, 1), (2, 1, 4, 140, 130, 130)]
        {
            let group = heads / kv_heads;
            let q: Vec<f32> = (0..heads * t * hd).map(f).collect();
            let k: Vec<f32> = (0..kv_heads * capacity * hd).map(|i| f(i + 3)).collect();
            let v: Vec<f32> = (0..kv_heads * capacity * hd).map(|i| f(i + 5)).collect();
            let mut out = vec![f32::NAN; heads * t * hd];
            let shape = KvShape { heads, kv_heads, head_dim: hd, capacity, len };
            causal_attention(&q, t, &k, &v, shape, 0.3, &mut out);
            for h in 0..heads {
                let kv = h / group;
                for i in 0..t {
                    let seen = len - t + i + 1;
                    let s: Vec<f64> = (0..seen)
                        .map(|j| {
                            0.3 * (0..hd)
                                .map(|d| q[(h * t + i) * hd + d] as f64 * k[(kv * capacity + j) * hd + d] as f64)
                                .sum::<f64>()
                        })
                        .collect();
                    let z: f64 = s.iter().map(|x| x.exp()).sum();
                    for d in 0..hd {
                        let want: f64 =
                            (0..seen).map(|j| s[j].exp() / z * v[(kv * capacity + j) * hd + d] as f64).sum();
                        let got = out[(h * t + i) * hd + d] as f64;
                        assert!((got - want).abs() < 1e-5, "head {h} token {i} dim {d}: {got} vs {want}");
                    }
                }
            }
        }
    }

    #[test]
    fn encoder_attention_matches_a_direct_softmax() {
        let f = |i: usize| ((i * 7919 % 101) as f32 / 50.0) - 1.0;
        let mut scores = Vec::new();
        for (n, h, heads) in [(1, 8, 2), (7, 24, 3), (33, 64, 4), (0, 8, 2)] {
            let qkv: Vec<f32> = (0..n * 3 * h).map(f).collect();
            let mut out = vec![f32::NAN; n * h];
            encoder_attention(&qkv, n, h, heads, 0.3, &mut out, &mut scores);
            let hd = h / heads;
            let at = |j: usize, part: usize, i: usize, d: usize| qkv[j * 3 * h + part * h + i * hd + d] as f64;
            for i in 0..heads {
                for r in 0..n {
                    let s: Vec<f64> =
                        (0..n).map(|j| 0.3 * (0..hd).map(|d| at(r, 0, i, d) * at(j, 1, i, d)).sum::<f64>()).collect();
                    let z: f64 = s.iter().map(|x| x.exp()).sum();
                    for d in 0..hd {
                        let want: f64 = (0..n).map(|j| s[j].exp() / z * at(j, 2, i, d)).sum();
                        let got = out[r * h + i * hd + d] as f64;
                        assert!((got - want).abs() < 1e-5, "n {n} head {i} row {r} dim {d}: {got} vs {want}");
                    }
                }
            }
        }
    }

    fn check((heads, kv_heads, hd, capacity, len): (usize, usize, usize, usize, usize)) {
        let group = heads / kv_heads;
        let f = |i: usize| ((i * 7919 % 101) as f32 / 50.0) - 1.0;
        let q: Vec<f32> = (0..heads * hd).map(f).collect();
        let k: Vec<f32> = (0..kv_heads * capacity * hd).map(|i| f(i + 3)).collect();
        let v: Vec<f32> = (0..kv_heads * capacity * hd).map(|i| f(i + 5)).collect();
        let mut out = vec![0f32; heads * hd];
        attend_one(&q, &k, &v, KvShape { heads, kv_heads, head_dim: hd, capacity, len }, 0.3, &mut out);
        for h in 0..heads {
            let kv = h / group;
            let s: Vec<f64> = (0..len)
                .map(|j| {
                    0.3 * (0..hd).map(|d| q[h * hd + d] as f64 * k[(kv * capacity + j) * hd + d] as f64).sum::<f64>()
                })
                .collect();
            let z: f64 = s.iter().map(|x| x.exp()).sum();
            for d in 0..hd {
                let want: f64 = (0..len).map(|j| s[j].exp() / z * v[(kv * capacity + j) * hd + d] as f64).sum();
                assert!((out[h * hd + d] as f64 - want).abs() < 1e-5, "head {h} dim {d}");
            }
        }
    }
}

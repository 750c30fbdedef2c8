//! Int8 matrix products for CPU inference: weights in ggml's Q8_0 scheme (blocks of 32 signed
//! bytes with one scale each), activations quantized the same way on the fly, products summed
//! in integers per block and scaled in f32.
//!
//! Why here and not candle's `QMatMul`: candle computes one dot product per (activation row,
//! weight row) pair and re-reads the weight row for every prompt token; llama.cpp's speed on
//! prompts comes from repacked weights that one instruction multiplies against several rows at
//! once. [`Q8Matrix`] stores weights that way: tiles of 8 rows whose bytes are interleaved in
//! groups of 4, so `vpdpbusd` (AVX-512 VNNI) or `vpmaddubsw` (AVX2) multiplies 4 columns of
//! all 8 rows by 4 activation bytes broadcast, and the 8 lanes of the result are the 8 rows'
//! partial sums: no horizontal reductions. The numbers are ggml's: the same rounding of
//! weights and activations, scales rounded to f16, so results match ggml/candle's Q8_0 matmul
//! up to the order of float additions.
//!
//! Kernels: AVX-512 VNNI (256-bit registers, 32 of them) when the CPU has it, AVX2 otherwise
//! (the build's baseline, x86-64-v3), and portable scalar code elsewhere and as the reference
//! in tests. Work is split over rayon's pool: by activation rows for prompts, by weight tiles
//! for single-token decoding.

use rayon::prelude::*;

mod attention;
pub use attention::{attend_one, KvShape};

/// Values per quantization block.
pub const QK: usize = 32;
/// Weight rows per tile.
pub const NR: usize = 8;
/// Bytes of one tile-block: 8 rows × 32 values.
const TILE_BLOCK: usize = NR * QK;

/// ggml's Q8_0 rounding of one block: scale = max|x| / 127 (stored as f16), q = round(x / scale).
fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    for (q, &v) in q.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
    }
    half::f16::from_f32(d).to_f32()
}

/// A weight matrix `[rows, cols]` in Q8_0, repacked into 8-row tiles (see the crate docs).
/// `cols` must be a multiple of 32; rows are padded to a multiple of 8 with zeros.
#[derive(Clone)]
pub struct Q8Matrix {
    rows: usize,
    cols: usize,
    /// Blocks per row.
    nb: usize,
    tiles: usize,
    /// `[tile][block][group of 4 columns][row in tile][4 bytes]`, each byte `q + 128`.
    q: Vec<u8>,
    /// `[tile][block][row in tile]`.
    d: Vec<f32>,
}

impl std::fmt::Debug for Q8Matrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Q8Matrix({}x{})", self.rows, self.cols)
    }
}

impl Q8Matrix {
    /// Quantize row-major f32 weights `[rows, cols]`.
    pub fn quantize(data: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "Q8Matrix::quantize: data is not rows × cols");
        assert!(cols.is_multiple_of(QK), "Q8Matrix: {cols} columns is not a multiple of {QK}");
        let nb = cols / QK;
        let tiles = rows.div_ceil(NR);
        let mut q = vec![128u8; tiles * nb * TILE_BLOCK];
        let mut d = vec![0f32; tiles * nb * NR];
        q.par_chunks_mut(nb * TILE_BLOCK).zip(d.par_chunks_mut(nb * NR)).enumerate().for_each(|(t, (qt, dt))| {
            let mut block = [0i8; QK];
            for r in 0..NR {
                let row = t * NR + r;
                if row >= rows {
                    break;
                }
                for b in 0..nb {
                    let x = &data[row * cols + b * QK..row * cols + (b + 1) * QK];
                    dt[b * NR + r] = quantize_block(x, &mut block);
                    for (i, &v) in block.iter().enumerate() {
                        let (g, j) = (i / 4, i % 4);
                        qt[b * TILE_BLOCK + g * NR * 4 + r * 4 + j] = (v as i16 + 128) as u8;
                    }
                }
            }
        });
        Self { rows, cols, nb, tiles, q, d }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes held (quantized values and scales).
    pub fn size_bytes(&self) -> usize {
        self.q.len() + self.d.len() * 4
    }

    /// Row `r` as f32 (for embedding lookups that share the output head's weights).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.cols, "dequantize_row: row {r} / length {}", out.len());
        let (t, lane) = (r / NR, r % NR);
        for b in 0..self.nb {
            let d = self.d[(t * self.nb + b) * NR + lane];
            let base = (t * self.nb + b) * TILE_BLOCK;
            for i in 0..QK {
                let v = self.q[base + (i / 4) * NR * 4 + lane * 4 + i % 4] as i16 - 128;
                out[b * QK + i] = d * v as f32;
            }
        }
    }

    /// `out[m, rows] = x[m, cols] · selfᵀ`.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_with(Kernel::detect(), x, m, out)
    }

    /// [`Self::matmul`] with a chosen kernel (tests compare them; a kernel the CPU lacks falls
    /// back to the best one it has).
    pub fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols, "matmul: input is not m × {}", self.cols);
        assert_eq!(out.len(), m * self.rows, "matmul: output is not m × {}", self.rows);
        let kernel = kernel.available();
        let a = Q8Rows::quantize(x, m, self.cols);
        let n = self.rows;
        let threads = rayon::current_num_threads().max(1);
        if m >= 4 * threads {
            // Prompt: each task takes a run of activation rows against all weight tiles; a pair
            // of weight tiles (2 × 8 rows) stays in L1 while the rows stream past it.
            let per = m.div_ceil(threads).next_multiple_of(4);
            out.par_chunks_mut(per * n).enumerate().for_each(|(i, chunk)| {
                let m0 = i * per;
                self.block(kernel, &a, m0, chunk.len() / n, 0, chunk, n);
            });
        } else {
            // Decode: each row's output is split by weight tiles across the pool.
            let per_task = self.tiles.div_ceil(threads * 4).max(1) * NR;
            for r in 0..m {
                let row = &mut out[r * n..(r + 1) * n];
                row.par_chunks_mut(per_task).enumerate().for_each(|(i, chunk)| {
                    self.block(kernel, &a, r, 1, i * per_task / NR, chunk, chunk.len());
                });
            }
        }
    }

    /// Rows `m0..m0+mr` of the product for the tiles starting at `t0` that cover the `ldo`
    /// columns of `out` (row stride `ldo`).
    #[allow(clippy::too_many_arguments)]
    fn block(&self, kernel: Kernel, a: &Q8Rows, m0: usize, mr: usize, t0: usize, out: &mut [f32], ldo: usize) {
        let nt = ldo.div_ceil(NR);
        let mut t = 0;
        while t < nt {
            let pair = t + 1 < nt;
            let mut m = 0;
            while m < mr {
                let four = m + 4 <= mr;
                let (mi, ti) = (m0 + m, t0 + t);
                match (four, pair) {
                    (true, true) => emit(&micro::<4, 2>(kernel, a, mi, self, ti), out, ldo, m, t),
                    (true, false) => emit(&micro::<4, 1>(kernel, a, mi, self, ti), out, ldo, m, t),
                    (false, true) => emit(&micro::<1, 2>(kernel, a, mi, self, ti), out, ldo, m, t),
                    (false, false) => emit(&micro::<1, 1>(kernel, a, mi, self, ti), out, ldo, m, t),
                }
                m += if four { 4 } else { 1 };
            }
            t += if pair { 2 } else { 1 };
        }
    }
}

/// Copy a tile of results into `out` (row stride `ldo`) at row `m`, tile `t`, dropping the
/// padding rows of a last, partial tile.
fn emit<const MR: usize, const NT: usize>(tile: &Tile<MR, NT>, out: &mut [f32], ldo: usize, m: usize, t: usize) {
    for (r, row) in tile.iter().enumerate() {
        for (j, vals) in row.iter().enumerate() {
            let col = (t + j) * NR;
            let valid = NR.min(ldo - col);
            let o = (m + r) * ldo + col;
            out[o..o + valid].copy_from_slice(&vals[..valid]);
        }
    }
}

/// Activations `[m, cols]` quantized per block of 32: values, f16-rounded scales, and
/// 128 × the sum of each block's values (the VNNI kernel multiplies `q + 128` weights).
pub struct Q8Rows {
    m: usize,
    cols: usize,
    nb: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    s: Vec<i32>,
}

impl Q8Rows {
    pub fn quantize(x: &[f32], m: usize, cols: usize) -> Self {
        assert!(cols.is_multiple_of(QK) && x.len() == m * cols);
        let nb = cols / QK;
        let mut q = vec![0i8; m * cols];
        let mut d = vec![0f32; m * nb];
        let mut s = vec![0i32; m * nb];
        type Row<'a> = (((&'a mut [i8], &'a mut [f32]), &'a mut [i32]), &'a [f32]);
        let work = |(((q, d), s), x): Row| {
            for b in 0..nb {
                d[b] = quantize_block(&x[b * QK..(b + 1) * QK], &mut q[b * QK..(b + 1) * QK]);
                s[b] = 128 * q[b * QK..(b + 1) * QK].iter().map(|&v| v as i32).sum::<i32>();
            }
        };
        if m >= 16 {
            q.par_chunks_mut(cols)
                .zip(d.par_chunks_mut(nb))
                .zip(s.par_chunks_mut(nb))
                .zip(x.par_chunks(cols))
                .for_each(work);
        } else {
            q.chunks_mut(cols).zip(d.chunks_mut(nb)).zip(s.chunks_mut(nb)).zip(x.chunks(cols)).for_each(work);
        }
        Self { m, cols, nb, q, d, s }
    }
}

/// Which inner loop runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    Scalar,
    Avx2,
    Avx512Vnni,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512vnni")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Kernel::Avx512Vnni;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Kernel::Avx2;
            }
        }
        Kernel::Scalar
    }

    /// `self` when the CPU runs it, else the best kernel it does run.
    pub fn available(self) -> Self {
        let best = Self::detect();
        let rank = |k: Kernel| match k {
            Kernel::Scalar => 0,
            Kernel::Avx2 => 1,
            Kernel::Avx512Vnni => 2,
        };
        if rank(self) <= rank(best) {
            self
        } else {
            best
        }
    }
}

type Tile<const MR: usize, const NT: usize> = [[[f32; NR]; NT]; MR];

#[allow(unsafe_code)]
fn micro<const MR: usize, const NT: usize>(
    kernel: Kernel,
    a: &Q8Rows,
    m0: usize,
    w: &Q8Matrix,
    t0: usize,
) -> Tile<MR, NT> {
    assert!(m0 + MR <= a.m && t0 + NT <= w.tiles && a.cols == w.cols);
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `kernel` came through `Kernel::available`, so the CPU has the features the
        // function is compiled for; the function asserts its bounds.
        Kernel::Avx512Vnni => unsafe {
            if MR == 4 && NT == 2 {
                let t = x86::micro_vnni_4x2(a, m0, w, t0);
                // Same type: MR = 4 and NT = 2 here.
                return std::array::from_fn(|r| std::array::from_fn(|j| t[r][j]));
            }
            x86::micro_vnni::<MR, NT>(a, m0, w, t0)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 + FMA.
        Kernel::Avx2 => unsafe { x86::micro_avx2::<MR, NT>(a, m0, w, t0) },
        _ => micro_scalar::<MR, NT>(a, m0, w, t0),
    }
}

fn micro_scalar<const MR: usize, const NT: usize>(a: &Q8Rows, m0: usize, w: &Q8Matrix, t0: usize) -> Tile<MR, NT> {
    let mut out = [[[0f32; NR]; NT]; MR];
    for (r, out_r) in out.iter_mut().enumerate() {
        let row = m0 + r;
        for (j, out_j) in out_r.iter_mut().enumerate() {
            let t = t0 + j;
            for b in 0..w.nb {
                let aq = &a.q[row * a.cols + b * QK..row * a.cols + (b + 1) * QK];
                let base = (t * w.nb + b) * TILE_BLOCK;
                for (lane, o) in out_j.iter_mut().enumerate() {
                    let mut dot = 0i32;
                    for (i, &av) in aq.iter().enumerate() {
                        let wv = w.q[base + (i / 4) * NR * 4 + lane * 4 + i % 4] as i32 - 128;
                        dot += wv * av as i32;
                    }
                    *o += dot as f32 * (w.d[(t * w.nb + b) * NR + lane] * a.d[row * a.nb + b]);
                }
            }
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
// Loops over register arrays index several arrays at once, on purpose.
#[allow(clippy::needless_range_loop)]
mod x86 {
    use super::{Q8Matrix, Q8Rows, Tile, NR, QK, TILE_BLOCK};
    use std::arch::x86_64::*;

    /// Raw pointers to the operands of one micro-tile: the hot loops below index nothing, so
    /// they carry no bounds checks (the caller asserted the bounds once).
    struct Ptrs<const MR: usize, const NT: usize> {
        /// Row `m0` of the activations; row `m0 + r` is `cols · r` bytes further.
        aq: *const i8,
        ad: *const f32,
        as_: *const i32,
        wq: [*const u8; NT],
        wd: [*const f32; NT],
    }

    impl<const MR: usize, const NT: usize> Ptrs<MR, NT> {
        fn new(a: &Q8Rows, m0: usize, w: &Q8Matrix, t0: usize) -> Self {
            assert!(m0 + MR <= a.m && t0 + NT <= w.tiles && a.cols == w.cols);
            Self {
                aq: a.q[m0 * a.cols..].as_ptr(),
                ad: a.d[m0 * a.nb..].as_ptr(),
                as_: a.s[m0 * a.nb..].as_ptr(),
                wq: std::array::from_fn(|j| w.q[(t0 + j) * w.nb * TILE_BLOCK..].as_ptr()),
                wd: std::array::from_fn(|j| w.d[(t0 + j) * w.nb * NR..].as_ptr()),
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX-512 VNNI, AVX-512 VL, AVX2 and FMA. Bounds are asserted.
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn micro_vnni<const MR: usize, const NT: usize>(
        a: &Q8Rows,
        m0: usize,
        w: &Q8Matrix,
        t0: usize,
    ) -> Tile<MR, NT> {
        let p = Ptrs::<MR, NT>::new(a, m0, w, t0);
        let (nb, cols, anb) = (w.nb, a.cols, a.nb);
        let mut acc = [[_mm256_setzero_ps(); NT]; MR];
        for b in 0..nb {
            let mut ia = [[_mm256_setzero_si256(); NT]; MR];
            for g in 0..QK / 4 {
                let mut wv = [_mm256_setzero_si256(); NT];
                for j in 0..NT {
                    // SAFETY: tile t0 + j < w.tiles, block b < nb, group g < 8: inside w.q.
                    wv[j] = unsafe { _mm256_loadu_si256(p.wq[j].add(b * TILE_BLOCK + g * NR * 4) as *const __m256i) };
                }
                for (r, ia_r) in ia.iter_mut().enumerate() {
                    // SAFETY: row m0 + r < a.m and column b·32 + g·4 + 3 < cols: inside a.q.
                    let four = unsafe { (p.aq.add(r * cols + b * QK + g * 4) as *const i32).read_unaligned() };
                    let av = _mm256_set1_epi32(four);
                    for j in 0..NT {
                        ia_r[j] = _mm256_dpbusd_epi32(ia_r[j], wv[j], av);
                    }
                }
            }
            for r in 0..MR {
                // SAFETY: (m0 + r)·nb + b indexes a.d and a.s; (t0 + j)·nb·8 + b·8 + 7, w.d.
                let (corr, da) = unsafe { (*p.as_.add(r * anb + b), *p.ad.add(r * anb + b)) };
                let (corr, da) = (_mm256_set1_epi32(corr), _mm256_set1_ps(da));
                for j in 0..NT {
                    let dw = unsafe { _mm256_loadu_ps(p.wd[j].add(b * NR)) };
                    let v = _mm256_cvtepi32_ps(_mm256_sub_epi32(ia[r][j], corr));
                    acc[r][j] = _mm256_fmadd_ps(v, _mm256_mul_ps(dw, da), acc[r][j]);
                }
            }
        }
        store(acc)
    }

    /// The 4 × 16 tile of [`micro_vnni`], written out so that its 8 integer and 8 float
    /// accumulators are plain locals (LLVM keeps the generic version's arrays on the stack).
    ///
    /// # Safety
    /// As [`micro_vnni`].
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn micro_vnni_4x2(a: &Q8Rows, m0: usize, w: &Q8Matrix, t0: usize) -> Tile<4, 2> {
        let p = Ptrs::<4, 2>::new(a, m0, w, t0);
        let (nb, cols, anb) = (w.nb, a.cols, a.nb);
        let z = _mm256_setzero_ps();
        let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21, mut c30, mut c31) = (z, z, z, z, z, z, z, z);
        for b in 0..nb {
            let zi = _mm256_setzero_si256();
            let (mut i00, mut i01, mut i10, mut i11, mut i20, mut i21, mut i30, mut i31) =
                (zi, zi, zi, zi, zi, zi, zi, zi);
            // SAFETY (all pointer reads in this loop): rows m0..m0+4 < a.m, tiles t0, t0+1 <
            // w.tiles, block b < nb and group g < 8, as asserted by `Ptrs::new`.
            let x = unsafe { p.aq.add(b * QK) };
            let (y0, y1) = unsafe { (p.wq[0].add(b * TILE_BLOCK), p.wq[1].add(b * TILE_BLOCK)) };
            for g in 0..QK / 4 {
                let (v0, v1) = unsafe {
                    (
                        _mm256_loadu_si256(y0.add(g * NR * 4) as *const __m256i),
                        _mm256_loadu_si256(y1.add(g * NR * 4) as *const __m256i),
                    )
                };
                let bc =
                    |r: usize| _mm256_set1_epi32(unsafe { (x.add(r * cols + g * 4) as *const i32).read_unaligned() });
                let a0 = bc(0);
                i00 = _mm256_dpbusd_epi32(i00, v0, a0);
                i01 = _mm256_dpbusd_epi32(i01, v1, a0);
                let a1 = bc(1);
                i10 = _mm256_dpbusd_epi32(i10, v0, a1);
                i11 = _mm256_dpbusd_epi32(i11, v1, a1);
                let a2 = bc(2);
                i20 = _mm256_dpbusd_epi32(i20, v0, a2);
                i21 = _mm256_dpbusd_epi32(i21, v1, a2);
                let a3 = bc(3);
                i30 = _mm256_dpbusd_epi32(i30, v0, a3);
                i31 = _mm256_dpbusd_epi32(i31, v1, a3);
            }
            let (dw0, dw1) = unsafe { (_mm256_loadu_ps(p.wd[0].add(b * NR)), _mm256_loadu_ps(p.wd[1].add(b * NR))) };
            let fin = |r: usize, i0: __m256i, i1: __m256i, c0: &mut __m256, c1: &mut __m256| {
                let (corr, da) = unsafe { (*p.as_.add(r * anb + b), *p.ad.add(r * anb + b)) };
                let (corr, da) = (_mm256_set1_epi32(corr), _mm256_set1_ps(da));
                let f0 = _mm256_cvtepi32_ps(_mm256_sub_epi32(i0, corr));
                let f1 = _mm256_cvtepi32_ps(_mm256_sub_epi32(i1, corr));
                *c0 = _mm256_fmadd_ps(f0, _mm256_mul_ps(dw0, da), *c0);
                *c1 = _mm256_fmadd_ps(f1, _mm256_mul_ps(dw1, da), *c1);
            };
            fin(0, i00, i01, &mut c00, &mut c01);
            fin(1, i10, i11, &mut c10, &mut c11);
            fin(2, i20, i21, &mut c20, &mut c21);
            fin(3, i30, i31, &mut c30, &mut c31);
        }
        store([[c00, c01], [c10, c11], [c20, c21], [c30, c31]])
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA. Bounds are asserted.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro_avx2<const MR: usize, const NT: usize>(
        a: &Q8Rows,
        m0: usize,
        w: &Q8Matrix,
        t0: usize,
    ) -> Tile<MR, NT> {
        let p = Ptrs::<MR, NT>::new(a, m0, w, t0);
        let (nb, cols, anb) = (w.nb, a.cols, a.nb);
        let ones = _mm256_set1_epi16(1);
        let flip = _mm256_set1_epi8(-128);
        let mut acc = [[_mm256_setzero_ps(); NT]; MR];
        for b in 0..nb {
            let mut ia = [[_mm256_setzero_si256(); NT]; MR];
            for g in 0..QK / 4 {
                let mut wabs = [_mm256_setzero_si256(); NT];
                let mut wsgn = [_mm256_setzero_si256(); NT];
                for j in 0..NT {
                    // SAFETY: as in `micro_vnni`.
                    let v = unsafe { _mm256_loadu_si256(p.wq[j].add(b * TILE_BLOCK + g * NR * 4) as *const __m256i) };
                    let s = _mm256_xor_si256(v, flip); // back to signed q
                    wabs[j] = _mm256_abs_epi8(s);
                    wsgn[j] = s;
                }
                for (r, ia_r) in ia.iter_mut().enumerate() {
                    // SAFETY: as in `micro_vnni`.
                    let four = unsafe { (p.aq.add(r * cols + b * QK + g * 4) as *const i32).read_unaligned() };
                    let av = _mm256_set1_epi32(four);
                    for j in 0..NT {
                        // |w| · (a · sign w) = w · a, pairs summed in i16 (≤ 2·128·127), then
                        // pairs of pairs in i32: lane = row.
                        let prod = _mm256_maddubs_epi16(wabs[j], _mm256_sign_epi8(av, wsgn[j]));
                        ia_r[j] = _mm256_add_epi32(ia_r[j], _mm256_madd_epi16(prod, ones));
                    }
                }
            }
            for r in 0..MR {
                // SAFETY: as in `micro_vnni`.
                let da = _mm256_set1_ps(unsafe { *p.ad.add(r * anb + b) });
                for j in 0..NT {
                    let dw = unsafe { _mm256_loadu_ps(p.wd[j].add(b * NR)) };
                    acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[r][j]), _mm256_mul_ps(dw, da), acc[r][j]);
                }
            }
        }
        store(acc)
    }

    #[inline]
    #[target_feature(enable = "avx2")]
    fn store<const MR: usize, const NT: usize>(acc: [[__m256; NT]; MR]) -> Tile<MR, NT> {
        let mut out = [[[0f32; NR]; NT]; MR];
        for r in 0..MR {
            for j in 0..NT {
                // SAFETY: an array of 8 f32 is exactly one unaligned 256-bit store.
                unsafe { _mm256_storeu_ps(out[r][j].as_mut_ptr(), acc[r][j]) };
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
            })
            .collect()
    }

    /// Reference: dequantized weights times dequantized activations, in f64.
    fn reference(w: &Q8Matrix, x: &[f32], m: usize) -> Vec<f32> {
        let a = Q8Rows::quantize(x, m, w.cols);
        let mut wrow = vec![0f32; w.cols];
        let mut out = vec![0f32; m * w.rows];
        for n in 0..w.rows {
            w.dequantize_row(n, &mut wrow);
            for r in 0..m {
                let mut s = 0f64;
                for (k, wv) in wrow.iter().enumerate() {
                    let av = a.q[r * w.cols + k] as f64 * a.d[r * a.nb + k / QK] as f64;
                    s += av * *wv as f64;
                }
                out[r * w.rows + n] = s as f32;
            }
        }
        out
    }

    #[test]
    fn quantize_round_trip_is_close() {
        let (rows, cols) = (13, 64);
        let x = data(rows * cols, 1);
        let w = Q8Matrix::quantize(&x, rows, cols);
        let mut row = vec![0f32; cols];
        for r in 0..rows {
            w.dequantize_row(r, &mut row);
            for (a, b) in row.iter().zip(&x[r * cols..(r + 1) * cols]) {
                assert!((a - b).abs() < 1.0 / 127.0, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn all_kernels_match_the_reference() {
        // Odd shapes: a partial last tile, row counts that leave remainders of 4, and both the
        // row-split (m ≥ 4 × threads) and the tile-split paths.
        for &(rows, cols, m) in &[(8, 32, 1), (21, 96, 1), (37, 64, 3), (40, 128, 9), (19, 32, 33), (64, 256, 70)] {
            let w = Q8Matrix::quantize(&data(rows * cols, rows as u64), rows, cols);
            let x = data(m * cols, 7 + m as u64);
            let want = reference(&w, &x, m);
            for kernel in [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512Vnni] {
                let mut got = vec![f32::NAN; m * rows];
                w.matmul_with(kernel, &x, m, &mut got);
                for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                        "{kernel:?} {rows}x{cols} m={m} [{i}]: {g} vs {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        // Every weight and activation at ±127 after quantization: the AVX2 path's i16 pair
        // sums are at their largest here.
        let (rows, cols, m) = (16, 512, 5);
        let w: Vec<f32> = (0..rows * cols).map(|i| if (i / 3) % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let x: Vec<f32> = (0..m * cols).map(|i| if (i / 5) % 2 == 0 { -2.0 } else { 2.0 }).collect();
        let w = Q8Matrix::quantize(&w, rows, cols);
        let want = reference(&w, &x, m);
        for kernel in [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512Vnni] {
            let mut got = vec![0f32; m * rows];
            w.matmul_with(kernel, &x, m, &mut got);
            for (g, e) in got.iter().zip(&want) {
                assert!((g - e).abs() <= 1e-3 * (1.0 + e.abs()), "{kernel:?}: {g} vs {e}");
            }
        }
    }
}

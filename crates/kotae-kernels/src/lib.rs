//! Int8 matrix products for CPU inference: weights in blocks of 32 values with one scale and
//! one offset each (`w = d·u − m`, `u` unsigned), activations quantized like ggml's Q8_0 on the
//! fly, products summed in integers per block and scaled in f32.
//!
//! Why here and not candle's `QMatMul`: candle computes one dot product per (activation row,
//! weight row) pair and re-reads the weight row for every prompt token; llama.cpp's speed on
//! prompts comes from repacked weights that one instruction multiplies against several rows at
//! once. [`QMatrix`] stores weights that way: tiles of 8 rows whose values are interleaved in
//! groups of 4, so `vpdpbusd` (AVX-512 VNNI) or `vpmaddubsw` (AVX2) multiplies 4 columns of
//! all 8 rows by 4 activation bytes broadcast, and the 8 lanes of the result are the 8 rows'
//! partial sums: no horizontal reductions.
//!
//! Values are stored in 8 bits (ggml's Q8_0, `u = q + 128`) or, for weights that came as 4- or
//! 5-bit GGUF blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q4_K), packed in 4 or 5 bits exactly as they came:
//! decoding one token reads every weight once, so its speed is the memory traffic. Packed tiles
//! are unpacked in registers for single rows, and once per tile into a scratch buffer for
//! prompt chunks.
//!
//! Kernels: AVX-512 VNNI (256-bit registers, 32 of them) when the CPU has it, AVX2 otherwise
//! (the build's baseline, x86-64-v3; weights then always stored in 8 bits), and portable scalar
//! code elsewhere and as the reference in tests. Work is split over rayon's pool: by activation
//! rows for prompts, by weight tiles for single-token decoding.

use half::f16;
use rayon::prelude::*;

pub mod act;
mod attention;
pub use attention::{attend_one, causal_attention, encoder_attention, KvShape};

/// Values per quantization block.
pub const QK: usize = 32;
/// Weight rows per tile.
pub const NR: usize = 8;
/// Values of one tile-block: 8 rows × 32.
const TILE_BLOCK: usize = NR * QK;

/// ggml's Q8_0 rounding of one block: scale = max|x| / 127 (stored as f16), q = x / scale
/// rounded to nearest, ties to even (as ggml's SIMD code rounds).
///
/// Written so that it vectorizes: eight running maxima compared with `>` (`f32::max`'s NaN
/// rule keeps LLVM from vectorizing it; NaNs are skipped either way) and `round_ties_even`
/// (one instruction; `round`'s ties away from zero is not). Done for every activation row of
/// every product, it was 16% of an embedding batch's time in its scalar form.
#[inline]
fn quantize_block(x: &[f32], q: &mut [i8]) -> f32 {
    let x: &[f32; QK] = x.try_into().expect("a block of 32 values");
    let q: &mut [i8; QK] = q.try_into().expect("a block of 32 values");
    let mut m8 = [0f32; 8];
    for c in x.chunks_exact(8) {
        for i in 0..8 {
            let a = c[i].abs();
            m8[i] = if a > m8[i] { a } else { m8[i] };
        }
    }
    let amax = m8.iter().fold(0f32, |m, &v| if v > m { v } else { m });
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    if x.iter().fold(true, |ok, v| ok & v.is_finite()) && amax.is_finite() {
        // |v · id| ≤ 127: adding 1.5 · 2²³ rounds it to an integer (ties to even) in the low
        // bits of the float, read back with a bit cast; `as i8` on a float saturates, one
        // element at a time, and cost as much as the rest.
        const MAGIC: f32 = 12_582_912.0;
        for (q, &v) in q.iter_mut().zip(x) {
            *q = ((v * id + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32) as i8;
        }
    } else {
        // Infinities or NaNs (a broken model): saturate, NaN as 0.
        for (q, &v) in q.iter_mut().zip(x) {
            *q = (v * id).round_ties_even() as i8;
        }
    }
    half::f16::from_f32(d).to_f32()
}

/// ggml's Q8_0 of row-major `[rows, cols]` as affine blocks `w = d·u − m` (`u = q + 128`,
/// `m = 128·d`): the input of [`QMatrix::from_affine`].
pub fn q8_0_affine(data: &[f32], rows: usize, cols: usize) -> (Vec<u8>, Vec<f32>, Vec<f32>) {
    assert_eq!(data.len(), rows * cols, "q8_0_affine: data is not rows × cols");
    assert!(cols.is_multiple_of(QK), "q8_0_affine: {cols} columns is not a multiple of {QK}");
    let nb = cols / QK;
    let mut u = vec![0u8; rows * cols];
    let mut d = vec![0f32; rows * nb];
    u.par_chunks_mut(cols).zip(d.par_chunks_mut(nb)).zip(data.par_chunks(cols)).for_each(|((u, d), x)| {
        let mut q = [0i8; QK];
        for b in 0..nb {
            d[b] = quantize_block(&x[b * QK..(b + 1) * QK], &mut q);
            for (u, &q) in u[b * QK..(b + 1) * QK].iter_mut().zip(&q) {
                *u = (q as i16 + 128) as u8;
            }
        }
    });
    let m = d.iter().map(|d| 128.0 * d).collect();
    (u, d, m)
}

/// How a tile-block's 256 values are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// One byte per value.
    U8,
    /// Two values per byte: value `p` in the low nibble of byte `p`, value `p + 128` in its
    /// high nibble (so one 32-byte load holds two groups).
    U4,
    /// [`Packing::U4`] plus a 32-byte plane of fifth bits (bit `p` for value `p`).
    U5,
}

impl Packing {
    /// Bytes per tile-block.
    fn bytes(self) -> usize {
        match self {
            Packing::U8 => TILE_BLOCK,
            Packing::U4 => TILE_BLOCK / 2,
            Packing::U5 => TILE_BLOCK / 2 + TILE_BLOCK / 8,
        }
    }
}

/// Position of value (row `r` of the tile, column `i` of the block) in the interleaved order.
#[inline]
fn plain_index(r: usize, i: usize) -> usize {
    (i / 4) * NR * 4 + r * 4 + i % 4
}

/// A weight matrix `[rows, cols]` in 8-row tiles (see the crate docs). `cols` must be a
/// multiple of 32; rows are padded to a multiple of 8 with zeros.
#[derive(Clone)]
pub struct QMatrix {
    rows: usize,
    cols: usize,
    /// Blocks per row.
    nb: usize,
    tiles: usize,
    packing: Packing,
    /// `[tile][block][packing.bytes()]`.
    q: Vec<u8>,
    /// Scales, `[tile][block][row in tile]`, as f16 (half the memory traffic of f32).
    d: Vec<f16>,
    /// Offsets laid out like `d`; `None` when every offset is `sym · d` (Q4_0: 8, Q5_0: 16,
    /// Q8_0: 128), which then costs no memory at all.
    m: Option<Vec<f16>>,
    sym: f32,
}

impl std::fmt::Debug for QMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QMatrix({}x{}, {:?})", self.rows, self.cols, self.packing)
    }
}

impl QMatrix {
    /// Quantize row-major f32 weights `[rows, cols]` as ggml's Q8_0.
    pub fn quantize(data: &[f32], rows: usize, cols: usize) -> Self {
        let (u, d, m) = q8_0_affine(data, rows, cols);
        Self::from_affine(rows, cols, &u, &d, &m, 8)
    }

    /// Weights given per block as `w = d·u − m`: `u` row-major `[rows, cols]` with values below
    /// `2^bits` (4, 5 or 8), `d` and `m` row-major `[rows, cols / 32]`. Stored packed in `bits`
    /// when the CPU has the kernels for it (AVX-512 VNNI), else in 8 bits.
    pub fn from_affine(rows: usize, cols: usize, u: &[u8], d: &[f32], m: &[f32], bits: u32) -> Self {
        assert!(cols.is_multiple_of(QK), "QMatrix: {cols} columns is not a multiple of {QK}");
        let nb = cols / QK;
        assert!(u.len() == rows * cols && d.len() == rows * nb && m.len() == rows * nb);
        assert!(matches!(bits, 4 | 5 | 8), "QMatrix: {bits}-bit values are not supported");
        let packing = match bits {
            4 if Kernel::detect() == Kernel::Avx512Vnni => Packing::U4,
            5 if Kernel::detect() == Kernel::Avx512Vnni => Packing::U5,
            _ => Packing::U8,
        };
        let tiles = rows.div_ceil(NR);
        let tb = packing.bytes();
        // Symmetric blocks: the offset is a fixed multiple of the scale.
        let sym = [8.0f32, 16.0, 128.0].into_iter().find(|c| d.iter().zip(m).all(|(d, m)| c * d == *m));
        let mut q = vec![0u8; tiles * nb * tb];
        let mut dd = vec![f16::ZERO; tiles * nb * NR];
        let mut mm = vec![f16::ZERO; if sym.is_some() { 0 } else { tiles * nb * NR }];
        let stride = if sym.is_some() { 0 } else { nb * NR };
        let fill = |(t, (qt, dt)): (usize, (&mut [u8], &mut [f16])), mt: &mut [f16]| {
            let mut plain = [0u8; TILE_BLOCK];
            for b in 0..nb {
                plain.fill(0);
                for r in 0..NR {
                    let row = t * NR + r;
                    if row >= rows {
                        break;
                    }
                    dt[b * NR + r] = f16::from_f32(d[row * nb + b]);
                    if !mt.is_empty() {
                        mt[b * NR + r] = f16::from_f32(m[row * nb + b]);
                    }
                    for i in 0..QK {
                        let v = u[row * cols + b * QK + i];
                        debug_assert!(bits == 8 || (v as u32) < (1 << bits));
                        plain[plain_index(r, i)] = v;
                    }
                }
                pack(packing, &plain, &mut qt[b * tb..(b + 1) * tb]);
            }
        };
        if stride == 0 {
            q.par_chunks_mut(nb * tb).zip(dd.par_chunks_mut(nb * NR)).enumerate().for_each(|x| fill(x, &mut []));
        } else {
            q.par_chunks_mut(nb * tb)
                .zip(dd.par_chunks_mut(nb * NR))
                .zip(mm.par_chunks_mut(stride))
                .enumerate()
                .for_each(|(t, ((qt, dt), mt))| fill((t, (qt, dt)), mt));
        }
        Self {
            rows,
            cols,
            nb,
            tiles,
            packing,
            q,
            d: dd,
            m: if sym.is_some() { None } else { Some(mm) },
            sym: sym.unwrap_or(0.0),
        }
    }

    /// Offset of value `at` in the scale layout.
    fn offset(&self, at: usize) -> f32 {
        match &self.m {
            Some(m) => m[at].to_f32(),
            None => self.sym * self.d[at].to_f32(),
        }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn packing(&self) -> Packing {
        self.packing
    }

    /// Bytes held (values, scales and offsets).
    pub fn size_bytes(&self) -> usize {
        self.q.len() + (self.d.len() + self.m.as_ref().map_or(0, |m| m.len())) * 2
    }

    /// The 256 values of tile `t`, block `b`, one byte each, in the interleaved order.
    fn unpack(&self, t: usize, b: usize, out: &mut [u8]) {
        let tb = self.packing.bytes();
        let src = &self.q[(t * self.nb + b) * tb..(t * self.nb + b + 1) * tb];
        unpack(self.packing, src, out);
    }

    /// Row `r` as f32 (for embedding lookups).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.rows && out.len() == self.cols, "dequantize_row: row {r} / length {}", out.len());
        let (t, lane) = (r / NR, r % NR);
        let mut plain = [0u8; TILE_BLOCK];
        for b in 0..self.nb {
            self.unpack(t, b, &mut plain);
            let at = (t * self.nb + b) * NR + lane;
            let (d, m) = (self.d[at].to_f32(), self.offset(at));
            for i in 0..QK {
                out[b * QK + i] = d * plain[plain_index(lane, i)] as f32 - m;
            }
        }
    }

    /// `out[m, rows] = x[m, cols] · selfᵀ`.
    pub fn matmul(&self, x: &[f32], m: usize, out: &mut [f32]) {
        self.matmul_with(Kernel::detect(), x, m, out)
    }

    /// [`Self::matmul`] with a chosen kernel (tests compare them; a kernel the CPU lacks falls
    /// back to the best one it has, and packed weights always use the best one).
    pub fn matmul_with(&self, kernel: Kernel, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols, "matmul: input is not m × {}", self.cols);
        assert_eq!(out.len(), m * self.rows, "matmul: output is not m × {}", self.rows);
        let kernel =
            if self.packing == Packing::U8 || kernel == Kernel::Scalar { kernel.available() } else { Kernel::detect() };
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
        let nb = self.nb;
        let mut scratch = Vec::new();
        let mut t = 0;
        while t < nt {
            let pair = t + 1 < nt;
            let tiles = if pair { 2 } else { 1 };
            let tt = t0 + t;
            let d = &self.d[tt * nb * NR..];
            let m = self.m.as_ref().map(|m| &m[tt * nb * NR..]);
            let sym = self.sym;
            let direct_packed = self.packing != Packing::U8 && mr < 4 && kernel == Kernel::Avx512Vnni;
            let view = if self.packing == Packing::U8 {
                Some(Tiles { q: &self.q[tt * nb * TILE_BLOCK..], d, m, sym, nb, tiles })
            } else if direct_packed {
                None
            } else {
                // Unpacked once, used by every row of the chunk.
                scratch.resize(tiles * nb * TILE_BLOCK, 0);
                let tb = self.packing.bytes();
                let src = &self.q[tt * nb * tb..(tt + tiles) * nb * tb];
                unpack_tiles(kernel, self.packing, src, &mut scratch);
                Some(Tiles { q: &scratch, d, m, sym, nb, tiles })
            };
            let mut r = 0;
            while r < mr {
                let four = r + 4 <= mr && view.is_some();
                let mi = m0 + r;
                match (&view, four, pair) {
                    (Some(v), true, true) => emit(&micro::<4, 2>(kernel, a, mi, v), out, ldo, r, t),
                    (Some(v), true, false) => emit(&micro::<4, 1>(kernel, a, mi, v), out, ldo, r, t),
                    (Some(v), false, true) => emit(&micro::<1, 2>(kernel, a, mi, v), out, ldo, r, t),
                    (Some(v), false, false) => emit(&micro::<1, 1>(kernel, a, mi, v), out, ldo, r, t),
                    (None, _, true) => emit(&micro_packed::<2>(a, mi, self, tt), out, ldo, r, t),
                    (None, _, false) => emit(&micro_packed::<1>(a, mi, self, tt), out, ldo, r, t),
                }
                r += if four { 4 } else { 1 };
            }
            t += tiles;
        }
    }
}

/// Store 256 interleaved values (one byte each) in `packing`.
fn pack(packing: Packing, plain: &[u8; TILE_BLOCK], out: &mut [u8]) {
    match packing {
        Packing::U8 => out.copy_from_slice(plain),
        Packing::U4 | Packing::U5 => {
            let half = TILE_BLOCK / 2;
            for p in 0..half {
                out[p] = (plain[p] & 0x0F) | (plain[p + half] & 0x0F) << 4;
            }
            if packing == Packing::U5 {
                for p in 0..TILE_BLOCK {
                    out[half + p / 8] |= ((plain[p] >> 4) & 1) << (p % 8);
                }
            }
        }
    }
}

/// Inverse of [`pack`].
fn unpack(packing: Packing, src: &[u8], out: &mut [u8]) {
    match packing {
        Packing::U8 => out.copy_from_slice(&src[..TILE_BLOCK]),
        Packing::U4 | Packing::U5 => {
            let half = TILE_BLOCK / 2;
            for p in 0..half {
                out[p] = src[p] & 0x0F;
                out[p + half] = src[p] >> 4;
            }
            if packing == Packing::U5 {
                for p in 0..TILE_BLOCK {
                    out[p] |= ((src[half + p / 8] >> (p % 8)) & 1) << 4;
                }
            }
        }
    }
}

/// [`unpack`] of consecutive tile-blocks, in registers where the CPU allows.
#[allow(unsafe_code)]
fn unpack_tiles(kernel: Kernel, packing: Packing, src: &[u8], dst: &mut [u8]) {
    let tb = packing.bytes();
    assert!(packing != Packing::U8 && src.len().is_multiple_of(tb) && dst.len() == src.len() / tb * TILE_BLOCK);
    #[cfg(target_arch = "x86_64")]
    if kernel == Kernel::Avx512Vnni {
        // SAFETY: packed matrices exist only on CPUs with AVX-512 BW/VL (see `from_affine`);
        // lengths asserted above.
        unsafe { x86::unpack_tiles(packing == Packing::U5, src, dst) };
        return;
    }
    let _ = kernel;
    for (s, d) in src.chunks_exact(tb).zip(dst.chunks_exact_mut(TILE_BLOCK)) {
        unpack(packing, s, d);
    }
}

/// Consecutive tiles of one-byte values with their scales and offsets.
struct Tiles<'a> {
    /// `[tile][block][256]`.
    q: &'a [u8],
    /// `[tile][block][8]`.
    d: &'a [f16],
    /// Offsets, or `None`: `sym · d`.
    m: Option<&'a [f16]>,
    sym: f32,
    nb: usize,
    tiles: usize,
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

/// Activations `[m, cols]` quantized per block of 32 (ggml's Q8_0): values, f16-rounded
/// scales, and scale × sum of each block's values (for the weights' offsets).
pub struct Q8Rows {
    m: usize,
    cols: usize,
    nb: usize,
    q: Vec<i8>,
    d: Vec<f32>,
    mix: Vec<f32>,
}

impl Q8Rows {
    pub fn quantize(x: &[f32], m: usize, cols: usize) -> Self {
        assert!(cols.is_multiple_of(QK) && x.len() == m * cols);
        let nb = cols / QK;
        let mut q = vec![0i8; m * cols];
        let mut d = vec![0f32; m * nb];
        let mut mix = vec![0f32; m * nb];
        type Row<'a> = (((&'a mut [i8], &'a mut [f32]), &'a mut [f32]), &'a [f32]);
        let work = |(((q, d), mix), x): Row| {
            for b in 0..nb {
                d[b] = quantize_block(&x[b * QK..(b + 1) * QK], &mut q[b * QK..(b + 1) * QK]);
                mix[b] = d[b] * q[b * QK..(b + 1) * QK].iter().map(|&v| v as i32).sum::<i32>() as f32;
            }
        };
        if m >= 16 {
            q.par_chunks_mut(cols)
                .zip(d.par_chunks_mut(nb))
                .zip(mix.par_chunks_mut(nb))
                .zip(x.par_chunks(cols))
                .for_each(work);
        } else {
            q.chunks_mut(cols).zip(d.chunks_mut(nb)).zip(mix.chunks_mut(nb)).zip(x.chunks(cols)).for_each(work);
        }
        Self { m, cols, nb, q, d, mix }
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
                && std::arch::is_x86_feature_detected!("avx512bw")
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
fn micro<const MR: usize, const NT: usize>(kernel: Kernel, a: &Q8Rows, m0: usize, w: &Tiles) -> Tile<MR, NT> {
    assert!(m0 + MR <= a.m && NT <= w.tiles && a.nb == w.nb);
    assert!(w.q.len() >= NT * w.nb * TILE_BLOCK && w.d.len() >= NT * w.nb * NR);
    assert!(w.m.is_none_or(|m| m.len() >= NT * w.nb * NR));
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `kernel` came through `Kernel::available`, so the CPU has the features the
        // function is compiled for; the asserts above keep every index in bounds.
        Kernel::Avx512Vnni => unsafe {
            if MR == 4 && NT == 2 {
                let t = x86::micro_vnni_4x2(a, m0, w);
                // Same type: MR = 4 and NT = 2 here.
                return std::array::from_fn(|r| std::array::from_fn(|j| t[r][j]));
            }
            x86::micro_vnni::<MR, NT>(a, m0, w)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for AVX2 + FMA.
        Kernel::Avx2 => unsafe { x86::micro_avx2::<MR, NT>(a, m0, w) },
        _ => micro_scalar::<MR, NT>(a, m0, w),
    }
}

/// One activation row against packed tiles, unpacked in registers (AVX-512 VNNI + BW only; the
/// weights are packed only on such CPUs).
#[allow(unsafe_code)]
fn micro_packed<const NT: usize>(a: &Q8Rows, m0: usize, w: &QMatrix, t0: usize) -> Tile<1, NT> {
    assert!(m0 < a.m && t0 + NT <= w.tiles && a.cols == w.cols && w.packing != Packing::U8);
    assert_eq!(Kernel::detect(), Kernel::Avx512Vnni, "packed weights on a CPU without AVX-512 VNNI");
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the CPU has AVX-512 VNNI/VL/BW (asserted); bounds asserted above.
        if w.packing == Packing::U5 {
            unsafe { x86::micro_vnni_packed::<NT, true>(a, m0, w, t0) }
        } else {
            unsafe { x86::micro_vnni_packed::<NT, false>(a, m0, w, t0) }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!()
}

fn micro_scalar<const MR: usize, const NT: usize>(a: &Q8Rows, m0: usize, w: &Tiles) -> Tile<MR, NT> {
    let mut out = [[[0f32; NR]; NT]; MR];
    for (r, out_r) in out.iter_mut().enumerate() {
        let row = m0 + r;
        for (j, out_j) in out_r.iter_mut().enumerate() {
            for b in 0..w.nb {
                let aq = &a.q[row * a.cols + b * QK..row * a.cols + (b + 1) * QK];
                let base = (j * w.nb + b) * TILE_BLOCK;
                for (lane, o) in out_j.iter_mut().enumerate() {
                    let mut dot = 0i32;
                    for (i, &av) in aq.iter().enumerate() {
                        dot += w.q[base + plain_index(lane, i)] as i32 * av as i32;
                    }
                    let at = (j * w.nb + b) * NR + lane;
                    let d = w.d[at].to_f32();
                    let m = w.m.map_or(w.sym * d, |m| m[at].to_f32());
                    *o += dot as f32 * (d * a.d[row * a.nb + b]) - m * a.mix[row * a.nb + b];
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
    use super::{Packing, Q8Rows, QMatrix, Tile, Tiles, NR, QK, TILE_BLOCK};
    use half::f16;

    /// Tile-blocks ahead that decoding kernels prefetch.
    const PREFETCH_AHEAD: usize = 8;

    /// Scales and offsets of 8 rows at `at` of the f16 layouts: offsets from `wm`, or
    /// `sym · scale` when `wm` is null.
    ///
    /// # Safety
    /// `wd + at .. + 8` (and `wm + at .. + 8` when not null) must be readable.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(wd: *const f16, wm: *const f16, sym: f32, at: usize) -> (__m256, __m256) {
        // SAFETY: the caller's contract.
        unsafe {
            let d = _mm256_cvtph_ps(_mm_loadu_si128(wd.add(at) as *const __m128i));
            let m = if wm.is_null() {
                _mm256_mul_ps(d, _mm256_set1_ps(sym))
            } else {
                _mm256_cvtph_ps(_mm_loadu_si128(wm.add(at) as *const __m128i))
            };
            (d, m)
        }
    }
    use std::arch::x86_64::*;

    /// Raw pointers to the operands of one micro-tile: the hot loops below index nothing, so
    /// they carry no bounds checks (the caller asserted the bounds once).
    struct Ptrs {
        /// Row `m0` of the activations; row `m0 + r` is `cols · r` bytes further.
        aq: *const i8,
        ad: *const f32,
        amix: *const f32,
        wq: *const u8,
        wd: *const f16,
        /// Null when offsets are `sym · d`.
        wm: *const f16,
        sym: f32,
    }

    impl Ptrs {
        fn new(a: &Q8Rows, m0: usize, w: &Tiles) -> Self {
            Self {
                aq: a.q[m0 * a.cols..].as_ptr(),
                ad: a.d[m0 * a.nb..].as_ptr(),
                amix: a.mix[m0 * a.nb..].as_ptr(),
                wq: w.q.as_ptr(),
                wd: w.d.as_ptr(),
                wm: w.m.map_or(std::ptr::null(), |m| m.as_ptr()),
                sym: w.sym,
            }
        }
    }

    /// `acc + (d_w · d_a) · dot − m_w · mix_a`: one block's integer dot products of 8 rows
    /// scaled, minus the weights' offsets times the activations' sum.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn finish(acc: __m256, dot: __m256i, dw: __m256, wm: __m256, da: __m256, mix: __m256) -> __m256 {
        _mm256_fnmadd_ps(wm, mix, _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_mul_ps(dw, da), acc))
    }

    /// Groups `g` and `g + 4` (`g` < 4) of a packed tile-block at `base`, one byte per value:
    /// a 32-byte load holds the low nibbles of both; with `five`, a 32-bit word of the bit plane
    /// becomes the fifth bit of each group's 32 values.
    ///
    /// # Safety
    /// `base` must point to a whole packed tile-block (160 bytes with `five`, else 128).
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw")]
    unsafe fn unpack_group(base: *const u8, g: usize, five: bool) -> (__m256i, __m256i) {
        let low = _mm256_set1_epi8(0x0F);
        // SAFETY: the caller's contract; g < 4 keeps every read inside the block.
        unsafe {
            let n = _mm256_loadu_si256(base.add(g * 32) as *const __m256i);
            let mut lo = _mm256_and_si256(n, low);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16(n, 4), low);
            if five {
                let bit4 = _mm256_set1_epi8(0x10);
                let plane = base.add(TILE_BLOCK / 2) as *const u32;
                let (pl, ph) = (plane.add(g).read_unaligned(), plane.add(g + 4).read_unaligned());
                lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_movm_epi8(pl), bit4));
                hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_movm_epi8(ph), bit4));
            }
            (lo, hi)
        }
    }

    /// # Safety
    /// The CPU must have AVX-512 VNNI, AVX-512 VL, AVX2 and FMA; `m0 + MR <= a.m` and `w` holds
    /// at least `NT` tiles of `a.nb` blocks.
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512vnni")]
    pub(super) unsafe fn micro_vnni<const MR: usize, const NT: usize>(
        a: &Q8Rows,
        m0: usize,
        w: &Tiles,
    ) -> Tile<MR, NT> {
        let p = Ptrs::new(a, m0, w);
        let (nb, cols) = (w.nb, a.cols);
        let mut acc = [[_mm256_setzero_ps(); NT]; MR];
        for b in 0..nb {
            if MR == 1 {
                // One row (decoding) streams the weights from memory: prefetch ahead, as in
                // `micro_vnni_packed`.
                for j in 0..NT {
                    let ahead = p.wq.wrapping_add((j * nb + b + PREFETCH_AHEAD) * TILE_BLOCK) as *const i8;
                    for line in 0..TILE_BLOCK / 64 {
                        _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(line * 64));
                    }
                }
            }
            let mut ia = [[_mm256_setzero_si256(); NT]; MR];
            for g in 0..QK / 4 {
                let mut wv = [_mm256_setzero_si256(); NT];
                for j in 0..NT {
                    // SAFETY: tile j < NT, block b < nb, group g < 8: inside w.q.
                    wv[j] = unsafe {
                        _mm256_loadu_si256(p.wq.add((j * nb + b) * TILE_BLOCK + g * NR * 4) as *const __m256i)
                    };
                }
                for r in 0..MR {
                    // SAFETY: row m0 + r < a.m and column b·32 + g·4 + 3 < cols: inside a.q.
                    let four = unsafe { (p.aq.add(r * cols + b * QK + g * 4) as *const i32).read_unaligned() };
                    let av = _mm256_set1_epi32(four);
                    for j in 0..NT {
                        ia[r][j] = _mm256_dpbusd_epi32(ia[r][j], wv[j], av);
                    }
                }
            }
            for r in 0..MR {
                // SAFETY: (m0 + r)·nb + b indexes a.d and a.mix; (j·nb + b)·8 + 7, w.d and w.m.
                let (da, mix) =
                    unsafe { (_mm256_set1_ps(*p.ad.add(r * nb + b)), _mm256_set1_ps(*p.amix.add(r * nb + b))) };
                for j in 0..NT {
                    let (dw, wm) = unsafe { scales(p.wd, p.wm, p.sym, (j * nb + b) * NR) };
                    acc[r][j] = finish(acc[r][j], ia[r][j], dw, wm, da, mix);
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
    pub(super) unsafe fn micro_vnni_4x2(a: &Q8Rows, m0: usize, w: &Tiles) -> Tile<4, 2> {
        let p = Ptrs::new(a, m0, w);
        let (nb, cols) = (w.nb, a.cols);
        let z = _mm256_setzero_ps();
        let (mut c00, mut c01, mut c10, mut c11, mut c20, mut c21, mut c30, mut c31) = (z, z, z, z, z, z, z, z);
        for b in 0..nb {
            let zi = _mm256_setzero_si256();
            let (mut i00, mut i01, mut i10, mut i11, mut i20, mut i21, mut i30, mut i31) =
                (zi, zi, zi, zi, zi, zi, zi, zi);
            // SAFETY (all pointer reads in this loop): rows m0..m0+4 < a.m, tiles 0 and 1 of w,
            // block b < nb and group g < 8, as asserted by the caller.
            let x = unsafe { p.aq.add(b * QK) };
            let (y0, y1) = unsafe { (p.wq.add(b * TILE_BLOCK), p.wq.add((nb + b) * TILE_BLOCK)) };
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
            let ((dw0, wm0), (dw1, wm1)) =
                unsafe { (scales(p.wd, p.wm, p.sym, b * NR), scales(p.wd, p.wm, p.sym, (nb + b) * NR)) };
            let row =
                |r: usize| unsafe { (_mm256_set1_ps(*p.ad.add(r * nb + b)), _mm256_set1_ps(*p.amix.add(r * nb + b))) };
            let (da, mix) = row(0);
            c00 = finish(c00, i00, dw0, wm0, da, mix);
            c01 = finish(c01, i01, dw1, wm1, da, mix);
            let (da, mix) = row(1);
            c10 = finish(c10, i10, dw0, wm0, da, mix);
            c11 = finish(c11, i11, dw1, wm1, da, mix);
            let (da, mix) = row(2);
            c20 = finish(c20, i20, dw0, wm0, da, mix);
            c21 = finish(c21, i21, dw1, wm1, da, mix);
            let (da, mix) = row(3);
            c30 = finish(c30, i30, dw0, wm0, da, mix);
            c31 = finish(c31, i31, dw1, wm1, da, mix);
        }
        store([[c00, c01], [c10, c11], [c20, c21], [c30, c31]])
    }

    /// One activation row against `NT` packed tiles of `w` from `t0`, unpacked in registers:
    /// a 32-byte load holds the low nibbles of groups g and the high nibbles of g + 4; with
    /// `FIVE`, a 32-bit word of the bit plane becomes the fifth bit of a group's 32 values.
    ///
    /// # Safety
    /// The CPU must have AVX-512 VNNI, VL and BW; `m0 < a.m`, `t0 + NT <= w.tiles`.
    #[target_feature(enable = "avx2,fma,avx512f,avx512vl,avx512bw,avx512vnni")]
    pub(super) unsafe fn micro_vnni_packed<const NT: usize, const FIVE: bool>(
        a: &Q8Rows,
        m0: usize,
        w: &QMatrix,
        t0: usize,
    ) -> Tile<1, NT> {
        let (nb, tb) = (w.nb, if FIVE { Packing::U5.bytes() } else { Packing::U4.bytes() });
        let x = a.q[m0 * a.cols..].as_ptr();
        let (ad, amix) = (a.d[m0 * a.nb..].as_ptr(), a.mix[m0 * a.nb..].as_ptr());
        let (wq, wd) = (w.q[t0 * nb * tb..].as_ptr(), w.d[t0 * nb * NR..].as_ptr());
        let wm = w.m.as_ref().map_or(std::ptr::null(), |m| m[t0 * nb * NR..].as_ptr());
        let mut acc = [_mm256_setzero_ps(); NT];
        for b in 0..nb {
            // SAFETY (all pointer reads in this loop): block b < nb of tiles t0..t0+NT of w and
            // of row m0 of a, as asserted by the caller.
            let bc = |g: usize| _mm256_set1_epi32(unsafe { (x.add(b * QK + g * 4) as *const i32).read_unaligned() });
            let mut ia = [_mm256_setzero_si256(); NT];
            for j in 0..NT {
                let base = unsafe { wq.add((j * nb + b) * tb) };
                // Decoding streams every weight from memory once: ask for blocks a few ahead
                // (a hint only; addresses past the end are never dereferenced).
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(PREFETCH_AHEAD * tb) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(PREFETCH_AHEAD * tb + 64) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(PREFETCH_AHEAD * tb + 128) as *const i8);
                for g in 0..4 {
                    // SAFETY: base is a whole packed tile-block of w.q.
                    let (lo, hi) = unsafe { unpack_group(base, g, FIVE) };
                    ia[j] = _mm256_dpbusd_epi32(ia[j], lo, bc(g));
                    ia[j] = _mm256_dpbusd_epi32(ia[j], hi, bc(g + 4));
                }
            }
            let (da, mix) = unsafe { (_mm256_set1_ps(*ad.add(b)), _mm256_set1_ps(*amix.add(b))) };
            for j in 0..NT {
                let (dw, mw) = unsafe { scales(wd, wm, w.sym, (j * nb + b) * NR) };
                acc[j] = finish(acc[j], ia[j], dw, mw, da, mix);
            }
        }
        store([acc])
    }

    /// Unpack 4- or 5-bit tile-blocks (`src`, whole blocks) to one byte per value (`dst`).
    ///
    /// # Safety
    /// The CPU must have AVX-512 BW and VL; `dst.len() == src.len() / bytes-per-block · 256`.
    #[target_feature(enable = "avx2,avx512f,avx512vl,avx512bw")]
    pub(super) unsafe fn unpack_tiles(five: bool, src: &[u8], dst: &mut [u8]) {
        let tb = if five { Packing::U5.bytes() } else { Packing::U4.bytes() };
        for (s, d) in src.chunks_exact(tb).zip(dst.chunks_exact_mut(TILE_BLOCK)) {
            for g in 0..4 {
                // SAFETY: s holds tb ≥ 160 (U5) or 128 (U4) bytes, d 256.
                unsafe {
                    let (lo, hi) = unpack_group(s.as_ptr(), g, five);
                    _mm256_storeu_si256(d.as_mut_ptr().add(g * 32) as *mut __m256i, lo);
                    _mm256_storeu_si256(d.as_mut_ptr().add((g + 4) * 32) as *mut __m256i, hi);
                }
            }
        }
    }

    /// # Safety
    /// The CPU must have AVX2 and FMA; bounds as for [`micro_vnni`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn micro_avx2<const MR: usize, const NT: usize>(
        a: &Q8Rows,
        m0: usize,
        w: &Tiles,
    ) -> Tile<MR, NT> {
        let p = Ptrs::new(a, m0, w);
        let (nb, cols) = (w.nb, a.cols);
        let ones = _mm256_set1_epi16(1);
        let flip = _mm256_set1_epi8(-128);
        let k128 = _mm256_set1_ps(128.0);
        let mut acc = [[_mm256_setzero_ps(); NT]; MR];
        for b in 0..nb {
            let mut ia = [[_mm256_setzero_si256(); NT]; MR];
            for g in 0..QK / 4 {
                let mut wabs = [_mm256_setzero_si256(); NT];
                let mut wsgn = [_mm256_setzero_si256(); NT];
                for j in 0..NT {
                    // SAFETY: as in `micro_vnni`.
                    let v = unsafe {
                        _mm256_loadu_si256(p.wq.add((j * nb + b) * TILE_BLOCK + g * NR * 4) as *const __m256i)
                    };
                    let s = _mm256_xor_si256(v, flip); // u − 128, signed
                    wabs[j] = _mm256_abs_epi8(s);
                    wsgn[j] = s;
                }
                for r in 0..MR {
                    // SAFETY: as in `micro_vnni`.
                    let four = unsafe { (p.aq.add(r * cols + b * QK + g * 4) as *const i32).read_unaligned() };
                    let av = _mm256_set1_epi32(four);
                    for j in 0..NT {
                        // |s| · (a · sign s) = s · a, pairs summed in i16 (≤ 2·128·127), then
                        // pairs of pairs in i32: lane = row.
                        let prod = _mm256_maddubs_epi16(wabs[j], _mm256_sign_epi8(av, wsgn[j]));
                        ia[r][j] = _mm256_add_epi32(ia[r][j], _mm256_madd_epi16(prod, ones));
                    }
                }
            }
            for r in 0..MR {
                // SAFETY: as in `micro_vnni`.
                let (da, mix) =
                    unsafe { (_mm256_set1_ps(*p.ad.add(r * nb + b)), _mm256_set1_ps(*p.amix.add(r * nb + b))) };
                for j in 0..NT {
                    let (dw, wm) = unsafe { scales(p.wd, p.wm, p.sym, (j * nb + b) * NR) };
                    // w·a = d·Σ(u − 128)a + (128·d − m)·Σa.
                    acc[r][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(ia[r][j]), _mm256_mul_ps(dw, da), acc[r][j]);
                    acc[r][j] = _mm256_fmadd_ps(_mm256_fmsub_ps(dw, k128, wm), mix, acc[r][j]);
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

/// Keep memory that was freed for reuse instead of handing it back to the OS. mimalloc purges
/// freed memory after 10 ms by default; the next tensor of that size then page-faults and the
/// kernel zeroes its (huge) pages again: `clear_page_erms` took 39% of a LoRA step. Kotae's
/// working set repeats (training batches, generation and embedding buffers), so with this a
/// LoRA step ran ~1.45x faster for ~80 MiB more peak memory (README, Benchmarks).
/// `MIMALLOC_PURGE_DELAY` in the environment still decides where it is set. Both binaries
/// call it first thing (mimalloc is their global allocator).
#[allow(unsafe_code)]
pub fn keep_freed_memory() {
    /// `mi_option_purge_delay` in mimalloc's `mi_option_e` (v3 and v2).
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one option of the process's allocator; mimalloc reads it on each purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
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

    /// Reference: dequantized weights times dequantized activations, in f64, with the sum of
    /// absolute products (the scale of rounding errors).
    fn reference(w: &QMatrix, x: &[f32], m: usize) -> Vec<(f32, f32)> {
        let a = Q8Rows::quantize(x, m, w.cols);
        let mut wrow = vec![0f32; w.cols];
        let mut out = vec![(0f32, 0f32); m * w.rows];
        for n in 0..w.rows {
            w.dequantize_row(n, &mut wrow);
            for r in 0..m {
                let (mut s, mut abs) = (0f64, 0f64);
                for (k, wv) in wrow.iter().enumerate() {
                    let av = a.q[r * w.cols + k] as f64 * a.d[r * a.nb + k / QK] as f64;
                    s += av * *wv as f64;
                    abs += (av * *wv as f64).abs();
                }
                out[r * w.rows + n] = (s as f32, abs as f32);
            }
        }
        out
    }

    fn check(w: &QMatrix, x: &[f32], m: usize, what: &str) {
        let want = reference(w, x, m);
        for kernel in [Kernel::Scalar, Kernel::Avx2, Kernel::Avx512Vnni] {
            let mut got = vec![f32::NAN; m * w.rows];
            w.matmul_with(kernel, x, m, &mut got);
            for (i, (g, (e, abs))) in got.iter().zip(&want).enumerate() {
                assert!((g - e).abs() <= 1e-5 * abs + 1e-6, "{what} {kernel:?} m={m} [{i}]: {g} vs {e} (Σ|w·a| {abs})");
            }
        }
    }

    /// Random affine blocks with values below 2^bits.
    fn affine(rows: usize, cols: usize, bits: u32, seed: u64) -> QMatrix {
        let nb = cols / QK;
        let r = data(rows * cols + 2 * rows * nb, seed);
        let u: Vec<u8> =
            r[..rows * cols].iter().map(|v| ((v + 1.0) / 2.0 * ((1u32 << bits) as f32 - 0.01)) as u8).collect();
        // Scales and offsets are kept in f16: start from f16 values so they come back exactly.
        let h = |x: f32| f16::from_f32(x).to_f32();
        let d: Vec<f32> = r[rows * cols..rows * cols + rows * nb].iter().map(|v| h(0.01 + v.abs() * 0.05)).collect();
        let m: Vec<f32> = r[rows * cols + rows * nb..].iter().map(|v| h(v * 0.3)).collect();
        let w = QMatrix::from_affine(rows, cols, &u, &d, &m, bits);
        if Kernel::detect() == Kernel::Avx512Vnni {
            assert_eq!(w.packing(), if bits == 4 { Packing::U4 } else { Packing::U5 });
        }
        // Values come back exactly.
        let mut row = vec![0f32; cols];
        for i in 0..rows {
            w.dequantize_row(i, &mut row);
            for k in 0..cols {
                let want = d[i * nb + k / QK] * u[i * cols + k] as f32 - m[i * nb + k / QK];
                assert!((row[k] - want).abs() <= 1e-6 * (1.0 + want.abs()), "{bits}-bit value ({i}, {k})");
            }
        }
        w
    }

    #[test]
    fn quantize_round_trip_is_close() {
        let (rows, cols) = (13, 64);
        let x = data(rows * cols, 1);
        let w = QMatrix::quantize(&x, rows, cols);
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
            let w = QMatrix::quantize(&data(rows * cols, rows as u64), rows, cols);
            let x = data(m * cols, 7 + m as u64);
            check(&w, &x, m, &format!("8-bit {rows}x{cols}"));
            // 4- and 5-bit blocks with offsets (packed when the CPU has AVX-512 VNNI): the
            // single-row path unpacks in registers, the multi-row path into a scratch tile.
            for bits in [4, 5] {
                let w = affine(rows, cols, bits, 99 + rows as u64);
                check(&w, &x, m, &format!("{bits}-bit {rows}x{cols}"));
            }
        }
    }

    #[test]
    fn blocks_round_to_nearest_even() {
        let mut q = [0i8; QK];
        let plain = |x: &[f32]| -> (Vec<i8>, f32) {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = if d != 0.0 { 1.0 / d } else { 0.0 };
            (x.iter().map(|v| (v * id).round_ties_even() as i8).collect(), half::f16::from_f32(d).to_f32())
        };
        let mut blocks: Vec<Vec<f32>> = (0..300).map(|s| data(QK, s)).collect();
        // Exact halves (127 · k / 254 against a maximum of 127), zeros, and a broken block.
        blocks.push((0..QK).map(|i| if i == 0 { 127.0 } else { i as f32 + 0.5 }).collect());
        blocks.push(vec![0.0; QK]);
        blocks.push((0..QK).map(|i| if i == 3 { f32::INFINITY } else { 1.0 }).collect());
        for x in &blocks {
            let d = quantize_block(x, &mut q);
            assert_eq!((q.to_vec(), d), plain(x), "{x:?}");
        }
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        // Every weight and activation at ±127 after quantization: the AVX2 path's i16 pair
        // sums are at their largest here.
        let (rows, cols, m) = (16, 512, 5);
        let w: Vec<f32> = (0..rows * cols).map(|i| if (i / 3) % 2 == 0 { 1.0 } else { -1.0 }).collect();
        let x: Vec<f32> = (0..m * cols).map(|i| if (i / 5) % 2 == 0 { -2.0 } else { 2.0 }).collect();
        let w = QMatrix::quantize(&w, rows, cols);
        check(&w, &x, m, "±127");
    }
}

//! Quick throughput check of the int8 kernels: `cargo run -p kotae-kernels --example q8bench`.
//! A 4864 × 896 matrix (Qwen2.5 0.5B's MLP) in 8-bit (Q8_0) and packed 5- and 4-bit forms; a
//! 1-row product (decoding; the matrix is cache-resident here, so this is compute speed) and
//! a 512-row one (a prompt chunk).
use kotae_kernels::{Kernel, QMatrix};
use std::time::Instant;

fn main() {
    let (n, k) = (4864, 896);
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let nb = k / 32;
    let u5: Vec<u8> = (0..n * k).map(|i| ((i * 31) % 32) as u8).collect();
    let u4: Vec<u8> = u5.iter().map(|v| v & 15).collect();
    let d = vec![0.01f32; n * nb];
    let m = vec![0.1f32; n * nb];
    let mats = [
        ("8-bit", QMatrix::quantize(&w, n, k)),
        ("5-bit", QMatrix::from_affine(n, k, &u5, &d, &m, 5)),
        ("4-bit", QMatrix::from_affine(n, k, &u4, &d, &m, 4)),
    ];
    for (name, w) in &mats {
        for rows in [1usize, 512] {
            let x: Vec<f32> = (0..rows * k).map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0).collect();
            let mut out = vec![0f32; rows * n];
            for kernel in [Kernel::Avx512Vnni, Kernel::Avx2] {
                if *name != "8-bit" && kernel != Kernel::Avx512Vnni {
                    continue;
                }
                let reps = if rows == 1 { 200 } else { 5 };
                w.matmul_with(kernel, &x, rows, &mut out);
                let t = Instant::now();
                for _ in 0..reps {
                    w.matmul_with(kernel, &x, rows, &mut out);
                }
                let s = t.elapsed().as_secs_f64() / reps as f64;
                println!(
                    "{name} {:?} {kernel:?} m={rows}: {:.3} ms, {:.1} GMAC/s",
                    w.packing(),
                    s * 1e3,
                    (rows * n * k) as f64 / s / 1e9
                );
            }
        }
    }
}

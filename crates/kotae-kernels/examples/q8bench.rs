//! Quick throughput check of the int8 kernels: `cargo run -p kotae-kernels --example q8bench`.
use kotae_kernels::{Kernel, Q8Matrix};
use std::time::Instant;

fn main() {
    let (n, k) = (4864, 896);
    let w: Vec<f32> = (0..n * k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let w = Q8Matrix::quantize(&w, n, k);
    for m in [1usize, 512] {
        let x: Vec<f32> = (0..m * k).map(|i| ((i * 104729) % 997) as f32 / 498.0 - 1.0).collect();
        let mut out = vec![0f32; m * n];
        for kernel in [Kernel::Avx512Vnni, Kernel::Avx2, Kernel::Scalar] {
            if kernel == Kernel::Scalar && m > 1 {
                continue;
            }
            let reps = if m == 1 { 200 } else { 5 };
            w.matmul_with(kernel, &x, m, &mut out);
            let t = Instant::now();
            for _ in 0..reps {
                w.matmul_with(kernel, &x, m, &mut out);
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!("{kernel:?} m={m}: {:.3} ms, {:.1} GMAC/s", s * 1e3, (m * n * k) as f64 / s / 1e9);
        }
    }
}

//! Where a training step's time goes, for `kotae-bench lora --profile`: named spans that wait
//! for the device before and after (so GPU work is charged to the span that queued it), summed
//! by name. Off by default, when a span costs one atomic load; on, every span synchronises the
//! device, which slows the run: read the shares, not the speed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use candle_core::Device;

static ON: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<&'static str, (u64, f64)>> = Mutex::new(BTreeMap::new());

/// Start (or stop) recording; starting clears what was recorded.
pub fn enable(on: bool) {
    if on {
        if let Ok(mut t) = TABLE.lock() {
            t.clear();
        }
    }
    ON.store(on, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Time from here to the guard's drop, charged to `name`.
pub fn span(device: &Device, name: &'static str) -> Option<Span> {
    if !enabled() {
        return None;
    }
    let _ = device.synchronize();
    Some(Span { device: device.clone(), name, t0: Instant::now() })
}

pub struct Span {
    device: Device,
    name: &'static str,
    t0: Instant,
}

impl Drop for Span {
    fn drop(&mut self) {
        let _ = self.device.synchronize();
        let dt = self.t0.elapsed().as_secs_f64();
        if let Ok(mut t) = TABLE.lock() {
            let e = t.entry(self.name).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += dt;
        }
    }
}

/// The spans recorded, per step (`steps` of them), longest first. Names with a `:` nest in the
/// one before it (`step:forward` holds every `fwd:` span).
pub fn report(steps: usize) -> String {
    let t = match TABLE.lock() {
        Ok(t) => t.clone(),
        Err(_) => return String::new(),
    };
    let per_step: f64 = t.iter().filter(|(k, _)| k.starts_with("step:")).map(|(_, v)| v.1).sum();
    let mut rows: Vec<_> = t.into_iter().collect();
    rows.sort_by(|a, b| a.0.split(':').next().cmp(&b.0.split(':').next()).then(b.1 .1.total_cmp(&a.1 .1)));
    let steps = steps.max(1) as f64;
    let mut out = format!("{:<28} {:>8} {:>12} {:>8}\n", "span", "calls", "ms/step", "of step");
    for (name, (n, s)) in rows {
        out.push_str(&format!(
            "{name:<28} {:>8.0} {:>12.2} {:>7.1}%\n",
            n as f64 / steps,
            s * 1e3 / steps,
            100.0 * s / per_step.max(1e-12)
        ));
    }
    out
}

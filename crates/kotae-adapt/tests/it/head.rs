//! The transfer-learning head on a separable toy set.

use kotae_adapt::head::{metrics, stratified_split, train_head, Head, HeadConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn toy(n_per: usize, seed: u64) -> (Vec<Vec<f32>>, Vec<usize>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let centers: Vec<Vec<f32>> = (0..3).map(|_| (0..16).map(|_| rng.random_range(-1.0..1.0)).collect()).collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (c, center) in centers.iter().enumerate() {
        // Imbalanced on purpose: class 2 is rare.
        let n = if c == 2 { n_per / 4 } else { n_per };
        for _ in 0..n {
            x.push(center.iter().map(|v| v + rng.random_range(-0.35..0.35)).collect());
            y.push(c);
        }
    }
    (x, y)
}

#[test]
fn head_beats_chance_on_a_separable_set_and_round_trips() {
    let (x, y) = toy(80, 7);
    let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    for hidden in [0, 32] {
        let cfg = HeadConfig { hidden, epochs: 40, ..Default::default() };
        let head = train_head("toy", "none", &labels, &x, &y, &cfg, &|_| false).unwrap();
        let v = &head.card.validation;
        assert!(v.accuracy > 0.9 && v.macro_f1 > 0.85, "hidden {hidden}: {v:?}");
        assert!(v.per_class[2].support >= 1, "the rare class is in the held-out set");
        let dir = tempfile::tempdir().unwrap();
        head.save(dir.path()).unwrap();
        let back = Head::load(dir.path()).unwrap();
        assert_eq!(back.probabilities(&x[..5]).unwrap(), head.probabilities(&x[..5]).unwrap());
        assert_eq!(back.classify(&x[0]).unwrap().0, "a");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("head.json"), "{}").unwrap();
    assert!(Head::load(dir.path()).err().unwrap().to_string().contains("not a head card"));
}

#[test]
fn metrics_and_split_are_right() {
    let labels: Vec<String> = ["x", "y"].map(String::from).to_vec();
    let m = metrics(&labels, &[0, 0, 1, 1], &[0, 1, 1, 1]);
    assert_eq!(m.confusion, vec![vec![1, 1], vec![0, 2]]);
    assert!((m.accuracy - 0.75).abs() < 1e-9);
    // x: p=1 r=.5 f1=.667; y: p=.667 r=1 f1=.8
    assert!((m.macro_f1 - (2.0 / 3.0 + 0.8) / 2.0).abs() < 1e-9);
    let y: Vec<usize> = (0..50).map(|i| if i < 40 { 0 } else { 1 }).collect();
    let (tr, va) = stratified_split(&y, 0.2, 1);
    assert_eq!(va.iter().filter(|&&i| y[i] == 0).count(), 8);
    assert_eq!(va.iter().filter(|&&i| y[i] == 1).count(), 2);
    assert_eq!(tr.len() + va.len(), 50);
}

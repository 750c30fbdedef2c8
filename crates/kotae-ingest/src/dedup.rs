//! Exact and near-duplicate detection: a normalized-text hash, and MinHash over character
//! 4-grams with LSH banding (works the same for Japanese, which has no spaces, and English).

use std::collections::HashMap;

use sha2::{Digest, Sha256};

const NUM_HASHES: usize = 64;
const BANDS: usize = 16;
const ROWS: usize = NUM_HASHES / BANDS;
const SHINGLE: usize = 4;

/// Text reduced for comparison: lowercase, punctuation and whitespace removed.
pub fn comparison_key(text: &str) -> String {
    text.chars().filter(|c| c.is_alphanumeric()).flat_map(char::to_lowercase).collect()
}

/// Hex SHA-256 of the comparison key: equal for texts that differ only in case, spacing or
/// punctuation.
pub fn exact_hash(text: &str) -> String {
    hex::encode(&Sha256::digest(comparison_key(text).as_bytes())[..16])
}

fn mix(mut x: u64) -> u64 {
    // splitmix64 finalizer
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d049bb133111eb);
    x ^ (x >> 31)
}

/// MinHash signature of a text's character shingles.
pub fn minhash(text: &str) -> [u32; NUM_HASHES] {
    let chars: Vec<char> = comparison_key(text).chars().collect();
    let mut sig = [u32::MAX; NUM_HASHES];
    if chars.is_empty() {
        return sig;
    }
    let n = chars.len().saturating_sub(SHINGLE - 1).max(1);
    for i in 0..n {
        let mut h: u64 = 0xcbf29ce484222325;
        for c in &chars[i..(i + SHINGLE).min(chars.len())] {
            h = (h ^ *c as u64).wrapping_mul(0x100000001b3);
        }
        for (k, s) in sig.iter_mut().enumerate() {
            let v = (mix(h ^ (k as u64).wrapping_mul(0x9e3779b97f4a7c15)) >> 32) as u32;
            if v < *s {
                *s = v;
            }
        }
    }
    sig
}

/// Estimated Jaccard similarity of two signatures.
pub fn similarity(a: &[u32; NUM_HASHES], b: &[u32; NUM_HASHES]) -> f32 {
    a.iter().zip(b).filter(|(x, y)| x == y).count() as f32 / NUM_HASHES as f32
}

/// LSH band keys of a signature: texts sharing one key are near-duplicate candidates.
pub fn band_keys(sig: &[u32; NUM_HASHES]) -> [u64; BANDS] {
    std::array::from_fn(|b| {
        let mut h: u64 = mix(b as u64 + 1);
        for v in &sig[b * ROWS..(b + 1) * ROWS] {
            h = mix(h ^ *v as u64);
        }
        h
    })
}

/// Texts remembered per band key. A repetitive corpus (10,000 manuals from a few templates,
/// inquiry logs asking the same thing in many ways) crowds some keys with texts that are alike
/// but not duplicates; comparing every new text with all of them made ingestion quadratic.
/// A text crowded out of one key is still found through its other fifteen.
const BUCKET_CAP: usize = 24;

/// Finds duplicates among the texts inserted so far.
pub struct Deduper {
    threshold: f32,
    exact: HashMap<String, usize>,
    bands: HashMap<u64, Vec<u32>>,
    sigs: Vec<[u32; NUM_HASHES]>,
}

impl Deduper {
    /// `threshold`: estimated Jaccard similarity at or above which two texts are duplicates.
    pub fn new(threshold: f32) -> Self {
        Self { threshold, exact: HashMap::new(), bands: HashMap::new(), sigs: Vec::new() }
    }

    /// If `text` duplicates an earlier one, return that one's id; otherwise remember `text`
    /// under the next id and return `None`.
    pub fn check_insert(&mut self, text: &str) -> Option<usize> {
        let key = exact_hash(text);
        if let Some(&id) = self.exact.get(&key) {
            return Some(id);
        }
        let sig = minhash(text);
        let keys = band_keys(&sig);
        let mut checked: Vec<u32> = Vec::new();
        for k in &keys {
            for &id in self.bands.get(k).map(Vec::as_slice).unwrap_or_default() {
                if checked.contains(&id) {
                    continue;
                }
                if similarity(&self.sigs[id as usize], &sig) >= self.threshold {
                    return Some(id as usize);
                }
                checked.push(id);
            }
        }
        let id = self.sigs.len();
        self.sigs.push(sig);
        self.exact.insert(key, id);
        for k in keys {
            let bucket = self.bands.entry(k).or_default();
            if bucket.len() < BUCKET_CAP {
                bucket.push(id as u32);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_exact_and_near_duplicates() {
        let mut d = Deduper::new(0.7);
        let a = "VPNに接続できない場合は、まずネットワーク設定を確認し、クライアントを再起動してください。";
        assert_eq!(d.check_insert(a), None);
        assert_eq!(
            d.check_insert("VPNに接続できない場合は まずネットワーク設定を確認し クライアントを再起動してください"),
            Some(0)
        );
        assert_eq!(
            d.check_insert("VPNに接続できない場合は、まずネットワーク設定を確認し、クライアントを再起動して下さい。"),
            Some(0)
        );
        assert_eq!(d.check_insert("経費精算は月末までに申請してください。領収書の原本が必要です。"), None);
        assert_eq!(d.check_insert("How do I reset my password?"), None);
        assert_eq!(d.check_insert("how do i reset my password"), Some(2));
    }
}

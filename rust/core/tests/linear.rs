//! The fused linear head (`token.md` §8.2) against explicit logits: f32 and f64, with and without
//! bias, `ignore_index`, row counts around the 16-row block and vocabularies around the 2048 tile.

use super::{
    assert_close, assert_rel, assert_value_error, assert_within, bits, restore_threads, serial,
    Oracle, Rng,
};
use crate::core::linear::{linear_logprob_entropy, HeadArgs, HeadFloat};
use crate::core::pool;
use crate::core::token::{token_stats, Labels, Temperature, TokenArgs, TokenOutputs};

/// A random problem: `hidden (N, D)`, `weight (V, D)`, `bias (V,)`, labels.
struct Problem {
    rows: usize,
    dim: usize,
    vocab: usize,
    hidden: Vec<f64>,
    weight: Vec<f64>,
    bias: Vec<f64>,
    labels: Vec<i64>,
}

impl Problem {
    fn new(rng: &mut Rng, rows: usize, dim: usize, vocab: usize) -> Problem {
        let scale = 2.5 / (dim as f64).sqrt();
        Problem {
            rows,
            dim,
            vocab,
            hidden: (0..rows * dim).map(|_| 1.5 * rng.normal()).collect(),
            weight: (0..vocab * dim).map(|_| scale * rng.normal()).collect(),
            bias: (0..vocab).map(|_| rng.normal()).collect(),
            labels: (0..rows).map(|_| rng.below(vocab) as i64).collect(),
        }
    }

    fn args(&self, temperature: f64, ignore_index: Option<i64>) -> HeadArgs<'_> {
        HeadArgs {
            rows: self.rows,
            dim: self.dim,
            vocab: self.vocab,
            labels: &self.labels,
            temperature,
            ignore_index,
            collision: true,
        }
    }

    /// Explicit logits `hidden @ weightᵀ (+ bias)` in float64 from the values `cast` rounds to.
    fn logits(&self, with_bias: bool, cast: fn(f64) -> f64) -> Vec<f64> {
        let (d, v) = (self.dim, self.vocab);
        let mut out = Vec::with_capacity(self.rows * v);
        for r in 0..self.rows {
            let h = &self.hidden[r * d..(r + 1) * d];
            for j in 0..v {
                let w = &self.weight[j * d..(j + 1) * d];
                let dot: f64 = h.iter().zip(w).map(|(&a, &b)| cast(a) * cast(b)).sum();
                out.push(dot + if with_bias { cast(self.bias[j]) } else { 0.0 });
            }
        }
        out
    }

    fn run<F: HeadFloat>(
        &self,
        conv: fn(f64) -> F,
        with_bias: bool,
        temperature: f64,
        ignore_index: Option<i64>,
    ) -> crate::core::error::Result<TokenOutputs> {
        let hidden: Vec<F> = self.hidden.iter().map(|&x| conv(x)).collect();
        let weight: Vec<F> = self.weight.iter().map(|&x| conv(x)).collect();
        let bias: Vec<F> = self.bias.iter().map(|&x| conv(x)).collect();
        let b = with_bias.then_some(bias.as_slice());
        linear_logprob_entropy(&hidden, &weight, b, &self.args(temperature, ignore_index))
    }
}

fn f32_of(x: f64) -> f32 {
    x as f32
}

fn f64_of(x: f64) -> f64 {
    x
}

fn round_f32(x: f64) -> f64 {
    x as f32 as f64
}

fn check(p: &Problem, out: &TokenOutputs, logits: &[f64], t: f64, ignore: Option<i64>, what: &str) {
    let v = p.vocab;
    let lp = out.logprob.as_ref().unwrap();
    let coll = out.collision.as_ref().unwrap();
    assert_eq!(
        (lp.len(), out.entropy.len(), coll.len()),
        (p.rows, p.rows, p.rows)
    );
    assert!(out.lse.is_none());
    for r in 0..p.rows {
        let row = &logits[r * v..(r + 1) * v];
        let o = Oracle::new(row, t).unwrap();
        let what = format!("{what} row {r}");
        assert_close(out.entropy[r], o.entropy(), &format!("{what}: entropy"));
        assert_rel(coll[r], o.collision(), 1e-5, &format!("{what}: collision"));
        let y = p.labels[r];
        if Some(y) == ignore {
            assert_eq!(lp[r].to_bits(), 0f32.to_bits(), "{what}: ignored");
        } else {
            assert_close(
                lp[r],
                o.logprob(row[y as usize], t),
                &format!("{what}: logprob"),
            );
            assert!(lp[r] <= 0.0, "{what}: logprob {} > 0", lp[r]);
        }
    }
}

const SHAPES: [(usize, usize, usize); 9] = [
    // (rows, dim, vocab)
    (1, 1, 1),
    (1, 3, 2),
    (15, 8, 2047),
    (16, 5, 2048),
    (17, 13, 2049),
    (33, 4, 4100),
    (3, 16, 9),
    (20, 1, 33),
    (0, 6, 100),
];

#[test]
fn matches_explicit_logits() {
    let mut rng = Rng::new(61);
    for (rows, dim, vocab) in SHAPES {
        let mut p = Problem::new(&mut rng, rows, dim, vocab);
        if rows > 2 {
            p.labels[1] = -100;
            p.labels[rows - 1] = -100;
        }
        for with_bias in [false, true] {
            for t in [1.0, 0.7] {
                for ignore in [None, Some(-100)] {
                    if ignore.is_none() && rows > 2 {
                        let err = p.run(f32_of, with_bias, t, ignore);
                        assert_value_error(err, "labels", &["-100"]);
                        continue;
                    }
                    let what = format!("N={rows} D={dim} V={vocab} bias={with_bias} t={t}");
                    let out = p.run(f32_of, with_bias, t, ignore).unwrap();
                    let logits = p.logits(with_bias, round_f32);
                    check(&p, &out, &logits, t, ignore, &format!("f32 {what}"));
                    let out = p.run(f64_of, with_bias, t, ignore).unwrap();
                    let logits = p.logits(with_bias, f64_of);
                    check(&p, &out, &logits, t, ignore, &format!("f64 {what}"));
                }
            }
        }
    }
}

#[test]
fn agrees_with_token_stats_on_materialised_logits() {
    // float64: the head and `token_stats` over `hidden @ weightᵀ + bias` differ only in the order
    // of the dot products.
    let mut rng = Rng::new(62);
    for (rows, dim, vocab) in [(17, 7, 2049), (5, 3, 5000), (16, 9, 2048)] {
        let p = Problem::new(&mut rng, rows, dim, vocab);
        let logits = p.logits(true, f64_of);
        for t in [1.0, 1.3] {
            let head = p.run(f64_of, true, t, None).unwrap();
            let a = TokenArgs {
                vocab,
                temperature: Temperature::Scalar(t),
                labels: Some(Labels {
                    values: &p.labels,
                    per_row: 1,
                }),
                ignore_index: None,
                collision: true,
                lse: false,
                propagate_nan: false,
            };
            let stats = token_stats(&logits, &a).unwrap();
            for r in 0..rows {
                let what = format!("N={rows} V={vocab} t={t} row {r}");
                let pairs = [
                    (head.entropy[r], stats.entropy[r]),
                    (
                        head.logprob.as_ref().unwrap()[r],
                        stats.logprob.as_ref().unwrap()[r],
                    ),
                    (
                        head.collision.as_ref().unwrap()[r],
                        stats.collision.as_ref().unwrap()[r],
                    ),
                ];
                for (a, b) in pairs {
                    assert_within(a, b as f64, 1e-6, &what);
                }
            }
        }
    }
}

#[test]
fn row_alone_equals_row_in_block() {
    let _guard = serial();
    let mut rng = Rng::new(63);
    let p = Problem::new(&mut rng, 37, 6, 2100);
    let all = p.run(f32_of, true, 0.9, None).unwrap();
    for r in [0, 15, 16, 17, 36] {
        let one = Problem {
            rows: 1,
            dim: p.dim,
            vocab: p.vocab,
            hidden: p.hidden[r * p.dim..(r + 1) * p.dim].to_vec(),
            weight: p.weight.clone(),
            bias: p.bias.clone(),
            labels: vec![p.labels[r]],
        };
        let alone = one.run(f32_of, true, 0.9, None).unwrap();
        assert_eq!(
            alone.entropy[0].to_bits(),
            all.entropy[r].to_bits(),
            "row {r}"
        );
        assert_eq!(
            alone.logprob.unwrap()[0].to_bits(),
            all.logprob.as_ref().unwrap()[r].to_bits(),
            "row {r}"
        );
    }
}

#[test]
fn thread_count_invariance() {
    let _guard = serial();
    let mut rng = Rng::new(64);
    let p = Problem::new(&mut rng, 40, 8, 2049);
    assert!(p.rows * p.dim * p.vocab >= pool::PARALLEL_MIN_WORK);
    let mut reference = None;
    for threads in [1, 2, 8] {
        pool::set_num_threads(threads);
        let out = p.run(f32_of, true, 0.8, None).unwrap();
        let b = [
            bits(&out.entropy),
            bits(out.logprob.as_ref().unwrap()),
            bits(out.collision.as_ref().unwrap()),
        ];
        match &reference {
            None => reference = Some(b),
            Some(r) => assert_eq!(&b, r, "{threads} threads"),
        }
    }
    restore_threads();
}

#[test]
fn errors() {
    let mut rng = Rng::new(65);
    let p = Problem::new(&mut rng, 3, 4, 5);
    let h: Vec<f32> = p.hidden.iter().map(|&x| x as f32).collect();
    let w: Vec<f32> = p.weight.iter().map(|&x| x as f32).collect();
    let b = vec![0f32; 5];
    let run = |h: &[f32], w: &[f32], b: Option<&[f32]>, a: &HeadArgs<'_>| {
        linear_logprob_entropy(h, w, b, a)
    };
    let mut a = p.args(1.0, None);
    assert!(run(&h, &w, Some(&b), &a).is_ok());
    assert_value_error(run(&h[1..], &w, None, &a), "weight", &["disagree"]);
    assert_value_error(run(&h, &w[1..], None, &a), "weight", &["disagree"]);
    assert_value_error(run(&h, &w, Some(&b[1..]), &a), "bias", &["5"]);
    for t in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        a.temperature = t;
        assert_value_error(run(&h, &w, None, &a), "temperature", &[]);
    }
    a.temperature = 1.0;
    let short = [0i64, 1];
    a.labels = &short;
    assert_value_error(run(&h, &w, None, &a), "labels", &["expected 3"]);
    let bad = [0i64, 5, 1];
    a.labels = &bad;
    assert_value_error(run(&h, &w, None, &a), "labels", &["5", "index 1"]);
    let neg = [0i64, -1, 1];
    a.labels = &neg;
    assert_value_error(run(&h, &w, None, &a), "labels", &["-1"]);
    a.ignore_index = Some(-1);
    assert!(run(&h, &w, None, &a).is_ok());
    // NaN or infinite logits name the row.
    a.labels = &p.labels;
    let mut nan = h.clone();
    nan[2 * 4 + 1] = f32::NAN;
    assert_value_error(run(&nan, &w, None, &a), "hidden", &["row 2"]);
    let mut inf = h.clone();
    inf[4] = f32::INFINITY;
    assert_value_error(run(&inf, &w, None, &a), "hidden", &["row 1"]);
    // An empty vocabulary.
    a.vocab = 0;
    assert_value_error(run(&h, &[], None, &a), "weight", &["V = 0"]);
}

#[test]
fn ignore_index_inside_the_vocabulary() {
    let mut rng = Rng::new(66);
    let mut p = Problem::new(&mut rng, 20, 3, 40);
    p.labels.iter_mut().step_by(3).for_each(|y| *y = 0);
    let out = p.run(f64_of, false, 1.0, Some(0)).unwrap();
    let logits = p.logits(false, f64_of);
    check(&p, &out, &logits, 1.0, Some(0), "ignore_index 0");
}

#[test]
fn masked_bias_entries_are_skipped() {
    // hidden (1, 1) = [1], weight (3, 1) = [1, 1, 1], bias = [0, −∞, 0]: logits [1, −∞, 1].
    let args = HeadArgs {
        rows: 1,
        dim: 1,
        vocab: 3,
        labels: &[0],
        temperature: 1.0,
        ignore_index: None,
        collision: true,
    };
    let out = linear_logprob_entropy(
        &[1.0f32],
        &[1.0, 1.0, 1.0],
        Some(&[0.0, f32::NEG_INFINITY, 0.0]),
        &args,
    )
    .unwrap();
    let ln2 = std::f64::consts::LN_2;
    assert_close(out.entropy[0], ln2, "entropy");
    assert_close(out.logprob.unwrap()[0], -ln2, "logprob");
    assert_close(out.collision.unwrap()[0], 0.5, "collision");
}

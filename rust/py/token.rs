//! Bindings of the token kernels (`token.md`). The Python layer (`entcore.token`) has already
//! checked ranks and shapes; every value-level check happens in the core.

use numpy::{PyArray1, PyReadonlyArray1, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;

use super::arrays::optional_slice;
use super::errors::{to_py, type_error, value_error};
use crate::core::dtype::{as_bf16, as_f16};
use crate::core::linear::{linear_logprob_entropy, HeadArgs};
use crate::core::plogp::prob_entropy as prob_entropy_kernel;
use crate::core::renyi::renyi_entropy as renyi_kernel;
use crate::core::token::{
    token_stats as stats_kernel, Labels, Temperature, TokenArgs, TokenOutputs,
};
use crate::core::topk::{topk_entropy as topk_kernel, TopkMode};

/// A C-contiguous `(N, V)` logits array of one of the four kinds.
enum Logits<'py> {
    F32(PyReadonlyArray2<'py, f32>),
    F64(PyReadonlyArray2<'py, f64>),
    F16(PyReadonlyArray2<'py, u16>),
    Bf16(PyReadonlyArray2<'py, u16>),
}

impl<'py> Logits<'py> {
    fn extract(obj: &Bound<'py, PyAny>, kind: &str) -> PyResult<Self> {
        let wrong = |_| type_error("logits", format!("does not match kind {kind:?}"));
        Ok(match kind {
            "f32" => Logits::F32(obj.extract().map_err(wrong)?),
            "f64" => Logits::F64(obj.extract().map_err(wrong)?),
            "f16" => Logits::F16(obj.extract().map_err(wrong)?),
            "bf16" => Logits::Bf16(obj.extract().map_err(wrong)?),
            other => return Err(type_error("kind", format!("unknown float kind {other:?}"))),
        })
    }

    fn vocab(&self) -> usize {
        match self {
            Logits::F32(a) => a.shape()[1],
            Logits::F64(a) => a.shape()[1],
            Logits::F16(a) | Logits::Bf16(a) => a.shape()[1],
        }
    }
}

/// Run `$body` with `$slice` bound to the logits as a typed slice, the GIL released.
macro_rules! with_logits {
    ($py:expr, $logits:expr, |$slice:ident| $body:expr) => {{
        let not_contiguous = |_| value_error("logits", "expected a C-contiguous array");
        match &$logits {
            Logits::F32(a) => {
                let $slice = a.as_slice().map_err(not_contiguous)?;
                $py.detach(|| $body)
            }
            Logits::F64(a) => {
                let $slice = a.as_slice().map_err(not_contiguous)?;
                $py.detach(|| $body)
            }
            Logits::F16(a) => {
                let $slice = as_f16(a.as_slice().map_err(not_contiguous)?);
                $py.detach(|| $body)
            }
            Logits::Bf16(a) => {
                let $slice = as_bf16(a.as_slice().map_err(not_contiguous)?);
                $py.detach(|| $body)
            }
        }
    }};
}

type StatsResult<'py> = (
    Option<Bound<'py, PyArray1<f32>>>,
    Bound<'py, PyArray1<f32>>,
    Option<Bound<'py, PyArray1<f32>>>,
    Option<Bound<'py, PyArray1<f32>>>,
);

fn to_numpy<'py>(py: Python<'py>, out: TokenOutputs) -> StatsResult<'py> {
    (
        out.logprob.map(|v| PyArray1::from_vec(py, v)),
        PyArray1::from_vec(py, out.entropy),
        out.collision.map(|v| PyArray1::from_vec(py, v)),
        out.lse.map(|v| PyArray1::from_vec(py, v)),
    )
}

#[pyfunction]
#[pyo3(signature = (logits, kind, labels, temperature, temperatures, ignore_index, collision, lse, propagate_nan))]
fn token_stats<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    kind: &str,
    labels: Option<PyReadonlyArray2<'py, i64>>,
    temperature: f64,
    temperatures: Option<PyReadonlyArray1<'py, f64>>,
    ignore_index: Option<i64>,
    collision: bool,
    lse: bool,
    propagate_nan: bool,
) -> PyResult<StatsResult<'py>> {
    let logits = Logits::extract(logits, kind)?;
    let temps = optional_slice("temperature", &temperatures)?;
    let label_values = match &labels {
        Some(l) => Some((
            l.as_slice()
                .map_err(|_| value_error("labels", "expected a C-contiguous array"))?,
            l.shape()[1],
        )),
        None => None,
    };
    let args = TokenArgs {
        vocab: logits.vocab(),
        temperature: temps.map_or(Temperature::Scalar(temperature), Temperature::PerRow),
        labels: label_values.map(|(values, per_row)| Labels { values, per_row }),
        ignore_index,
        collision,
        lse,
        propagate_nan,
    };
    let out = with_logits!(py, logits, |x| stats_kernel(x, &args)).map_err(to_py)?;
    Ok(to_numpy(py, out))
}

#[pyfunction]
#[pyo3(signature = (logits, kind, alpha, temperature, temperatures, propagate_nan))]
fn renyi_entropy<'py>(
    py: Python<'py>,
    logits: &Bound<'py, PyAny>,
    kind: &str,
    alpha: f64,
    temperature: f64,
    temperatures: Option<PyReadonlyArray1<'py, f64>>,
    propagate_nan: bool,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let logits = Logits::extract(logits, kind)?;
    let temps = optional_slice("temperature", &temperatures)?;
    let temperature = temps.map_or(Temperature::Scalar(temperature), Temperature::PerRow);
    let vocab = logits.vocab();
    let out = with_logits!(py, logits, |x| renyi_kernel(
        x,
        vocab,
        alpha,
        temperature,
        propagate_nan
    ))
    .map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out))
}

/// `−Σ p ln(p + eps)` per row of probabilities `(N, K)` (attention maps, `more.md` §1); the
/// same four kinds as logits.
#[pyfunction]
#[pyo3(signature = (probs, kind, eps, propagate_nan))]
fn prob_entropy<'py>(
    py: Python<'py>,
    probs: &Bound<'py, PyAny>,
    kind: &str,
    eps: f64,
    propagate_nan: bool,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let probs = Logits::extract(probs, kind)?;
    let cols = probs.vocab();
    let out = with_logits!(py, probs, |x| prob_entropy_kernel(
        x,
        cols,
        eps,
        propagate_nan
    ))
    .map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out))
}

#[pyfunction]
fn topk_entropy<'py>(
    py: Python<'py>,
    topk_logprobs: PyReadonlyArray2<'py, f64>,
    vocab_size: i64,
    mode: &str,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let mode = TopkMode::from_name(mode)
        .ok_or_else(|| value_error("mode", format!("unknown top-k mode {mode:?}")))?;
    let k = topk_logprobs.shape()[1];
    let values = topk_logprobs
        .as_slice()
        .map_err(|_| value_error("topk_logprobs", "expected a C-contiguous array"))?;
    let vocab = usize::try_from(vocab_size).ok();
    let out = py
        .detach(|| topk_kernel(values, k, vocab, mode))
        .map_err(to_py)?;
    Ok(PyArray1::from_vec(py, out))
}

type HeadResult<'py> = (
    Bound<'py, PyArray1<f32>>,
    Bound<'py, PyArray1<f32>>,
    Option<Bound<'py, PyArray1<f32>>>,
);

macro_rules! head {
    ($py:expr, $ty:ty, $hidden:expr, $weight:expr, $bias:expr, $args:expr) => {{
        let hidden: PyReadonlyArray2<'_, $ty> = $hidden
            .extract()
            .map_err(|_| type_error("hidden", "expected float32 or float64"))?;
        let weight: PyReadonlyArray2<'_, $ty> = $weight
            .extract()
            .map_err(|_| type_error("weight", "expected the dtype of hidden"))?;
        let bias: Option<PyReadonlyArray1<'_, $ty>> = match $bias {
            Some(b) => Some(
                b.extract()
                    .map_err(|_| type_error("bias", "expected the dtype of hidden"))?,
            ),
            None => None,
        };
        let mut args = $args;
        args.rows = hidden.shape()[0];
        args.dim = hidden.shape()[1];
        args.vocab = weight.shape()[0];
        if weight.shape()[1] != args.dim {
            return Err(value_error(
                "weight",
                "expected shape (V, D) with the D of hidden",
            ));
        }
        let h = hidden
            .as_slice()
            .map_err(|_| value_error("hidden", "expected a C-contiguous array"))?;
        let w = weight
            .as_slice()
            .map_err(|_| value_error("weight", "expected a C-contiguous array"))?;
        let b = optional_slice("bias", &bias)?;
        $py.detach(|| linear_logprob_entropy(h, w, b, &args))
            .map_err(to_py)?
    }};
}

#[pyfunction]
#[pyo3(signature = (hidden, weight, bias, labels, temperature, ignore_index, collision))]
fn token_logprob_entropy_linear<'py>(
    py: Python<'py>,
    hidden: &Bound<'py, PyAny>,
    weight: &Bound<'py, PyAny>,
    bias: Option<&Bound<'py, PyAny>>,
    labels: PyReadonlyArray1<'py, i64>,
    temperature: f64,
    ignore_index: Option<i64>,
    collision: bool,
) -> PyResult<HeadResult<'py>> {
    let labels = labels
        .as_slice()
        .map_err(|_| value_error("labels", "expected a C-contiguous array"))?;
    let args = HeadArgs {
        rows: 0,
        dim: 0,
        vocab: 0,
        labels,
        temperature,
        ignore_index,
        collision,
    };
    let is_f64 = hidden.extract::<PyReadonlyArray2<'py, f64>>().is_ok();
    let out = if is_f64 {
        head!(py, f64, hidden, weight, bias, args)
    } else {
        head!(py, f32, hidden, weight, bias, args)
    };
    let (logprob, entropy, coll, _) = to_numpy(py, out);
    Ok((
        logprob.expect("the head always returns log-probs"),
        entropy,
        coll,
    ))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(token_stats, m)?)?;
    m.add_function(wrap_pyfunction!(renyi_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(prob_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(topk_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(token_logprob_entropy_linear, m)?)?;
    Ok(())
}

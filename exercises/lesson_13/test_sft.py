"""Visible tests for lesson 13. Run: .venv/bin/pytest exercises/lesson_13 (or make check LESSON=13)

Hand-made cases for formatting, packing and collation, the packed loss against each sequence run
alone, a step against a hand-written SGD step, and a short training run. The hidden graders compare
with trl's SFTTrainer, pack_dataset and padding-free collator (see the lesson).
"""

import itertools
import random

import pytest
import torch

from exercises.lesson_13.sft import (
    IGNORE_INDEX,
    collate_packed,
    pack_bfd,
    prepare_rows,
    sft_loss,
    sft_step,
    tokenize_example,
)  # fmt: skip
from exercises.lesson_13.sft_data import conversations
from exercises.lesson_13.sft_kit import make_tokenizer, run_training, tiny_llama

pytestmark = pytest.mark.lesson_13

PROMPT = [{"role": "user", "content": "What is 2 plus 3?"}]
COMPLETION = [{"role": "assistant", "content": "2 plus 3 is 5."}]


def trained_text(tok, ex: dict) -> str:
    kept = [t for t, label in zip(ex["input_ids"], ex["labels"], strict=True) if label != IGNORE_INDEX]
    return tok.decode(kept)


def test_format_small_case_by_hand():
    tok = make_tokenizer()
    ex = tokenize_example(tok, PROMPT, COMPLETION)
    text = "<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n2 plus 3 is 5.<|im_end|>\n"
    assert tok.decode(ex["input_ids"]) == text, "input_ids: the template applied to prompt + completion"
    assert all(type(t) is int for t in ex["input_ids"] + ex["labels"]), "lists of Python ints"
    assert trained_text(tok, ex) == "2 plus 3 is 5.<|im_end|>\n", (
        "only the answer, its <|im_end|> and the final newline are trained"
    )
    n = len(tok("<|im_start|>user\nWhat is 2 plus 3?<|im_end|>\n<|im_start|>assistant\n")["input_ids"])
    assert ex["labels"][:n] == [IGNORE_INDEX] * n and ex["labels"][n:] == ex["input_ids"][n:]


def test_format_think_template_starts_where_renderings_diverge():
    tok = make_tokenizer("think")
    ex = tokenize_example(tok, PROMPT, COMPLETION)
    assert "<think>" not in tok.decode(ex["input_ids"]), "the conversation itself has no reasoning block"
    assert trained_text(tok, ex) == "2 plus 3 is 5.<|im_end|>\n", (
        "the completion starts where the two renderings diverge"
    )


def test_format_truncates_and_drops():
    tok = make_tokenizer()
    rows = conversations(system=True)[:12]  # prompts of 60 to 66 tokens
    prompt_lengths = [
        len(tok.apply_chat_template(r["prompt"], add_generation_prompt=True, return_dict=False)) for r in rows
    ]
    out = prepare_rows(tok, rows, 64)
    assert len(out) == sum(n < 64 for n in prompt_lengths), "rows whose prompt fills max_length are dropped"
    kept = [r for r, n in zip(rows, prompt_lengths, strict=True) if n < 64]
    for ex, row in zip(out, kept, strict=True):
        full = tokenize_example(tok, row["prompt"], row["completion"])
        assert ex["input_ids"] == full["input_ids"][:64] and ex["labels"] == full["labels"][:64], (
            "keep the first max_length tokens"
        )


def test_pack_docstring_example():
    examples = [
        {"input_ids": [1, 2, 3, 4, 5], "attention_mask": [1, 1, 1, 0, 0]},
        {"input_ids": [6, 7], "attention_mask": [1, 0]},
        {"input_ids": [8, 9, 10], "attention_mask": [1, 1, 0]},
        {"input_ids": [11], "attention_mask": [1]},
    ]
    assert pack_bfd(examples, 4) == [
        {"input_ids": [1, 2, 3, 4], "attention_mask": [1, 1, 1, 0], "seq_lengths": [4]},
        {"input_ids": [8, 9, 10, 11], "attention_mask": [1, 1, 0, 1], "seq_lengths": [3, 1]},
        {"input_ids": [6, 7], "attention_mask": [1, 0], "seq_lengths": [2]},
    ]  # trl's pack_dataset docstring: the long row is cut, the others fitted best


def test_pack_best_fit_ties_first_in_first_out():
    lengths = [2, 7, 1, 5, 4]
    examples = [{"input_ids": list(range(100 * i, 100 * i + n))} for i, n in enumerate(lengths)]
    # 7 opens row A (3 free), 5 opens B (5 free), 4 -> B (1 free), 2 -> A (1 free): B reached 1 free first, so 1 -> B.
    assert [r["seq_lengths"] for r in pack_bfd(examples, 10)] == [[7, 2], [5, 4, 1]]
    examples = [{"input_ids": list(range(100 * i, 100 * i + n))} for i, n in enumerate([3, 5, 3, 5, 3])]
    packed = pack_bfd(examples, 8)
    assert [r["input_ids"][0] for r in packed] == [100, 300, 400], "equal lengths keep their original order"
    assert [r["seq_lengths"] for r in packed] == [[5, 3], [5, 3], [3]]


def test_collate_small_case():
    plain = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [-100, 5]}]
    packed = [{"input_ids": [1, 2, 3, 4, 5], "labels": [1, 2, 3, 4, 5], "seq_lengths": [3, 2]}]
    for rows in (plain, packed):
        b = collate_packed(rows)
        assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5]] and b["input_ids"].dtype == torch.long
        assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1]], "positions restart at every sequence"
        assert b["labels"].tolist() == [[-100, 2, 3, -100, 5]], "no label where position_ids == 0"
        assert b["cu_seq_lens"].tolist() == [0, 3, 5] and b["cu_seq_lens"].dtype == torch.int32


def test_boundary_no_label_crosses():
    rng = random.Random(0)
    examples = [{"input_ids": [rng.randrange(500) for _ in range(rng.randint(1, 40))]} for _ in range(20)]
    examples = [{**e, "labels": list(e["input_ids"])} for e in examples]
    batch = collate_packed(pack_bfd(examples, 48))
    ids, labels, pos = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
    starts = [*(pos == 0).nonzero().flatten().tolist(), len(pos)]
    segments = sorted(tuple(ids[a:b].tolist()) for a, b in itertools.pairwise(starts))
    assert segments == sorted(tuple(e["input_ids"]) for e in examples), "each segment is one whole input sequence"
    assert all(labels[a] == IGNORE_INDEX for a in starts[:-1]), "the first token of a sequence is never a label"


def sequences(batch: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    cu = batch["cu_seq_lens"].tolist()
    return [(batch["input_ids"][:, a:b], batch["labels"][:, a:b]) for a, b in itertools.pairwise(cu)]


def unpacked_loss(model, batch: dict) -> torch.Tensor:
    """Every sequence alone through the model, transformers' own loss, weighted by labelled tokens."""
    total, count = 0.0, 0
    for ids, labels in sequences(batch):
        n = int((labels[0, 1:] != IGNORE_INDEX).sum())
        total = total + model(input_ids=ids, labels=labels, use_cache=False).loss * n
        count += n
    return total / count


def small_batch(start: int = 0, rows: int = 6) -> dict:
    examples = prepare_rows(make_tokenizer(), conversations()[start : start + rows])
    return collate_packed(pack_bfd(examples, 256))


def test_loss_packed_equals_unpacked():
    model = tiny_llama(seed=0)
    batch = small_batch()
    assert batch["cu_seq_lens"].numel() == 7, "six rows fit into one packed row of 256"
    got = sft_loss(model, batch)
    assert got.dim() == 0 and got.requires_grad, "a 0-dim loss with its graph"
    with torch.no_grad():
        want = unpacked_loss(model, batch)
    torch.testing.assert_close(
        got.detach(), want, rtol=1e-4, atol=1e-5, msg="no attention or label may cross sequences"
    )


def test_loss_is_token_mean_with_shift():
    model = tiny_llama(seed=1)
    ex = tokenize_example(make_tokenizer(), PROMPT, COMPLETION)
    batch = collate_packed([ex])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], use_cache=False).logits[0]
        logp = torch.log_softmax(logits.float(), -1)
        targets = batch["labels"][0]
        picked = [-logp[i, targets[i + 1]] for i in range(len(targets) - 1) if targets[i + 1] != IGNORE_INDEX]
        want = torch.stack(picked).mean()
        got = sft_loss(model, batch)
    torch.testing.assert_close(
        got, want, rtol=1e-5, atol=1e-6, msg="logits at i predict labels[i + 1]; mean over labelled tokens"
    )


def test_step_equals_manual_sgd():
    model, ref = tiny_llama(seed=2), tiny_llama(seed=2)
    batches = [small_batch(0, 3), small_batch(10, 4)]
    opt, ref_opt = torch.optim.SGD(model.parameters(), lr=0.5), torch.optim.SGD(ref.parameters(), lr=0.5)
    for batch in batches:
        got = sft_step(model, opt, batch)
        ref_opt.zero_grad()
        want = unpacked_loss(ref, batch)
        want.backward()
        ref_opt.step()
        assert type(got) is float and abs(got - float(want.detach())) < 1e-4 * float(want.detach()), (
            "return the loss before the step"
        )
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=2e-5, msg=f"{name} after two steps: zero the gradients each step")


def test_training_loss_falls():
    out = run_training(train={"steps": 30})
    losses = out["losses"]
    assert len(losses) == 30 and losses[-1] < losses[0] - 1.5, (
        f"30 steps should lower the loss by well over 1.5: {losses[::5]}"
    )

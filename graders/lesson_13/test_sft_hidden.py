"""Hidden graders for lesson 13. They run in the grader's process; student code only in the worker.

References are trl 1.16's own data handling and transformers' own model, never a copy of the
course's reference: ``SFTTrainer(...).train_dataset`` (built here, offline, ``bf16=False``, on the
course's tiny model and tokenizer) for the labels, ``trl.pack_dataset(..., "bfd")`` for packing,
``DataCollatorForLanguageModeling(padding_free=True, return_position_ids=True)`` for collation,
and ``LlamaForCausalLM(..., labels=...).loss`` on each sequence *alone* (unpacked) for the loss.
The tokenizer, the tiny model and the data are the provided ``sft_kit.py`` / ``sft_data.py``,
loaded here from the course's copy.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import random
import sys
import warnings
from functools import cache, lru_cache

import datasets
import pytest
import torch
from datasets import Dataset
from trl import SFTConfig, SFTTrainer, pack_dataset
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from graders.engine import expect, lessons
from graders.lesson_13.bindings import Lesson13

pytestmark = pytest.mark.lesson_13

IGNORE = -100
TRAIN_STEPS = 40  # the step budget of the training test (sft_kit.TRAIN_DEFAULTS)
TRAIN_BAR = 3.0  # completion loss after 40 steps: the reference reaches 2.19 (from 6.27 at the start)


def _provided():
    """The course's sft_data and sft_kit (sft_kit imports sft_data by name, as in the sandbox)."""
    mods = {}
    for stem in ("sft_data", "sft_kit"):
        if stem not in sys.modules:
            spec = importlib.util.spec_from_file_location(stem, lessons.load("13").provided[stem])
            module = importlib.util.module_from_spec(spec)
            sys.modules[stem] = module
            spec.loader.exec_module(module)
        mods[stem] = sys.modules[stem]
    return mods["sft_data"], mods["sft_kit"]


sft_data, sft_kit = _provided()


# ---------------------------------------------------------------------------- trl references
@cache
def _quiet_trl():
    datasets.disable_progress_bars()
    logging.getLogger("trl").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="trl")


def trl_rows(rows: list[dict], max_length: int | None, template: str = "chatml") -> list[dict[str, list[int]]]:
    """``SFTTrainer(...).train_dataset``'s input_ids and labels for conversational prompt/completion rows."""
    _quiet_trl()
    args = SFTConfig(
        output_dir="/tmp/llmg-lesson13-trl", report_to=[], use_cpu=True, save_strategy="no", bf16=False,
        max_length=max_length, dataset_num_proc=None,
    )  # fmt: skip
    trainer = SFTTrainer(
        model=sft_kit.tiny_llama(), args=args, train_dataset=Dataset.from_list(rows),
        processing_class=sft_kit.make_tokenizer(template),
    )  # fmt: skip
    return [{"input_ids": r["input_ids"], "labels": r["labels"]} for r in trainer.train_dataset]


def trl_pack(examples: list[dict[str, list[int]]], seq_length: int) -> list[dict[str, list[int]]]:
    _quiet_trl()
    return [dict(r) for r in pack_dataset(Dataset.from_list(examples), seq_length, "bfd")]


def trl_collate(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    collator = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True, return_position_ids=True)
    out = collator(rows)
    return {"input_ids": out["input_ids"], "labels": out["labels"], "position_ids": out["position_ids"],
            "cu_seq_lens": out["cu_seq_lens_q"]}  # fmt: skip


@lru_cache(maxsize=1)
def shipped_rows() -> tuple[list[dict], list[dict[str, list[int]]]]:
    """Every shipped pair as rows, and trl's processed rows for them (max_length 128, as sft_kit's training)."""
    rows = sft_data.conversations()
    return rows, trl_rows(rows, sft_kit.TRAIN_DEFAULTS["max_length"])


def multi_turn_rows(n: int) -> list[dict]:
    """Prompts that carry an earlier exchange: user, assistant, user; then the answer."""
    pairs = sft_data.PAIRS
    rows = []
    for i in range(n):
        (q1, a1), (q2, a2) = pairs[(7 * i) % len(pairs)], pairs[(7 * i + 3) % len(pairs)]
        prompt = [
            {"role": "user", "content": q1},
            {"role": "assistant", "content": a1},
            {"role": "user", "content": q2},
        ]
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": a2}]})
    return rows


def first_difference(got: list[dict], want: list[dict], what: str) -> None:
    assert len(got) == len(want), f"{what}: {len(got)} rows, trl has {len(want)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        for key in w:
            if g[key] != w[key]:
                j = next(
                    (j for j, (a, b) in enumerate(zip(g[key], w[key], strict=False)) if a != b),
                    min(len(g[key]), len(w[key])),
                )
                raise AssertionError(
                    f"{what}: row {i}, {key!r} differs from trl's at position {j} of {len(w[key])} "
                    f"(yours {expect.shorten(g[key][max(0, j - 3) : j + 4], 80)}, trl {w[key][max(0, j - 3) : j + 4]}, "
                    f"your length {len(g[key])})"
                )


# ---------------------------------------------------------------------------- formatting and labels
FORMAT_CASES = {  # rows, max_length, template
    "chatml-all-pairs": (lambda: sft_data.conversations(), None, "chatml"),
    "chatml-system-prompt": (lambda: sft_data.conversations(system=True)[::3], None, "chatml"),
    "chatml-multi-turn-prompt": (lambda: multi_turn_rows(30), None, "chatml"),
}


@pytest.mark.points(2)
@pytest.mark.parametrize("case", list(FORMAT_CASES))
def test_format_labels_equal_sft_trainer(lesson13: Lesson13, case: str):
    """Formatting: input_ids and labels equal SFTTrainer(...).train_dataset's (completion-only loss)"""
    make, max_length, template = FORMAT_CASES[case]
    rows = make()
    first_difference(lesson13.prepare(rows, max_length, template), trl_rows(rows, max_length, template), f"{case}")


@pytest.mark.points(2)
def test_format_think_template_divergent_prompt(lesson13: Lesson13):
    """Formatting: with a generation prompt that is not a prefix, the completion starts where the renderings diverge"""
    rows = sft_data.conversations()[::4]
    first_difference(lesson13.prepare(rows, None, "think"), trl_rows(rows, None, "think"), "THINK_TEMPLATE rows")


@pytest.mark.points(2)
def test_format_truncation_and_dropped_rows(lesson13: Lesson13):
    """Formatting: max_length keeps the first tokens, and rows left without a label are dropped, as in trl"""
    rows = sft_data.conversations(system=True)[::2]  # prompts of 60..66 tokens
    first_difference(lesson13.prepare(rows, 64, "chatml"), trl_rows(rows, 64, "chatml"), "system rows, max_length 64")


# ---------------------------------------------------------------------------- packing
def synthetic(seed: int, n: int, longest: int, lengths: list[int] | None = None) -> list[dict[str, list[int]]]:
    """Rows with labels on every token; ``lengths`` drawn from a short list, so many ties (and some empty rows)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.choice(lengths) if lengths else rng.randint(0, longest)
        ids = [rng.randrange(500) for _ in range(k)]
        rows.append({"input_ids": ids, "labels": [t if rng.random() < 0.7 else IGNORE for t in ids]})
    return rows


@pytest.mark.points(2)
@pytest.mark.parametrize("seq_length", [64, 100, 256])
def test_pack_sft_rows_equal_pack_dataset(lesson13: Lesson13, seq_length: int):
    """Packing: packed SFT rows and seq_lengths equal trl.pack_dataset(..., strategy="bfd")"""
    _, examples = shipped_rows()
    first_difference(lesson13.pack(examples, seq_length), trl_pack(examples, seq_length), f"seq_length {seq_length}")


@pytest.mark.points(2)
@pytest.mark.parametrize(("seed", "seq_length", "lengths"), [(0, 16, [3, 5, 5, 8, 0]), (1, 20, [2, 4, 6, 7, 9]), (2, 12, None), (3, 30, [10, 10, 11, 29, 35])],
                         ids=["ties", "ties-2", "random", "long-rows-cut"])  # fmt: skip
def test_pack_synthetic_rows_equal_pack_dataset(
    lesson13: Lesson13, seed: int, seq_length: int, lengths: list[int] | None
):
    """Packing: rows with many equal lengths, empty rows and rows longer than seq_length, as pack_dataset"""
    examples = synthetic(seed, 60, 2 * seq_length, lengths)
    first_difference(
        lesson13.pack(examples, seq_length), trl_pack(examples, seq_length), f"synthetic rows, seq_length {seq_length}"
    )


# ---------------------------------------------------------------------------- collation
def check_batch(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    for key in ("input_ids", "position_ids", "labels", "cu_seq_lens"):
        g, w = got[key], want[key]
        assert g.shape == w.shape, f"{what}: {key} has shape {tuple(g.shape)}, trl's collator gives {tuple(w.shape)}"
        wrong = (g != w).nonzero()
        assert not len(wrong), (
            f"{what}: {key} differs from DataCollatorForLanguageModeling(padding_free=True)'s at {len(wrong)} places "
            f"(first at index {wrong[0].tolist()}: yours {g[tuple(wrong[0])].item()}, trl {w[tuple(wrong[0])].item()})"
        )


@pytest.mark.points(2)
@pytest.mark.parametrize("seq_length", [64, 128])
def test_collate_packed_rows_equal_trl_collator(lesson13: Lesson13, seq_length: int):
    """Collation: input_ids, labels, position_ids and cu_seq_lens of packed rows equal trl's padding-free collator"""
    _, examples = shipped_rows()
    packed = trl_pack(examples, seq_length)
    for start in (0, 5):
        rows = packed[start : start + 4]
        check_batch(lesson13.collate(rows), trl_collate(rows), f"4 packed rows of <= {seq_length} tokens")


@pytest.mark.points(2)
def test_collate_language_modeling_rows(lesson13: Lesson13):
    """Collation: rows labelled on every token (plain and packed): every sequence start gets label -100"""
    plain = [{"input_ids": r["input_ids"], "labels": r["input_ids"]} for r in synthetic(5, 5, 30) if r["input_ids"]]
    check_batch(lesson13.collate(plain), trl_collate(plain), "plain rows (no seq_lengths)")
    packed = trl_pack(synthetic(6, 40, 25), 32)[:6]
    packed = [{**r, "labels": list(r["input_ids"])} for r in packed]
    check_batch(lesson13.collate(packed), trl_collate(packed), "packed rows labelled on every token")


# ---------------------------------------------------------------------------- boundaries
@pytest.mark.points(4)
@pytest.mark.parametrize("seq_length", [48, 96])
def test_boundary_no_label_crosses_in_your_packed_batch(lesson13: Lesson13, seq_length: int):
    """Boundaries: in your own pack_bfd + collate_packed batch, each segment is one whole input and no label crosses"""
    examples = [
        {"input_ids": r["input_ids"], "labels": list(r["input_ids"])}
        for r in synthetic(11 + seq_length, 30, seq_length - 4)
    ]
    examples = [e for e in examples if e["input_ids"]]
    packed = lesson13.pack(examples, seq_length)
    batch = lesson13.collate(packed)
    ids, labels, pos = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
    starts = [*(pos == 0).nonzero().flatten().tolist(), len(pos)]
    originals = sorted(tuple(e["input_ids"]) for e in examples)
    segments = sorted(tuple(ids[a:b].tolist()) for a, b in itertools.pairwise(starts))
    assert segments == originals, (
        f"the segments between position_ids == 0 are not the {len(originals)} input sequences, whole "
        f"({len(segments)} segments): a packed row must hold whole sequences and positions restart at each one"
    )
    for a, b in itertools.pairwise(starts):
        assert torch.equal(pos[a:b], torch.arange(b - a)), (
            f"position_ids of the sequence at {a}..{b} do not count 0, 1, 2, ..."
        )
        assert labels[a] == IGNORE, (
            f"label at the start of the sequence at index {a} is {int(labels[a])}: it would be predicted from the previous sequence"
        )
        want = ids[a + 1 : b]
        assert torch.equal(labels[a + 1 : b], want), f"labels inside the sequence at {a}..{b} must be its own tokens"
    rows_lengths = [n for r in packed for n in r["seq_lengths"]]
    assert rows_lengths == [b - a for a, b in itertools.pairwise(starts)], "seq_lengths disagree with position_ids"
    assert batch["cu_seq_lens"].tolist() == starts, "cu_seq_lens must be the offsets where sequences start, then N"


# ---------------------------------------------------------------------------- loss and step
def grader_model(seed: int):
    model = sft_kit.tiny_llama(seed=seed)
    return model, {k: v.detach().clone() for k, v in model.state_dict().items()}


def unpacked_loss(model, batch: dict[str, torch.Tensor]) -> float:
    """Token-mean loss with every sequence of the batch run ALONE through the model (no packing at all)."""
    ids, labels, cu = batch["input_ids"][0], batch["labels"][0], batch["cu_seq_lens"].tolist()
    total, count = 0.0, 0
    with torch.no_grad():
        for a, b in itertools.pairwise(cu):
            lab = labels[a:b][None]
            n = int((lab[0, 1:] != IGNORE).sum())
            if n:
                total += float(model(input_ids=ids[a:b][None], labels=lab, use_cache=False).loss.double()) * n
                count += n
    return total / count


def packed_batch(seq_length: int, start: int, rows: int) -> dict[str, torch.Tensor]:
    _, examples = shipped_rows()
    return trl_collate(trl_pack(examples, seq_length)[start : start + rows])


@pytest.mark.points(3)
@pytest.mark.parametrize(
    ("seq_length", "start", "rows"), [(128, 25, 2), (256, 12, 2), (96, 10, 4)], ids=["128x2", "256x2", "96x4"]
)
def test_loss_packed_equals_unpacked(lesson13: Lesson13, seq_length: int, start: int, rows: int):
    """Loss: sft_loss of a packed batch equals the token-mean loss of its sequences run one by one (no cross-attention)"""
    model, state = grader_model(seq_length)
    batch = packed_batch(seq_length, start, rows)
    got, want = lesson13.loss(None, state, batch), unpacked_loss(model, batch)
    k = batch["cu_seq_lens"].numel() - 1
    assert abs(got - want) <= 1e-4 * abs(want) + 1e-5, (
        f"sft_loss of a packed batch ({k} sequences, {batch['input_ids'].shape[1]} tokens) = {got:.6f}; running each "
        f"sequence alone gives {want:.6f}: attention or labels cross sequences, or the mean is not per token"
    )


@pytest.mark.points(2)
def test_loss_one_sequence_equals_transformers(lesson13: Lesson13):
    """Loss: on one unpacked sequence, sft_loss equals LlamaForCausalLM(..., labels=labels).loss (shift, mean)"""
    model, state = grader_model(3)
    _, examples = shipped_rows()
    batch = trl_collate([examples[7]])
    with torch.no_grad():
        want = float(model(input_ids=batch["input_ids"], labels=batch["labels"], use_cache=False).loss)
    got = lesson13.loss(None, state, batch)
    assert abs(got - want) <= 1e-5 * abs(want) + 1e-6, f"sft_loss = {got:.6f}, transformers' own loss = {want:.6f}"


@pytest.mark.points(4)
def test_step_two_sgd_steps_equal_reference(lesson13: Lesson13):
    """Step: two sft_step calls with SGD give the weights of two reference steps on the unpacked sequences' loss"""
    model, state = grader_model(5)
    batches = [packed_batch(128, 1, 2), packed_batch(96, 6, 3)]
    lr = 0.5
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    want_losses = []
    for batch in batches:
        opt.zero_grad()
        ids, labels, cu = batch["input_ids"][0], batch["labels"][0], batch["cu_seq_lens"].tolist()
        total, count = 0.0, 0
        for a, b in itertools.pairwise(cu):  # each sequence alone: the reference never packs
            lab = labels[a:b][None]
            n = int((lab[0, 1:] != IGNORE).sum())
            total = total + model(input_ids=ids[a:b][None], labels=lab, use_cache=False).loss * n
            count += n
        loss = total / count
        loss.backward()
        opt.step()
        want_losses.append(float(loss))
    out = lesson13.steps(None, state, batches, lr)
    for i, (g, w) in enumerate(zip(out["losses"], want_losses, strict=True)):
        assert abs(g - w) <= 1e-4 * abs(w), (
            f"step {i + 1}: sft_step returned {g:.6f}, the loss before that step is {w:.6f}"
        )
    worst = max((out["state_dict"][k] - v).abs().max().item() for k, v in model.state_dict().items())
    assert worst <= 2e-5, (
        f"after two sft_step calls the weights differ from two reference SGD steps by up to {worst:.3g}: zero the "
        "gradients before each backward, and step the optimizer once per call"
    )


# ---------------------------------------------------------------------------- training
def completion_loss(state_dict: dict[str, torch.Tensor]) -> float:
    """Token-mean loss on every shipped completion (trl's labels), each row alone."""
    model = sft_kit.tiny_llama()
    model.load_state_dict(state_dict)
    model.eval()
    _, examples = shipped_rows()
    total, count = 0.0, 0
    with torch.no_grad():
        for e in examples:
            lab = torch.tensor([e["labels"]])
            n = int((lab[0, 1:] != IGNORE).sum())
            total += float(model(input_ids=torch.tensor([e["input_ids"]]), labels=lab, use_cache=False).loss) * n
            count += n
    return total / count


@pytest.mark.points(5)
def test_training_completion_loss_falls_below_bar(lesson13: Lesson13):
    """Training: 40 steps of your pipeline (AdamW 3e-3) bring the completion loss of the shipped set below 3.0"""
    out = lesson13.train({"steps": TRAIN_STEPS})
    start = completion_loss(sft_kit.tiny_llama(seed=sft_kit.TRAIN_DEFAULTS["seed"]).state_dict())
    end = completion_loss(out["state_dict"])
    assert end < TRAIN_BAR, (
        f"after {TRAIN_STEPS} steps the completion loss is {end:.3f} (it started at {start:.3f}); the bar is {TRAIN_BAR} "
        f"(the course's reference reaches about 2.19). Your sft_step's own losses: {[round(x, 2) for x in out['losses'][::10]]}"
    )

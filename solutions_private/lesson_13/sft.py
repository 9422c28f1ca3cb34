"""Lesson 13: supervised fine-tuning: chat formatting, completion-only labels, packing, and the SFT step.

Supervised fine-tuning (SFT) trains a causal language model on (prompt, completion) pairs rendered
with a chat template, with the loss on the completion only. Everything here follows trl 1.16's
``SFTTrainer`` for conversational prompt/completion rows, so your rows, packed rows and batches can
be compared with trl's own:

- ``prepare_rows`` = what ``SFTTrainer(...).train_dataset`` holds (``input_ids``, ``labels``);
- ``pack_bfd`` = ``trl.pack_dataset(dataset, seq_length, strategy="bfd")``;
- ``collate_packed`` = ``DataCollatorForLanguageModeling(padding_free=True, return_position_ids=True)``;
- ``sft_loss`` = the token-mean cross-entropy of ``SFTTrainer.compute_loss`` (and of
  ``model(..., labels=labels).loss``).

Labels follow the Hugging Face convention: ``labels[i]`` is the token at position ``i`` itself (not
shifted); the loss shifts (logits at ``i`` predict ``labels[i + 1]``), and ``-100`` (``IGNORE_INDEX``)
marks a position that is not predicted.

Notation: ``T`` tokens of one sequence, ``N`` tokens of a packed batch (all its rows flattened), ``V``
vocabulary size, ``K`` sequences in a batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def tokenize_example(
    tokenizer, prompt: list[dict], completion: list[dict], max_length: int | None = None
) -> dict[str, list[int]]:
    """One conversational prompt/completion row -> ``{"input_ids": [...], "labels": [...]}`` (Python ints).

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template (``sft_kit.make_tokenizer()``).
        prompt: the messages before the answer, e.g. ``[{"role": "user", "content": "..."}]``.
        completion: the answer, e.g. ``[{"role": "assistant", "content": "..."}]``.
        max_length: when given, keep only the first ``max_length`` tokens of both lists.
    Returns:
        ``input_ids``: the chat template applied to ``prompt + completion`` (no generation prompt),
        token ids; ``labels``: a copy of ``input_ids`` with ``IGNORE_INDEX`` on the prompt tokens.

    The prompt tokens are the ``p`` first tokens, where ``p`` is the length of the common prefix of
    ``input_ids`` and the prompt rendered alone *with* the generation prompt
    (``add_generation_prompt=True``). With ChatML the rendered prompt is a prefix, so the completion
    starts right after ``<|im_start|>assistant\\n`` and everything after it is trained, the closing
    ``<|im_end|>`` and the ``"\\n"`` after it included. With a template whose generation prompt is
    not a prefix (``THINK_TEMPLATE``) the completion starts where the two renderings diverge.

    Hints: ``tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=...,
    return_dict=False)`` gives a plain list of ids (in transformers 5 the default is a
    ``BatchEncoding``).
    """
    # BEGIN SOLUTION
    prompt_ids = tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=False)
    ids = tokenizer.apply_chat_template(prompt + completion, tokenize=True, return_dict=False)
    p = 0
    while p < min(len(prompt_ids), len(ids)) and prompt_ids[p] == ids[p]:
        p += 1  # the common prefix: the prompt's tokens
    labels = [IGNORE_INDEX] * p + list(ids[p:])
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": list(ids), "labels": labels}
    # END SOLUTION


def prepare_rows(tokenizer, rows: list[dict], max_length: int | None = None) -> list[dict[str, list[int]]]:
    """``tokenize_example`` on every row of ``rows`` (dicts with "prompt" and "completion"), in order.

    A row whose labels are all ``IGNORE_INDEX`` after truncation (a prompt that fills ``max_length``)
    teaches nothing: it is dropped, as trl drops it. Returns a list of ``{"input_ids", "labels"}``.
    """
    # BEGIN SOLUTION
    out = []
    for row in rows:
        ex = tokenize_example(tokenizer, row["prompt"], row["completion"], max_length)
        if any(label != IGNORE_INDEX for label in ex["labels"]):
            out.append(ex)
    return out
    # END SOLUTION


def pack_bfd(examples: list[dict[str, list[int]]], seq_length: int) -> list[dict[str, list[int]]]:
    """Best-fit-decreasing packing of whole sequences into rows of at most ``seq_length`` tokens.

    Args:
        examples: dicts whose values are token lists of one length per dict (``input_ids``,
            ``labels``, and any other such key, all packed alike).
        seq_length: the longest packed row.
    Returns:
        Packed rows: dicts with the same keys, each value the concatenation of its sequences, plus
        ``seq_lengths``: the lengths of the sequences in the row, in order.

    The rule (trl's ``pack_dataset(..., strategy="bfd")``, exactly):

    1. Drop empty sequences; cut every sequence to its first ``seq_length`` tokens.
    2. Visit the sequences longest first (equal lengths: in their original order).
    3. Put each one into the open row with the *least* free space that still fits it; if no row
       fits, open a new row. Among rows with the same free space, take the one that reached that
       free space first (a first-in, first-out queue per free space). A full row is closed.
    4. Return the rows in the order they were opened, each row's sequences in the order they went in.

    A sequence is never split, so no row mixes tokens of a sequence cut in two.
    """
    # BEGIN SOLUTION
    keys = list(examples[0]) if examples else []
    seqs = [
        {k: list(ex[k][:seq_length]) for k in keys}
        for ex in examples
        if len(ex[keys[0]]) > 0
    ]  # fmt: skip
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][keys[0]]))  # stable: ties keep their order
    bins: list[dict] = []  # {"ids": [...], "free": int}
    by_free: dict[int, list[dict]] = {}  # free space -> rows with it, in the order they reached it
    for i in order:
        n = len(seqs[i][keys[0]])
        fits = [free for free, rows in by_free.items() if rows and free >= n]
        if fits:
            row = by_free[min(fits)].pop(0)
        else:
            row = {"ids": [], "free": seq_length}
            bins.append(row)
        row["ids"].append(i)
        row["free"] -= n
        if row["free"] > 0:
            by_free.setdefault(row["free"], []).append(row)
    packed = []
    for row in bins:
        out = {k: [t for i in row["ids"] for t in seqs[i][k]] for k in keys}
        out["seq_lengths"] = [len(seqs[i][keys[0]]) for i in row["ids"]]
        packed.append(out)
    return packed
    # END SOLUTION


def collate_packed(rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """Padding-free collation: every row of the batch flattened into one row of ``N`` tokens.

    Args:
        rows: packed rows (``input_ids``, ``labels``, ``seq_lengths``) or plain rows (``input_ids``,
            ``labels``, no ``seq_lengths``: then the row is one sequence).
    Returns:
        ``input_ids`` (1, N) int64; ``labels`` (1, N) int64; ``position_ids`` (1, N) int64, counting
        0, 1, 2, ... within each sequence and restarting at 0 at the start of every sequence;
        ``cu_seq_lens`` (K + 1,) int32, the offsets where the sequences start, then N.

    ``labels`` is set to ``IGNORE_INDEX`` wherever ``position_ids == 0``: the first token of a
    sequence is never predicted (from the previous sequence's last token). This equals trl's
    ``DataCollatorForLanguageModeling(pad_token_id, padding_free=True, return_position_ids=True)``
    (its ``input_ids``, ``labels``, ``position_ids`` and ``cu_seq_lens_q``).
    """
    # BEGIN SOLUTION
    input_ids, labels, positions, lengths = [], [], [], []
    for row in rows:
        input_ids += row["input_ids"]
        labels += row["labels"]
        for n in row.get("seq_lengths", [len(row["input_ids"])]):
            positions += range(n)
            lengths.append(n)
    input_ids, labels, positions = (torch.tensor([x], dtype=torch.long) for x in (input_ids, labels, positions))
    labels[positions == 0] = IGNORE_INDEX
    cu = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return {"input_ids": input_ids, "labels": labels, "position_ids": positions, "cu_seq_lens": cu}
    # END SOLUTION


def sft_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The SFT loss of a packed batch: mean next-token cross-entropy over the labelled tokens.

    Args:
        model: a Hugging Face causal LM (``sft_kit.tiny_llama()``).
        batch: ``collate_packed``'s output (``input_ids``, ``labels``, ``position_ids`` (1, N)).
    Returns:
        A 0-dim float32 tensor with its graph: the sum over every position ``i`` with
        ``labels[i + 1] != -100`` of ``-log softmax(logits[i])[labels[i + 1]]``, divided by the number
        of such positions (a mean per token over the whole batch, not per sequence).

    No token may attend to another sequence of the batch. Pass the ``position_ids`` and no
    ``attention_mask`` and ``use_cache=False``: transformers then builds a block-diagonal causal
    mask from the restarting positions. (With a cache, or with an all-ones ``attention_mask``,
    transformers skips that detection and attention crosses sequences.) An explicit 4-D additive
    mask of shape (1, 1, N, N) also works.
    """
    # BEGIN SOLUTION
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    logits = out.logits[:, :-1].float()  # (1, N-1, V): position i predicts token i + 1
    targets = batch["labels"][:, 1:]  # (1, N-1)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    # END SOLUTION


def sft_step(model, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    """One optimisation step on ``batch``: zero the gradients, ``sft_loss``, backward, ``optimizer.step()``.

    Returns the loss before the step, as a Python float. The model is in training mode (the tiny
    model has no dropout, so this only matters for your own models).
    """
    # BEGIN SOLUTION
    model.train()
    optimizer.zero_grad()
    loss = sft_loss(model, batch)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
    # END SOLUTION

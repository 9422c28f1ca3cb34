"""An alternative correct lesson 13 (one-off check): string rendering, a scan-based BFD, trl-style
position ids, an explicit 4-D additive block-diagonal mask and transformers' own loss."""

from __future__ import annotations

import functools
import itertools
import operator

import torch

IGNORE_INDEX = -100


def tokenize_example(tokenizer, prompt, completion, max_length=None):
    full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    p = sum(1 for _ in itertools.takewhile(lambda ab: ab[0] == ab[1], zip(prompt_ids, ids, strict=False)))
    labels = [t if i >= p else IGNORE_INDEX for i, t in enumerate(ids)]
    end = len(ids) if max_length is None else max_length
    return {"input_ids": [int(t) for t in ids[:end]], "labels": labels[:end]}


def prepare_rows(tokenizer, rows, max_length=None):
    out = [tokenize_example(tokenizer, r["prompt"], r["completion"], max_length) for r in rows]
    return [e for e in out if set(e["labels"]) != {IGNORE_INDEX}]


def pack_bfd(examples, seq_length):
    keys = list(examples[0])
    seqs = [{k: ex[k][:seq_length] for k in keys} for ex in examples if ex[keys[0]]]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][keys[0]]), reverse=True)  # stable
    bins = []  # [free, reached_at, members]
    clock = 0
    for i in order:
        n = len(seqs[i][keys[0]])
        best = None
        for b in bins:
            if 0 < b[0] and b[0] >= n and (best is None or (b[0], b[1]) < (best[0], best[1])):
                best = b
        if best is None:
            best = [seq_length, 0, []]
            bins.append(best)
        best[0] -= n
        clock += 1
        best[1] = clock
        best[2].append(i)
    rows = []
    for _, _, members in bins:
        row = {k: functools.reduce(operator.iadd, (seqs[i][k] for i in members), []) for k in keys}
        row["seq_lengths"] = [len(seqs[i][keys[0]]) for i in members]
        rows.append(row)
    return rows


def collate_packed(rows):
    lengths = torch.tensor([n for r in rows for n in r.get("seq_lengths", [len(r["input_ids"])])])
    position_ids = torch.ones(int(lengths.sum()), dtype=torch.long)
    position_ids[0] = 0
    position_ids[lengths[:-1].cumsum(0)] = -(lengths[:-1] - 1)
    position_ids = position_ids.cumsum(0)[None]
    input_ids = torch.tensor([[t for r in rows for t in r["input_ids"]]])
    labels = torch.tensor([[t for r in rows for t in r["labels"]]])
    labels = torch.where(position_ids == 0, IGNORE_INDEX, labels)
    cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).to(torch.int32)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids, "cu_seq_lens": cu}


def sft_loss(model, batch):
    pos = batch["position_ids"][0]
    seq = (pos == 0).cumsum(0)  # sequence index of each token
    n = len(pos)
    allowed = (seq[:, None] == seq[None, :]) & torch.ones(n, n, dtype=torch.bool).tril()
    dtype = next(model.parameters()).dtype
    mask = torch.zeros(n, n, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)[None, None]
    out = model(input_ids=batch["input_ids"], attention_mask=mask, labels=batch["labels"], use_cache=False)
    return out.loss


def sft_step(model, optimizer, batch):
    model.train()
    loss = sft_loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()

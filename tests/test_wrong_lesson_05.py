"""Plausible wrong GPTMini implementations must lose points in the right tests, not only crash.

Each mutant is the reference with one bug put in by text substitution, so the mutants follow
the reference when it changes (a vanished target fails loudly). To keep this file fast (a
grading run costs 4-10 s, mostly starting the worker and importing transformers), a mutant is
graded only on the tests it can affect (``-k``), and three more measured once are left out:
cropping the wrong end (loses 4/28, both cropping tests), greedy from the first position
(8/28: greedy, cropping, temperature) and no optimizer step (3/28: the overfit test).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import REPO, failed_tests, make_submission, mutate

SOLUTION = REPO / "solutions_private" / "lesson_05"
REFERENCE = (SOLUTION / "gpt.py").read_text()
BLOCKS = (SOLUTION / "blocks.py").read_text()

LOGITS = "Logits match HF GPT2LMHeadModel"
LOSS = "Loss with aligned targets equals HF's loss"
MASKED = "Targets equal to -100"
GRADS = "Every parameter gets a finite, non-zero gradient"
GREEDY = "Greedy generation equals HF generate"
CROP = "Past block_size, each step reads only the last block_size tokens"
SEED = "Sampling with the same seed gives the same tokens"
TEMPERATURE = "Sampled next tokens follow softmax(logits / temperature)"
BATCH = "get_batch: x is a window of the data"
OVERFIT = "Micro overfit"
NO_TRAINING = "not overfit"  # -k: skip the only test that trains

# name: (old, new, tests that must fail, -k expression or None for the whole suite)
MUTANTS = {
    "no-position-embedding": (
        "x = self.transformer.drop(tok_emb + pos_emb)", "x = self.transformer.drop(tok_emb)", [LOGITS, GRADS, GREEDY], NO_TRAINING
    ),
    "no-final-layernorm": ("x = self.transformer.ln_f(x)  # (B, T, C)", "x = x  # (B, T, C)", [LOGITS, GRADS], NO_TRAINING),
    "untied-lm-head": ("self.transformer.wte.weight = self.lm_head.weight", "pass", [GRADS, OVERFIT], "gradient or overfit"),
    "loss-shifted-twice": (
        "F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T), ignore_index=-100)",
        "F.cross_entropy(logits[:, :-1].reshape(-1, V), targets[:, 1:].reshape(-1), ignore_index=-100)",
        [LOSS, MASKED, GRADS, OVERFIT],
        "loss or gradient or overfit",
    ),
    "generate-no-crop": ("idx_cond = idx[:, -self.config.block_size :]", "idx_cond = idx", [CROP], NO_TRAINING),
    "samples-when-greedy-asked": ("            if do_sample:\n", "            if True:\n", [GREEDY, CROP], NO_TRAINING),
    "temperature-multiplies": ("F.softmax(logits / temperature", "F.softmax(logits * temperature", [TEMPERATURE], NO_TRAINING),
    "seed-ignored": (
        "generator = torch.Generator(device=idx.device).manual_seed(seed)", "generator = None", [SEED], NO_TRAINING
    ),
    "targets-not-shifted": (
        "y = torch.stack([data[i + 1 : i + 1 + block_size]", "y = torch.stack([data[i : i + block_size]", [BATCH, OVERFIT], "batch or overfit"
    ),
    "no-zero-grad": ("        optimizer.zero_grad(set_to_none=True)\n", "", [OVERFIT], "overfit"),
}


@pytest.mark.parametrize("name", list(MUTANTS))
def test_mutant_loses_points(grade_lesson, tmp_path: Path, name: str):
    old, new, must_fail, keyword = MUTANTS[name]
    files = {"gpt.py": mutate(REFERENCE, old, new), "blocks.py": BLOCKS}
    res = grade_lesson("05", make_submission(tmp_path / "sub", "05", files), keyword=keyword)
    failed = failed_tests(res)
    assert res["score"] < res["max_score"]
    for prefix in must_fail:
        assert any(f.startswith(prefix) for f in failed), f"{name}: expected '{prefix}...' to fail; failed: {sorted(failed)}"
    print(f"{name}: {res['score']:g}/{res['max_score']:g} (-k {keyword!r}); failed: {sorted(failed)}")

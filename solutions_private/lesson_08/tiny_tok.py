"""Provided (given complete, not graded): a tiny offline tokenizer for lesson 08's stop strings.

A byte-level BPE (vocabulary 400) trained in a few milliseconds on three sentences, wrapped as a
Hugging Face ``PreTrainedTokenizerFast``, so nothing is downloaded. ``make_tokenizer()`` builds the
same tokenizer every time (the training is deterministic): the graders build it with this recipe too.
"""

from __future__ import annotations

from functools import lru_cache

SENTENCES = [
    "The quick brown fox jumps over the lazy dog. The end.",
    "A tiny model writes tiny stories about the sea, the wind and the lighthouse.",
    "Stop here. Then stop there! Decoding ends at a stop string, or after max new tokens.",
]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"]
VOCAB_SIZE = 400


@lru_cache(maxsize=1)
def make_tokenizer():
    """The course's tiny tokenizer: a ``PreTrainedTokenizerFast`` with ``len(tok)`` ids (about 400)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(SENTENCES, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:2] + SPECIAL_TOKENS[3:],
    )

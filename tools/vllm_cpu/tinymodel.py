"""Build a tiny random-weight Llama with a BPE tokenizer and chat template, fully offline.

Run it with the vLLM virtualenv's interpreter (it needs torch, transformers and tokenizers):

    <venv>/bin/python tools/vllm_cpu/tinymodel.py OUT_DIR

The result is a Hugging Face model directory vLLM can serve: 2 layers, hidden 128, head_dim 64,
a byte-level BPE vocabulary of about 2,048 trained on generated words, and a minimal chat
template. Everything is seeded, so two builds give the same tokenizer and weights.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

VOCAB_SIZE = 2048
SEED = 1234
BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def generated_corpus(lines: int, seed: int) -> Iterator[str]:
    """Yield made-up sentences mixing invented words with common English ones."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ra", "tu", "zen", "or", "vel", "qui", "sa", "dor", "pe", "an"]
    common = ("the", "a", "of", "to", "and", "in", "is", "it", "you", "that", "he", "was", "for")
    invented = ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
    for _ in range(lines):
        words = [
            rng.choice(common) if rng.random() < 0.3 else rng.choice(invented)
            for _ in range(rng.randint(4, 20))
        ]
        yield " ".join(words) + rng.choice([".", "?", "!", ","])


def build_tokenizer(out_dir: Path) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # type: ignore[import-not-found,unused-ignore]
    from transformers import PreTrainedTokenizerFast  # type: ignore[import-not-found,unused-ignore]

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, BOS, EOS, UNK, *ROLE_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(generated_corpus(20_000, SEED), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 4096
    fast.save_pretrained(out_dir)
    return fast


def build_model(out_dir: Path, tokenizer: Any) -> None:
    import torch  # type: ignore[import-not-found,unused-ignore]
    from transformers import (  # type: ignore[import-not-found,unused-ignore]
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id
    )
    model.save_pretrained(out_dir, safe_serialization=True)


def build(out_dir: Path) -> Path:
    """Write the tokenizer and model into ``out_dir`` (created if needed) and return it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    build_model(out_dir, tokenizer)
    return out_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    print(build(parser.parse_args().out_dir))


if __name__ == "__main__":
    main()

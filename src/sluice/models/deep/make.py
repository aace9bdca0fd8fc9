"""Make small random-weight Hugging Face models locally, for tests, examples and benchmarks.

Nothing is downloaded: the weights are seeded random numbers and the WordPiece tokenizer is
trained with the ``tokenizers`` library on generated text. ::

    python -m sluice.models.deep.make text-embedding DIR [--layers 2 --hidden 32 --seed 0]
    python -m sluice.models.deep.make text-classification DIR [--labels negative,positive]
    python -m sluice.models.deep.make image-classification DIR [--size tiny|resnet18 --labels cat,dog,bird]
    python -m sluice.models.deep.make images DIR [--count 100 --corrupt 0 --image-size 32]

Each model kind writes a model directory (config.json, model.safetensors, and tokenizer.json +
tokenizer_config.json or preprocessor_config.json) that ``sluice predict --model DIR`` and
``sluice serve`` load as they are; ``images`` writes seeded random JPEGs (and ``--corrupt``
undecodable files among them) to predict over
(:func:`~sluice.models.deep.make_image.write_images`).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["KINDS", "generated_text", "main", "make_text_classifier", "make_text_embedding", "train_tokenizer"]

_SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "da", "fe", "gu", "hi", "ja", "qu"]


def generated_text(count: int, *, seed: int = 0, min_words: int = 3, max_words: int = 40) -> list[str]:
    """``count`` documents of made-up words, ``min_words`` to ``max_words`` words each, seeded."""
    rng = random.Random(seed)  # noqa: S311 - made-up documents, not secrets
    vocabulary = ["".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))) for _ in range(2000)]
    return [" ".join(rng.choices(vocabulary, k=rng.randint(min_words, max_words))) for _ in range(count)]


def train_tokenizer(directory: Path, *, vocab_size: int = 1000, max_length: int = 512, seed: int = 0) -> None:
    """A WordPiece tokenizer trained on generated text, saved as tokenizer.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordPiece(unk_token=_SPECIAL_TOKENS["unk_token"]))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(_SPECIAL_TOKENS.values()), show_progress=False
    )
    tokenizer.train_from_iterator(_batches(generated_text(2000, seed=seed)), trainer=trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    fast_class: Any = PreTrainedTokenizerFast  # transformers' constructors are untyped
    fast = fast_class(tokenizer_object=tokenizer, model_max_length=max_length, **_SPECIAL_TOKENS)
    fast.save_pretrained(str(directory))


def _batches(texts: Sequence[str], size: int = 200) -> Iterator[Sequence[str]]:
    for i in range(0, len(texts), size):
        yield texts[i : i + size]


def _bert_config(layers: int, hidden: int, heads: int, vocab_size: int, max_length: int) -> object:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        max_position_embeddings=max_length,
    )


def make_text_embedding(
    directory: Path, *, layers: int = 2, hidden: int = 32, heads: int = 2, vocab_size: int = 1000,
    max_length: int = 512, seed: int = 0,
) -> Path:  # fmt: skip
    """A BERT-style encoder (task feature-extraction) with random weights and its tokenizer in ``directory``."""
    import torch
    from transformers import BertModel

    directory.mkdir(parents=True, exist_ok=True)
    train_tokenizer(directory, vocab_size=vocab_size, max_length=max_length, seed=seed)
    torch.manual_seed(seed)
    model: Any = BertModel(_bert_config(layers, hidden, heads, vocab_size, max_length))  # type: ignore[arg-type]
    model.eval().save_pretrained(str(directory))
    return directory


def make_text_classifier(
    directory: Path, *, labels: Sequence[str] = ("negative", "positive"), layers: int = 2, hidden: int = 32,
    heads: int = 2, vocab_size: int = 1000, max_length: int = 512, seed: int = 0,
) -> Path:  # fmt: skip
    """A BERT-style sequence classifier (task text-classification, id2label set) in ``directory``."""
    import torch
    from transformers import BertForSequenceClassification

    directory.mkdir(parents=True, exist_ok=True)
    train_tokenizer(directory, vocab_size=vocab_size, max_length=max_length, seed=seed)
    config = _bert_config(layers, hidden, heads, vocab_size, max_length)
    config.id2label = dict(enumerate(labels))  # type: ignore[attr-defined]
    config.label2id = {label: i for i, label in enumerate(labels)}  # type: ignore[attr-defined]
    torch.manual_seed(seed)
    model: Any = BertForSequenceClassification(config)  # type: ignore[arg-type]
    model.eval().save_pretrained(str(directory))
    return directory


def _text_embedding(args: argparse.Namespace) -> str:
    return str(make_text_embedding(args.directory, **_sizes(args)))


def _text_classification(args: argparse.Namespace) -> str:
    labels = (args.labels or "negative,positive").split(",")
    return str(make_text_classifier(args.directory, labels=labels, **_sizes(args)))


def _image_classification(args: argparse.Namespace) -> str:
    from sluice.models.deep.make_image import make_image_classifier

    labels = [label for label in (args.labels or "cat,dog,bird").split(",") if label]
    made = make_image_classifier(
        args.directory, size=args.size, labels=labels, image_size=args.image_size, seed=args.seed
    )
    return str(made)


def _images(args: argparse.Namespace) -> str:
    from sluice.models.deep.make_image import write_images

    paths = write_images(args.directory, args.count, size=args.image_size or 32, corrupt=args.corrupt, seed=args.seed)
    return f"wrote {len(paths)} files to {args.directory}"


def _sizes(args: argparse.Namespace) -> dict[str, int]:
    return {
        "layers": args.layers,
        "hidden": args.hidden,
        "heads": args.heads,
        "vocab_size": args.vocab_size,
        "max_length": args.max_length,
        "seed": args.seed,
    }


KINDS: dict[str, Callable[[argparse.Namespace], str]] = {
    "text-embedding": _text_embedding,
    "text-classification": _text_classification,
    "image-classification": _image_classification,
    "images": _images,
}
"""Each kind of model (or data) this module makes, by the name the command line takes; each
returns what the command prints."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sluice.models.deep.make",
        description="Make a small random-weight model directory (or images to predict over) locally.",
    )
    parser.add_argument("kind", choices=sorted(KINDS), help="What to make.")
    parser.add_argument("directory", type=Path, help="Directory to write into (created).")
    parser.add_argument("--layers", type=int, default=2, help="Transformer layers (default 2).")
    parser.add_argument("--hidden", type=int, default=32, help="Hidden size (default 32).")
    parser.add_argument("--heads", type=int, default=2, help="Attention heads; must divide --hidden (default 2).")
    parser.add_argument("--vocab-size", type=int, default=1000, help="WordPiece vocabulary size (default 1000).")
    parser.add_argument("--max-length", type=int, default=512, help="Longest input in tokens (default 512).")
    parser.add_argument(
        "--labels",
        default=None,
        help="Class names, comma-separated (classifiers; default negative,positive for text, cat,dog,bird for images).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    parser.add_argument("--size", choices=["tiny", "resnet18"], default="tiny", help="Image model size (default tiny).")
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="Pixels a side (default: the model size's; kind images: 32).",
    )
    parser.add_argument("--count", type=int, default=100, help="Images to write (kind images; default 100).")
    parser.add_argument("--corrupt", type=int, default=0, help="Undecodable files to add (kind images; default 0).")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: make the model, print its directory."""
    args = _parser().parse_args(argv)
    from transformers.utils import logging

    hf_logging: Any = logging  # untyped
    hf_logging.disable_progress_bar()
    print(KINDS[args.kind](args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

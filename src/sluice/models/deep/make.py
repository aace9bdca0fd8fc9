"""``python -m sluice.models.deep.make KIND DIR``: make a random-weight model (or test data) locally.

Kinds:

- ``image-classification``: a ResNet image classifier in Hugging Face format
  (:func:`~sluice.models.deep.make_image.make_image_classifier`); ``--size tiny|resnet18``;
- ``images``: a directory of seeded random JPEGs (:func:`~sluice.models.deep.make_image.write_images`);
  ``--count N``, ``--corrupt K`` undecodable files among them, ``--image-size`` pixels a side.

Everything is seeded (``--seed``), so the same command makes the same files.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sluice.models.deep.make", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=["image-classification", "images"])
    parser.add_argument("directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=["tiny", "resnet18"], default="tiny", help="model size (image models)")
    parser.add_argument("--labels", default="cat,dog,bird", help="class names, comma-separated")
    parser.add_argument("--image-size", type=int, default=None, help="pixels a side (default: the model size's)")
    parser.add_argument("--count", type=int, default=100, help="images to write (kind images)")
    parser.add_argument("--corrupt", type=int, default=0, help="undecodable files to add (kind images)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line above."""
    args = _parser().parse_args(argv)
    from sluice.models.deep.make_image import make_image_classifier, write_images

    if args.kind == "image-classification":
        labels = [label for label in args.labels.split(",") if label]
        made = make_image_classifier(
            args.directory, size=args.size, labels=labels, image_size=args.image_size, seed=args.seed
        )
        print(f"wrote a random-weight {args.size} image classifier to {made}")
        return
    paths = write_images(args.directory, args.count, size=args.image_size or 32, corrupt=args.corrupt, seed=args.seed)
    print(f"wrote {len(paths)} files to {args.directory}")


if __name__ == "__main__":
    main()

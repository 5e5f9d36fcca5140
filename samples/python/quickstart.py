"""Export the built-in default model for a device and stream an answer about an image.

    python samples/python/quickstart.py --device jetson
"""

import argparse

import edgemfm

parser = argparse.ArgumentParser()
parser.add_argument("--device", default="host", help="device name or alias (see `edgemfm devices`)")
parser.add_argument("--image", default="samples/images/shapes.png")
args = parser.parse_args()

bundle = edgemfm.export(device=args.device, out=f"bundles/default-{args.device}", force=True)
pipe = edgemfm.load(bundle)
print(f"running on {pipe.provider}")
for piece in pipe.generate("What is in the picture?", images=[args.image], max_new_tokens=32):
    print(piece, end="", flush=True)
print()

#!/usr/bin/env bash
# Copy an edgemfm bundle into the app's assets, where the app (BundleAssets.java) looks for it.
#
#   edgemfm export --device android --out bundles/android
#   samples/android/ci/put_bundle.sh bundles/android [DEST]
#
# Copies exactly the files the bundle's manifest.json lists (plus the manifest), after checking
# each one's size and sha256, into a temporary folder that then replaces DEST (default:
# app/src/main/assets/bundle/, which git ignores: bundles are build outputs, not sources).
set -euo pipefail

[ $# -eq 1 ] || [ $# -eq 2 ] || { echo "usage: $0 BUNDLE_DIR [DEST]" >&2; exit 2; }
SRC="$1"
DEST="${2:-$(cd "$(dirname "$0")/.." && pwd)/app/src/main/assets/bundle}"
[ -f "$SRC/manifest.json" ] || { echo "put_bundle: $SRC has no manifest.json; is it an edgemfm bundle?" >&2; exit 2; }

mkdir -p "$(dirname "$DEST")"
TMP=$(mktemp -d "$(dirname "$DEST")/.bundle.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

python3 - "$SRC" "$TMP" <<'EOF'
import hashlib, json, shutil, sys
from pathlib import Path

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
manifest = json.loads((src / "manifest.json").read_text())
if manifest.get("kind") != "edgemfm-bundle":
    sys.exit(f"put_bundle: {src}/manifest.json is not an edgemfm bundle manifest")
for name, entry in manifest["files"].items():
    path = src / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    if digest != entry["sha256"] or path.stat().st_size != entry["bytes"]:
        sys.exit(f"put_bundle: {path} is missing or differs from its manifest entry")
    (dst / name).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(path, dst / name)
shutil.copyfile(src / "manifest.json", dst / "manifest.json")
print(f"put_bundle: {manifest['model_id']} ({len(manifest['files'])} files) -> app assets")
EOF
chmod 755 "$TMP"
rm -rf "$DEST"
mv "$TMP" "$DEST"

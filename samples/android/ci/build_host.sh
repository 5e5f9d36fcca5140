#!/usr/bin/env bash
# Build the host (Linux x86-64 JVM) run of the app's decode loop, for the parity test:
# the app's org.edgemfm.bundle classes + host/HostRun.java, compiled against ORT's classes.jar
# from the Android AAR, and host/ort_jni_host.c linked against ORT 1.29.0's Linux library.
#
#   samples/android/ci/build_host.sh [OUT_DIR]     # default: samples/android/build/host
#
# Then:  java -Donnxruntime.native.path=OUT/lib -cp OUT/classes:ORT_CLASSES_JAR \
#            org.edgemfm.host.HostRun --bundle DIR ...   (OUT/run.sh does exactly this;
#        OUT/run.sh --tokenize tokenizer.json texts.json runs TokenizeCheck instead)
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${EDGEMFM_ANDROID_CACHE:-$HOME/.cache/edgemfm/android}"
OUT="${1:-$HERE/build/host}"
ORT="$CACHE/ort-android-1.29.0/aar"
ORT_LINUX="$CACHE/ort-linux-1.29.0/libonnxruntime.so"
for f in "$ORT/classes.jar" "$ORT/headers/onnxruntime_c_api.h" "$ORT_LINUX"; do
    [ -f "$f" ] || { echo "build_host: $f is missing; run samples/android/ci/fetch_inputs.sh first" >&2; exit 3; }
done
JAVA_HOME="${JAVA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")}"

rm -rf "$OUT"
mkdir -p "$OUT/lib" "$OUT/classes"
# ORT's Java loader wants lib<name>.so in one folder; the glue finds libonnxruntime.so.1 (its
# SONAME) next to itself through the $ORIGIN rpath.
cp "$ORT_LINUX" "$OUT/lib/libonnxruntime.so"
ln -s libonnxruntime.so "$OUT/lib/libonnxruntime.so.1"
gcc -std=c11 -O2 -fPIC -shared -Wall -Wextra -Werror \
    -I"$JAVA_HOME/include" -I"$JAVA_HOME/include/linux" -I"$ORT/headers" \
    "$HERE/host/ort_jni_host.c" -o "$OUT/lib/libonnxruntime4j_jni.so" \
    -L"$OUT/lib" -l:libonnxruntime.so -Wl,-rpath,'$ORIGIN'
find "$HERE/app/src/main/java/org/edgemfm/bundle" "$HERE/host/java" -name '*.java' >"$OUT/sources.txt"
javac -nowarn -encoding UTF-8 --release 17 -classpath "$ORT/classes.jar" -d "$OUT/classes" @"$OUT/sources.txt"
cat >"$OUT/run.sh" <<RUN
#!/usr/bin/env bash
MAIN=org.edgemfm.host.HostRun
if [ "\${1:-}" = --tokenize ]; then MAIN=org.edgemfm.host.TokenizeCheck; shift; fi
exec java -Donnxruntime.native.path="$OUT/lib" -cp "$OUT/classes:$ORT/classes.jar" "\$MAIN" "\$@"
RUN
chmod +x "$OUT/run.sh"
echo "build_host: $OUT/run.sh"

#!/usr/bin/env bash
# Run edgemfm's runtime install as an aarch64 Linux process on an x86-64 Debian host, under
# qemu-user: the same wheels a Raspberry Pi 5 or a Jetson gets from `pip install edgemfm`, and
# this checkout's edgemfm, executed instruction by instruction as Arm code.
#
#   samples/raspberry-pi/emulate.sh [--repo DIR] [--extra sign]             build or reuse; print the launcher
#   samples/raspberry-pi/emulate.sh [--repo DIR] [--extra sign] -- ARGS...  then run `python3.11 ARGS...` on it
#
#   py=$(samples/raspberry-pi/emulate.sh)
#   "$py" -c 'import platform; print(platform.machine())'      # aarch64
#   "$py" -m edgemfm.cli run BUNDLE --prompt "What is this?" --image photo.jpg
#
# What it keeps under ${EDGEMFM_AARCH64_CACHE:-$HOME/.cache/edgemfm/aarch64}, built once:
#   base-<key>/rootfs     Debian bookworm's arm64 python3.11 and the libraries it and the wheels
#                         link (apt-get download + dpkg -x: no chroot, no binfmt, root only for apt)
#   base-<key>/rootfs/proc/cpuinfo   a Pi 5's (cpuinfo-pi5.txt): qemu's -L makes the guest read
#                         it for /proc/cpuinfo, and onnxruntime segfaults on import without an Arm one
#   base-<key>/site       the runtime wheels pinned with hashes in requirements-aarch64.txt
#   base-<key>/INFO       Debian package versions and the installed size of the runtime set
#   extra-<name>-<xkey>/site  with --extra NAME: the wheels pinned in requirements-aarch64-NAME.txt
#                         (sign: cryptography, for signed bundles), apart so the runtime set stays small
#   project-<hash>/site   this checkout's edgemfm: a wheel built from its files, installed --no-deps
#   project-<hash>/python the launcher: qemu-aarch64-static -cpu cortex-a76 -L rootfs python3.11
# <key> hashes the inputs (package list, lock file, cpuinfo), <xkey> <key> and the extra's lock,
# <hash> the checkout's files and the extras, so a
# change rebuilds and nothing is ever rebuilt in place. Each is built in a temporary folder,
# checked by importing the runtime under emulation, then renamed: a failed step leaves nothing.
#
# Exit status: 0 done; 75 an input could not be fetched (no network, apt or the package index
# failing; tests skip on it); 1 anything else (a broken wheel, a failing import: tests fail).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
LOCK="$HERE/requirements-aarch64.txt"
CPUINFO="$HERE/cpuinfo-pi5.txt"
CACHE=${EDGEMFM_AARCH64_CACHE:-$HOME/.cache/edgemfm/aarch64}
HOST_PYTHON=${EDGEMFM_HOST_PYTHON:-python3}  # only runs pip: download, wheel, install --target
CPU=${EDGEMFM_AARCH64_CPU:-cortex-a76}  # the Pi 5's core: the guest sees its ISA (no SVE, i8mm)
LAYOUT=1  # bump when the way base-<key> is built changes
# CPython 3.11 and what it and the manylinux wheels link: about 11 MB of .deb, 57 MB unpacked.
DEBS=(python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libc6 libexpat1 zlib1g
      libffi8 libssl3 libstdc++6 libgcc-s1 liblzma5 libbz2-1.0 libcrypt1 libuuid1 libsqlite3-0)
PLATFORM=(--only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64
          --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp)
EX_UNFETCHABLE=75
PIP_OFFLINE='NewConnectionError|Max retries exceeded|Temporary failure in name resolution|Network is unreachable'

say() { echo "emulate.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }
unfetchable() { say "cannot fetch the aarch64 inputs: $*"; exit "$EX_UNFETCHABLE"; }
# run LOG CMD...: run quietly into LOG; on failure show its tail and return the status
run() {
    local log=$1; shift
    "$@" >>"$log" 2>&1 && return 0
    local rc=$?
    say "failed ($rc): $*"
    grep -v 'is ignored: it is neither a file nor a directory' "$log" | tail -n 6 >&2
    return "$rc"
}
sha() { sha256sum | cut -c1-16; }

REPO=$(cd "$HERE/../.." && pwd)
# --extra NAME: each optional lock, and the module whose import proves its wheels run as aarch64
declare -A EXTRA_CHECK=([sign]=cryptography.hazmat.primitives.asymmetric.ed25519)
EXTRAS=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --repo) REPO=$(cd "$2" && pwd); shift 2 ;;
        --) shift; break ;;
        --extra) [[ -n ${2:-} && -n ${EXTRA_CHECK[$2]:-} ]] \
                     || die "unknown extra '${2:-}'; allowed: ${!EXTRA_CHECK[*]}"
                 EXTRAS+=("$2"); shift 2 ;;
        -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument '$1'; usage: emulate.sh [--repo DIR] [-- PYTHON-ARGS...]" ;;
    esac
done
RUN_ARGS=("$@")

as_root() {
    if [[ $(id -u) == 0 ]]; then "$@"
    elif sudo -n true 2>/dev/null; then sudo -n "$@"
    else unfetchable "'$*' needs root (or passwordless sudo)"; fi
}

ensure_qemu() {
    command -v qemu-aarch64-static >/dev/null && return
    say "installing qemu-user-static (apt-get)"
    local log=$1
    export DEBIAN_FRONTEND=noninteractive
    run "$log" as_root apt-get install -y --no-install-recommends qemu-user-static \
        || { run "$log" as_root apt-get update && run "$log" as_root apt-get install -y \
             --no-install-recommends qemu-user-static; } \
        || unfetchable "apt-get install qemu-user-static failed"
}

# apt-get download the arm64 packages into the current folder (adds the arm64 architecture once)
download_debs() {
    local log=$1 pkgs=("${DEBS[@]/%/:arm64}") sandbox=()
    [[ $(id -u) == 0 ]] && sandbox=(-o APT::Sandbox::User=root)  # _apt cannot write a 0700 temp dir
    if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        say "dpkg --add-architecture arm64; apt-get update"
        run "$log" as_root dpkg --add-architecture arm64 || die "dpkg --add-architecture arm64 failed"
        run "$log" as_root apt-get update || unfetchable "apt-get update failed"
    fi
    say "apt-get download ${#pkgs[@]} arm64 packages"
    run "$log" apt-get "${sandbox[@]}" download "${pkgs[@]}" && return
    say "retrying after apt-get update (the arm64 lists may be stale)"
    { run "$log" as_root apt-get update && run "$log" apt-get "${sandbox[@]}" download "${pkgs[@]}"; } \
        || unfetchable "apt-get download failed"
}

# install_lock TMP LOCK: download LOCK's aarch64 wheels (hashes checked) and install them in TMP/site
install_lock() {
    local tmp=$1 lock=$2 log=$1/build.log
    say "pip download $(grep -c '^[a-z]' "$lock") aarch64 wheels pinned in $(basename "$lock")"
    if ! run "$log" "$HOST_PYTHON" -m pip download --no-deps --require-hashes "${PLATFORM[@]}" \
            --dest "$tmp/wheels" -r "$lock"; then
        grep -q 'DO NOT MATCH THE HASHES' "$log" && die "a wheel's hash differs from $lock"
        unfetchable "pip download failed"
    fi
    # pip compiles .pyc as on a board (Python 3.11 bytecode is the same on both), so the size
    # is what `pip install` leaves and the guest never compiles under emulation.
    run "$log" "$HOST_PYTHON" -m pip install --no-deps --no-index "${PLATFORM[@]}" \
        --target "$tmp/site" "$tmp"/wheels/*.whl || die "pip install --target failed"
    rm -rf "$tmp/wheels" "$tmp/site/bin"  # bin/: console scripts for the host python
}

# build_extra TMP BASE NAME: the extra's wheels in TMP/site, checked by importing them as aarch64
build_extra() {
    local tmp=$1 base=$2 name=$3
    install_lock "$tmp" "$HERE/requirements-aarch64-$name.txt"
    site_sizes "$tmp/site" "extra $name" >"$tmp/INFO"
    write_launcher "$tmp/python" "$base" "$tmp/site:$base/site"
    verify "$tmp/python" "${EXTRA_CHECK[$name]}" || die "the $name extra does not import under emulation"
    rm -f "$tmp/python" "$tmp/build.log"
}

build_base() {
    local tmp=$1 log=$1/build.log t0=$SECONDS
    mkdir -p "$tmp/debs" "$tmp/rootfs/proc" "$tmp/wheels"
    ensure_qemu "$log"
    (cd "$tmp/debs" && download_debs "$log")
    for deb in "$tmp"/debs/*.deb; do
        dpkg -x "$deb" "$tmp/rootfs"
        dpkg-deb --showformat='${Package} ${Version}\n' -W "$deb" >>"$tmp/debs.txt"
    done
    cp "$CPUINFO" "$tmp/rootfs/proc/cpuinfo"
    say "rootfs: $(du -sh "$tmp/rootfs" | cut -f1) ($((SECONDS - t0)) s)"

    install_lock "$tmp" "$LOCK"
    rm -rf "$tmp/debs"
    say "runtime wheels installed: $(du -sh "$tmp/site" | cut -f1) ($((SECONDS - t0)) s)"
    write_info "$tmp"
}

# site_sizes SITE WHAT: the installed size of each distribution in SITE, largest first
site_sizes() {
    "$HOST_PYTHON" - "$1" "$2" <<'EOF'
import csv, pathlib, sys
site = pathlib.Path(sys.argv[1])
sizes = {}  # each distribution's files, .pyc included, from its RECORD
for record in site.glob("*.dist-info/RECORD"):
    files = (site / row[0] for row in csv.reader(record.open()) if row)
    sizes[record.parent.name.removesuffix(".dist-info")] = sum(f.stat().st_size for f in files if f.is_file())
print(f"{sys.argv[2]} installed size: {sum(sizes.values()) / 2**20:.1f} MiB in {len(sizes)} distributions")
for name, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
    print(f"  {size / 2**20:6.1f} MiB  {name}")
EOF
}

write_info() {
    local tmp=$1
    {
        echo "built: $(date -u +%FT%TZ) by emulate.sh layout $LAYOUT; $(qemu-aarch64-static --version | head -1)"
        echo "rootfs: $(du -sk "$tmp/rootfs" | cut -f1) KiB on disk"
        site_sizes "$tmp/site" "runtime set"
        echo "debian packages:"; sed 's/^/  /' "$tmp/debs.txt"
    } >"$tmp/INFO"
}

# write_launcher FILE BASE SITES: the one way anything runs as aarch64 here
write_launcher() {
    cat >"$1" <<EOF
#!/bin/sh
# aarch64 CPython 3.11 with edgemfm's runtime install, under qemu-user: made by emulate.sh
unset PYTHONHOME
export PYTHONPATH='$3' PYTHONNOUSERSITE=1
exec qemu-aarch64-static -cpu '$CPU' -L '$2/rootfs' '$2/rootfs/usr/bin/python3.11' "\$@"
EOF
    chmod +x "$1"
}

# The checkout's files that a wheel is built from: tracked and untracked-but-not-ignored.
project_files() {
    git -C "$REPO" ls-files -z --cached --others --exclude-standard \
        | while IFS= read -r -d '' f; do [[ -f $REPO/$f ]] && printf '%s\0' "$f"; done
}

build_project() {
    local tmp=$1 base=$2 log=$1/build.log
    say "building this checkout's edgemfm wheel ($REPO)"
    mkdir -p "$tmp/src"
    # A copy, so the build writes no build/ or egg-info into the checkout.
    project_files | (cd "$REPO" && tar --null -T - -cf -) | tar -xf - -C "$tmp/src"
    if ! run "$log" "$HOST_PYTHON" -m pip wheel --no-deps -w "$tmp/dist" "$tmp/src"; then
        # Only a build backend that cannot be downloaded is a fetch failure; a packaging mistake
        # in the checkout must fail the test, not skip it.
        grep -qE "$PIP_OFFLINE|satisfies the requirement (setuptools|wheel)" "$log" \
            && unfetchable "pip wheel could not get its build backend from the package index"
        grep -E '^ *error: ' "$log" | grep -v subprocess-exited | tail -n 3 >&2
        die "pip wheel of the checkout failed"
    fi
    run "$log" "$HOST_PYTHON" -m pip install --no-deps --no-index \
        --target "$tmp/site" "$tmp"/dist/*.whl || die "pip install of the edgemfm wheel failed"
    rm -rf "$tmp/src" "$tmp/dist" "$tmp/site/bin"
}

# verify LAUNCHER [MODULE]: the runtime (and MODULE) import as aarch64; onnxruntime is the one
# that crashes on a bad rootfs
verify() {
    "$1" - "${2:-}" <<'EOF' >&2
import importlib, platform, sys
import numpy, onnxruntime, PIL, rich, tokenizers
assert platform.machine() == "aarch64", platform.machine()
m = importlib.import_module(sys.argv[1]) if sys.argv[1] else None
extra = f", {m.__name__} from {m.__file__}" if m else ""
print(f"emulate.sh: ok: {platform.machine()} Python {platform.python_version()}, numpy {numpy.__version__},"
      f" onnxruntime {onnxruntime.__version__} {onnxruntime.get_available_providers()}{extra}")
EOF
}

# publish TMP DEST: rename a finished build into place (someone else's equal build may have won)
publish() {
    mv -T "$1" "$2" 2>/dev/null || { [[ -d $2 ]] && rm -rf "$1"; } || die "cannot rename $1 to $2"
}

main() {
    command -v apt-get >/dev/null && command -v dpkg >/dev/null \
        || unfetchable "the arm64 rootfs comes from Debian's apt-get and dpkg, which this host lacks"
    mkdir -p "$CACHE"
    exec 9>"$CACHE/.lock"
    flock 9  # one builder at a time; runs do not lock
    local key base hash project t0=$SECONDS
    tmp=""  # global: the EXIT trap runs after main's locals are gone
    trap 'rm -rf "$tmp"' EXIT

    key=$({ echo "$LAYOUT $CPU ${DEBS[*]} ${PLATFORM[*]}"; cat "$LOCK" "$CPUINFO"; } | sha)
    base="$CACHE/base-$key"
    if [[ -d $base ]]; then
        say "reusing $base"
        command -v qemu-aarch64-static >/dev/null || ensure_qemu "$CACHE/qemu.log"
    else
        say "building $base"
        tmp=$(mktemp -d "$CACHE/.tmp-base-XXXXXX")
        build_base "$tmp"
        write_launcher "$tmp/python" "$tmp" "$tmp/site"
        verify "$tmp/python" || die "the runtime does not import under emulation"
        write_launcher "$tmp/python" "$base" "$base/site"
        rm -f "$tmp/build.log"
        publish "$tmp" "$base"
        say "built in $((SECONDS - t0)) s; $(grep "^runtime set" "$base/INFO")"
    fi

    local sites="$base/site" extras="" name xkey extra
    for name in "${EXTRAS[@]}"; do
        xkey=$({ echo "$key $name"; cat "$HERE/requirements-aarch64-$name.txt"; } | sha)
        extra="$CACHE/extra-$name-$xkey"
        if [[ -d $extra ]]; then
            say "reusing $extra"
        else
            tmp=$(mktemp -d "$CACHE/.tmp-extra-XXXXXX")
            build_extra "$tmp" "$base" "$name"
            publish "$tmp" "$extra"
            say "$(head -1 "$extra/INFO")"
        fi
        touch "$extra"
        sites="$extra/site:$sites" extras+=" $name-$xkey"
    done

    git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1 || die "$REPO is not a git checkout"
    hash=$( { echo "$key$extras"; cd "$REPO" && project_files | xargs -0 -r sha256sum | sort -k2; } | sha)
    project="$CACHE/project-$hash"
    if [[ -d $project ]]; then
        say "reusing $project"
    else
        tmp=$(mktemp -d "$CACHE/.tmp-project-XXXXXX")
        build_project "$tmp" "$base"
        write_launcher "$tmp/python" "$base" "$tmp/site:$sites"
        verify "$tmp/python" edgemfm || die "edgemfm's runtime does not import under emulation"
        write_launcher "$tmp/python" "$base" "$project/site:$sites"
        rm -f "$tmp/build.log"
        publish "$tmp" "$project"
    fi
    touch "$base" "$project"
    # Checkouts come and go: forget what no run has used for a week.
    find "$CACHE" -mindepth 1 -maxdepth 1 \( -name 'project-*' -o -name 'base-*' -o -name 'extra-*' -o -name '.tmp-*' \) \
        -mtime +7 -exec rm -rf {} +
    exec 9>&-
    trap - EXIT
    if [[ ${#RUN_ARGS[@]} -gt 0 ]]; then exec "$project/python" "${RUN_ARGS[@]}"; fi
    echo "$project/python"
}

main

#!/usr/bin/env bash
# CUDA build check for the DGX Spark (sm_121, CUDA 13.0) on a machine WITHOUT the Spark's GPU.
# Not part of CI (takes tens of minutes on 2 cores). Usage:
#
#   nice -n 15 bash scripts/check_cuda_build.sh            # representative set of CUDA sources
#   CHECK_CUDA_FULL=1 nice -n 15 bash scripts/check_cuda_build.sh   # every CUDA object (hours)
#   CHECK_CUDA_SUMMARY_ONLY=1 bash scripts/check_cuda_build.sh      # rewrite the log from the last run
#
# What it does:
#  1. installs CUDA 13.0's nvcc, nvvm, cccl, crt, cudart and cublas from the package index
#     (nvidia-cuda-nvcc, nvidia-nvvm, nvidia-cuda-cccl, nvidia-cuda-crt, nvidia-cuda-runtime,
#     nvidia-cublas; all 13.0.x) into $CACHE/pkgs and turns nvidia/cu13 into a toolkit root CMake's
#     FindCUDAToolkit accepts (targets/<arch>-linux, lib64, unversioned .so links, a libcuda stub:
#     the driver library only exists where a driver is installed; we compile, never link or run);
#  2. takes the sources of the pinned bindings (LLAMA_CPP_REF / PYWHISPERCPP_REF, .env.default)
#     as sdists (pip download --no-deps --no-binary <pkg>), the same ones bindings.build compiles;
#  3. configures both with the cuda-sm121 preset's cache variables (CMakePresets.json through
#     bindings.build), swapping only host-CPU flags that cannot apply on this host's ISA
#     (GGML_CPU_ARM_ARCH on x86_64) — reported in the log;
#  4. compiles a representative set of CUDA objects for arch 121 (llama.cpp rewrites it to 121a):
#     flash attention (dispatcher, tile, an MMA-f16 and a vec instance), mmq (dispatcher, the MXFP4
#     and Q4_0 instances), mmvq, the MXFP4 dequantisation/conversion and the backend's main file,
#     for both bindings' vendored ggml;
#  5. checks every object's embedded cubins with cuobjdump (sm_121a ELF present) and writes a log
#     summary (nvcc version, the -arch/-gencode flags actually passed, per-object time and result)
#     to $LOG (default benchmarks/cuda-build-check/<date>.md).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${CHECK_CUDA_CACHE:-$ROOT/.cache/cuda-check}
CUDA_SERIES=${CHECK_CUDA_SERIES:-13.0}
PRESET=${CHECK_CUDA_PRESET:-cuda-sm121}
ARCH=${CHECK_CUDA_ARCH:-121}
JOBS=${CHECK_CUDA_JOBS:-1}
FULL=${CHECK_CUDA_FULL:-0}
SUMMARY_ONLY=${CHECK_CUDA_SUMMARY_ONLY:-0}
DATE=$(date -u +%Y-%m-%d)
LOG=${CHECK_CUDA_LOG:-$ROOT/benchmarks/cuda-build-check/$DATE.md}
PY=${PYTHON:-python3}
mkdir -p "$CACHE" "$(dirname "$LOG")"
RAW=$CACHE/raw.log
[ "$SUMMARY_ONLY" = 1 ] || : > "$RAW"
say() { echo "[check_cuda_build $(date -u +%H:%M:%S)] $*" | tee -a "$RAW" >&2; }
die() { say "FAILED: $*"; summary_fail "$*"; exit 1; }

HOST_ARCH=$(uname -m)
case "$HOST_ARCH" in
  x86_64) TARGET_DIR=x86_64-linux ;;
  aarch64) TARGET_DIR=sbsa-linux ;;
  *) TARGET_DIR=$HOST_ARCH-linux ;;
esac

summary_fail() {
  { echo "# CUDA build check ($PRESET, arch $ARCH) — $DATE"; echo; echo "**FAILED**: $1"; echo;
    echo '```'; tail -n 60 "$RAW"; echo '```'; } > "$LOG"
}

# ------------------------------------------------------------------ 1. the toolkit from the index
TOOLS=$CACHE/tools           # a venv with cmake/ninja (recent enough for CUDA 13 and 121a)
if [ ! -x "$TOOLS/bin/cmake" ]; then
  say "creating $TOOLS (cmake, ninja)"
  "$PY" -m venv "$TOOLS" && "$TOOLS/bin/pip" install -q --disable-pip-version-check 'cmake>=3.28,<4' ninja \
    >>"$RAW" 2>&1 || die "pip install cmake ninja"
fi
export PATH=$TOOLS/bin:$PATH
PKGS=$CACHE/pkgs
CUDA_REQS=(nvidia-cuda-nvcc nvidia-nvvm nvidia-cuda-cccl nvidia-cuda-crt nvidia-cuda-runtime nvidia-cublas)
stamp=$PKGS/.installed-$CUDA_SERIES
if [ ! -f "$stamp" ]; then
  say "installing ${CUDA_REQS[*]} ==$CUDA_SERIES.* into $PKGS"
  rm -rf "$PKGS"
  "$TOOLS/bin/pip" install -q --disable-pip-version-check --no-deps --target "$PKGS" \
    $(printf "%s==$CUDA_SERIES.* " "${CUDA_REQS[@]}") >>"$RAW" 2>&1 || die "pip install of the CUDA $CUDA_SERIES packages"
  touch "$stamp"
fi
CUDA_ROOT=$PKGS/nvidia/cu13
[ -x "$CUDA_ROOT/bin/nvcc" ] || die "no nvcc under $CUDA_ROOT (package layout changed?)"
# nvcc.profile looks for headers and libs under targets/<arch>-linux; CMake wants lib64 and
# unversioned library names; FindCUDAToolkit wants a libcuda (driver) stub for CUDA::cuda_driver.
mkdir -p "$CUDA_ROOT/targets/$TARGET_DIR"
ln -sfn ../../include "$CUDA_ROOT/targets/$TARGET_DIR/include"
ln -sfn ../../lib "$CUDA_ROOT/targets/$TARGET_DIR/lib"
ln -sfn lib "$CUDA_ROOT/lib64"
for so in "$CUDA_ROOT"/lib/lib*.so.[0-9]*; do
  base=${so%%.so.*}.so
  [ -e "$base" ] || ln -s "$(basename "$so")" "$base"
done
mkdir -p "$CUDA_ROOT/lib/stubs"
if [ ! -f "$CUDA_ROOT/lib/stubs/libcuda.so" ]; then
  echo 'void cuGetErrorString(void){}' > "$CACHE/cuda_stub.c"
  gcc -shared -fPIC -o "$CUDA_ROOT/lib/stubs/libcuda.so" "$CACHE/cuda_stub.c" || die "libcuda stub"
fi
# cuobjdump 13.0 is not on the index (13.2+ only): a newer one reads 13.0 cubins; verification only.
CUOBJ=$CACHE/cuobjdump
if [ ! -x "$CUOBJ/nvidia/cu13/bin/cuobjdump" ]; then
  "$TOOLS/bin/pip" install -q --disable-pip-version-check --no-deps --target "$CUOBJ" 'nvidia-cuda-cuobjdump>=13,<14' \
    >>"$RAW" 2>&1 || say "cuobjdump not installable: objects will be checked by size only"
fi
CUOBJDUMP=$CUOBJ/nvidia/cu13/bin/cuobjdump
NVCC=$CUDA_ROOT/bin/nvcc
export CUDA_PATH=$CUDA_ROOT CUDAToolkit_ROOT=$CUDA_ROOT CUDACXX=$NVCC
NVCC_VERSION=$("$NVCC" --version | tail -n 2 | tr '\n' ' ')
say "nvcc: $NVCC_VERSION"
PKG_VERSIONS=$(cd "$PKGS" && ls -d *.dist-info | sed 's/\.dist-info$//' | tr '\n' ' ')
say "packages: $PKG_VERSIONS"

# ------------------------------------------------------------------ 2. the pinned sources
read -r LLAMA_REF WHISPER_REF < <("$PY" -c '
import bindings.build as b
r = b.pinned_refs()
print(r["llama"], r["whisper"])')
SDIST=$CACHE/sdist
SRC=$CACHE/src
mkdir -p "$SDIST" "$SRC"
fetch_src() {  # pkg version dir-prefix
  local pkg=$1 ver=$2 name=$3
  if [ ! -d "$SRC/$name-$ver" ]; then
    ls "$SDIST/$name-$ver".tar.gz >/dev/null 2>&1 || \
      "$TOOLS/bin/pip" download -q --disable-pip-version-check --no-deps --no-binary "$pkg" -d "$SDIST" "$pkg==$ver" \
        >>"$RAW" 2>&1 || die "pip download $pkg==$ver"
    tar -xzf "$SDIST/$name-$ver.tar.gz" -C "$SRC" || die "unpack $name-$ver"
  fi
  echo "$SRC/$name-$ver"
}
LLAMA_SRC=$(fetch_src llama-cpp-python "$LLAMA_REF" llama_cpp_python) || exit 1
WHISPER_SRC=$(fetch_src pywhispercpp "$WHISPER_REF" pywhispercpp) || exit 1
say "sources: llama-cpp-python $LLAMA_REF, pywhispercpp $WHISPER_REF"

# ------------------------------------------------------------------ 3. configure with the preset
# The preset's -D arguments, exactly as bindings.build passes them in CMAKE_ARGS.
preset_args() {
  "$PY" -c '
import sys, bindings.build as b
p = b.resolve_preset(sys.argv[1])
print("\n".join(b.cmake_args(p, sys.argv[2], sys.argv[3])))' "$PRESET" "$1" "$ARCH"
}
SWAPPED=()
host_filter() {  # drop host-only flags that cannot apply to this host's ISA
  while read -r a; do
    case "$a" in
      -DGGML_CPU_ARM_ARCH=*)
        if [ "$HOST_ARCH" != aarch64 ]; then echo "SWAP $a"; continue; fi ;;
    esac
    echo "$a"
  done
}
configure() {  # name srcdir extra-args...
  local name=$1 src=$2; shift 2
  local bdir=$CACHE/build/$name
  local args=() swapped=()
  while read -r a; do
    if [[ $a == SWAP* ]]; then swapped+=("${a#SWAP }"); else args+=("$a"); fi
  done < <(preset_args "$name" | host_filter)
  for s in "${swapped[@]}"; do SWAPPED+=("$name: $s (arm64 -march flag; on $HOST_ARCH the CPU backend keeps GGML_NATIVE=OFF defaults)"); done
  [ "$SUMMARY_ONLY" = 1 ] && return 0
  say "configure $name: ${args[*]} $*"
  rm -rf "$bdir"
  local t0=$SECONDS
  cmake -S "$src" -B "$bdir" -G Ninja "${args[@]}" "$@" \
    -DCMAKE_CUDA_COMPILER="$NVCC" -DCUDAToolkit_ROOT="$CUDA_ROOT" >"$CACHE/configure-$name.log" 2>&1
  local rc=$?
  cat "$CACHE/configure-$name.log" >> "$RAW"
  echo "$name|$rc|$((SECONDS - t0))|${args[*]} $*" >> "$CACHE/configure.tsv"
  return $rc
}
[ "$SUMMARY_ONLY" = 1 ] || : > "$CACHE/configure.tsv"
configure llama "$LLAMA_SRC" -DSKBUILD_PLATLIB_DIR="$CACHE/build/llama-install" || die "configure llama (see $CACHE/configure-llama.log)"
configure whisper "$WHISPER_SRC" || die "configure whisper (see $CACHE/configure-whisper.log)"

# ------------------------------------------------------------------ 4. compile CUDA objects
REPRESENTATIVE=(
  'ggml-cuda.dir/fattn.cu.o$'
  'fattn-tile-instance-dkq64-dv64.cu.o$'
  'fattn-mma-f16-instance-ncols1_8-ncols2_1.cu.o$'
  'fattn-vec-instance-q4_0-q4_0.cu.o$'
  'ggml-cuda.dir/mmq.cu.o$'
  'mmq-instance-mxfp4.cu.o$'
  'mmq-instance-q4_0.cu.o$'
  'ggml-cuda.dir/mmvq.cu.o$'
  'ggml-cuda.dir/convert.cu.o$'
  'ggml-cuda.dir/ggml-cuda.cu.o$'
)
[ "$SUMMARY_ONLY" = 1 ] || : > "$CACHE/objects.tsv"
compile() {  # name
  [ "$SUMMARY_ONLY" = 1 ] && return 0
  local name=$1 bdir=$CACHE/build/$1
  local all
  all=$(ninja -C "$bdir" -t targets all 2>/dev/null | sed -n 's/^\([^:]*\.cu\.o\): .*/\1/p' | sort -u)
  local n_all
  n_all=$(echo "$all" | grep -c .)
  local picked=()
  if [ "$FULL" = 1 ]; then
    mapfile -t picked <<< "$all"
  else
    for pat in "${REPRESENTATIVE[@]}"; do
      local hit
      hit=$(echo "$all" | grep -E "$pat" | head -n 1)
      if [ -n "$hit" ]; then picked+=("$hit"); else say "$name: no object matches $pat"; fi
    done
  fi
  say "$name: compiling ${#picked[@]} of $n_all CUDA objects"
  echo "$name|$n_all|${#picked[@]}" >> "$CACHE/counts.tsv"
  # the exact nvcc command of one object, for the log
  ninja -C "$bdir" -t commands "${picked[0]}" | tail -n 1 > "$CACHE/cmd-$name.txt"
  for obj in "${picked[@]}"; do
    local t0=$SECONDS rc
    ninja -C "$bdir" -j "$JOBS" "$obj" > "$CACHE/ninja-last.log" 2>&1
    rc=$?
    cat "$CACHE/ninja-last.log" >> "$RAW"
    local secs=$((SECONDS - t0)) elfs="-" size="-"
    if [ $rc = 0 ] && [ -f "$bdir/$obj" ]; then
      size=$(stat -c %s "$bdir/$obj")
      if [ -x "$CUOBJDUMP" ]; then
        elfs=$("$CUOBJDUMP" --list-elf "$bdir/$obj" 2>/dev/null | grep -o 'sm_[0-9]*[af]\?' | sort -u | tr '\n' ' ')
        [ -n "$elfs" ] || elfs="(no cubin)"
      fi
    else
      grep -E "error|Error" "$CACHE/ninja-last.log" | head -n 5 >> "$CACHE/errors-$name.txt"
    fi
    echo "$name|$obj|$rc|$secs|$size|$elfs" >> "$CACHE/objects.tsv"
    say "$name: $obj rc=$rc ${secs}s ${size}B cubins: $elfs"
  done
}
if [ "$SUMMARY_ONLY" != 1 ]; then : > "$CACHE/counts.tsv"; rm -f "$CACHE"/errors-*.txt; fi
compile llama
compile whisper

# ------------------------------------------------------------------ 5. the summary
ok=$(awk -F'|' '$3==0' "$CACHE/objects.tsv" | wc -l)
total=$(wc -l < "$CACHE/objects.tsv")
sm121=$(grep -c 'sm_121a' "$CACHE/objects.tsv")
{
  echo "# CUDA build check: preset \`$PRESET\`, arch $ARCH — $DATE"
  echo
  echo "Made by \`scripts/check_cuda_build.sh\` on $(uname -m) ($(nproc) cores, no GPU), niced, ninja -j$JOBS."
  echo "This proves that the pinned sources configure and that their CUDA kernels compile for"
  echo "sm_121a with CUDA $CUDA_SERIES; it does not link, load or run anything on a GPU."
  echo
  echo "- nvcc: \`$NVCC_VERSION\`"
  echo "- toolkit from the package index: \`$PKG_VERSIONS\`"
  echo "- host compiler: \`$(gcc --version | head -n 1)\`; cmake \`$(cmake --version | head -n 1)\`"
  echo "- sources: llama-cpp-python $LLAMA_REF (sdist, vendored llama.cpp), pywhispercpp $WHISPER_REF (sdist, vendored whisper.cpp)"
  echo "- verification of cubins: \`$( [ -x "$CUOBJDUMP" ] && "$CUOBJDUMP" --version | tail -n 2 | head -n 1 || echo none)\` --list-elf"
  echo
  echo "## Configure"
  echo
  while IFS='|' read -r name rc secs args; do
    echo "- **$name**: exit $rc in ${secs}s"
    echo "  - args: \`$args\`"
    grep -E "Replacing|Using CMAKE_CUDA_ARCHITECTURES|CUDA Toolkit found|Found CUDAToolkit|CUDA host compiler" "$CACHE/configure-$name.log" \
      | sed 's/^/  - cmake: `/; s/$/`/'
  done < "$CACHE/configure.tsv"
  if [ ${#SWAPPED[@]} -gt 0 ]; then
    echo
    echo "Host-only flags swapped on this host (they apply on the Spark's arm64 CPU, not here):"
    for s in "${SWAPPED[@]}"; do echo "- \`$s\`"; done
  fi
  echo
  echo "## nvcc command (first object of each binding, as ninja runs it)"
  for name in llama whisper; do
    echo
    echo "$name:"
    echo '```'
    sed "s#$CACHE#\$CACHE#g" "$CACHE/cmd-$name.txt" 2>/dev/null
    echo '```'
    echo "arch flags: \`$(grep -oE -- '(-arch[= ][^ ]+|-gencode[= ][^ ]+|--generate-code[= ][^ ]+)' "$CACHE/cmd-$name.txt" | tr -d '"' | sort -u | tr '\n' ' ')\`"
  done
  echo
  echo "## Objects ($ok of $total compiled, $sm121 with an sm_121a cubin)"
  echo
  while IFS='|' read -r name all picked; do echo "- $name: $picked of its $all CUDA objects compiled here"; done < "$CACHE/counts.tsv"
  echo
  echo "| binding | object | exit | seconds | bytes | cubins |"
  echo "|---|---|---|---|---|---|"
  while IFS='|' read -r name obj rc secs size elfs; do
    echo "| $name | \`${obj##*/}\` | $rc | $secs | $size | $elfs |"
  done < "$CACHE/objects.tsv"
  if [ -x "$CUOBJDUMP" ]; then
    echo
    echo "MXFP4: block-scaled FP4 tensor-core MMA instructions in the PTX embedded next to the sm_121a cubin"
    echo "(\`cuobjdump -ptx\`, \`mma.sync.aligned.kind::mxf4.block_scale\`; only the arch-specific 121a target has them):"
    echo
    while IFS='|' read -r name obj rc secs size elfs; do
      case "$obj" in *mxfp4*)
        [ "$rc" = 0 ] || continue
        n=$("$CUOBJDUMP" -ptx "$CACHE/build/$name/$obj" 2>/dev/null | grep -c 'kind::mxf4')
        echo "- $name \`${obj##*/}\`: $n" ;;
      esac
    done < "$CACHE/objects.tsv"
  fi
  for f in "$CACHE"/errors-*.txt; do
    [ -f "$f" ] || continue
    echo; echo "Errors ($(basename "$f")):"; echo '```'; cat "$f"; echo '```'
  done
} > "$LOG"
say "summary: $LOG ($ok/$total objects, $sm121 with sm_121a)"
[ "$ok" = "$total" ] && [ "$total" -gt 0 ]

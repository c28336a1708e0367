#!/usr/bin/env bash
# run_fuzz.sh FUZZER CORPUS_DIR SECONDS [SEED_DIR [DICT]] — seeds the corpus and fuzzes for a
# bounded time. Fails on any crash or sanitizer report. Seeds: the files of SEED_DIR when given
# (e.g. tests/fuzz/corpus/api); otherwise GGUF ones (first KiB of real GGUF files from the
# fixtures, when present, and a minimal valid file). DICT: a libFuzzer dictionary (-dict=).
set -euo pipefail
fuzzer=$1 corpus=$2 seconds=$3 seeds=${4:-} dict=${5:-}
mkdir -p "$corpus"
if [ -n "$seeds" ]; then
  cp "$seeds"/* "$corpus"/
  echo "fuzz: $(basename "$fuzzer") for ${seconds}s, $(ls "$seeds" | wc -l) seeds from $seeds"
  "$fuzzer" "$corpus" ${dict:+-dict="$dict"} -max_total_time="$seconds" -max_len=8192 -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 15
  echo "fuzz: no crash"
  exit 0
fi
fixtures=${KVSTASH_FIXTURES:-$KVSTASH_SOURCE_DIR/../shared/models}
n=0
for f in "$fixtures"/stories260K.gguf "$fixtures"/vocab/*.gguf "$fixtures"/legacy/*.gguf; do
  [ -f "$f" ] || continue
  for len in 64 512 4096; do head -c $len "$f" > "$corpus/seed-$(basename "$f")-$len"; done
  n=$((n + 1))
done
# A minimal valid file (header, one key, one f32 tensor) so runs without fixtures still start
# from a parseable input.
printf 'GGUF\x03\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00' > "$corpus/seed-minimal"
printf '\x14\x00\x00\x00\x00\x00\x00\x00general.architecture\x08\x00\x00\x00\x05\x00\x00\x00\x00\x00\x00\x00llama' >> "$corpus/seed-minimal"
printf '\x01\x00\x00\x00\x00\x00\x00\x00a\x01\x00\x00\x00\x04\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' >> "$corpus/seed-minimal"
head -c 128 /dev/zero >> "$corpus/seed-minimal"
echo "fuzz: $(basename "$fuzzer") for ${seconds}s, $n fixture files as seeds"
"$fuzzer" "$corpus" -max_total_time="$seconds" -max_len=8192 -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 15
echo "fuzz: no crash"

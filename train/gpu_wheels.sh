#!/usr/bin/env bash
# Wheels the GPU image lacks (device tool README: KINDS.md lists what it has), for Python 3.12 x86_64, into
# .whl/ (git-ignored; carried with `carry: [".whl"]`; train/default_model.sh installs them). PyAV (av) is
# left out on purpose (36 MB of the 64 MiB working tree): the training and evaluation paths do not import it.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
pins() { for n in "$@"; do grep -i "^${n}==" constraints.txt || { echo "no pin for $n in constraints.txt" >&2; exit 2; }; done; }
for spec in $(pins grain array_record portpicker dm-tree ftfy wcwidth tensorboardX); do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
      -d .whl "$spec"
done
du -sh .whl

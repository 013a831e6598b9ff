#!/usr/bin/env bash
# Fetch the optional benchmark peers (pykeops, keopscore, geomloss: pure Python) as wheels into
# .whl/ on a machine with a network, for a GPU machine without one: gpu_validate.sh's build stage
# installs whatever .whl/ holds with `pip install --no-index --no-deps`. Add /.whl/ to
# .git/info/exclude and name `.whl` in the device call's `carry`. (pykeops compiles its
# formulas with nvrtc/nvcc at first use: no network needed there.)
set -eu
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip wheel --no-deps -w .whl pykeops keopscore geomloss
ls -l .whl

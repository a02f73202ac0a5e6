# The README's two commands are `make demo` and `make test`.
.PHONY: setup dev demo test test-slow lint bench

setup:
	scripts/setup.sh

dev:
	LIFELONG_DEV=1 scripts/setup.sh

demo: setup
	.venv/bin/lifelong demo

test: dev
	OMP_WAIT_POLICY=PASSIVE .venv/bin/pytest

# The tiny model's learning proofs (SFT, GRPO, the unattended loop): about 8 minutes more.
test-slow: dev
	OMP_WAIT_POLICY=PASSIVE .venv/bin/pytest -m slow

lint: dev
	.venv/bin/ruff check daemon adapters feedback_store evals base_model tests bench

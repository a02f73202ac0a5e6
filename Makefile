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

# The learning proofs: the tiny model's (SFT, GRPO, the unattended loop; about 8 minutes) and the
# real model's (SmolLM2 learns bare sums through the daemon; 9-10 minutes on AVX-512, far more on AVX2),
# and the multi-replica proof (2 gateways + 2 vLLM servers + PostgreSQL; 5-7 minutes).
test-slow: dev
	OMP_WAIT_POLICY=PASSIVE .venv/bin/pytest -m slow

lint: dev
	.venv/bin/ruff check daemon adapters feedback_store evals base_model tests bench

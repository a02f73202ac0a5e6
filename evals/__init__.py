"""Judging candidates: verifiers, suites, the eval runner, paired statistics and the promotion gate.

A library: it imports the feedback store and nothing of the daemon; the daemon wires it.

- `verifiers`: named judges of one answer (plus `lifelong.verifiers` entry points);
  `sandbox` (+ `sandbox_child`) runs untrusted code for `python_tests`.
- `suites`: target (held-out tasks per family), regression (JSONL folder), retention (frozen).
- `runner`: answers suites through vLLM's OpenAI API, candidate vs champion.
- `vllm_client`: the one client of vLLM's HTTP API (runner, rollouts, the daemon's upstream).
- `statistics`: exact McNemar, paired bootstrap, Holm, smallest detectable difference.
- `gate_policy` + `gate`: the thresholds and the decision; `records`: both into the store.
"""

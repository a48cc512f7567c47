# keyvend: `make run` starts the shop, `make test` proves it works. Both set themselves up.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
# `run` needs the app's own dependencies only; tests and benchmarks add their tools on top.
RUNTIME := $(VENV)/.installed-runtime
DEV     := $(VENV)/.installed-dev
ARGS   ?=
TEST_WORKERS ?= 4

.PHONY: run test bench check messages clean demo demo-play

$(RUNTIME): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	@touch $(RUNTIME)

$(DEV): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $(DEV)

run: $(RUNTIME)
	@test -f .env || { cp .env.example .env && echo "created .env from .env.example: fill it in (see README)"; }
	$(BIN)/keyvend run

# In parallel: pytest-xdist workers, each with its own PostgreSQL database. Most tests spend
# their time waiting (leases, rate limits, processes starting), so 4 workers keep 2 cores
# busy; `make test TEST_WORKERS=0` runs in one process, `ARGS=...` passes pytest options.
test: $(DEV)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxschedchunk 1 $(ARGS)

# `make bench ARGS=--write` also writes the table to docs/benchmarks.md; `ARGS=--quick` for a smoke run.
bench: $(DEV)
	$(BIN)/python -m bench $(ARGS)

check: $(RUNTIME)
	$(BIN)/keyvend check

# A whole sale against the tests' fake Telegram and Stripe: no accounts, no .env, nothing kept.
demo: $(DEV)
	@$(BIN)/python -m tests.support.demo

# The same shop, with you as the buyer: type messages, press buttons by number.
demo-play: $(DEV)
	@$(BIN)/python -m tests.support.demo --interactive

clean:
	rm -rf $(VENV) *.egg-info

# After changing any text the bot writes: refresh the catalogues, then translate the new
# entries in handlers/locales/*/LC_MESSAGES/messages.po (tests fail until every one is).
messages: $(RUNTIME)
	$(BIN)/pybabel extract -k t:2 -k tn:2,3 --no-default-keywords --no-location --omit-header \
		--no-wrap -o $(VENV)/messages.pot handlers bot
	$(BIN)/pybabel update -i $(VENV)/messages.pot -d handlers/locales --no-wrap \
		--ignore-obsolete --no-fuzzy-matching --ignore-pot-creation-date

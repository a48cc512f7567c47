# keyvend: `make run` starts the shop, `make test` proves it works. Both set themselves up.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench check messages clean demo demo-play

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	@touch $(STAMP)

run: $(STAMP)
	@test -f .env || { cp .env.example .env && echo "created .env from .env.example: fill it in (see README)"; }
	$(BIN)/keyvend run

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python -m bench

check: $(STAMP)
	$(BIN)/keyvend check

# A whole sale against the tests' fake Telegram and Stripe: no accounts, no .env, nothing kept.
demo: $(STAMP)
	@$(BIN)/python -m tests.support.demo

# The same shop, with you as the buyer: type messages, press buttons by number.
demo-play: $(STAMP)
	@$(BIN)/python -m tests.support.demo --interactive

clean:
	rm -rf $(VENV) *.egg-info

# After changing any text the bot writes: refresh the catalogues, then translate the new
# entries in handlers/locales/*/LC_MESSAGES/messages.po (tests fail until every one is).
messages: $(STAMP)
	$(BIN)/pybabel extract -k t:2 -k tn:2,3 --no-default-keywords --no-location --omit-header \
		-o $(VENV)/messages.pot handlers bot
	$(BIN)/pybabel update -i $(VENV)/messages.pot -d handlers/locales --no-location --omit-header

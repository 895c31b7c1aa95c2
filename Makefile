# Shortcuts; the README's commands (bash tools/run, bash tools/test) work without make.
.PHONY: run test lint bench clean
run:
	bash tools/run
test:
	bash tools/test
lint:
	bash tools/bootstrap && . .venv/bin/activate && ruff check node operator tests bench && mypy && lint-imports
bench:
	bash tools/bootstrap && .venv/bin/python bench/engine.py
clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .hypothesis

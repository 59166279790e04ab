# Two commands a newcomer needs: `make demo` and `make test`.
.PHONY: test demo bench bench-smoke

test:
	bash .ci/run

demo:
	bash scripts/demo.sh

bench:
	[ -x .venv/bin/python ] || python3 -m venv .venv
	.venv/bin/python -m pip install -q -e '.[test,bench]'
	.venv/bin/python -m benchmarks

# The benchmarks' smoke runs (every method once on small objects, bytes verified; no speed asserts),
# outside the default test run: they take minutes.
bench-smoke:
	python -m pytest -m benchmark tests/integration

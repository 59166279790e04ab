# Two commands a newcomer needs: `make demo` and `make test`.
.PHONY: test demo bench

test:
	bash .ci/run

demo:
	bash scripts/demo.sh

bench:
	[ -x .venv/bin/python ] || python3 -m venv .venv
	.venv/bin/python -m pip install -q -e '.[test,bench]'
	.venv/bin/python -m benchmarks

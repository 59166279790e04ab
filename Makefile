# Two commands a newcomer needs: `make demo` and `make test`.
.PHONY: test demo bench

test:
	bash .ci/run

demo:
	bash scripts/demo.sh

bench:
	.venv/bin/python -m benchmarks

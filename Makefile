# Shortcuts; the README's commands (bash tools/run, bash tools/test) work without make.
.PHONY: run down test lint bench bench-http bench-compare faults faults-churn manifests clean
run:
	bash tools/run
down:
	.venv/bin/ringkv local down
test:
	bash tools/test
lint:
	bash tools/bootstrap && . .venv/bin/activate && ruff check node operator tests bench && mypy && lint-imports
bench:  ## the storage engine next to sqlite3
	bash tools/bootstrap && .venv/bin/python bench/engine.py
bench-http:  ## one node over HTTP next to an aiohttp hello-world
	bash tools/bootstrap && .venv/bin/python bench/http_node.py
bench-compare:  ## a 3-node cluster next to a 3-member etcd and Redis, driven by wrk and ringkv bench, with CPU µs/op per process (installs etcd, redis, wrk when missing)
	bash tools/bootstrap && .venv/bin/python bench/compare.py
faults:  ## the nemesis soak: 5 seeds x 150 s, 5 nodes in network namespaces (root); SEEDS=, DURATION= override
	bash tools/bootstrap && .venv/bin/python bench/faults.py --seeds $(or $(SEEDS),5) --duration $(or $(DURATION),150)
faults-churn:  ## the nemesis soak with topology churn too (decommission, wipe, rejoin with streaming)
	bash tools/bootstrap && .venv/bin/python bench/faults.py --churn --seeds $(or $(SEEDS),5) --duration $(or $(DURATION),180)
manifests:  ## regenerate manifests/ from the chart
	bash tools/bootstrap && .venv/bin/python tools/render-manifests
clean:
	rm -rf .venv .pytest_cache .mypy_cache .ruff_cache .hypothesis
.PHONY: profile
profile:  ## py-spy profile of node n1 of a 3-node cluster under wrk; WORKLOAD=put|get|mixed, DURATION= override
	bash tools/bootstrap && .venv/bin/pip install -q py-spy && .venv/bin/python bench/profile.py --workload $(or $(WORKLOAD),put) --duration $(or $(DURATION),20)
.PHONY: antientropy-bench
antientropy-bench:  ## anti-entropy repair of 1% stale keys (100k x 1 KB, 3 nodes) next to a naive full comparison, and its CPU cost; KEYS=, CPU_WINDOW= override
	bash tools/bootstrap && .venv/bin/python bench/antientropy.py --keys $(or $(KEYS),100000) --cpu-window $(or $(CPU_WINDOW),60)
.PHONY: streaming-bench
streaming-bench:  ## a 4th node joins a 3-node cluster loaded with 200 MiB, stream throttle off and on: join time, MiB/s, client p50/p99 before and during; MB=, THROTTLE_MB_S=, RATE= override
	bash tools/bootstrap && .venv/bin/python bench/streaming.py --mb $(or $(MB),200) --throttle-mb-s $(or $(THROTTLE_MB_S),32) --rate $(or $(RATE),300)
.PHONY: tls-bench
tls-bench:  ## a 3-node cluster's put/get throughput and p99: plaintext, mutual TLS + tokens, + HTTPS, in one run; DURATION= overrides
	bash tools/bootstrap && .venv/bin/python bench/tls.py --duration $(or $(DURATION),20) --out docs/benchmarks.md
.PHONY: fuzz
fuzz:  ## the internode fuzz tests (tests/fuzz) with EXAMPLES= examples per test (default 2000: ~8 min), fresh randomness each run
	bash tools/bootstrap && RINGKV_FUZZ_EXAMPLES=$(or $(EXAMPLES),2000) .venv/bin/python -m pytest -q tests/fuzz --timeout 0
.PHONY: ui-screenshots
ui-screenshots:  ## docs/img/ui-*.png: the status page in headless Chromium against a live local cluster (healthy, a node down, a join, a phone)
	bash tools/bootstrap && RINGKV_UI_SHOTS=docs/img .venv/bin/python -m pytest -q -s tests/integration/test_ui_browser.py
.PHONY: dashboard-png dashboard
dashboard:  ## re-render the Grafana dashboard JSON (charts/ringkv/files/dashboards/ringkv.json) from tools/render-dashboard
	python3 tools/render-dashboard
dashboard-png:  ## docs/img/dashboard.png: the dashboard's panels from a real Prometheus scraping a local cluster through a node kill, restart and repair; PHASE_S= overrides
	bash tools/bootstrap && .venv/bin/python bench/dashboard.py --phase-s $(or $(PHASE_S),20)

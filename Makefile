# The two commands of the README. Each installs what it needs first.
#   make demo   build netdrift and run it on its built-in Envoy-like server
#   make test   build and run every test (as root: most tests load BPF)

CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: demo test build deps-build deps-test clean

demo: deps-build
	$(CARGO) build --release
	./target/release/netdrift demo

test: deps-test
	$(CARGO) test --no-fail-fast -- --test-threads=1

build: deps-build
	$(CARGO) build --release

deps-build:
	@scripts/deps.sh build

deps-test:
	@scripts/deps.sh test

clean:
	$(CARGO) clean

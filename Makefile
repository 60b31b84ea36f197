# The README's two commands are ./run demo and ./run test (they need no
# make); these targets are the same for those used to make.

.PHONY: demo test build clean

demo:
	./run demo

test:
	./run test

export PATH := $(HOME)/.cargo/bin:$(PATH)

build:
	scripts/deps.sh build
	cargo build --release

clean:
	cargo clean

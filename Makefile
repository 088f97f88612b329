# megaserve — build, test, run and benchmark. Every target installs missing packages first.
#   make            release build: build/release/megaserve
#   make run        build and start `megaserve serve` (ARGS="--listen 0.0.0.0:8080" to add flags)
#   make test       build and run every test, with throwaway Redis and PostgreSQL
#   make debug      debug build in build/debug
#   make asan       ASan+UBSan build in build/asan, running every test
#   make tsan       ThreadSanitizer build in build/tsan, running the batcher and model tests
#   make bench      whole-system benchmarks against their anchors (bench/)
#   make format     clang-format the sources in place;  make lint: format check + clang-tidy
SHELL := /bin/bash
# Lets ccache share results between checkouts in different folders.
export CCACHE_BASEDIR := $(CURDIR)
JOBS ?= $(shell nproc)
ARGS ?=
SOURCES = $(shell git ls-files 'src/*.cc' 'src/*.h' 'src/*.cpp' 'tests/*.cc' 'tests/*.h')

.PHONY: all release debug asan tsan run test bench format lint setup clean

all: release

setup:
	@scripts/setup.sh

build/%/build.ninja:
	cmake -S . -B build/$* -G Ninja $(CMAKE_FLAGS_$*)

CMAKE_FLAGS_release = -DCMAKE_BUILD_TYPE=Release
CMAKE_FLAGS_debug = -DCMAKE_BUILD_TYPE=Debug
CMAKE_FLAGS_asan = -DCMAKE_BUILD_TYPE=Debug -DMEGASERVE_SANITIZE=ON
CMAKE_FLAGS_tsan = -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEGASERVE_TSAN=ON

release: setup build/release/build.ninja
	cmake --build build/release -j $(JOBS)

debug: setup build/debug/build.ninja
	cmake --build build/debug -j $(JOBS)

asan: setup build/asan/build.ninja
	cmake --build build/asan -j $(JOBS)
	scripts/test.sh build/asan

# ThreadSanitizer build of the concurrency-heavy libraries, running their tests (batcher and
# model repository stress tests included).
tsan: setup build/tsan/build.ninja
	cmake --build build/tsan -j $(JOBS) --target batching_test models_test
	build/tsan/batching_test
	build/tsan/models_test

run: release
	build/release/megaserve serve $(ARGS)

test: release
	scripts/test.sh build/release

bench: release
	cmake --build build/release --target jobs_throughput batching_bench
	bench/http_vs_nginx.sh
	bench/jobs_throughput.sh
	bench/batching.sh
	bench/gateway.sh
	bench/forecast.sh
	bench/diffusion.sh

format:
	clang-format -i $(SOURCES)

lint: build/release/build.ninja
	clang-format --dry-run --Werror $(SOURCES)
	clang-tidy -p build/release --quiet $(filter %.cc %.cpp,$(SOURCES))

clean:
	rm -rf build

# shardtune: build, test, demo, benchmark.
#   make deps     install missing Debian packages (apt-get), nothing when present
#   make          build bin/shardtune
#   make check    deps + build + every test (serial and MPI)
#   make demo     deps + build + a 2-rank fine-tuning demo
#   make bench    deps + build + benchmarks (numbers go to benchmarks/RESULTS.md by hand; llama.cpp from npm)
#   make interop  deps + build + checks against llama.cpp, Hugging Face tokenizers/jinja, sentencepiece
#   make slurm-test  deps + build + the job scripts on a private Slurm cluster on this host (root)
#   make faults   deps + build + the fault suite (kills, signals, full disk, damaged files, bad options and inputs)
#   make check SANITIZE=address,undefined   the same tests under sanitizers
#   make DNNL_ROOT=/opt/onednn [DNNL_LIBDIR=...]   build against another oneDNN (2.x or 3.x:
#                 src/kernels/dnnl_compat.h) installed under that prefix (include/, lib/), into build-dnnl/
#   make onednn3-check  compile, link and run the kernel and model tests against Debian
#                 trixie's oneDNN 3.x, fetched as .debs into build/onednn3 (not installed)

PKGS := build-essential pkg-config openmpi-bin libopenmpi-dev libhdf5-openmpi-dev hdf5-tools \
        libdnnl-dev check zlib1g-dev libcjson-dev libpcre2-dev libyaml-dev libutf8proc-dev gnuplot-nox time python3

CC      := mpicc
PKGCONF := hdf5-openmpi libcjson libpcre2-8 yaml-0.1 libutf8proc
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -fopenmp -I. -Isrc
ifdef CI
CFLAGS  += -Werror
endif
ifdef SANITIZE
# recover off: a finding fails the test instead of scrolling past
CFLAGS  += -fsanitize=$(SANITIZE) -fno-sanitize-recover=all -fno-omit-frame-pointer -O1
LDFLAGS += -fsanitize=$(SANITIZE)
BUILD   := build-san
else ifdef DNNL_ROOT
BUILD   := build-dnnl
else
BUILD   := build
endif
# Another oneDNN than the system's: its headers first, its library by rpath.
ifdef DNNL_ROOT
DNNL_LIBDIR ?= $(DNNL_ROOT)/lib
CFLAGS    += -I$(DNNL_ROOT)/include
DNNL_LIBS := -L$(DNNL_LIBDIR) -Wl,-rpath,$(abspath $(DNNL_LIBDIR)) -ldnnl
else
DNNL_LIBS := -ldnnl
endif
# pkg-config runs only when a target builds (after `deps` installed it);
# its errors are shown, and stop the build.
DEPS_CFLAGS = $(shell pkg-config --cflags $(PKGCONF) || echo PKG_CONFIG_FAILED)
DEPS_LIBS   = $(shell pkg-config --libs $(PKGCONF) || echo PKG_CONFIG_FAILED) $(DNNL_LIBS) -lz -lm
CHECK_LIBS  = $(shell pkg-config --libs check || echo PKG_CONFIG_FAILED)

# Layers, bottom to top (DESIGN.md; tests/check_layers.py enforces them):
# src/core, src/kernels, mpi, src/model, io (io/tok, io/chat, io/formats), src/cmd.
LIB_SRC  := $(wildcard src/core/*.c src/kernels/*.c mpi/*.c src/model/*.c io/*.c io/*/*.c src/cmd/*.c)
LIB_SRC  := $(filter-out src/cmd/main.c,$(LIB_SRC))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_HELPERS := $(filter-out $(TEST_SRC) tests/nodlclose.c,$(wildcard tests/*.c))
BENCH_SRC := $(wildcard benchmarks/*.c)
BENCH_BIN := $(BENCH_SRC:benchmarks/%.c=$(BUILD)/benchmarks/%)
BIN      := bin/shardtune$(if $(SANITIZE),-san)$(if $(DNNL_ROOT),-dnnl)

# keep the objects of tests and benchmarks (make would delete them as intermediates)
.SECONDARY: $(TEST_BIN:=.o) $(BENCH_BIN:=.o)

.PHONY: all deps check test demo bench clean fuzz interop onednn3-check slurm-test faults
all: $(BIN)

# Installs only what is missing; silent when everything is there.
deps:
	@missing=""; for p in $(PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# -MMD -MP: each object depends on the headers it includes, no more.
$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPS_CFLAGS) -MMD -MP -c $< -o $@
-include $(LIB_OBJ:.o=.d) $(BUILD)/src/cmd/main.d

$(BUILD)/libshardtune.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(BUILD)/src/cmd/main.o $(BUILD)/libshardtune.a
	@mkdir -p bin
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ $(DEPS_LIBS)

TEST_HELPER_OBJ := $(TEST_HELPERS:%.c=$(BUILD)/%.o)
$(BUILD)/tests/%: $(BUILD)/tests/%.o $(TEST_HELPER_OBJ) $(BUILD)/libshardtune.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(DEPS_LIBS) $(CHECK_LIBS)
-include $(TEST_BIN:=.d) $(TEST_HELPER_OBJ:.o=.d)

$(BUILD)/benchmarks/%: $(BUILD)/benchmarks/%.o $(BUILD)/libshardtune.a
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(DEPS_LIBS)
-include $(BENCH_BIN:=.d)

check: deps
	@$(MAKE) --no-print-directory $(BIN) $(TEST_BIN) $(if $(SANITIZE),$(BUILD)/libnodlclose.so)
	@python3 tests/check_layers.py $(BUILD)
	@BUILD=$(BUILD) BIN=$(BIN) SANITIZE=$(SANITIZE) bash tests/run.sh $(TEST_BIN)

$(BUILD)/libnodlclose.so: tests/nodlclose.c
	@mkdir -p $(dir $@)
	gcc -shared -fPIC -O2 $< -o $@

demo: deps
	@$(MAKE) --no-print-directory $(BIN)
	@BIN=$(BIN) bash jobs/demo.sh

# The real tools come from Debian (python3-*) and npm (tests/interop/package.json).
INTEROP_PKGS := python3 python3-sentencepiece python3-jinja2
interop: deps
	@$(MAKE) --no-print-directory deps PKGS="$(INTEROP_PKGS)"
	@command -v node >/dev/null || $(MAKE) --no-print-directory deps PKGS="nodejs npm"
	@command -v npm >/dev/null || { echo "make interop: node is here but npm is not; install npm"; exit 1; }
	@$(MAKE) --no-print-directory $(BIN)
	@BIN=$(BIN) bash tests/interop/run.sh

# Debian's Slurm 22.05 and munge; tests/slurm/cluster.sh starts them privately.
SLURM_PKGS := slurm-wlm munge
slurm-test: deps
	@$(MAKE) --no-print-directory deps PKGS="$(SLURM_PKGS)"
	@$(MAKE) --no-print-directory $(BIN)
	@BIN=$(BIN) bash tests/slurm/run.sh

# tests/faults/faultgen damages files as faults do (a bit in an HDF5
# attribute, a gzip stream cut at a flush point).
FAULTGEN := $(BUILD)/tests/faults/faultgen
$(FAULTGEN): tests/faults/faultgen.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPS_CFLAGS) $< -o $@ $(LDFLAGS) $(DEPS_LIBS)

faults: deps
	@$(MAKE) --no-print-directory $(BIN) $(FAULTGEN)
	@BIN=$(BIN) FAULTGEN=$(FAULTGEN) bash tests/faults/run.sh

bench: deps
	@command -v npm >/dev/null || $(MAKE) --no-print-directory deps PKGS="nodejs npm"
	@$(MAKE) --no-print-directory $(BIN) $(BENCH_BIN)
	@BUILD=$(BUILD) BIN=$(BIN) bash benchmarks/run.sh

onednn3-check: deps
	@bash tests/onednn3.sh

# libFuzzer harnesses for the parsers of outside files (JSONL/CSV, tokenizer
# files, safetensors, GGUF), each run for FUZZ_SECONDS from the seed corpora of
# tests/fuzz/seeds.sh (real files of each format). Needs clang.
FUZZ_SECONDS ?= 60
FUZZ_SRC := io/jsonl.c io/csv.c $(wildcard io/chat/*.c) $(wildcard io/tok/*.c) $(wildcard io/formats/*.c) \
            io/binfile.c src/core/params.c src/core/config.c src/core/rng.c src/core/err.c
fuzz:
	@command -v clang >/dev/null || { echo "make fuzz needs clang (apt-get install clang)"; exit 1; }
	@mkdir -p build/fuzz
	@$(MAKE) --no-print-directory $(BIN)
	@bash tests/fuzz/seeds.sh $(BIN) build/fuzz/seeds
	@set -e; for h in tests/fuzz/fuzz_*.c; do n=$$(basename $$h .c); \
	  clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	    -I. -Isrc $$(pkg-config --cflags libcjson libpcre2-8 libutf8proc) $$h $(FUZZ_SRC) \
	    $$(pkg-config --libs libcjson libpcre2-8 libutf8proc) -lz -lm -o build/fuzz/$$n; \
	  mkdir -p build/fuzz/$$n.corpus; echo "== $$n ($(FUZZ_SECONDS) s)"; \
	  build/fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 build/fuzz/$$n.corpus build/fuzz/seeds/$$n \
	    > build/fuzz/$$n.log 2>&1 || { tail -n 40 build/fuzz/$$n.log; echo "$$n FAILED"; exit 1; }; \
	  grep -E 'stat::number_of_executed_units|stat::new_units_added' build/fuzz/$$n.log; \
	done

clean:
	rm -rf build build-san build-dnnl bin

# shardtune: build, test, demo, benchmark.
#   make deps     install missing Debian packages (apt-get), nothing when present
#   make          build bin/shardtune
#   make check    deps + build + every test (serial and MPI)
#   make demo     deps + build + a 2-rank fine-tuning demo
#   make bench    deps + build + benchmarks (numbers go to benchmarks/RESULTS.md by hand)
#   make interop  deps + build + checks against llama.cpp, Hugging Face tokenizers/jinja, sentencepiece
#   make check SANITIZE=address,undefined   the same tests under sanitizers

PKGS := build-essential pkg-config openmpi-bin libopenmpi-dev libhdf5-openmpi-dev hdf5-tools \
        libdnnl-dev check zlib1g-dev libcjson-dev libpcre2-dev libyaml-dev gnuplot-nox time

CC      := mpicc
PKGCONF := hdf5-openmpi libcjson libpcre2-8 yaml-0.1
CFLAGS  ?= -O2 -g
CFLAGS  += -std=c11 -D_GNU_SOURCE -Wall -Wextra -fopenmp -Isrc -Impi -Iio
ifdef CI
CFLAGS  += -Werror
endif
ifdef SANITIZE
CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -O1
LDFLAGS += -fsanitize=$(SANITIZE)
BUILD   := build-san
else
BUILD   := build
endif
DEPS_CFLAGS = $(shell pkg-config --cflags $(PKGCONF) 2>/dev/null)
DEPS_LIBS   = $(shell pkg-config --libs $(PKGCONF) 2>/dev/null) -ldnnl -lz -lm
CHECK_LIBS  = $(shell pkg-config --libs check 2>/dev/null)

LIB_SRC  := $(wildcard src/*.c mpi/*.c io/*.c)
LIB_SRC  := $(filter-out src/main.c,$(LIB_SRC))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/%.o)
TEST_SRC := $(wildcard tests/test_*.c)
TEST_BIN := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
TEST_HELPERS := $(filter-out $(TEST_SRC),$(wildcard tests/*.c))
BENCH_SRC := $(wildcard benchmarks/*.c)
BENCH_BIN := $(BENCH_SRC:benchmarks/%.c=$(BUILD)/benchmarks/%)
BIN      := bin/shardtune$(if $(SANITIZE),-san)

.PHONY: all deps check test demo bench clean fuzz interop
all: $(BIN)

# Installs only what is missing; silent when everything is there.
deps:
	@missing=""; for p in $(PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(BUILD)/%.o: %.c $(wildcard src/*.h mpi/*.h io/*.h)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPS_CFLAGS) -c $< -o $@

$(BUILD)/libshardtune.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BIN): $(BUILD)/src/main.o $(BUILD)/libshardtune.a
	@mkdir -p bin
	$(CC) $(CFLAGS) $(LDFLAGS) $^ -o $@ $(DEPS_LIBS)

$(BUILD)/tests/%: tests/%.c $(TEST_HELPERS) $(wildcard tests/*.h) $(BUILD)/libshardtune.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPS_CFLAGS) -Itests $< $(TEST_HELPERS) -o $@ $(LDFLAGS) $(BUILD)/libshardtune.a $(DEPS_LIBS) $(CHECK_LIBS)

$(BUILD)/benchmarks/%: benchmarks/%.c $(BUILD)/libshardtune.a
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(DEPS_CFLAGS) $< -o $@ $(LDFLAGS) $(BUILD)/libshardtune.a $(DEPS_LIBS)

check: deps
	@$(MAKE) --no-print-directory $(BIN) $(TEST_BIN)
	@BUILD=$(BUILD) BIN=$(BIN) bash tests/run.sh $(TEST_BIN)

demo: deps
	@$(MAKE) --no-print-directory $(BIN)
	@BIN=$(BIN) bash jobs/demo.sh

# The real tools come from Debian (python3-*) and npm (tests/interop/package.json).
INTEROP_PKGS := python3 python3-sentencepiece python3-jinja2
interop: deps
	@$(MAKE) --no-print-directory deps PKGS="$(INTEROP_PKGS)"
	@command -v npm >/dev/null || $(MAKE) --no-print-directory deps PKGS="nodejs npm"
	@$(MAKE) --no-print-directory $(BIN)
	@BIN=$(BIN) bash tests/interop/run.sh

bench: deps
	@$(MAKE) --no-print-directory $(BIN) $(BENCH_BIN)
	@BUILD=$(BUILD) BIN=$(BIN) bash benchmarks/run.sh

# libFuzzer harnesses for the parsers of outside files (JSONL/CSV, tokenizer
# files, safetensors, GGUF), each run for FUZZ_SECONDS. Needs clang.
FUZZ_SECONDS ?= 60
FUZZ_SRC := io/jsonl.c io/csv.c io/template.c io/chat_template.c $(wildcard io/jinja_*.c) io/tokenizer.c \
            $(wildcard io/tok_*.c) io/gguf.c io/safetensors.c io/llama2c.c io/llmc.c io/hf.c io/model_source.c \
            io/binfile.c src/params.c src/config.c src/rng.c src/err.c
fuzz:
	@command -v clang >/dev/null || { echo "make fuzz needs clang (apt-get install clang)"; exit 1; }
	@mkdir -p build/fuzz
	@set -e; for h in tests/fuzz/fuzz_*.c; do n=$$(basename $$h .c); \
	  clang -std=c11 -D_GNU_SOURCE -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
	    -Isrc -Iio $$(pkg-config --cflags libcjson libpcre2-8) $$h $(FUZZ_SRC) \
	    $$(pkg-config --libs libcjson libpcre2-8) -lz -lm -o build/fuzz/$$n; \
	  mkdir -p build/fuzz/$$n.corpus; echo "== $$n ($(FUZZ_SECONDS) s)"; \
	  build/fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 build/fuzz/$$n.corpus \
	    > build/fuzz/$$n.log 2>&1 || { tail -n 40 build/fuzz/$$n.log; echo "$$n FAILED"; exit 1; }; \
	  grep -E 'stat::number_of_executed_units|stat::new_units_added' build/fuzz/$$n.log; \
	done

clean:
	rm -rf build build-san bin

# petrel — build, test, fuzz, lint.  Every build product lives under build/.
#   make            build/petrel (release, -O2)
#   make SAN=1      build/san/petrel (ASan + UBSan)
#   make unit       cmocka unit tests        make fuzz   libFuzzer harnesses
#   make test       everything the CI runs   make bench  side-by-side benchmark with Postfix
CC      ?= cc
PKGS     = libevent libevent_openssl libevent_pthreads openssl libunbound libidn2
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null) -lcrypt -lpthread
WARN     = -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes \
           -Wno-unused-parameter -Wno-format-truncation
CFLAGS  ?= -O2 -g
ALL_CFLAGS = -std=c11 -D_GNU_SOURCE $(WARN) $(CFLAGS) -Isrc $(PKG_CFLAGS) -MMD -MP

ifeq ($(SAN),1)
BUILD   := build/san
ALL_CFLAGS += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined -O1
LDSAN    = -fsanitize=address,undefined
else
BUILD   := build
endif

MAIN_SRC = src/cli/cli_main.c
LIB_SRC  = $(filter-out $(MAIN_SRC),$(wildcard src/*/*.c))
LIB_OBJ  = $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
MAIN_OBJ = $(MAIN_SRC:%.c=$(BUILD)/obj/%.o)
UNIT_SRC = $(wildcard tests/unit/test_*.c)
UNIT_BIN = $(UNIT_SRC:tests/unit/%.c=$(BUILD)/tests/%)
# Pure modules only: what the fuzzers link (no sockets, no threads).
PURE_SRC = $(wildcard src/util/*.c src/smtp/*.c src/conf/*.c) src/relay/relay_client.c src/queue/queue_jrec.c
FUZZ_SRC = $(wildcard tests/fuzz/fuzz_*.c)
FUZZ_BIN = $(FUZZ_SRC:tests/fuzz/%.c=build/fuzz/%)
REPLAY_BIN = $(FUZZ_SRC:tests/fuzz/%.c=$(BUILD)/replay/%)

.PHONY: all unit fuzz replay test clean format lint bench install-deps
all: $(BUILD)/petrel

$(BUILD)/petrel: $(MAIN_OBJ) $(BUILD)/libpetrel.a
	$(CC) $(LDSAN) -o $@ $^ $(PKG_LIBS)

$(BUILD)/libpetrel.a: $(LIB_OBJ)
	@rm -f $@
	@ar rcs $@ $^

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	@$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libpetrel.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Itests/unit -o $@ $< $(BUILD)/libpetrel.a $(PKG_LIBS) -lcmocka $(LDSAN)

# A driver of relay_dns for tests/integration/test_dns.py.
$(BUILD)/tools/dnsq: tests/tools/dnsq.c $(BUILD)/libpetrel.a
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(BUILD)/libpetrel.a $(PKG_LIBS) $(LDSAN)

unit: $(UNIT_BIN)
	@set -e; for t in $(UNIT_BIN); do echo "== $$t"; $$t; done

# libFuzzer harnesses (clang); the same sources also build as corpus replayers with $(CC).
build/fuzz/%: tests/fuzz/%.c $(PURE_SRC)
	@mkdir -p $(dir $@)
	clang -std=c11 -D_GNU_SOURCE -g -O1 -Isrc -fsanitize=fuzzer,address,undefined -o $@ $^ -lidn2

$(BUILD)/replay/%: tests/fuzz/%.c tests/fuzz/replay_main.c $(PURE_SRC)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(LDSAN) -o $@ $^ -lidn2

fuzz: $(FUZZ_BIN)
replay: $(REPLAY_BIN)

test:
	./scripts/test.sh

# bench/run.sh installs what is missing, then builds: no `all` prerequisite (a fresh machine
# has no libevent yet).
bench:
	./bench/run.sh

install-deps:
	./scripts/install-deps.sh

format:
	clang-format -i src/*/*.c src/*/*.h tests/unit/*.c tests/fuzz/*.c

lint:
	cppcheck --quiet --error-exitcode=1 --enable=warning,performance,portability \
		--inline-suppr -D_GNU_SOURCE -Isrc src

clean:
	rm -rf build

-include $(shell find build -name '*.d' 2>/dev/null)

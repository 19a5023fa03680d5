# The held-out test vectors of @MODEL@ (@VARIANT@), built for the host with gcc.
#
#   make           build/edgeops-vectors, run on vectors.txt into build/results.txt
#   edgeops firmware test ..   builds and runs it, and compares with expected.json
#
# The same C as the firmware (core model loader, feature transforms, app/) with the
# same buffer sizes (app/edgeops_board_config.h).
ROOT ?= @ROOT@
ifeq ($(origin CC),default)
CC := gcc
endif
CSTD := -std=c99 -Wall -Wextra -Werror -pedantic
CFLAGS ?= -O2 -ffp-contract=off
CPPFLAGS := -I$(ROOT)/core -I$(ROOT)/app -isystem $(ROOT)/third_party/emlearn \
	'-DEDGEOPS_USER_CONFIG="edgeops_board_config.h"'
SOURCES := $(ROOT)/core/edgeops_err.c $(ROOT)/core/edgeops_model.c \
	$(ROOT)/core/edgeops_model_emlearn.c $(ROOT)/core/edgeops_features.c \
	$(wildcard $(ROOT)/app/*.c) edgeops_vectors.c
HEADERS := $(wildcard $(ROOT)/core/*.h) $(wildcard $(ROOT)/app/*.h)

all: build/results.txt

build/edgeops-vectors: $(SOURCES) $(HEADERS)
	mkdir -p build
	$(CC) $(CSTD) $(CFLAGS) $(CPPFLAGS) $(SOURCES) -o $@ -lm

build/results.txt: build/edgeops-vectors vectors.txt
	./build/edgeops-vectors < vectors.txt > $@.tmp
	mv $@.tmp $@

clean:
	rm -rf build

.PHONY: all clean

# edgepair: build the appliance image and test the HA pair.
# Two commands set everything up on a fresh Debian 12 machine (as root):
#   make image   # installs host tools, builds dist/edgepair-debian-12.{raw,bmap,qcow2,ova}
#   make test    # unit, integration (namespaces) and QEMU tests, the VM pair included
SHELL := /bin/bash
GO ?= go
PROFILE ?= profiles/debian-12.yaml
DIST ?= dist
BIN ?= bin

# Host packages the build and the tests need (Debian package names).
DEB_PACKAGES := mmdebstrap squashfs-tools erofs-utils qemu-system-x86 qemu-utils ovmf \
	systemd-boot-efi postgresql-15 keepalived xorriso bmap-tools e2fsprogs iproute2 \
	dosfstools mtools zstd cloud-init fdisk uidmap openssh-client

.PHONY: all deps build image test test-unit test-integration test-qemu qemu-test qemu-pair bench fuzz vet clean

all: build

deps: ## install the host tools (apt, as root) and the Go modules
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing host packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root to install: $$missing" >&2; exit 1; fi; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	$(GO) mod download

build: ## build the builder and agent binaries into bin/
	mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/builder ./builder/cmd/builder
	CGO_ENABLED=0 $(GO) build -trimpath -o $(BIN)/edgepair-agent ./agent/cmd/agent

image: deps build ## build the default image (raw + bmap, qcow2, ova) under dist/
	$(BIN)/builder build --profile $(PROFILE) --output $(DIST) --agent $(BIN)/edgepair-agent

vet:
	$(GO) vet ./...
	$(GO) vet -tags integration ./...
	$(GO) vet -tags qemu ./...

test: deps vet test-unit test-integration test-qemu ## everything CI runs

test-unit: ## fast unit tests, no root needed
	$(GO) test -count=1 ./...

test-integration: ## real PostgreSQL + keepalived in network namespaces (root)
	$(GO) test -tags integration -count=1 -timeout 30m -v ./agent/... ./builder/... 2>&1 | tee test-integration.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|SKIP|panic)' ; exit $${PIPESTATUS[0]}

# The image every QEMU test boots: the one `make image` builds.
QEMU_IMAGE ?= $(abspath $(DIST))/edgepair-debian-12.qcow2

# The VM pair scenarios `make test` runs after the pair's first boot (f): the
# seed README's procedure (a), a hard power-off of the primary (b) and a
# partition (d); about 11 min under TCG on 2 cores. All of them (a-e, about
# 24 min): make qemu-pair. PAIR_SCENARIOS= (empty) runs all here too.
PAIR_SCENARIOS ?= a,b,d

test-qemu: image standin ## boot the image under QEMU (root): boot proof, seed boot, harness lifecycle, the VM pair; artifacts/
	EDGEPAIR_BOOT_IMAGE=$(QEMU_IMAGE) EDGEPAIR_IMAGE=$(QEMU_IMAGE) \
	EDGEPAIR_PAIR=1 EDGEPAIR_PAIR_SCENARIOS=$(PAIR_SCENARIOS) \
	$(GO) test -tags 'qemu integration' -count=1 -p 1 -timeout 70m -v ./qemu-tests/... 2>&1 | tee test-qemu.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|SKIP|panic)|^    ' ; exit $${PIPESTATUS[0]}

qemu-pair: build standin ## all VM pair scenarios a-f (root; about 24 min under TCG): EDGEPAIR_PAIR_SCENARIOS=a,d limits them
	EDGEPAIR_PAIR=1 $(GO) test -tags qemu -count=1 -timeout 60m -run TestPair -v ./qemu-tests/ 2>&1 | tee test-qemu-pair.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok|SKIP|panic)|^    ' ; exit $${PIPESTATUS[0]}

qemu-test: test-qemu

.PHONY: standin
standin: ## build the k3s stand-in (kine + kube-apiserver, NOT k3s) into .cache/standin/k3s (reused)
	cd qemu-tests/standin && $(GO) vet ./... && $(GO) test -count=1 ./...
	nice qemu-tests/standin/build.sh .cache/standin

bench: ## benchmarks (see BENCHMARKS.md)
	$(GO) test -run '^$$' -bench . -benchtime 1x -count 1 ./...

.PHONY: bench-failover
bench-failover: ## agent failover times, 5 runs per scenario in namespaces (root; BENCHMARKS.md "Agent")
	EDGEPAIR_FAILOVER_RUNS=5 $(GO) test -tags integration -count=1 -run TestFailoverTimes -v -timeout 30m ./agent/internal/nstest

fuzz: ## run each fuzz target for a short while
	@for t in $$($(GO) test -list '^Fuzz' ./... | grep -E '^(Fuzz|ok)'); do :; done
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime 30s ./agent/pairconfig
	$(GO) test -run '^$$' -fuzz '^FuzzParseSpec$$' -fuzztime 30s ./builder/internal/seed
	$(GO) test -run '^$$' -fuzz '^FuzzParseAuthorizedKey$$' -fuzztime 30s ./builder/internal/seed

clean:
	rm -rf $(BIN) $(DIST) test-*.log

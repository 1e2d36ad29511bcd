# One command per job. Each target installs what it needs on a fresh Debian machine (as root).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := wireguard-go wireguard-tools iproute2 iputils-ping nftables postgresql
# Commands the apt packages provide; when all are present nothing is installed. PostgreSQL's server
# binaries live outside PATH (/usr/lib/postgresql/N/bin); the tests start a private cluster with them.
APT_COMMANDS := wireguard-go wg ip ping nft
APT_FILES := /usr/lib/postgresql/*/bin/initdb

# The kernel tier (tests/kernel): qemu and what virtme-ng needs in the guest (depmod, udev, busybox).
KERNEL_APT_PACKAGES := qemu-system-x86 busybox-static kmod e2fsprogs
KERNEL_COMMANDS := qemu-system-x86_64 busybox depmod udevadm mke2fs

# The topology page's browser test (tests/e2e/test_ui.py): Playwright drives Debian's chromium. Only
# `make test` installs it (the demo does not need a browser).
BROWSER_PACKAGES := chromium
BROWSER_COMMANDS := chromium

# The machines tier boots Debian systems with systemd-nspawn from an mmdebstrap root filesystem and
# builds the container image with podman; vagrant validates the Vagrantfile.
MACHINES_PACKAGES := systemd-container mmdebstrap podman vagrant
MACHINES_COMMANDS := systemd-nspawn mmdebstrap podman vagrant

.PHONY: test test-unit test-machines test-kernel lint bench demo sysdeps sysdeps-browser sysdeps-machines kernel-sysdeps venv clean

## sysdeps: install the system packages the data plane needs (root only; otherwise say what is missing)
sysdeps:
	@bash deploy/apt-need.sh "system packages" "$(APT_COMMANDS)" "$(APT_FILES)" $(APT_PACKAGES)

## kernel-sysdeps: what the kernel tier's VM needs (root only). udev is pinned to the installed systemd's
## version: an unpinned udev makes apt upgrade systemd on the host.
kernel-sysdeps:
	@udev=udev; v=$$(dpkg-query -W -f='$${Version}' systemd 2>/dev/null) && [ -n "$$v" ] && udev="udev=$$v"; \
	bash deploy/apt-need.sh "the kernel tier's packages" "$(KERNEL_COMMANDS)" "" $(KERNEL_APT_PACKAGES) "$$udev"

## sysdeps-browser: Debian's chromium for the browser test (root only)
sysdeps-browser:
	@bash deploy/apt-need.sh "the browser test's packages" "$(BROWSER_COMMANDS)" "" $(BROWSER_PACKAGES)

## sysdeps-machines: systemd-nspawn and mmdebstrap for tests/machines (root only)
sysdeps-machines:
	@bash deploy/apt-need.sh "the machines tier's packages" "$(MACHINES_COMMANDS)" "" $(MACHINES_PACKAGES)

## venv: a virtualenv with the project and its test, lint and bench extras
venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	@echo "installing the project and its dependencies into $(VENV) (about a minute; log: $(VENV)/install.log)"
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@set -o pipefail; start=$$(date +%s); \
	$(BIN)/python -m pip install --disable-pip-version-check -e '.[test,lint,bench]' 2>&1 | tee $(VENV)/install.log \
		| bash deploy/pip-progress.sh \
		|| { tail -30 $(VENV)/install.log; echo "pip install failed; full log: $(VENV)/install.log"; exit 1; }; \
	echo "installed in $$(( $$(date +%s) - start )) s"
	@$(BIN)/python -c 'import wgmesh, pyroute2, fastapi, websockets' && touch $@

## test: every tier; root tiers skip with a reason when not root
test: sysdeps sysdeps-browser sysdeps-machines kernel-sysdeps venv
	$(BIN)/pytest -q -ra tests

## test-machines: four booted Debian systems, installed by deploy/install.sh (root)
test-machines: sysdeps sysdeps-machines venv
	$(BIN)/pytest -q -ra tests/machines

## test-kernel: the kernel tier alone: one VM with Debian's kernel runs the kernel-backend tests
test-kernel: sysdeps kernel-sysdeps venv
	$(BIN)/pytest -q -ra -s tests/kernel

test-unit: venv
	$(BIN)/pytest -q tests/unit

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: sysdeps venv
	$(BIN)/python -m bench

## demo: a lab mesh of 3 hosts with a controller on SQLite; KEEP=1 leaves it up
demo: sysdeps venv
	$(BIN)/wgmesh lab demo -n 3 $(if $(KEEP),--keep,)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

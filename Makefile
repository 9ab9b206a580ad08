# showcase: build, run and test on a fresh Debian/Ubuntu machine.
#   make run    installs what is missing, builds, starts the server on its embedded defaults
#   make test   installs what is missing, checks formatting and lints, runs every test
#               (the cluster test included: `make cluster-test` runs it alone), and builds
#               and checks the Debian package (`make deb-check`)
#   make deb    the Debian package (cargo-deb)
#   make fuzz   100,000 mutated MP4 files through the upload probe (release build)
#   make bench  prints the benchmarks (upload vs fdatasync, durable enqueue rate, transcode
#               pipeline vs the ffmpeg CLI, processing throughput)

SHELL := /bin/bash
.DEFAULT_GOAL := run

# Libraries the media pipeline links against, and the compiler bindgen needs.
BUILD_PACKAGES := libavcodec-dev libavformat-dev libavutil-dev libavfilter-dev libswscale-dev \
                  libswresample-dev libavdevice-dev clang libclang-dev pkg-config
# Test tools: the ffmpeg command line (test media, probing), curl, ss (listen backlogs),
# systemd-analyze and the kernel's system-call numbers (the unit's audit and filter), Chromium
# (browser tests: playwright-core, axe-core and Lighthouse; newman and Redocly CLI for the
# API's documents: all from the npm registry, installed by the test from
# tests/browser/package-lock.json), and PostgreSQL (the tests
# start throwaway clusters of their own: tests/common/postgres.rs), and nginx as the cluster
# test's load balancer.
TEST_PACKAGES := ffmpeg curl chromium fonts-dejavu-core iproute2 systemd linux-libc-dev python3-venv \
                 postgresql nginx-light
# S3 and SQS for the tests: moto in server mode, from PyPI, in a virtual environment of its own.
# The tests start it themselves on 127.0.0.1 (tests/common/moto.rs finds it by MOTO_SERVER).
# tuspy, a tus client from PyPI, is the second independent client of the resumable uploads
# (tests/tus_clients.rs runs it with TEST_VENV_PYTHON).
VENV := $(HOME)/.cache/showcase/venv
MOTO_VERSION := 5.2.5
TUSPY_VERSION := 1.1.0
# cfn-lint, from PyPI, for the AWS template (tests/deploy.rs), in an environment of its own: its
# dependencies (boto3 among them) stay out of moto's way.
CFN_LINT_VENV := $(HOME)/.cache/showcase/cfn-lint
CFN_LINT_VERSION := 1.58.0
export CFN_LINT := $(CFN_LINT_VENV)/bin/cfn-lint
export MOTO_SERVER := $(VENV)/bin/moto_server
export TEST_VENV_PYTHON := $(VENV)/bin/python
# Benchmark peers: wrk as the load generator, nginx as the reference file server.
BENCH_PACKAGES := wrk nginx

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Builds are kept outside the clone so that fresh clones (CI) reuse them.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/showcase/target
BIN := $(CARGO_TARGET_DIR)/release/showcase

.PHONY: run test cluster-test bench bench-quick capacity build deps test-deps toolchain lint install chaos fuzz deb deb-deps deb-check

# The capacity benchmark (showcase-bench): the replaced system's capacity plan against a node
# it starts in a 2 GiB memory cgroup. `capacity` is the full run (about an hour); `bench-quick`
# scales every duration down (a few minutes). Results: bench-results/ (report.md, PNG plots).
bench-quick: test-deps
	cargo build --release --bin showcase --bin showcase-bench
	$(CARGO_TARGET_DIR)/release/showcase-bench --quick

capacity: test-deps
	cargo build --release --bin showcase --bin showcase-bench
	$(CARGO_TARGET_DIR)/release/showcase-bench

# Installs the given Debian packages that are not installed yet (one apt-get update at most).
define install_missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

toolchain:
	@command -v cargo >/dev/null || { echo "cargo not found: install Rust (>= 1.85) with rustup, https://rustup.rs"; exit 1; }

deps: toolchain
	$(call install_missing,$(BUILD_PACKAGES))

test-deps: deps
	$(call install_missing,$(BUILD_PACKAGES) $(TEST_PACKAGES))
	@$(VENV)/bin/pip show moto 2>/dev/null | grep -qx "Version: $(MOTO_VERSION)" || { \
	  echo "installing moto $(MOTO_VERSION) into $(VENV)"; \
	  python3 -m venv $(VENV) && $(VENV)/bin/pip install -q "moto[server]==$(MOTO_VERSION)"; }
	@$(VENV)/bin/pip show tuspy 2>/dev/null | grep -qx "Version: $(TUSPY_VERSION)" || { \
	  echo "installing tuspy $(TUSPY_VERSION) into $(VENV)"; \
	  $(VENV)/bin/pip install -q "tuspy==$(TUSPY_VERSION)"; }
	@$(CFN_LINT_VENV)/bin/pip show cfn-lint 2>/dev/null | grep -qx "Version: $(CFN_LINT_VERSION)" || { \
	  echo "installing cfn-lint $(CFN_LINT_VERSION) into $(CFN_LINT_VENV)"; \
	  python3 -m venv $(CFN_LINT_VENV) && $(CFN_LINT_VENV)/bin/pip install -q "cfn-lint==$(CFN_LINT_VERSION)"; }
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq nodejs npm; }

build: deps
	cargo build --release

run: build
	$(BIN) serve --config config.toml

lint: deps
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

test: test-deps lint
	cargo test
	# The API suite again on the other backends: media in S3 and jobs in SQS (moto); records in
	# PostgreSQL with its own queue; and all three, as a platform of several nodes runs.
	SHOWCASE_TEST_BACKENDS=aws cargo test --test api
	SHOWCASE_TEST_BACKENDS=postgres cargo test --test api
	SHOWCASE_TEST_BACKENDS=aws,postgres cargo test --test api
	$(MAKE) --no-print-directory cluster-test
	$(MAKE) --no-print-directory deb-check

# The Debian package, $(DEB_DIR)/showcase_<version>_amd64.deb (and its debug symbols,
# showcase-dbgsym_<version>_amd64.ddeb), by cargo-deb (installed when missing): the
# dependencies on the libraries the binary links are computed by dpkg-shlibdeps.
# `make test` builds it and checks it (tests/package.rs: contents, lintian, the units, an
# install, the upgrade and the removal on this machine).
CARGO_DEB_VERSION := 3.8.0
DEB_DIR := $(CARGO_TARGET_DIR)/deb
deb-deps: deps
	$(call install_missing,dpkg-dev)
	@cargo deb --version 2>/dev/null | grep -qx "cargo-deb $(CARGO_DEB_VERSION)" || \
	  cargo install cargo-deb --locked --version $(CARGO_DEB_VERSION)

deb: deb-deps
	cargo deb --output $(DEB_DIR)/

# The package's checks (deploy/deb/check-package). As root, they install it on this machine,
# upgrade it to the same build under a higher version, remove it and purge it; they leave
# alone a machine whose /etc/showcase another installation owns.
deb-check: deb
	$(call install_missing,lintian binutils)
	cargo deb --no-build --no-dbgsym --strip --fast --deb-version "$$(cargo pkgid | sed 's/.*[@#]//')+check" \
	  --output $(CARGO_TARGET_DIR)/deb-upgrade/
	deploy/deb/check-package $(DEB_DIR)/showcase_*_amd64.deb $(CARGO_TARGET_DIR)/deb-upgrade/showcase_*_amd64.deb

# The cluster test: PostgreSQL, S3 and SQS, two api nodes of the release binary behind nginx
# and two workers, players at work while nodes are killed and restarted (tests/cluster.rs).
cluster-test: test-deps
	cargo build --release --bin showcase
	SHOWCASE_TEST_BIN=$(BIN) cargo test --test cluster -- --ignored --nocapture

bench: test-deps
	$(call install_missing,$(BENCH_PACKAGES))
	cargo bench --bench ingest
	cargo bench --bench pipeline
	cargo bench --bench streaming
	cargo bench --bench aws
	cargo bench --bench records

# Installs the binary, the systemd unit and the configuration (kept if already there, closed
# to other users), generates the admin token and the JWT secret the unit passes as credentials
# (and an empty postgres_password for the database's, when there is one)
# (0600 root, kept if already there; left empty when an existing installation gives the secret
# elsewhere: in its configuration, or a secret the node generated), then reloads systemd.
# Start with `systemctl enable --now showcase`; the admin token is in /etc/showcase/admin_token.
PREFIX ?= /usr/local
install: build
	$(SUDO) install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/showcase
	sed 's|/usr/bin/showcase|$(PREFIX)/bin/showcase|; s|/usr/share/doc/showcase|$(PREFIX)/share/doc/showcase|' \
	  systemd/showcase.service | $(SUDO) install -D -m 0644 /dev/stdin $(DESTDIR)/etc/systemd/system/showcase.service
	$(SUDO) install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/showcase/README.md
	$(SUDO) install -d -m 0755 $(DESTDIR)/etc/showcase
	@if [ -e $(DESTDIR)/etc/showcase/config.toml ]; then \
	  echo "keeping the existing /etc/showcase/config.toml (now mode 0640)"; \
	  $(SUDO) chmod 0640 $(DESTDIR)/etc/showcase/config.toml; \
	else \
	  $(SUDO) install -m 0640 config.toml $(DESTDIR)/etc/showcase/config.toml; \
	fi
	@for secret in admin_token jwt_secret; do \
	  file=$(DESTDIR)/etc/showcase/$$secret; \
	  [ -e $$file ] && continue; \
	  case $$secret in \
	    admin_token) given='^[[:space:]]*token(_file)?[[:space:]]*=[[:space:]]*"[^"]+"' ;; \
	    jwt_secret) given='^[[:space:]]*jwt_secret(_file)?[[:space:]]*=[[:space:]]*"[^"]+"' ;; \
	  esac; \
	  if $(SUDO) grep -Eq "$$given" $(DESTDIR)/etc/showcase/config.toml; then \
	    echo "$$file: left empty, the configuration gives this secret"; \
	    $(SUDO) install -m 0600 /dev/null $$file; \
	  elif [ $$secret = jwt_secret ] && $(SUDO) test -e $(DESTDIR)/var/lib/private/showcase/secret.key \
	       -o -e $(DESTDIR)/var/lib/showcase/secret.key; then \
	    echo "$$file: left empty, the node keeps the secret it generated (tokens stay valid)"; \
	    $(SUDO) install -m 0600 /dev/null $$file; \
	  else \
	    echo "generating $$file"; \
	    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' | $(SUDO) install -m 0600 /dev/stdin $$file; \
	  fi; \
	done
	@file=$(DESTDIR)/etc/showcase/postgres_password; [ -e $$file ] || { \
	  echo "$$file: left empty; with store.backend = \"postgres\", the database password goes there"; \
	  $(SUDO) install -m 0600 /dev/null $$file; }
	@file=$(DESTDIR)/etc/showcase/jwt_secret_accepted; [ -e $$file ] || { \
	  echo "$$file: left empty; it holds the previous or next JWT secret during a rotation"; \
	  $(SUDO) install -m 0600 /dev/null $$file; }
	@if [ -z "$(DESTDIR)" ] && command -v systemctl >/dev/null; then $(SUDO) systemctl daemon-reload || true; fi

# The crash-recovery drill: CYCLES rounds of load, SIGKILL at a random moment, restart.
CYCLES ?= 50
chaos: test-deps
	CHAOS_CYCLES=$(CYCLES) cargo test --release --test chaos -- --nocapture

# Hostile media at scale: MUTATIONS mutants of generated clips through the upload probe, and
# PIPELINE_MUTANTS of those it accepts through a node's processing pipeline (release build).
MUTATIONS ?= 100000
PIPELINE_MUTANTS ?= 12
fuzz: test-deps
	SHOWCASE_MUTATIONS=$(MUTATIONS) SHOWCASE_PIPELINE_MUTANTS=$(PIPELINE_MUTANTS) \
	  cargo test --release --test hostile_media -- --nocapture
